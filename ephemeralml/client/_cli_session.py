"""``ephemeral attest`` and ``ephemeral embed``: the subcommands that open a session
with the enclave."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from ephemeralml.common._config import positive_count, positive_seconds
from ephemeralml.common._errors import ConfigError, Error
from ephemeralml.runtime._home import default_home, write_atomic
from ephemeralml.runtime._runner import error_line

from ._api import Embeddings, EmbedIncomplete, Generation, connect
from ._audit import AuditLog
from ._cli_common import PROG, doc_json, echo, print_doc, sha256_hex, trust_from_args
from ._inputs import InputLimits, read_texts, texts_from_args

__all__ = ["cmd_attest", "cmd_embed"]


def _timeout(args: argparse.Namespace) -> float:
    # Checked before the policy is read (P4 records a version) and before any request.
    return positive_seconds("--timeout", args.timeout)


# ---------------------------------------------------------------- attest


def cmd_attest(args: argparse.Namespace) -> int:
    timeout = _timeout(args)
    policy = trust_from_args(args, offline=False)
    with connect(
        args.host,
        policy=policy,
        timeout=timeout,
        session_mode=args.session_mode,
        audit=False,  # no receipts in an attest
    ) as s:
        v, b = s.attestation, s.binding
        d = doc_json(v, root=v.root)
        d["binding"] = {
            "session_id": b.session_id.hex(),
            "receipt_key_sha256": sha256_hex(b.receipt_key),
            "receipt_key": b.receipt_key.hex(),
            "models": {k: dg.hex() for k, dg in b.models.items()},
            "policy_version": b.policy_version,
            "mode": b.mode,
            "protocol_version": b.protocol_version,
        }
    if args.json:
        echo(args, json.dumps(d, indent=2))
        return 0
    echo(args, f"attestation VERIFIED ({b.mode} enclave via {args.host}, policy {policy.source})")
    print_doc(args, d, pcrs=(0, 1, 2, 3, 4, 8))
    echo(args, f"  receipt key   sha256 {d['binding']['receipt_key_sha256']}")
    echo(args, f"  session       {b.session_id.hex()}")
    for k, dg in b.models.items():
        echo(args, f"  model         {k} manifest {dg.hex()}")
    return 0


# ---------------------------------------------------------------- embed


def _store(out_dir: Path, e: Embeddings | Generation, *, payloads: bool) -> dict[str, str]:
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
    policy = trust_from_args(args, offline=False)
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
        echo(args, json.dumps(doc))
        return 0 if failure is None else _failed(args, failure)
    of = "" if failure is None else f" of {len(texts)}"
    echo(args, f"{results[0].model}: {len(vectors)}{of} embedding(s) of dimension {results[0].dim}")
    for text, vec in zip(texts, vectors, strict=False):
        head = ", ".join(f"{x:+.4f}" for x in vec[:6])
        echo(args, f"  {text[:40]!r:<44} [{head}, … {len(vec) - 6} more]")
    if truncated:
        echo(
            args,
            f"truncated to the model's token limit (recorded in the receipts): "
            f"text(s) {', '.join(map(str, truncated))}",
        )
    for rj in receipts:
        where = f" -> {rj['files']['receipt']}" if "files" in rj else ""
        echo(
            args,
            f"receipt {rj['receipt_id']} VERIFIED "
            f"(seq {rj['seq']}, session {rj['session_id'][:16]}…){where}",
        )
    return 0 if failure is None else _failed(args, failure)
