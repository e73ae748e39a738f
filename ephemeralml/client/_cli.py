"""``ephemeral``: the client CLI. Thin: parsing, one function per subcommand, printing.

ephemeral attest [--mock]                 verify the enclave, print what it proves
ephemeral embed [--mock] TEXT...          attested, encrypted embeddings + receipts
ephemeral verify RECEIPT [--mock]         offline receipt verification
ephemeral attestation FILE [--at TIME]    offline attestation document check
ephemeral policy keygen|sign|show         make a policy-signing key, sign, inspect
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ephemeralml.common._attestation import (
    AttestationDocument,
    AttestationPolicy,
    Measurements,
    TrustedRoot,
    UnsafeAnyMeasurements,
    VerifiedAttestation,
    parse_unverified,
    verify_attestation,
)
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._errors import ConfigError, ReceiptError
from ephemeralml.common._receipt import (
    ReceiptExpectations,
    VerifiedReceipt,
    receipt_attestation_hash,
    verify_receipt,
)
from ephemeralml.runtime._home import default_home, write_atomic
from ephemeralml.runtime._ports import ENV_BASE_PORT, Ports
from ephemeralml.runtime._runner import Parser, run_main

from ._api import DEFAULT_ADDRESS, DEFAULT_MODEL, DEFAULT_TIMEOUT_S, Embeddings, connect
from ._policy import (
    POLICY_SIGNERS_FILE,
    ClientPolicy,
    aws_root,
    generate_signer_key,
    load_policy_signers,
    load_signer_key,
    mock_root,
    parse_signer_keys,
    policy_signer_kid,
    sign_policy,
    warn_mock,
)

__all__ = ["main"]

_MAX_FILE_BYTES = 1024 * 1024

PROG = "ephemeral"


# ---------------------------------------------------------------- helpers


def _out(args: argparse.Namespace, text: str = "") -> None:
    print(text, file=args.stdout)


def _signers(args: argparse.Namespace, home: Path) -> dict[bytes, bytes]:
    """Trusted policy signers: $EPHEMERALML_HOME/policy-signers plus every --policy-signer."""
    signers = load_policy_signers(home)
    signers.update(parse_signer_keys(args.policy_signer or ()))
    return signers


def _policy_file(args: argparse.Namespace, home: Path) -> ClientPolicy:
    return ClientPolicy.from_file(args.policy, home=home, trusted_signers=_signers(args, home))


def _policy(args: argparse.Namespace) -> ClientPolicy:
    home = args.home or default_home()
    if args.mock and args.policy:
        raise ConfigError("give either --mock or --policy, not both")
    if args.mock:
        return ClientPolicy.unsafe_mock(home)
    if args.policy:
        return _policy_file(args, home)
    raise ConfigError(
        "no trust policy: give --policy FILE (allowed PCRs for a real enclave) "
        "or --mock to trust a local mock enclave"
    )


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise ConfigError(f"{what} {path} is over {_MAX_FILE_BYTES} bytes")
        return path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{what} {path} does not exist") from e
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e


def _parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ConfigError(
            f"--at {text!r} is not an ISO 8601 time (e.g. 2023-05-17T21:21:51.808Z)"
        ) from e
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _fp(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _doc_json(
    v: VerifiedAttestation | AttestationDocument, *, root: TrustedRoot | None
) -> dict[str, Any]:
    doc = v.document if isinstance(v, VerifiedAttestation) else v
    out: dict[str, Any] = {
        "module_id": doc.module_id,
        "timestamp": _iso(doc.timestamp_ms),
        "digest": doc.digest,
        "sha256": doc.sha256_hex,
        "pcrs": {str(i): p.hex() for i, p in sorted(doc.pcrs.items())},
        "debug_mode": doc.is_debug,
        "public_key_sha256": _fp(doc.public_key) if doc.public_key else None,
        "user_data": doc.user_data.hex() if doc.user_data else None,
        "nonce": doc.nonce.hex() if doc.nonce else None,
        "leaf_certificate_sha256": _fp(doc.certificate),
    }
    if root is not None:
        out["root"] = {"name": root.name, "sha256": root.fingerprint, "mock": root.is_mock}
    return out


def _print_doc(
    args: argparse.Namespace, d: dict[str, Any], *, pcrs: Sequence[int] | None = None
) -> None:
    _out(args, f"  module id     {d['module_id']}")
    _out(args, f"  time          {d['timestamp']}")
    _out(args, f"  document      sha256 {d['sha256']}")
    if "root" in d:
        r = d["root"]
        _out(
            args,
            f"  root          {r['name']} sha256 {r['sha256']}{'  (MOCK)' if r['mock'] else ''}",
        )
    if d["debug_mode"]:
        _out(
            args,
            "  DEBUG MODE    all-zero PCRs: a debug-mode enclave proves nothing about its code",
        )
    for i, p in d["pcrs"].items():
        if pcrs is None or int(i) in pcrs:
            _out(args, f"  PCR{i:<2}         {p}")
    if d["public_key_sha256"]:
        _out(args, f"  public key    sha256 {d['public_key_sha256']}")


# ---------------------------------------------------------------- attest


def cmd_attest(args: argparse.Namespace) -> int:
    policy = _policy(args)
    with connect(
        args.host, policy=policy, timeout=args.timeout, session_mode=args.session_mode
    ) as s:
        v, b = s.attestation, s.binding
        d = _doc_json(v, root=v.root)
        d["binding"] = {
            "session_id": b.session_id.hex(),
            "receipt_key_sha256": _fp(b.receipt_key),
            "receipt_key": b.receipt_key.hex(),
            "models": {k: dg.hex() for k, dg in b.models.items()},
            "policy_version": b.policy_version,
            "mode": b.mode,
            "protocol_version": b.protocol_version,
        }
    if args.json:
        _out(args, json.dumps(d, indent=2))
        return 0
    _out(args, f"attestation VERIFIED ({b.mode} enclave via {args.host}, policy {policy.source})")
    _print_doc(args, d, pcrs=(0, 1, 2, 3, 4, 8))
    _out(args, f"  receipt key   sha256 {d['binding']['receipt_key_sha256']}")
    _out(args, f"  session       {b.session_id.hex()}")
    for k, dg in b.models.items():
        _out(args, f"  model         {k} manifest {dg.hex()}")
    return 0


# ---------------------------------------------------------------- embed


def _store(out_dir: Path, e: Embeddings, *, payloads: bool) -> dict[str, str]:
    r = e.receipt
    rid = r.receipt.receipt_id_hex
    att = r.attestation.document
    files = {
        "receipt": out_dir / f"{rid}.receipt.cbor",
        "attestation": out_dir / f"{att.sha256_hex}.attestation.cbor",
    }
    write_atomic(files["attestation"], att.raw)
    if payloads:
        files["request"] = out_dir / f"{rid}.request.cbor"
        files["response"] = out_dir / f"{rid}.response.cbor"
        write_atomic(files["request"], e.request_cbor, mode=0o600)
        write_atomic(files["response"], e.response_cbor, mode=0o600)
    # The receipt last: a receipt file present means everything it needs is too.
    write_atomic(files["receipt"], r.raw)
    return {k: str(v) for k, v in files.items()}


def _audit(home: Path, e: Embeddings) -> None:
    """Append one line per verified receipt: ids and hashes only, never payloads."""
    r = e.receipt.receipt
    line = json.dumps(
        {
            "verified_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "receipt_id": r.receipt_id.hex(),
            "session_id": r.session_id.hex(),
            "seq": r.seq,
            "model_id": r.model_id,
            "attestation_hash": r.attestation_hash.hex(),
            "request_hash": r.request_hash.hex(),
            "response_hash": r.response_hash.hex(),
            "mode": r.mode,
        }
    )
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "audit.jsonl", "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _receipt_dir(path: Path) -> Path:
    """``--receipt-out``, made and checked before any request is sent: an inference is
    never lost to a path that cannot take its receipt."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--receipt-out {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--receipt-out {path}: cannot create it: {e.strerror}") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--receipt-out {path}: not writable")
    return path


