"""What the ``ephemeral`` subcommand groups share: the program's name, writing a
line of a result, the trust choice from the flags, and an attestation document
as JSON and as lines (``attest``, ``verify``, ``attestation``)."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ephemeralml.common._attestation import AttestationDocument, TrustedRoot, VerifiedAttestation
from ephemeralml.runtime._home import default_home

from ._policy import ClientPolicy, trust_policy

__all__ = [
    "PROG",
    "doc_json",
    "echo",
    "iso_time",
    "print_doc",
    "sha256_hex",
    "trust_from_args",
]

PROG = "ephemeral"


def echo(args: argparse.Namespace, text: str = "") -> None:
    """One line of a result, on the stream the runner gave the command."""
    print(text, file=args.stdout)


def trust_from_args(args: argparse.Namespace, *, offline: bool) -> ClientPolicy:
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


def iso_time(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def sha256_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def doc_json(
    v: VerifiedAttestation | AttestationDocument, *, root: TrustedRoot | None
) -> dict[str, Any]:
    doc = v.document if isinstance(v, VerifiedAttestation) else v
    out: dict[str, Any] = {
        "module_id": doc.module_id,
        "timestamp": iso_time(doc.timestamp_ms),
        "digest": doc.digest,
        "sha256": doc.sha256_hex,
        "pcrs": {str(i): p.hex() for i, p in sorted(doc.pcrs.items())},
        "debug_mode": doc.is_debug,
        "public_key_sha256": sha256_hex(doc.public_key) if doc.public_key else None,
        "user_data": doc.user_data.hex() if doc.user_data else None,
        "nonce": doc.nonce.hex() if doc.nonce else None,
        "leaf_certificate_sha256": sha256_hex(doc.certificate),
    }
    if root is not None:
        out["root"] = {"name": root.name, "sha256": root.fingerprint, "mock": root.is_mock}
    return out


def print_doc(
    args: argparse.Namespace, d: dict[str, Any], *, pcrs: Sequence[int] | None = None
) -> None:
    echo(args, f"  module id     {d['module_id']}")
    echo(args, f"  time          {d['timestamp']}")
    echo(args, f"  document      sha256 {d['sha256']}")
    if "root" in d:
        r = d["root"]
        echo(
            args,
            f"  root          {r['name']} sha256 {r['sha256']}{'  (MOCK)' if r['mock'] else ''}",
        )
    if d["debug_mode"]:
        echo(
            args,
            "  DEBUG MODE    all-zero PCRs: a debug-mode enclave proves nothing about its code",
        )
    for i, p in d["pcrs"].items():
        if pcrs is None or int(i) in pcrs:
            echo(args, f"  PCR{i:<2}         {p}")
    if d["public_key_sha256"]:
        echo(args, f"  public key    sha256 {d['public_key_sha256']}")
