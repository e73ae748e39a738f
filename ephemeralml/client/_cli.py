"""``ephemeral``: the client CLI. Thin: parsing, one function per subcommand, printing.

ephemeral attest [--mock]                 verify the enclave, print what it proves
ephemeral embed [--mock] TEXT...          attested, encrypted embeddings + receipts
ephemeral verify RECEIPT [--mock]         offline receipt verification
ephemeral attestation FILE [--at TIME]    offline attestation document check
ephemeral policy keygen|sign|show         make a policy-signing key, sign, inspect
ephemeral policy from-measurements        a policy.json from published measurements
ephemeral model keygen|package|upload     package and upload encrypted models (owners)
ephemeral model show BUNDLE               verify a bundle's manifest, print its release
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ephemeralml.common._attestation import (
    AttestationDocument,
    TrustedRoot,
    VerifiedAttestation,
    verify_attestation,
)
from ephemeralml.common._config import positive_count, positive_seconds
from ephemeralml.common._errors import ConfigError, Error
from ephemeralml.runtime._home import default_home, write_atomic
from ephemeralml.runtime._ports import ENV_BASE_PORT, Ports
from ephemeralml.runtime._runner import Parser, error_line, run_main

from ._api import (
    DEFAULT_ADDRESS,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT_S,
    Embeddings,
    EmbedIncomplete,
    connect,
)
from ._audit import AuditLog
from ._inputs import (
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_TEXTS,
    InputLimits,
    read_texts,
    texts_from_args,
)
from ._offline import read_stored, verify_stored_receipt
from ._policy import (
    POLICY_SIGNERS_FILE,
    ClientPolicy,
    generate_signer_key,
    load_policy_signers,
    load_signer_key,
    parse_signer_keys,
    policy_signer_kid,
    sign_policy,
    trust_policy,
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


def _trust(args: argparse.Namespace, *, offline: bool) -> ClientPolicy:
    """The trust choice of every command (--mock, --policy FILE, --root PEM), made by
    the library's one function, so the CLI and the library apply the same rules."""
    return trust_policy(
        mock=args.mock,
        policy=args.policy,
        root=getattr(args, "root", None),
        offline=offline,
        home=args.home or default_home(),
        policy_signers=args.policy_signer or (),
    )


