"""``ephemeral audit`` (re-verify the audit log offline), ``ephemeral audit export``
(write it as a bundle), and the bundle half of ``ephemeral verify``."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from ephemeralml.common._errors import ConfigError, VerificationError
from ephemeralml.runtime._home import default_home, read_bounded, write_atomic
from ephemeralml.runtime._runner import error_line

from ._audit import AuditLog
from ._audit_chain import MAX_BUNDLE_BYTES, decode_bundle, looks_like_bundle
from ._audit_check import AuditReport, check_bundle, check_log, export_log
from ._cli_common import PROG, echo, trust_from_args
from ._policy import ClientPolicy

__all__ = ["cmd_audit", "cmd_audit_export", "is_bundle", "verify_bundle"]

#: The trust flags, as ``ephemeral verify`` asks for them.
#: What a refusal entry is worth, said wherever refusals are counted (protocol.md §12.1).
_REFUSALS = "recorded in-session, not verifiable offline"

_NEEDS_TRUST = (
    "{what} needs --policy FILE (allowed measurements), --mock for a mock {thing}, "
    "or --root PEM (PCRs then not checked)"
)


def _log(args: argparse.Namespace) -> AuditLog:
    if args.db is not None:
        return AuditLog(args.db)
    return AuditLog.in_home(args.home or default_home())


def _pcr_policy(args: argparse.Namespace, policy: ClientPolicy) -> str:
    if not policy.checks_measurements:
        return "not checked (no --policy)"
    return "checked (the measurements the mock enclave published)" if args.mock else "checked"


def _head(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        head = bytes.fromhex(text)
    except ValueError:
        head = b""
    if len(head) != 32:
        raise ConfigError(f"--head {text!r} is not an entry hash (64 hex digits)")
    return head


# ---------------------------------------------------------------- audit


def cmd_audit(args: argparse.Namespace) -> int:
    if not args.policy and not args.mock and args.root is None:
        raise ConfigError(_NEEDS_TRUST.format(what="audit", thing="log"))
    head = _head(args.head)
    log = _log(args)
    if not log.exists():  # the first thing to say, before the policy is read
        raise ConfigError(f"no audit log at {log.path} (nothing recorded yet)")
    policy = trust_from_args(args, offline=True)  # the policy of the receipts' time
    report = check_log(log, policy, head=head)
    return _report(args, "audit log", str(log.path), report, policy)


def cmd_audit_export(args: argparse.Namespace) -> int:
    log = _log(args)
    out: Path = args.out
    exported = export_log(log)
    try:
        write_atomic(out, exported.data, mode=0o600)
    except OSError as e:
        raise ConfigError(f"cannot write the bundle {out}: {e.strerror}") from e
    if args.json:
        echo(args, json.dumps({
            "bundle": str(out), "bytes": len(exported.data), "entries": exported.entries,
            "refused": exported.refused, "attestations": exported.attestations,
            "head": exported.head.hex(),
        }))  # fmt: skip
        return 0
    n = exported.entries
    echo(args, f"wrote {out}: {n} entr{'y' if n == 1 else 'ies'}, {exported.attestations} "
         f"attestation document(s), {len(exported.data)} bytes")  # fmt: skip
    echo(args, f"  refusals      {exported.refused} ({_REFUSALS})")
    echo(args, f"  head          {exported.head.hex()}")
    echo(args, f"  check it with ephemeral verify {out} (and the trust flags)")
    return 0


# ---------------------------------------------------------------- verify BUNDLE


def is_bundle(path: Path) -> bool:
    """Whether ``path`` holds an audit bundle (its first bytes); False if unreadable
    (the receipt path then says why)."""
    try:
        with open(path, "rb") as f:
            return looks_like_bundle(f.read(4))
    except OSError:
        return False


def verify_bundle(args: argparse.Namespace) -> int:
    """``ephemeral verify BUNDLE``: every entry, as ``ephemeral audit`` checks a log.
    Records nothing (the bundle is someone's log, not receipts of ours)."""
    if args.attestation or args.request or args.response:
        raise ConfigError(
            "--attestation, --request and --response are for one receipt, not an audit bundle"
        )
    bundle = decode_bundle(read_bounded(args.receipt, MAX_BUNDLE_BYTES, "audit bundle"))
    policy = trust_from_args(args, offline=True)
    report = check_bundle(bundle, policy)
    return _report(args, "audit bundle", str(args.receipt), report, policy)


# ---------------------------------------------------------------- the report


def _report(
    args: argparse.Namespace, what: str, where: str, report: AuditReport, policy: ClientPolicy
) -> int:
    findings = report.findings
    failure = (
        VerificationError(
            f"{len(findings)} finding(s) in the {what} {where} (one per line above)"
            if not args.json
            else f"{len(findings)} finding(s) in the {what} {where}"
        )
        if findings
        else None
    )
    if args.json:
        doc: dict[str, Any] = {
            "verified": not findings,
            what.split()[1]: where,
            "entries": report.entries,
            "receipts_verified": report.verified,
            "legacy": report.legacy,
            "refused": report.refused,
            "attestations": report.attestations,
            "sessions": report.sessions,
            "head": None
            if report.head is None
            else {"entry": report.head[0], "sha256": report.head[1].hex()},
            "pcr_policy": _pcr_policy(args, policy),
            "findings": [f.to_json() for f in findings],
        }
        if failure is not None:
            doc["error"] = {"code": failure.code, "message": failure.message}
        echo(args, json.dumps(doc, indent=2))
    else:
        title = "VERIFIED" if not findings else f"{len(findings)} FINDING(S)"
        echo(args, f"{what} {where} {title}")
        echo(args, f"  entries       {report.entries} ({report.verified} receipt(s) re-verified, "
             f"{report.legacy} legacy: chain-checked only)")  # fmt: skip
        echo(args, f"  refusals      {report.refused} ({_REFUSALS})")
        echo(args, f"  attestations  {report.attestations} document(s)")
        echo(args, f"  sessions      {report.sessions}")
        head = "none (empty)" if report.head is None else (
            f"entry {report.head[0]} sha256 {report.head[1].hex()}"
        )  # fmt: skip
        echo(args, f"  head          {head}")
        echo(args, f"  PCR policy    {_pcr_policy(args, policy)}")
        for f in findings:
            echo(args, f.message)
    if failure is None:
        return 0
    # The one-line error, here (the runner would add a second JSON document).
    if args.verbose:
        traceback.print_exception(failure, file=sys.stderr)
    print(error_line(PROG, failure), file=sys.stderr, flush=True)
    return 1