def cmd_embed(args: argparse.Namespace) -> int:
    if args.receipt_out:
        _receipt_dir(args.receipt_out)
    policy = _policy(args)
    home = args.home or default_home()
    with connect(
        args.host, policy=policy, timeout=args.timeout, session_mode=args.session_mode
    ) as s:
        results = s.embed(args.texts, model=args.model)
    receipts: list[dict[str, Any]] = []
    for e in results:
        _audit(home, e)
        rj = e.receipt.receipt.to_json()
        if args.receipt_out:
            rj["files"] = _store(args.receipt_out, e, payloads=args.save_payloads)
        receipts.append(rj)
    vectors = [row for e in results for row in e.vectors.tolist()]
    if args.json:
        _out(
            args,
            json.dumps(
                {
                    "model": results[0].model,
                    "dim": results[0].dim,
                    "embeddings": vectors,
                    "receipts": receipts,
                }
            ),
        )
        return 0
    _out(args, f"{results[0].model}: {len(vectors)} embedding(s) of dimension {results[0].dim}")
    for text, vec in zip(args.texts, vectors, strict=True):
        head = ", ".join(f"{x:+.4f}" for x in vec[:6])
        _out(args, f"  {text[:40]!r:<44} [{head}, … {len(vec) - 6} more]")
    for rj in receipts:
        where = f" -> {rj['files']['receipt']}" if "files" in rj else ""
        _out(
            args,
            f"receipt {rj['receipt_id']} VERIFIED (seq {rj['seq']}, session {rj['session_id'][:16]}…){where}",
        )
    return 0


