"""Re-verify an audit log or an export bundle offline: AU2-AU8 of protocol.md §12.

:class:`AuditCheck` takes the entries in number order (:meth:`AuditCheck.add`) and
finds, without stopping at the first: missing or misplaced entry numbers (AU2), chain
breaks (AU3), records that are not what the chain recorded or whose indexed fields
differ from them (AU4), attestation documents missing, altered or failing under the
policy, unknown measurements among them (AU5), receipts that do not verify against
their document, signature failures first among them, or that the policy's P1/P2
refuse (AU6), per enclave session the sequence numbers missing or accounted for twice
(two receipts, a receipt and a refusal, two refusals), and a receipt recorded twice
(AU7), and a head hash that is not in the chain (AU8).

Each receipt is verified as ``ephemeral verify`` verifies a stored one
(:mod:`._offline`): its document under the policy at the document's own time, then
R1-R10, then P1 and P2. Legacy entries (imported from audit.jsonl) hold hashes only:
they are chain-checked and count in the sequence checks, never re-verified. Refusal
entries (a request the enclave refused with a sealed error) were authenticated only
in-session: their record's form (AU4) and their attestation document (AU5) are
checked, and they account for their seq (AU7), but that the enclave refused that
request cannot be re-verified offline (nothing signed it).

Not checked: that the log holds every receipt ever verified (a removed tail is
only seen against a head kept elsewhere, AU8), and whether a chain rebuilt by
someone who could write the file is the original (idem).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ephemeralml.common._attestation import (
    ChainCache,
    VerifiedAttestation,
    parse_unverified,
    verify_attestation,
)
from ephemeralml.common._errors import ConfigError, Error, PolicyError, VerificationError
from ephemeralml.common._receipt import (
    Receipt,
    receipt_attestation_hash,
    verify_receipt,
)

from ._audit import AuditLog
from ._audit_chain import (
    GENESIS,
    MAX_BUNDLE_BYTES,
    Bundle,
    IndexFields,
    Refusal,
    StoredEntry,
    encode_bundle,
    parse_legacy_line,
)
from ._policy import ClientPolicy

__all__ = [
    "AuditCheck",
    "AuditReport",
    "Exported",
    "Finding",
    "check_bundle",
    "check_log",
    "export_log",
]


@dataclass(frozen=True)
class Finding:
    """One thing wrong with the log: its check id, a kind for machines, one line."""

    check: str
    #: numbering, chain, record, attestation, measurements, signature, receipt,
    #: policy, gap, repeat or head.
    kind: str
    message: str
    entry: int | None = None
    session: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "kind": self.kind,
            "entry": self.entry,
            "session": self.session,
            "message": self.message,
        }


@dataclass(frozen=True)
class AuditReport:
    """What an audit found. No truth value: read :attr:`findings`."""

    entries: int
    #: Receipts re-verified (R1-R10, P1, P2 passed).
    verified: int
    legacy: int
    #: Refused requests: recorded in-session, not verifiable offline (only their form,
    #: chain and document are checked).
    refused: int
    #: Distinct attestation documents the entries refer to, and enclave sessions.
    attestations: int
    sessions: int
    #: (number, entry_hash) of the last entry; None for an empty log.
    head: tuple[int, bytes] | None
    findings: tuple[Finding, ...]

    def __bool__(self) -> bool:
        raise TypeError("an AuditReport has no truth value; read its findings")


@dataclass
class _Session:
    #: seq -> each receipt (its id) with that seq -> the first entry holding it.
    seqs: dict[int, dict[str, int]] = field(default_factory=dict)
    #: seq -> the entries that record a refusal of it.
    refused: dict[int, list[int]] = field(default_factory=dict)


class AuditCheck:
    """The checks of one log or bundle, entry by entry (module docstring).

    ``document(sha256)``: the stored attestation document of that hash, or None.
    ``head``: an entry hash kept from earlier (AU8), or None. ``policy`` None: the
    chain and the records only (AU2-AU4, AU8), as ``export`` checks before writing.
    """

    def __init__(
        self,
        policy: ClientPolicy | None,
        document: Callable[[bytes], bytes | None],
        *,
        head: bytes | None = None,
    ) -> None:
        self._policy = policy
        self._document = document
        self._expect_head = head
        self._chain_cache = ChainCache()
        self._docs: dict[bytes, VerifiedAttestation | Finding] = {}
        self._findings: list[Finding] = []
        self._sessions: dict[str, _Session] = {}
        self._receipts: dict[bytes, int] = {}
        self._count = self._verified = self._legacy = self._refused = 0
        self._last_n = 0
        self._last_hash: bytes = GENESIS
        self._seen_head = False
        self._head: tuple[int, bytes] | None = None

    # ---------------------------------------------------------------- per entry

    def damaged(self, n: int, why: str) -> None:
        """A row that could not be read as an entry at all."""
        self._numbering(n)
        self._count += 1
        self._find("AU4", "record", f"entry {n} is damaged: {why}", entry=n)
        self._last_n, self._last_hash = n, b""  # nothing after it can link to it

    def add(self, e: StoredEntry) -> None:
        n = e.n
        self._count += 1
        self._numbering(n)
        self._chain(e)
        self._last_n, self._last_hash = n, e.entry_hash
        self._head = (n, e.entry_hash)
        if self._expect_head is not None and hmac.compare_digest(e.entry_hash, self._expect_head):
            self._seen_head = True
        if not self._record(e):
            return
        if e.link.kind == "legacy":
            self._legacy += 1
            if self._policy is None:
                return
            assert isinstance(e.record, str)
            _, _, fields = parse_legacy_line(e.record)  # AU4 parsed it
            self._sequence(n, fields.session_id, fields.seq, fields.receipt_id)
            self._repeat(n, e.link.record_sha256, fields.receipt_id)
            return
        assert isinstance(e.record, bytes)
        if e.link.kind == "refused":
            self._refusal(e)
            return
        if self._policy is None:
            return
        r = self._receipt(n, e.record, e.link.attestation_hash)
        if r is None:
            return
        self._index(e, _fields(r))  # the payload is read only once verified
        self._verified += 1
        self._sequence(n, r.session_id.hex(), r.seq, r.receipt_id.hex())
        self._repeat(n, e.link.record_sha256, r.receipt_id.hex())

    def _refusal(self, e: StoredEntry) -> None:
        # Authenticated in-session only: the form (AU4, done) and the document the
        # session was verified against (AU5) are all there is to check offline.
        self._refused += 1
        if self._policy is None:
            return
        assert isinstance(e.record, bytes)
        refusal = Refusal.from_cbor(e.record)  # AU4 parsed it
        doc = self._verified_document(refusal.attestation_hash)
        if isinstance(doc, Finding):
            self._find(doc.check, doc.kind, f"entry {e.n}: {doc.message}", entry=e.n)
            return
        s = self._sessions.setdefault(refusal.session_id.hex(), _Session())
        s.refused.setdefault(refusal.seq, []).append(e.n)

    def _numbering(self, n: int) -> None:
        # AU2 numbering: 1, 2, 3, ... in order, none missing.
        want = self._last_n + 1
        if n > want:
            gone = f"entry {want} is" if n == want + 1 else f"entries {want}..{n - 1} are"
            self._find("AU2", "numbering", f"{gone} missing (deleted?)", entry=n)
        elif n < want:
            self._find("AU2", "numbering", f"entry {n} is out of place (after entry "
                       f"{self._last_n})", entry=n)  # fmt: skip

    def _chain(self, e: StoredEntry) -> None:
        # AU3 chain: prev is the previous entry's hash; the entry hashes to its hash.
        n = e.n
        if not hmac.compare_digest(e.link.prev, self._last_hash):
            before = f"entry {self._last_n}" if self._last_n else "the start of the log"
            self._find("AU3", "chain", f"entry {n} does not follow {before} (prev differs)",
                       entry=n)  # fmt: skip
        if not hmac.compare_digest(e.link.digest(), e.entry_hash):
            self._find("AU3", "chain", f"entry {n} does not hash to its entry_hash (edited?)",
                       entry=n)  # fmt: skip

    def _record(self, e: StoredEntry) -> bool:
        # AU4 record: the bytes are the ones the chain recorded, and the indexed
        # fields, the attestation hash and the record agree.
        n, raw = e.n, e.record_bytes()
        what = "refusal" if e.link.kind == "refused" else e.link.kind
        if not hmac.compare_digest(hashlib.sha256(raw).digest(), e.link.record_sha256):
            self._find("AU4", "record", f"entry {n}'s {what} bytes are not the ones "
                       "recorded (edited?)", entry=n)  # fmt: skip
            return False
        try:
            if e.link.kind == "legacy":
                assert isinstance(e.record, str)
                _, kid, fields = parse_legacy_line(e.record)
                self._index(e, fields)
            elif e.link.kind == "refused":
                assert isinstance(e.record, bytes)
                refusal = Refusal.from_cbor(e.record)
                kid = refusal.attestation_hash
                self._index(e, refusal.index())
            else:
                assert isinstance(e.record, bytes)
                kid = receipt_attestation_hash(e.record)  # the header only (R1)
        except (Error, ValueError) as err:
            self._find("AU4", "record", f"entry {n}: not a {what} record: {err}", entry=n)
            return False
        if kid != e.link.attestation_hash:
            self._find("AU4", "record", f"entry {n} names another attestation document than its "
                       "record (edited?)", entry=n)  # fmt: skip
            return False
        return True

    def _index(self, e: StoredEntry, fields: IndexFields) -> None:
        # AU4: the indexed fields are the record's (a database's columns; a bundle has none).
        if e.index is not None and e.index != fields:
            differ = [k for k in vars(fields) if getattr(fields, k) != getattr(e.index, k)]
            verb = "differs" if len(differ) == 1 else "differ"
            self._find("AU4", "record", f"entry {e.n}: the indexed {', '.join(differ)} {verb} "
                       "from its record (edited?)", entry=e.n)  # fmt: skip

    def _receipt(self, n: int, raw: bytes, kid: bytes) -> Receipt | None:
        assert self._policy is not None
        doc = self._verified_document(kid)
        if isinstance(doc, Finding):
            self._find(doc.check, doc.kind, f"entry {n}: {doc.message}", entry=n)
            return None
        # AU6 receipt: R1-R10 against the verified document, then P1 and P2.
        try:
            vr = verify_receipt(raw, doc)
            self._policy.check_binding(vr.binding)
            self._policy.check_model(vr.binding, vr.receipt.model_id)
        except Error as err:
            kind = (
                "signature" if str(err).startswith("R4")
                else "policy" if isinstance(err, PolicyError)
                else "receipt"
            )  # fmt: skip
            self._find("AU6", kind, f"entry {n}: {err}", entry=n)
            return None
        return vr.receipt

    def _verified_document(self, kid: bytes) -> VerifiedAttestation | Finding:
        # AU5 attestation: stored, the bytes of its hash, verified under the policy at
        # its own time (A9 unknown measurements among the failures); once per document.
        if kid in self._docs:
            return self._docs[kid]
        raw = self._document(kid)
        out: VerifiedAttestation | Finding
        assert self._policy is not None
        if raw is None:
            out = Finding("AU5", "attestation", f"attestation document {kid.hex()} is not stored")
        elif not hmac.compare_digest(hashlib.sha256(raw).digest(), kid):
            out = Finding("AU5", "attestation", f"attestation document {kid.hex()} is "
                          "not the stored bytes' hash (altered?)")  # fmt: skip
        else:
            try:
                when = parse_unverified(raw).timestamp
                out = verify_attestation(
                    raw, self._policy.attestation, now=when, chain_cache=self._chain_cache
                )
            except Error as err:
                kind = "measurements" if isinstance(err, PolicyError) else "attestation"
                out = Finding("AU5", kind, f"attestation document {kid.hex()[:16]}…: {err}")
        self._docs[kid] = out
        return out

    def _sequence(self, n: int, session: str, seq: int, receipt_id: str) -> None:
        # By receipt id: a legacy line and the same receipt recorded later in full
        # are one receipt.
        s = self._sessions.setdefault(session, _Session())
        s.seqs.setdefault(seq, {}).setdefault(receipt_id, n)

    def _repeat(self, n: int, record_sha256: bytes, receipt_id: str) -> None:
        # AU7: a receipt is recorded once.
        first = self._receipts.setdefault(record_sha256, n)
        if first != n:
            self._find("AU7", "repeat", f"receipt {receipt_id} is recorded twice "
                       f"(entries {first} and {n})", entry=n)  # fmt: skip

    # ---------------------------------------------------------------- the end

    def finish(self) -> AuditReport:
        # AU7 sequence: per session, seqs 0, 1, 2, ... each answered once: by one
        # receipt, or by one refusal (a refused request uses its seq, with no receipt).
        for session, s in sorted(self._sessions.items()):
            short = f"session {session[:16]}…"
            for seq in sorted(s.seqs.keys() | s.refused.keys()):
                receipts = s.seqs.get(seq, {})
                refused = s.refused.get(seq, [])
                if len(receipts) > 1:  # different receipts (one recorded twice is _repeat's)
                    at = _and(receipts.values())
                    self._find("AU7", "repeat", f"{short}: seq {seq} is in different "
                               f"receipts (entries {at})", session=session)  # fmt: skip
                if receipts and refused:
                    at = _and([*receipts.values(), *refused])
                    self._find("AU7", "repeat", f"{short}: seq {seq} has both a receipt and "
                               f"a refusal (entries {at})", session=session)  # fmt: skip
                elif len(refused) > 1:
                    self._find("AU7", "repeat", f"{short}: seq {seq} is refused more than "
                               f"once (entries {_and(refused)})", session=session)  # fmt: skip
            have = sorted(s.seqs.keys() | s.refused.keys())
            want = 0
            for seq in have:
                if seq > want:
                    gone = f"seq {want} is" if seq == want + 1 else f"seqs {want}..{seq - 1} are"
                    self._find("AU7", "gap", f"{short}: {gone} missing", session=session)
                want = seq + 1
        # AU8 head: an entry hash kept from earlier is still in the chain.
        if self._expect_head is not None and not self._seen_head:
            self._find("AU8", "head", f"no entry has hash {self._expect_head.hex()} "
                       "(entries removed, or another log)")  # fmt: skip
        return AuditReport(
            entries=self._count,
            verified=self._verified,
            legacy=self._legacy,
            refused=self._refused,
            attestations=len(self._docs),
            sessions=len(self._sessions),
            head=self._head,
            findings=tuple(self._findings),
        )

    def _find(self, check: str, kind: str, message: str, *, entry: int | None = None,
              session: str | None = None) -> None:  # fmt: skip
        self._findings.append(Finding(check, kind, f"{check} {kind}: {message}", entry, session))


def _and(entries: Iterable[int]) -> str:
    return " and ".join(map(str, sorted(entries)))


def _fields(r: Receipt) -> IndexFields:
    return IndexFields(r.receipt_id.hex(), r.session_id.hex(), r.seq, r.model_id, r.mode)


def check_log(log: AuditLog, policy: ClientPolicy, *, head: bytes | None = None) -> AuditReport:
    """Re-verify a whole log (one read transaction); see the module docstring."""
    with log.reader() as r:
        check = AuditCheck(policy, r.document, head=head)
        for item in r.entries():
            if isinstance(item, StoredEntry):
                check.add(item)
            else:
                check.damaged(*item)
        return check.finish()


def check_bundle(bundle: Bundle, policy: ClientPolicy) -> AuditReport:
    """Re-verify an export bundle, as a log; its stated head must be its last entry's."""
    check = AuditCheck(policy, bundle.attestations.get)
    for e in bundle.entries:
        check.add(e)
    report = check.finish()
    last = bundle.entries[-1].entry_hash if bundle.entries else GENESIS
    if not hmac.compare_digest(last, bundle.head):
        head = Finding("AU8", "head", "AU8 head: the bundle's head is not its last entry's hash "
                       "(entries removed from the end?)")  # fmt: skip
        report = replace(report, findings=(*report.findings, head))
    return report


