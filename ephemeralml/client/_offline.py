"""Offline verification of a stored receipt: what ``ephemeral verify`` runs.

A receipt stored by ``--receipt-out`` (``<id>.receipt.cbor``) names the attestation
document it needs by its SHA-256 (R2), stored beside it as
``<sha256>.attestation.cbor``. The document is verified under the policy *at its
own timestamp* (its chain was valid then; the receipt's time must fall inside the
session, R10), then the receipt (R1–R11, with the request and response hashes when
their files are given), then the policy's checks on the binding (P1 for the
receipt's model, P2), exactly as a live session runs them. P4 is not a per-receipt
check: build the policy with :meth:`ClientPolicy.for_offline` (or
``trust_policy(offline=True)``), which runs no P4 and records nothing.

Every receipt that verifies is recorded in the audit log (:mod:`._audit`), like
each answer of a live session.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ephemeralml.common._attestation import parse_unverified, verify_attestation
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._errors import ReceiptError
from ephemeralml.common._receipt import (
    ReceiptExpectations,
    VerifiedReceipt,
    receipt_attestation_hash,
    verify_receipt,
)
from ephemeralml.runtime._home import read_bounded

from ._audit import AuditChoice, audit_log
from ._policy import ClientPolicy

__all__ = ["MAX_STORED_FILE_BYTES", "StoredReceipt", "read_stored", "verify_stored_receipt"]

#: The largest receipt, document, request or response file read (a request of 64
#: texts of 16 KiB is the largest legitimate one).
MAX_STORED_FILE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class StoredReceipt:
    """A stored receipt that verified offline."""

    verified: VerifiedReceipt
    #: The attestation document file it was verified against.
    attestation_path: Path
    #: Whether the request / response file was given and matched its hash (R11).
    checked_request: bool
    checked_response: bool
    binding: EnclaveBinding = field(repr=False)


def read_stored(path: Path, what: str) -> bytes:
    """A stored file, at most :data:`MAX_STORED_FILE_BYTES`, or a one-line ConfigError."""
    return read_bounded(path, MAX_STORED_FILE_BYTES, what)


def verify_stored_receipt(
    receipt: Path | str,
    *,
    policy: ClientPolicy,
    attestation: Path | str | None = None,
    request: Path | str | None = None,
    response: Path | str | None = None,
    audit: AuditChoice = True,
) -> StoredReceipt:
    """Verify a stored receipt offline (module docstring).

    ``attestation``: the document file (default: beside the receipt, named by the
    hash the receipt carries). ``request`` / ``response``: the stored payload files,
    checked against the receipt's hashes. ``audit``: as for ``connect()``; the log is
    checked for writing before anything is verified. Raises :class:`ReceiptError`,
    :class:`AttestationError`, :class:`PolicyError` (the failing check's id first)
    or :class:`ConfigError` (a file that cannot be read).
    """
    path = Path(receipt)
    log = audit_log(audit)
    log.check()
    raw = read_stored(path, "receipt")
    kid = receipt_attestation_hash(raw)
    att_path = Path(attestation) if attestation else path.parent / f"{kid.hex()}.attestation.cbor"
    doc_raw = read_stored(att_path, "attestation document")
    if hashlib.sha256(doc_raw).digest() != kid:
        raise ReceiptError(f"R2 attestation: {att_path} is not the document this receipt refers to")
    doc = parse_unverified(doc_raw)
    verified = verify_attestation(doc_raw, policy.attestation, now=doc.timestamp)
    expect = ReceiptExpectations(
        request_hash=_sha256_of(request, "request"),
        response_hash=_sha256_of(response, "response"),
    )
    vr = verify_receipt(raw, verified, expect=expect)
    # The checks a live session runs on the binding: P1 for the receipt's model, P2.
    policy.check_binding(vr.binding)
    policy.check_model(vr.binding, vr.receipt.model_id)
    log.record(vr)
    return StoredReceipt(
        verified=vr,
        attestation_path=att_path,
        checked_request=request is not None,
        checked_response=response is not None,
        binding=vr.binding,
    )


def _sha256_of(path: Path | str | None, what: str) -> bytes | None:
    if path is None:
        return None
    return hashlib.sha256(read_stored(Path(path), what)).digest()