# ---------------------------------------------------------------- verify


def _offline_policy(
    args: argparse.Namespace, doc: AttestationDocument
) -> tuple[AttestationPolicy, ClientPolicy | None]:
    """The policy for offline checks: the document is checked at its own time."""
    home = args.home or default_home()
    if args.mock and (args.policy or args.root):
        raise ConfigError("give one of --mock, --policy or --root")
    if args.policy:
        client_policy = _policy_file(args, home)
        return client_policy.attestation, client_policy
    if args.mock:
        root, path = mock_root(home)
        warn_mock(path)
        measurements: Measurements = _published_or_any(home)
        return AttestationPolicy(root, measurements), None
    root = (
        TrustedRoot.from_pem_or_der(_read(args.root, "root"), name=str(args.root))
        if args.root
        else aws_root()
    )
    return AttestationPolicy(root, UnsafeAnyMeasurements()), None


def _published_or_any(home: Path) -> Measurements:
    try:
        return ClientPolicy.unsafe_mock(home, warn=False).attestation.measurements
    except ConfigError:
        return UnsafeAnyMeasurements()


def cmd_verify(args: argparse.Namespace) -> int:
    raw = _read(args.receipt, "receipt")
    try:
        kid = receipt_attestation_hash(raw)
    except ReceiptError:
        raise
    att_path = args.attestation or args.receipt.parent / f"{kid.hex()}.attestation.cbor"
    doc_raw = _read(att_path, "attestation document")
    if hashlib.sha256(doc_raw).digest() != kid:
        raise ReceiptError(f"R2 attestation: {att_path} is not the document this receipt refers to")
    doc = parse_unverified(doc_raw)
    if not args.policy and not args.mock and args.root is None:
        raise ConfigError(
            "verify needs --policy FILE (allowed measurements), or --mock for a mock receipt"
        )
    policy, client_policy = _offline_policy(args, doc)
    # The document is verified at its own timestamp: its chain was valid then;
    # the receipt's time must fall inside the session's lifetime (R10).
    verified = verify_attestation(doc_raw, policy, now=doc.timestamp)
    expect = ReceiptExpectations(
        request_hash=hashlib.sha256(_read(args.request, "request")).digest()
        if args.request
        else None,
        response_hash=hashlib.sha256(_read(args.response, "response")).digest()
        if args.response
        else None,
    )
    vr: VerifiedReceipt = verify_receipt(raw, verified, expect=expect)
    binding = EnclaveBinding.from_user_data(verified.document.user_data)
    r = vr.receipt
    if client_policy is not None:
        # The same policy checks a live session runs: P1 for the receipt's model, P2.
        client_policy.check_binding(binding)
        client_policy.check_model(binding, r.model_id)
    if args.json:
        _out(
            args,
            json.dumps(
                {
                    "verified": True,
                    "receipt": r.to_json(),
                    "attestation": _doc_json(verified, root=verified.root),
                    "checked_request": bool(args.request),
                    "checked_response": bool(args.response),
                },
                indent=2,
            ),
        )
        return 0
    _out(args, f"receipt {r.receipt_id.hex()} VERIFIED")
    _out(
        args,
        f"  mode          {r.mode}{'  (MOCK: not a real enclave)' if r.mode == 'mock' else ''}",
    )
    _out(args, f"  model         {r.model_id} manifest {r.model_digest.hex()}")
    _out(args, f"  key release   evidence {r.key_release.hex()}")
    _out(args, f"  time          {_iso(r.time_ms)} ({r.duration_us} µs)")
    _out(args, f"  session       {r.session_id.hex()} seq {r.seq}")
    _out(
        args,
        f"  attestation   {att_path} (module {verified.document.module_id}, {_iso(verified.document.timestamp_ms)})",
    )
    _out(args, f"  receipt key   sha256 {_fp(binding.receipt_key)}")
    _out(
        args,
        f"  request hash  {r.request_hash.hex()}{'  (matches --request)' if args.request else ''}",
    )
    _out(
        args,
        f"  response hash {r.response_hash.hex()}{'  (matches --response)' if args.response else ''}",
    )
    for i in sorted(r.pcrs):
        _out(args, f"  PCR{i:<2}         {r.pcrs[i].hex()}")
    return 0