@dataclass(frozen=True)
class Exported:
    """A bundle made by :func:`export_log`."""

    data: bytes
    entries: int
    #: Of the entries, refused requests (recorded in-session, not verifiable offline).
    refused: int
    attestations: int
    head: bytes


def export_log(log: AuditLog) -> Exported:
    """The whole log as a bundle (protocol.md §12.3), once its chain and records check
    (AU2-AU4): a damaged log is not exported, ``ephemeral audit`` says what is wrong."""
    with log.reader() as r:
        check = AuditCheck(None, r.document)
        entries: list[StoredEntry] = []
        for item in r.entries():
            if isinstance(item, StoredEntry):
                check.add(item)
                entries.append(item)
            else:
                check.damaged(*item)
        report = check.finish()
        if report.findings:
            first = report.findings[0].message
            more = len(report.findings) - 1
            raise VerificationError(
                f"{first}{f' (and {more} more)' if more else ''}; not exported "
                "(ephemeral audit lists what is wrong)"
            )
        kids = {e.link.attestation_hash for e in entries if e.link.kind != "legacy"}
        docs = [d for d in (r.document(k) for k in sorted(kids)) if d is not None]
    data = encode_bundle(entries, docs)
    if len(data) > MAX_BUNDLE_BYTES:
        raise ConfigError(
            f"the bundle would be {len(data)} bytes; the limit is {MAX_BUNDLE_BYTES} "
            "(audit this log in place with ephemeral audit)"
        )
    head = entries[-1].entry_hash if entries else GENESIS
    refused = sum(1 for e in entries if e.link.kind == "refused")
    return Exported(data, len(entries), refused, len(docs), head)
