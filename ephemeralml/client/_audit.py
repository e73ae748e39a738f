"""The audit log: one JSON line per verified receipt, ids and hashes only.

The library writes it, for every receipt it verifies: each answer of a
``connect()`` session and each stored receipt checked by
:func:`~ephemeralml.client.verify_stored_receipt` (``ephemeral verify``). By default
it is ``$EPHEMERALML_HOME/audit.jsonl`` (``~/.ephemeralml/audit.jsonl``); a caller
chooses another file with ``audit=Path(...)`` or turns it off with ``audit=False``.

A line, in this order::

    {"verified_at": "2026-01-02T03:04:05.678+00:00", "receipt_id": HEX, "session_id": HEX,
     "seq": N, "model_id": TEXT, "attestation_hash": HEX, "request_hash": HEX,
     "response_hash": HEX, "mode": "nitro" | "mock"}

Never a text, a vector or any other payload byte. The file is created 0600 (the
request and response hashes let anyone holding a guess of a text confirm it) and
each line is one ``write`` to a file opened with ``O_APPEND``, so lines from
concurrent clients never interleave.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from ephemeralml.common._errors import ConfigError
from ephemeralml.common._receipt import VerifiedReceipt
from ephemeralml.runtime._home import default_home

__all__ = ["AUDIT_FILE", "AuditChoice", "AuditLog", "audit_line", "audit_log"]

#: Relative to the home: the default audit log.
AUDIT_FILE = Path("audit.jsonl")

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class AuditLog:
    """Where verified receipts are recorded: a file, or nowhere (:meth:`off`)."""

    __slots__ = ("path",)

    def __init__(self, path: Path | str | None) -> None:
        #: The JSON-lines file appended to; None: nothing is recorded.
        self.path = Path(path) if path is not None else None

    @classmethod
    def in_home(cls, home: Path | None = None) -> AuditLog:
        """``home/audit.jsonl`` (default home: ``$EPHEMERALML_HOME`` or ``~/.ephemeralml``)."""
        return cls((home or default_home()) / AUDIT_FILE)

    @classmethod
    def off(cls) -> AuditLog:
        """Record nothing: the caller keeps its own account of the receipts."""
        return cls(None)

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path) if self.path else None!r})"

    def check(self) -> None:
        """Make sure the log can be appended to, now: a session checks this before it
        sends anything, so no inference is lost to a log that cannot take its line."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, _FLAGS, 0o600))
        except OSError as e:
            raise ConfigError(f"cannot append to the audit log {self.path}: {e.strerror}") from e

    def record(self, verified: VerifiedReceipt, *, at: datetime | None = None) -> None:
        """Append the line for one verified receipt (nothing if the log is off)."""
        if self.path is None:
            return
        data = (audit_line(verified, at=at) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, _FLAGS, 0o600)
            try:
                written = os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            raise ConfigError(f"cannot append to the audit log {self.path}: {e.strerror}") from e
        if written != len(data):  # a full disk; never a line half written unnoticed
            raise ConfigError(
                f"cannot append to the audit log {self.path}: "
                f"wrote {written} of {len(data)} bytes"
            )


def audit_line(verified: VerifiedReceipt, *, at: datetime | None = None) -> str:
    """The audit line of one verified receipt (module docstring), without a newline."""
    r = verified.receipt
    return json.dumps(
        {
            "verified_at": (at or datetime.now(UTC)).isoformat(timespec="milliseconds"),
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


#: What ``audit=`` takes: True (the default log), False (off), a path, or a log.
AuditChoice = AuditLog | Path | str | bool


def audit_log(choice: AuditChoice, *, home: Path | None = None) -> AuditLog:
    """The :class:`AuditLog` that ``audit=choice`` means."""
    if choice is True:
        return AuditLog.in_home(home)
    if choice is False:
        return AuditLog.off()
    if isinstance(choice, AuditLog):
        return choice
    if isinstance(choice, str | Path):
        return AuditLog(choice)
    raise ConfigError(f"audit must be True, False, a path or an AuditLog, got {choice!r}")