# ---------------------------------------------------------------- attestation


def cmd_attestation(args: argparse.Namespace) -> int:
    raw = _read(args.file, "attestation document")
    home = args.home or default_home()
    if sum(bool(x) for x in (args.root, args.mock)) > 1:
        raise ConfigError("give --root PEM or --mock, not both")
    if args.policy:
        if args.root or args.mock:
            raise ConfigError("--policy names its own root; drop --root/--mock")
        policy = _policy_file(args, home).attestation
    else:
        if args.mock:
            root, path = mock_root(home)
            warn_mock(path)
        elif args.root:
            root = TrustedRoot.from_pem_or_der(_read(args.root, "root"), name=str(args.root))
        else:
            root = aws_root()
        # Without a policy: signature, chain, time and format only; PCRs are shown.
        policy = AttestationPolicy(root, UnsafeAnyMeasurements())
    now = _parse_time(args.at) if args.at else datetime.now(UTC)
    verified = verify_attestation(raw, policy, now=now)
    d = _doc_json(verified, root=verified.root)
    d["verified_at"] = now.isoformat()
    d["pcr_policy"] = "checked" if args.policy else "not checked (no --policy)"
    if args.json:
        _out(args, json.dumps({"verified": True, **d}, indent=2))
        return 0
    _out(args, f"attestation document VERIFIED at {now.isoformat()}")
    _print_doc(args, d)
    _out(args, f"  PCR policy    {d['pcr_policy']}")
    return 0


# ---------------------------------------------------------------- model


def _aws_client(service: str, endpoint: str | None, region: str | None) -> Any:
    import boto3

    return boto3.client(service, region_name=region or os.environ.get("AWS_REGION") or "us-east-1", endpoint_url=endpoint)


def cmd_model_keygen(args: argparse.Namespace) -> int:
    from ephemeralml.common._bundle import owner_key_id

    from ._package import generate_owner_key

    pub = generate_owner_key(args.out)
    _out(args, f"owner key written to {args.out} (keep it secret)")
    _out(args, f"  public key  {pub.hex()}")
    _out(args, f"  key id      {owner_key_id(pub).hex()}")
    return 0


def cmd_model_package(args: argparse.Namespace) -> int:
    from ._package import default_sources, dir_sources, load_owner_key, package_model

    if args.model_dir:
        if not args.model_id:
            raise ConfigError("--model-dir needs --model-id")
        model_id, sources = args.model_id, dir_sources(args.model_dir)
    else:
        model_id, sources = default_sources()
        model_id = args.model_id or model_id
    kms = _aws_client("kms", args.kms_endpoint, args.region)
    m = package_model(
        sources,
        model_id=model_id,
        version=args.version,
        kms=kms,
        kms_key_id=args.kms_key_id,
        owner_key=load_owner_key(args.owner_key),
        out_dir=args.out,
        chunk_size=args.chunk_size,
        release=args.release,
    )
    if args.json:
        _out(args, json.dumps({"model_id": m.model_id, "version": m.version, "release": m.release, "manifest_digest": m.digest.hex(), "kms_key_id": m.kms_key_id, "plaintext_size": m.plaintext_size, "ciphertext_size": m.ciphertext_size, "out": str(args.out)}))
        return 0
    _out(args, f"packaged {m.model_id} {m.version} release {m.release}: {m.plaintext_size} bytes in {m.chunk_count} chunk(s) -> {args.out}")
    _out(args, f"  manifest digest  {m.digest.hex()}")
    _out(args, f"  KMS key          {m.kms_key_id}")
    return 0


def cmd_model_upload(args: argparse.Namespace) -> int:
    from ._upload import upload_local, upload_s3

    if bool(args.to) == bool(args.s3):
        raise ConfigError("give exactly one of --to DIR or --s3 s3://bucket/prefix")
    if args.to:
        dest = upload_local(args.bundle, args.to, args.model_id)
        _out(args, f"uploaded {args.model_id} to {dest}")
    else:
        keys = upload_s3(args.bundle, args.s3, args.model_id, s3=_aws_client("s3", args.s3_endpoint, args.region))
        _out(args, f"uploaded {args.model_id} to {keys[-1].rsplit('/', 1)[0]}/")
    return 0