def _timeout(args: argparse.Namespace) -> float:
    # Checked before the policy is read (P4 records a version) and before any request.
    return positive_seconds("--timeout", args.timeout)


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
    timeout = _timeout(args)
    policy = _trust(args, offline=False)
    with connect(
        args.host,
        policy=policy,
        timeout=timeout,
        session_mode=args.session_mode,
        audit=False,  # no receipts in an attest
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


def _receipt_dir(path: Path) -> Path:
    """``--receipt-out``, made and checked before any request is sent: an inference is
    never lost to a path that cannot take its receipt."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--receipt-out {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--receipt-out {path}: cannot create it: {e.strerror}") from e
    # A real write, not os.access: that says yes to root for any folder, and knows
    # nothing of read-only mounts.
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".ephemeral-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"--receipt-out {path}: not writable: {e.strerror}") from e
    return path


def _texts(args: argparse.Namespace) -> list[str]:
    """What to embed: TEXT arguments, or one a line from ``-`` / ``--file PATH``
    (``--jsonl``: one JSON text a line), within ``--max-texts`` and ``--max-bytes``."""
    limits = InputLimits(
        max_texts=positive_count("--max-texts", args.max_texts),
        max_bytes=positive_count("--max-bytes", args.max_bytes),
    )
    source: str | None = args.file
    texts: list[str] = args.texts
    if "-" in texts:
        if len(texts) > 1 or source is not None:
            raise ConfigError("- reads the texts from stdin: give no other TEXT and no --file")
        source, texts = "-", []
    if source is not None:
        if texts:
            raise ConfigError("give texts as arguments or with --file PATH, not both")
        if source == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            if stdin is None:
                raise ConfigError("no stdin to read the texts from")
            return read_texts(stdin, "stdin", jsonl=args.jsonl, limits=limits)
        try:
            with open(source, "rb") as f:
                return read_texts(f, source, jsonl=args.jsonl, limits=limits)
        except FileNotFoundError as e:
            raise ConfigError(f"--file {source} does not exist") from e
        except OSError as e:
            raise ConfigError(f"cannot read --file {source}: {e.strerror}") from e
    if args.jsonl:
        raise ConfigError("--jsonl reads - (stdin) or --file PATH")
    if not texts:
        raise ConfigError("nothing to embed: give TEXT arguments, or - / --file PATH (one a line)")
    return texts_from_args(texts, limits)


def _failed(args: argparse.Namespace, e: Error) -> int:
    """The one-line error of a run that also printed what it did (the runner would
    print it too, but under --json it would add a second JSON document)."""
    if args.verbose:
        traceback.print_exception(e, file=sys.stderr)
    print(error_line(PROG, e), file=sys.stderr, flush=True)
    return 2 if isinstance(e, ConfigError) else 1


def cmd_embed(args: argparse.Namespace) -> int:
    timeout = _timeout(args)
    if args.receipt_out:
        _receipt_dir(args.receipt_out)
    texts = _texts(args)
    home = args.home or default_home()
    policy = _trust(args, offline=False)
    failure: EmbedIncomplete | None = None
    with connect(
        args.host,
        policy=policy,
        timeout=timeout,
        session_mode=args.session_mode,
        audit=AuditLog.in_home(home),  # every verified receipt, by the library
    ) as s:
        try:
            results = s.embed(texts, model=args.model, truncate=args.truncate)
        except EmbedIncomplete as incomplete:
            # Keep what was done: its receipts verified and audited; print it, then fail.
            results, failure = list(incomplete.completed), incomplete
    receipts: list[dict[str, Any]] = []
    for done in results:
        rj = done.receipt.receipt.to_json()
        if args.receipt_out:
            rj["files"] = _store(args.receipt_out, done, payloads=args.save_payloads)
        receipts.append(rj)
    vectors = [row for done in results for row in done.vectors.tolist()]
    truncated = [i for done in results for i in done.truncated]
    if args.json:
        doc: dict[str, Any] = {
            "model": results[0].model,
            "dim": results[0].dim,
            "embeddings": vectors,
            "receipts": receipts,
        }
        if args.truncate:
            doc["truncated"] = truncated
        if failure is not None:
            doc["error"] = {"code": failure.code, "message": failure.message}
        _out(args, json.dumps(doc))
        return 0 if failure is None else _failed(args, failure)
    of = "" if failure is None else f" of {len(texts)}"
    _out(args, f"{results[0].model}: {len(vectors)}{of} embedding(s) of dimension {results[0].dim}")
    for text, vec in zip(texts, vectors, strict=False):
        head = ", ".join(f"{x:+.4f}" for x in vec[:6])
        _out(args, f"  {text[:40]!r:<44} [{head}, … {len(vec) - 6} more]")
    if truncated:
        _out(
            args,
            f"truncated to the model's token limit (recorded in the receipts): "
            f"text(s) {', '.join(map(str, truncated))}",
        )
    for rj in receipts:
        where = f" -> {rj['files']['receipt']}" if "files" in rj else ""
        _out(
            args,
            f"receipt {rj['receipt_id']} VERIFIED (seq {rj['seq']}, session {rj['session_id'][:16]}…){where}",
        )
    return 0 if failure is None else _failed(args, failure)


# ---------------------------------------------------------------- verify


def _pcr_policy(args: argparse.Namespace, policy: ClientPolicy) -> str:
    if not policy.checks_measurements:
        return "not checked (no --policy)"
    return "checked (the measurements the mock enclave published)" if args.mock else "checked"


def cmd_verify(args: argparse.Namespace) -> int:
    if not args.policy and not args.mock and args.root is None:
        raise ConfigError(
            "verify needs --policy FILE (allowed measurements), --mock for a mock receipt, "
            "or --root PEM (PCRs then not checked)"
        )
    home = args.home or default_home()
    read_stored(args.receipt, "receipt")  # a missing receipt is the first thing to say
    # The policy of the receipt's time, for an audit: P3 and its root, never P4.
    policy = _trust(args, offline=True)
    stored = verify_stored_receipt(
        args.receipt,
        policy=policy,
        attestation=args.attestation,
        request=args.request,
        response=args.response,
        audit=AuditLog.in_home(home),
    )
    verified, att_path, binding = stored.verified.attestation, stored.attestation_path, stored.binding
    r = stored.verified.receipt
    if args.json:
        _out(
            args,
            json.dumps(
                {
                    "verified": True,
                    "receipt": r.to_json(),
                    "attestation": _doc_json(verified, root=verified.root),
                    "checked_request": stored.checked_request,
                    "checked_response": stored.checked_response,
                    "pcr_policy": _pcr_policy(args, policy),
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
    _out(args, f"  PCR policy    {_pcr_policy(args, policy)}")
    return 0


# ---------------------------------------------------------------- attestation


def cmd_attestation(args: argparse.Namespace) -> int:
    raw = read_stored(args.file, "attestation document")
    # Without --policy: signature, chain, time and format only; PCRs are shown.
    policy = _trust(args, offline=True)
    now = _parse_time(args.at) if args.at else datetime.now(UTC)
    verified = verify_attestation(raw, policy.attestation, now=now)
    d = _doc_json(verified, root=verified.root)
    d["verified_at"] = now.isoformat()
    d["pcr_policy"] = _pcr_policy(args, policy)
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
    from ephemeralml.common._errors import KeyReleaseError, TransportError

    from ._package import MockKms, default_sources, dir_sources, load_owner_key, package_model

    mock: MockKms | None = None
    if args.mock:
        # The local KMS of the mock deployment, as its model owner: no AWS credentials.
        home = args.home or default_home()
        mock = MockKms.find(home, Ports.choose(args.base_port, os.environ), url=args.kms_endpoint)
        kms_key_id = args.kms_key_id or mock.kms_key_id()
        owner_path = args.owner_key or mock.owner_key_path()
    elif args.owner_key is None or args.kms_key_id is None:
        raise ConfigError("model package needs --owner-key and --kms-key-id (or --mock, for the local mock deployment's)")
    elif args.base_port is not None:
        raise ConfigError("--base-port needs --mock (it finds the mock deployment's local KMS)")
    else:
        kms_key_id, owner_path = args.kms_key_id, args.owner_key
    owner_key = load_owner_key(owner_path)
    if mock is not None and not mock.trusts_owner(owner_key.public_key().public_bytes_raw()):
        print(f"{PROG}: warning: {owner_path} is not an owner key the mock enclave trusts "
              "($EPHEMERALML_HOME/published/model-owners.txt): it will refuse this bundle (M2)", file=sys.stderr, flush=True)  # fmt: skip
    if args.model_dir:
        if not args.model_id:
            raise ConfigError("--model-dir needs --model-id")
        model_id, sources = args.model_id, dir_sources(args.model_dir)
    else:
        model_id, sources = default_sources()
        model_id = args.model_id or model_id
    region = args.region or os.environ.get("AWS_REGION") or "us-east-1"
    kms = mock.client(region) if mock else _aws_client("kms", args.kms_endpoint, args.region)
    try:
        m = package_model(
            sources,
            model_id=model_id,
            version=args.version,
            kms=kms,
            kms_key_id=kms_key_id,
            owner_key=owner_key,
            out_dir=args.out,
            chunk_size=args.chunk_size,
            release=args.release,
        )
    except (KeyReleaseError, TransportError) as e:
        if mock is None:
            raise
        raise mock.explain(e, kms_key_id) from e
    if args.json:
        _out(args, json.dumps({"model_id": m.model_id, "version": m.version, "release": m.release, "manifest_digest": m.digest.hex(), "kms_key_id": m.kms_key_id, "plaintext_size": m.plaintext_size, "ciphertext_size": m.ciphertext_size, "out": str(args.out), "mock": mock is not None}))
        return 0
    _out(args, f"packaged {m.model_id} {m.version} release {m.release}: {m.plaintext_size} bytes in {m.chunk_count} chunk(s) -> {args.out}")
    _out(args, f"  manifest digest  {m.digest.hex()}")
    _out(args, f"  KMS key          {m.kms_key_id}{f' (MOCK: the local KMS at {mock.url})' if mock else ''}")
    return 0


def cmd_model_upload(args: argparse.Namespace) -> int:
    from ephemeralml.runtime._home import MOCK_STORE

    from ._upload import upload_local, upload_s3

    if sum(bool(x) for x in (args.to, args.s3, args.mock)) != 1:
        raise ConfigError("give exactly one of --to DIR, --s3 s3://bucket/prefix or --mock (the mock host's store)")
    if args.to or args.mock:
        store = args.to or (args.home or default_home()) / MOCK_STORE
        dest = upload_local(args.bundle, store, args.model_id)
        model_id, where, keys = dest.name, str(dest), None
    else:
        keys = upload_s3(args.bundle, args.s3, args.model_id, s3=_aws_client("s3", args.s3_endpoint, args.region))
        where = keys[-1].rsplit("/", 1)[0] + "/"
        model_id = where.rstrip("/").rsplit("/", 1)[1]
    if args.json:
        _out(args, json.dumps({"model_id": model_id, "to": where, **({"keys": keys} if keys else {})}))
    else:
        _out(args, f"uploaded {model_id} to {where}")
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    from ._model_show import (
        owner_keys_for_show,
        parse_digest_prefix,
        show_bundles,
        show_json,
        show_lines,
    )

    home = args.home or default_home()
    digest = parse_digest_prefix(args.digest) if args.digest is not None else None
    keys, where = owner_keys_for_show(args.owner_key or (), home)
    shown = show_bundles(args.bundles, keys, where, model_id=args.model_id, digest=digest)
    if args.json:
        for s in shown:  # one JSON object a line, one line a manifest
            _out(args, json.dumps(show_json(s)))
        return 0
    for i, s in enumerate(shown):
        if i:
            _out(args)
        for line in show_lines(s):
            _out(args, line)
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


def cmd_policy_from_measurements(args: argparse.Namespace) -> int:
    from ._policy_make import (
        MOCK_POLICY_WARNING,
        make_policy,
        parse_model_pins,
        read_measurements,
        summary_lines,
        write_policy,
    )

    home = args.home or default_home()
    out: Path | None = None if str(args.out) == "-" else args.out
    if out is not None and not args.force and (out.exists() or out.is_symlink()):
        raise ConfigError(f"{out} exists; give --force to replace it")
    sets = read_measurements(args.files, home)
    made = make_policy(sets, out=out, root_pem=args.root, models=parse_model_pins(args.model or ()), version=args.version)
    if made.mode == "mock":
        print(MOCK_POLICY_WARNING.format(files=", ".join(p.where for p in sets)), file=sys.stderr, flush=True)
    if out is None:
        _out(args, made.data.decode().rstrip("\n"))
        return 0
    write_policy(out, made.data, force=args.force)
    for line in summary_lines(made, str(out)):
        _out(args, line)
    _out(args, f"check it: ephemeral policy show {out}; sign it: ephemeral policy sign {out} --key KEY.pem --out policy.cose")
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
