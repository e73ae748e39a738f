"""``ephemeral verify`` and ``ephemeral attestation``: stored evidence (a receipt, an
audit bundle, an attestation document) checked offline, against the policy of its time."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from ephemeralml.common._attestation import verify_attestation
from ephemeralml.common._errors import ConfigError
from ephemeralml.runtime._home import default_home

from ._audit import AuditLog
from ._cli_audit import is_bundle, verify_bundle
from ._cli_common import doc_json, echo, iso_time, print_doc, sha256_hex, trust_from_args
from ._offline import read_stored, verify_stored_receipt
from ._policy import ClientPolicy

__all__ = ["cmd_attestation", "cmd_verify"]


def _parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ConfigError(
            f"--at {text!r} is not an ISO 8601 time (e.g. 2023-05-17T21:21:51.808Z)"
        ) from e
    return t if t.tzinfo else t.replace(tzinfo=UTC)


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
    if is_bundle(args.receipt):  # `ephemeral audit export`'s file: every receipt in it
        return verify_bundle(args)
    home = args.home or default_home()
    read_stored(args.receipt, "receipt")  # a missing receipt is the first thing to say
    # The policy of the receipt's time, for an audit: P3 and its root, never P4.
    policy = trust_from_args(args, offline=True)
    stored = verify_stored_receipt(
        args.receipt,
        policy=policy,
        attestation=args.attestation,
        request=args.request,
        response=args.response,
        audit=AuditLog.in_home(home),
    )
    verified, att_path, binding = (
        stored.verified.attestation,
        stored.attestation_path,
        stored.binding,
    )
    r = stored.verified.receipt
    if args.json:
        echo(
            args,
            json.dumps(
                {
                    "verified": True,
                    "receipt": r.to_json(),
                    "attestation": doc_json(verified, root=verified.root),
                    "checked_request": stored.checked_request,
                    "checked_response": stored.checked_response,
                    "pcr_policy": _pcr_policy(args, policy),
                },
                indent=2,
            ),
        )
        return 0
    echo(args, f"receipt {r.receipt_id.hex()} VERIFIED")
    echo(
        args,
        f"  mode          {r.mode}{'  (MOCK: not a real enclave)' if r.mode == 'mock' else ''}",
    )
    echo(args, f"  model         {r.model_id} manifest {r.model_digest.hex()}")
    echo(args, f"  key release   evidence {r.key_release.hex()}")
    echo(args, f"  time          {iso_time(r.time_ms)} ({r.duration_us} µs)")
    echo(args, f"  session       {r.session_id.hex()} seq {r.seq}")
    echo(
        args,
        f"  attestation   {att_path} (module {verified.document.module_id}, "
        f"{iso_time(verified.document.timestamp_ms)})",
    )
    echo(args, f"  receipt key   sha256 {sha256_hex(binding.receipt_key)}")
    echo(
        args,
        f"  request hash  {r.request_hash.hex()}{'  (matches --request)' if args.request else ''}",
    )
    echo(
        args,
        f"  response hash {r.response_hash.hex()}"
        f"{'  (matches --response)' if args.response else ''}",
    )
    for i in sorted(r.pcrs):
        echo(args, f"  PCR{i:<2}         {r.pcrs[i].hex()}")
    echo(args, f"  PCR policy    {_pcr_policy(args, policy)}")
    return 0


# ---------------------------------------------------------------- attestation


def cmd_attestation(args: argparse.Namespace) -> int:
    raw = read_stored(args.file, "attestation document")
    # Without --policy: signature, chain, time and format only; PCRs are shown.
    policy = trust_from_args(args, offline=True)
    now = _parse_time(args.at) if args.at else datetime.now(UTC)
    verified = verify_attestation(raw, policy.attestation, now=now)
    d = doc_json(verified, root=verified.root)
    d["verified_at"] = now.isoformat()
    d["pcr_policy"] = _pcr_policy(args, policy)
    if args.json:
        echo(args, json.dumps({"verified": True, **d}, indent=2))
        return 0
    echo(args, f"attestation document VERIFIED at {now.isoformat()}")
    print_doc(args, d)
    echo(args, f"  PCR policy    {d['pcr_policy']}")
    return 0