# ---------------------------------------------------------------- policy


def cmd_policy_keygen(args: argparse.Namespace) -> int:
    pub = generate_signer_key(args.out)
    _out(args, f"policy signing key written to {args.out} (keep it secret)")
    _out(args, f"  public key  {pub.hex()}")
    _out(args, f"  key id      {policy_signer_kid(pub).hex()}")
    _out(args, f"clients trust it with --policy-signer {pub.hex()}")
    _out(args, f"or that key as a line of $EPHEMERALML_HOME/{POLICY_SIGNERS_FILE}")
    return 0


def cmd_policy_sign(args: argparse.Namespace) -> int:
    payload = _read(args.policy_json, "policy")
    key = load_signer_key(args.key)
    signed, doc = sign_policy(payload, key, where=str(args.policy_json))
    write_atomic(args.out, signed)
    kid = policy_signer_kid(key.public_key().public_bytes_raw())
    _out(args, f"signed policy version {doc.version} -> {args.out} (signer {kid.hex()})")
    return 0


def cmd_policy_show(args: argparse.Namespace) -> int:
    home = args.home or default_home()
    # Every check a client runs (P3, P4), without recording the version: showing a
    # policy is not adopting it.
    policy = ClientPolicy.from_file(
        args.file, home=home, trusted_signers=_signers(args, home), record=False
    )
    d = policy.to_json()
    if args.json:
        _out(args, json.dumps(d, indent=2))
        return 0
    if policy.signer:
        _out(args, f"policy {args.file} VERIFIED: signed by {policy.signer.hex()}")
    else:
        _out(args, f"policy {args.file} is valid: UNSIGNED (no policy signer configured)")
    r = d["root"]
    _out(args, f"  version       {d['version']}")
    _out(args, f"  root          {r['name']} sha256 {r['sha256']}{'  (MOCK)' if r['mock'] else ''}")
    _out(args, f"  max age       {d['max_age_s']} s")
    for i, s in enumerate(d["measurements"]):
        for pcr, value in s.items():
            _out(args, f"  set {i:<2} {pcr:<5} {value}")
    if d["allow_debug"]:
        _out(args, "  DEBUG MODE    allowed: a debug-mode enclave proves nothing about its code")
    models = d["models"]
    if models is None:
        _out(args, "  models        any attested model")
    for k, digests in (models or {}).items():
        for dg in digests:
            _out(args, f"  model         {k} manifest {dg}")
    for key in d["owner_keys"] or ():
        _out(args, f"  owner key     {key}")
    _out(args, f"  min enclave policy version {d['min_enclave_policy_version']}")
    return 0


# ---------------------------------------------------------------- main


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
    e.add_argument("texts", nargs="+", metavar="TEXT")
    e.add_argument("--model", default=DEFAULT_MODEL)
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
    mp.add_argument("--owner-key", type=Path, required=True, help="model owner's Ed25519 key (PEM)")
    mp.add_argument("--kms-key-id", required=True, help="KMS key id or ARN")
    mp.add_argument("--kms-endpoint", default=os.environ.get("EPHEMERAL_KMS_ENDPOINT"), help="KMS endpoint URL (mock: the local KMS server)")
    mp.add_argument("--region", help="AWS region (default $AWS_REGION or us-east-1)")
    mp.add_argument("--chunk-size", type=int, default=1024 * 1024, help="bytes per encrypted chunk")
    mp.add_argument("--out", type=Path, required=True, help="folder for manifest.cose, model.key, model.enc")
    mp.add_argument("--json", action="store_true")
    mp.set_defaults(fn=cmd_model_package)
    mu = msub.add_parser("upload", help="put a bundle into a local store or S3")
    mu.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    mu.add_argument("--model-id", required=True)
    mu.add_argument("--to", type=Path, metavar="DIR", help="local model store")
    mu.add_argument("--s3", metavar="URL", help="s3://bucket/prefix")
    mu.add_argument("--s3-endpoint", default=os.environ.get("EPHEMERAL_S3_ENDPOINT"), help="S3 endpoint URL")
    mu.add_argument("--region")
    mu.set_defaults(fn=cmd_model_upload)

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
