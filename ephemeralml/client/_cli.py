"""``ephemeral``: the client CLI. Thin: the parser and ``main``; the subcommands are
one function each, by group, in ``_cli_session`` (attest, embed), ``_cli_offline``
(verify, attestation), ``_cli_model`` (model …) and ``_cli_policy`` (policy …).

ephemeral attest [--mock]                 verify the enclave, print what it proves
ephemeral embed [--mock] TEXT...          attested, encrypted embeddings + receipts
ephemeral chat [--mock] [PROMPT]          a chat model's answer, streamed and verified
ephemeral proxy [--mock] [--listen ADDR]  the OpenAI API on loopback, attested underneath
ephemeral web [--mock] [--ws URL]         the browser client's page, served from this machine
ephemeral verify RECEIPT [--mock]         offline receipt verification
ephemeral attestation FILE [--at TIME]    offline attestation document check
ephemeral policy keygen|sign|show         make a policy-signing key, sign, inspect
ephemeral policy from-measurements        a policy.json from published measurements
ephemeral model keygen|package|upload     package and upload encrypted models (owners)
ephemeral model show BUNDLE               verify a bundle's manifest, print its release
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ephemeralml.common._errors import ConfigError
from ephemeralml.runtime._ports import ENV_BASE_PORT, Ports
from ephemeralml.runtime._runner import Parser, run_main

from ._api import DEFAULT_ADDRESS, DEFAULT_MAX_TOKENS, DEFAULT_MODEL, DEFAULT_TIMEOUT_S
from ._cli_chat import DEFAULT_CHAT_MODEL, cmd_chat
from ._cli_common import PROG
from ._cli_model import cmd_model_keygen, cmd_model_package, cmd_model_show, cmd_model_upload
from ._cli_offline import cmd_attestation, cmd_verify
from ._cli_policy import (
    cmd_policy_from_measurements,
    cmd_policy_keygen,
    cmd_policy_show,
    cmd_policy_sign,
)
from ._cli_proxy import DEFAULT_LISTEN, DEFAULT_SESSIONS, cmd_proxy
from ._cli_session import cmd_attest, cmd_embed
from ._cli_web import DEFAULT_WEB_LISTEN, cmd_web
from ._inputs import DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_TEXTS
from ._policy import POLICY_SIGNERS_FILE

__all__ = ["main"]


def _parser() -> Parser:
    p = Parser(prog=PROG, description="Client for attested, encrypted inference.", version=True)
    p.add_argument("-v", "--verbose", action="count", default=0, help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)

    def signer(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--policy-signer",
            action="append",
            metavar="HEX",
            help="trust policies signed by this Ed25519 key (64 hex; repeatable; added to "
            f"$EPHEMERALML_HOME/{POLICY_SIGNERS_FILE}); unsigned policies are then refused",
        )

    def trust(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--mock",
            action="store_true",
            help="trust the local MOCK enclave's root (development only; warns)",
        )
        sp.add_argument(
            "--policy", type=Path, help="trust policy file (policy.json, or signed policy.cose)"
        )
        signer(sp)
        sp.add_argument(
            "--home",
            type=Path,
            help="state directory (default $EPHEMERALML_HOME or ~/.ephemeralml)",
        )
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    def online(sp: argparse.ArgumentParser) -> None:
        trust(sp)
        sp.add_argument(
            "--host",
            help="host relay address (default $EPHEMERAL_HOST, else 127.0.0.1:BASE with the "
            f"base port from --base-port or ${ENV_BASE_PORT}, else {DEFAULT_ADDRESS})",
        )
        sp.add_argument("--base-port", type=int, help="the base port of a local deployment")
        sp.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT_S,
            help="deadline in seconds for the connect, and for each request (default %(default)g)",
        )
        sp.add_argument(
            "--session-mode",
            choices=("fresh", "cached"),
            help="fresh: a new attestation per session; cached: a recent cached one plus a "
            "signed per-session proof (default: the policy's, else fresh)",
        )

    a = sub.add_parser("attest", help="fetch and verify the enclave's attestation")
    online(a)
    a.set_defaults(fn=cmd_attest)

    e = sub.add_parser("embed", help="embed texts in the enclave; receipts verified")
    online(e)
    e.add_argument(
        "texts", nargs="*", metavar="TEXT", help="texts to embed; a lone - reads them from stdin"
    )
    e.add_argument(
        "--file", metavar="PATH", help="read the texts from PATH (- for stdin), one a line (UTF-8)"
    )
    e.add_argument(
        "--jsonl",
        action="store_true",
        help='with - or --file: one JSON text a line, a string or an object with a "text" string',
    )
    e.add_argument(
        "--max-texts",
        type=int,
        default=DEFAULT_MAX_TEXTS,
        help="refuse more texts than this, before any work (default %(default)d)",
    )
    e.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_INPUT_BYTES,
        help="refuse more input bytes than this, before any work (default %(default)d)",
    )
    e.add_argument("--model", default=DEFAULT_MODEL)
    e.add_argument(
        "--truncate",
        action="store_true",
        help="cut a text over the model's token limit to it instead of refusing it "
        "(the choice and the texts cut are recorded in each receipt)",
    )
    e.add_argument(
        "--receipt-out",
        type=Path,
        metavar="DIR",
        help="store receipts and their attestation documents here",
    )
    e.add_argument(
        "--save-payloads",
        action="store_true",
        help="with --receipt-out: also store the request and response bytes (plaintext!)",
    )
    e.set_defaults(fn=cmd_embed)

    c = sub.add_parser("chat", help="chat with a model in the enclave; the answer streams, its receipt verified")
    online(c)
    c.add_argument("prompt", nargs="*", metavar="PROMPT", help="one message (default: read one a line from stdin, interactively)")
    c.add_argument("--model", default=DEFAULT_CHAT_MODEL, help="the chat model (default %(default)s)")
    c.add_argument("--system", help="a system message to start the chat with (default: the model's own)")
    c.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="most tokens an answer may have (default %(default)d)")
    c.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); up to 2: sampled")
    c.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1: off)")
    c.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens (default 0: off)")
    c.add_argument("--seed", type=int, help="seed of a sampled answer (the same seed gives the same answer)")
    c.add_argument("--stop", action="append", metavar="TEXT", help="stop before TEXT (repeatable, up to 4)")
    c.add_argument("--receipt-out", type=Path, metavar="DIR", help="store receipts and their attestation documents here")
    c.add_argument("--save-payloads", action="store_true", help="with --receipt-out: also store the request and result bytes (plaintext!)")
    c.set_defaults(fn=cmd_chat)

    px = sub.add_parser(
        "proxy", help="serve the OpenAI API on loopback over verified, sealed enclave sessions"
    )
    online(px)
    px.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="ADDR",
        help="loopback address for the SDK (default %(default)s; the SDK's plaintext ends here)",
    )
    px.add_argument(
        "--sessions",
        type=int,
        default=DEFAULT_SESSIONS,
        help="attested sessions kept open, one request at a time each (default %(default)d)",
    )
    px.set_defaults(fn=cmd_proxy)

    wb = sub.add_parser(
        "web", help="serve the browser client's page from this machine (it verifies the enclave)"
    )
    trust(wb)
    wb.add_argument(
        "--ws",
        metavar="URL",
        help="the host's WebSocket door, ephemeral-host --ws-listen (default "
        "ws://127.0.0.1:BASE+1 with the base port from --base-port or $EPHEMERALML_BASE_PORT)",
    )
    wb.add_argument("--base-port", type=int, help="the base port of a local deployment")
    wb.add_argument(
        "--listen",
        default=DEFAULT_WEB_LISTEN,
        metavar="ADDR",
        help="loopback address of the page (default %(default)s)",
    )
    wb.add_argument(
        "--page-dir", type=Path, help="the built page (default: web/dist, built by scripts/_web.sh)"
    )
    wb.set_defaults(fn=cmd_web)

    v = sub.add_parser("verify", help="verify a stored receipt offline")
    trust(v)
    v.add_argument("receipt", type=Path, metavar="RECEIPT")
    v.add_argument(
        "--attestation", type=Path, help="attestation document (default: beside the receipt)"
    )
    v.add_argument(
        "--root", type=Path, help="trust this root (PEM/DER) instead of AWS's; PCRs not checked"
    )
    v.add_argument("--request", type=Path, help="request bytes to check against request_hash")
    v.add_argument("--response", type=Path, help="response bytes to check against response_hash")
    v.set_defaults(fn=cmd_verify)

    t = sub.add_parser("attestation", help="check a stored attestation document offline")
    trust(t)
    t.add_argument("file", type=Path, metavar="FILE")
    t.add_argument("--at", metavar="TIME", help="check at this ISO 8601 time (default: now)")
    t.add_argument("--root", type=Path, help="trust this root certificate (PEM/DER)")
    t.set_defaults(fn=cmd_attestation)

    # ephemeral audit [TRUST] [--db PATH] [--head HEX]; ephemeral audit export OUT
    from ._cli_audit import cmd_audit, cmd_audit_export

    au = sub.add_parser("audit", help="re-verify the audit log offline (chain, receipts, sessions); `audit export OUT` writes it as a bundle for `ephemeral verify`")
    trust(au)
    au.add_argument("--root", type=Path, help="trust this root (PEM/DER) instead of AWS's; PCRs not checked")
    au.add_argument("--db", type=Path, help="the audit log (default $EPHEMERALML_HOME/audit.db)")
    au.add_argument("--head", metavar="HEX", help="an entry hash noted earlier (the head it printed): a finding unless it is still in the chain")
    au.set_defaults(fn=cmd_audit)
    ausub = au.add_subparsers(dest="audit_cmd", metavar="export")
    ax = ausub.add_parser("export", help="write the whole log as one self-contained bundle (deterministic CBOR)")
    ax.add_argument("out", type=Path, metavar="OUT", help="bundle file to write atomically (0600)")
    ax.add_argument("--db", type=Path, default=argparse.SUPPRESS, help="the audit log (default $EPHEMERALML_HOME/audit.db)")
    ax.add_argument("--home", type=Path, default=argparse.SUPPRESS, help="state directory (default $EPHEMERALML_HOME or ~/.ephemeralml)")
    ax.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    ax.set_defaults(fn=cmd_audit_export)
    m = sub.add_parser("model", help="package and upload encrypted models (model owners)")
    msub = m.add_subparsers(dest="model_cmd", required=True)
    mk = msub.add_parser("keygen", help="make a model-owner Ed25519 signing key")
    mk.add_argument("--out", type=Path, required=True, help="private key file to write (PEM, 0600)")
    mk.set_defaults(fn=cmd_model_keygen)
    mp = msub.add_parser("package", help="encrypt a model under a KMS data key and sign its manifest")
    mp.add_argument("--model-dir", type=Path, help="model.onnx, tokenizer.json, model.json (default: the packaged all-MiniLM-L6-v2)")
    mp.add_argument("--model-id", help="model id (default: the packaged model's)")
    mp.add_argument("--version", default="1", help="model version label (free text, shown, never compared)")
    mp.add_argument("--release", type=int, default=0, help="ordered release number ≥ 1: raise it with every bundle; an enclave refuses releases below its floor (M11). Default 0: unordered, refused by any floor")
    mp.add_argument("--owner-key", type=Path, help="model owner's Ed25519 key (PEM); with --mock default $EPHEMERALML_HOME/mock-owner.pem, the key the mock enclave trusts")
    mp.add_argument("--kms-key-id", help="KMS key id or ARN; with --mock default the key mock provisioning made ($EPHEMERALML_HOME/mock-provision.json)")
    mp.add_argument("--mock", action="store_true", help="package under the local KMS of the mock deployment (127.0.0.1:BASE+9) as its model owner, with the credentials `ephemeral-host --mock` made: no AWS credentials")
    mp.add_argument("--base-port", type=int, help=f"with --mock: the deployment's base port (default ${ENV_BASE_PORT}, else 5000)")
    mp.add_argument("--home", type=Path, help="with --mock: the mock deployment's state directory (default $EPHEMERALML_HOME or ~/.ephemeralml)")
    mp.add_argument("--kms-endpoint", default=os.environ.get("EPHEMERAL_KMS_ENDPOINT"), help="KMS endpoint URL (with --mock default http://127.0.0.1:BASE+9)")
    mp.add_argument("--region", help="AWS region (default $AWS_REGION or us-east-1)")
    mp.add_argument("--chunk-size", type=int, default=1024 * 1024, help="bytes per encrypted chunk")
    mp.add_argument("--out", type=Path, required=True, help="folder for manifest.cose, model.key, model.enc")
    mp.add_argument("--json", action="store_true")
    mp.set_defaults(fn=cmd_model_package)
    mu = msub.add_parser("upload", help="put a bundle into a local store or S3")
    mu.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    mu.add_argument("--model-id", help="the store entry to write; must be the model its manifest names (default: that model)")
    mu.add_argument("--to", type=Path, metavar="DIR", help="local model store")
    mu.add_argument("--s3", metavar="URL", help="s3://bucket/prefix")
    mu.add_argument("--mock", action="store_true", help="the mock host's store ($EPHEMERALML_HOME/store)")
    mu.add_argument("--home", type=Path, help="with --mock: state directory (default $EPHEMERALML_HOME or ~/.ephemeralml)")
    mu.add_argument("--s3-endpoint", default=os.environ.get("EPHEMERAL_S3_ENDPOINT"), help="S3 endpoint URL")
    mu.add_argument("--region")
    mu.add_argument("--json", action="store_true")
    mu.set_defaults(fn=cmd_model_upload)
    ms = msub.add_parser("show", help="verify a bundle's signed manifest and print it (model, release, manifest digest)")
    ms.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE", help="a bundle folder, a store's <store>/<model id> folder, or a manifest.cose")
    ms.add_argument("--owner-key", action="append", metavar="HEX", help="trusted model-owner key (64 hex raw Ed25519, as `model keygen` prints it; repeatable); default the keys in $EPHEMERALML_HOME/published/model-owners.txt")
    ms.add_argument("--model-id", help="refuse a manifest for another model (M5)")
    ms.add_argument("--digest", metavar="HEX", help="show only bundles whose manifest digest starts with HEX (16-64 hex; a receipt's model_digest); none is an error")
    ms.add_argument("--home", type=Path, help="state directory (default $EPHEMERALML_HOME or ~/.ephemeralml)")
    ms.add_argument("--json", action="store_true", help="one JSON object a line, one line a manifest")
    ms.set_defaults(fn=cmd_model_show)

    pol = sub.add_parser("policy", help="make, sign and inspect trust policies (policy owners)")
    psub = pol.add_subparsers(dest="policy_cmd", required=True)
    pk = psub.add_parser("keygen", help="make an Ed25519 policy-signing key")
    pk.add_argument("--out", type=Path, required=True, help="private key file to write (PEM, 0600)")
    pk.set_defaults(fn=cmd_policy_keygen)
    ps = psub.add_parser("sign", help="check a policy.json and sign it into a policy.cose")
    ps.add_argument("policy_json", type=Path, metavar="POLICY_JSON")
    ps.add_argument("--key", type=Path, required=True, help="policy-signing key (PEM)")
    ps.add_argument("--out", type=Path, required=True, help="signed policy to write (policy.cose)")
    ps.set_defaults(fn=cmd_policy_sign)
    pw = psub.add_parser("show", help="verify a policy file as a client would and print it")
    pw.add_argument("file", type=Path, metavar="FILE")
    signer(pw)
    pw.add_argument(
        "--home", type=Path, help="state directory (default $EPHEMERALML_HOME or ~/.ephemeralml)"
    )
    pw.add_argument("--json", action="store_true", help="machine-readable output")
    pw.set_defaults(fn=cmd_policy_show)
    pf = psub.add_parser("from-measurements", help="make a policy.json from published measurements (a mock enclave's, or nitro-cli build-enclave's JSON)")
    pf.add_argument("files", type=Path, nargs="*", metavar="FILE", help="measurements; several make several allowed sets (default $EPHEMERALML_HOME/published/measurements.json)")
    pf.add_argument("-o", "--out", type=Path, required=True, help="policy file to write atomically (- for stdout)")
    pf.add_argument("--force", action="store_true", help="replace --out if it exists")
    pf.add_argument("--root", type=Path, metavar="PEM", help="trust this root certificate (pinned by SHA-256) instead of the built-in AWS Nitro root; mock measurements always get the mock root")
    pf.add_argument("--model", action="append", metavar="ID=DIGEST", help="pin a model's manifest digest (P1; repeatable, twice for one id pins both); default: any attested model")
    pf.add_argument("--version", type=int, default=1, help="the policy's version (P4; default %(default)s)")
    pf.add_argument("--home", type=Path, help="state directory (default $EPHEMERALML_HOME or ~/.ephemeralml)")
    pf.set_defaults(fn=cmd_policy_from_measurements)
    return p


def _default_host(base_port: int | None, env: Mapping[str, str]) -> str:
    """``--base-port``, else ``$EPHEMERAL_HOST``, else the base port's relay on loopback."""
    if base_port is None and env.get("EPHEMERAL_HOST"):
        return env["EPHEMERAL_HOST"]
    return f"127.0.0.1:{Ports.choose(base_port, env).client}"


def main(argv: Sequence[str] | None = None, *, stdout: Any = None) -> int:
    def body(args: argparse.Namespace) -> int:
        if getattr(args, "receipt_out", None) is None and getattr(args, "save_payloads", False):
            raise ConfigError("--save-payloads needs --receipt-out DIR")
        if hasattr(args, "host") and args.host is None:
            args.host = _default_host(args.base_port, os.environ)
        return int(args.fn(args))

    return run_main(PROG, _parser(), argv, body, stdout=stdout)


if __name__ == "__main__":
    sys.exit(main())
