"""The audit log's chain and bundle formats (protocol.md §12), bytes in and out, no I/O.

Every entry of the log is chained to the one before it: its ``entry_hash`` is the
SHA-256 of the deterministic CBOR of :class:`Link` (its number, when it was recorded,
what it records, the attestation document it refers to, and the previous entry's
hash), so an entry deleted, edited, moved or inserted without recomputing every hash
after it breaks the chain (AU2, AU3). What the chain does *not* stop: whoever can
write the log can rebuild the chain from an edit onwards; a head hash kept elsewhere
(``ephemeral audit`` prints it) pins every entry up to it (AU8).

Three kinds of entry: ``receipt`` (the receipt's exact bytes, re-verifiable against
the stored attestation document), ``refused`` (a :class:`Refusal`: a request of a
session that the enclave refused with a sealed error; authenticated only in-session,
by the session's AEAD, so it cannot be re-verified offline) and ``legacy`` (a line
imported from the old ``audit.jsonl``: ids and hashes only, chain-checked but not
re-verifiable).

An export bundle is one deterministic CBOR map holding the entries, each attestation
document once, and the head (:func:`encode_bundle`, :func:`decode_bundle`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ephemeralml.common._binding import MODES
from ephemeralml.common._cbor import decode_deterministic, encode
from ephemeralml.common._errors import ConfigError, RemoteProtocolError, VerificationError
from ephemeralml.common._messages import SESSION_ID_BYTES

__all__ = [
    "BUNDLE_TYPE",
    "BUNDLE_VERSION",
    "ENTRY_TYPE",
    "ENTRY_VERSION",
    "GENESIS",
    "KINDS",
    "LEGACY_KEYS",
    "MAX_BUNDLE_BYTES",
    "MAX_BUNDLE_ITEMS",
    "RECORD_FIELDS",
    "REFUSAL_TYPE",
    "REFUSAL_VERSION",
    "Bundle",
    "IndexFields",
    "Link",
    "Refusal",
    "StoredEntry",
    "decode_bundle",
    "encode_bundle",
    "legacy_error",
    "looks_like_bundle",
    "parse_legacy_line",
    "refusal_code",
]

#: The ``t`` and ``v`` of an entry's hashed map (protocol.md §12.1).
ENTRY_TYPE = "ephemeralml audit entry"
ENTRY_VERSION = 1
#: The ``t`` and ``v`` of an export bundle (protocol.md §12.3).
BUNDLE_TYPE = "ephemeralml audit bundle"
BUNDLE_VERSION = 1
#: The ``prev`` of entry 1.
GENESIS = bytes(32)
#: An entry records a receipt, a refused request, or a line imported from the old
#: audit.jsonl.
KINDS = ("receipt", "refused", "legacy")
#: Where each kind's record is: its database column and bundle field.
RECORD_FIELDS = {"receipt": "receipt", "refused": "refusal", "legacy": "legacy"}
#: The ``t`` and ``v`` of a refusal record (protocol.md §12.1).
REFUSAL_TYPE = "ephemeralml refusal"
REFUSAL_VERSION = 1

#: The largest bundle ``ephemeral verify`` reads: about 200,000 receipts of a fresh
#: session each (a receipt ~0.7 KiB, a document ~5 KiB shared by the receipts of its
#: session); bigger logs are audited in place with ``ephemeral audit``.
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
#: CBOR items in a bundle: at most 16 per entry (a map of 7 keys and their values)
#: and one per document, for a million entries; bounds the decoder's work (D2).
MAX_BUNDLE_ITEMS = 16 * 1_000_000

#: The fields of an old audit.jsonl line (the format before the database).
LEGACY_KEYS = (
    "verified_at", "receipt_id", "session_id", "seq", "model_id",
    "attestation_hash", "request_hash", "response_hash", "mode",
)  # fmt: skip

_HASH = 32
_HEX = re.compile(r"[0-9a-f]*")
#: An error code as §6 spells them; the enclave's frame carries at most 40 characters.
_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")
#: What is recorded for a code the enclave sent outside that form (never its text).
_MALFORMED_CODE = "malformed"


@dataclass(frozen=True)
class Link:
    """What an entry's hash covers (protocol.md §12.1)."""

    n: int
    at_ms: int
    kind: str
    record_sha256: bytes
    attestation_hash: bytes
    prev: bytes

    def __post_init__(self) -> None:
        for name in ("n", "at_ms"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} is not an unsigned integer")
        if self.kind not in KINDS:
            raise ValueError(f"unknown entry kind {self.kind!r}")
        for name in ("record_sha256", "attestation_hash", "prev"):
            v = getattr(self, name)
            if not isinstance(v, bytes) or len(v) != _HASH:
                raise ValueError(f"{name} is not {_HASH} bytes")

    def preimage(self) -> bytes:
        """The exact bytes hashed: deterministic CBOR (protocol.md §12.1)."""
        return encode(
            {
                "t": ENTRY_TYPE,
                "v": ENTRY_VERSION,
                "n": self.n,
                "at": self.at_ms,
                "kind": self.kind,
                "record": self.record_sha256,
                "attestation": self.attestation_hash,
                "prev": self.prev,
            }
        )

    def digest(self) -> bytes:
        return hashlib.sha256(self.preimage()).digest()


@dataclass(frozen=True)
class IndexFields:
    """The columns the database keeps beside a record for queries (never hashed: AU4
    checks them against the record)."""

    receipt_id: str
    session_id: str
    seq: int
    model_id: str
    mode: str


@dataclass(frozen=True)
class StoredEntry:
    """One entry as read back from a log or a bundle: checked by ``_audit_check``.

    ``record_sha256`` is the stored column (a database) or the record's own hash (a
    bundle, which does not repeat it); ``index`` the stored columns (None: a bundle).
    """

    link: Link
    entry_hash: bytes
    #: The receipt's exact bytes (kind ``receipt``), the refusal record's
    #: (``refused``) or the imported line (``legacy``).
    record: bytes | str
    index: IndexFields | None = None

    @property
    def n(self) -> int:
        return self.link.n

    def record_bytes(self) -> bytes:
        return self.record.encode() if isinstance(self.record, str) else self.record


# ---------------------------------------------------------------- refusals


def refusal_code(code: str) -> str:
    """The code recorded for a refusal: the enclave's code as §6 spells codes, or
    ``malformed`` for anything else (a code is never free text in the log)."""
    return code if _CODE.fullmatch(code) else _MALFORMED_CODE


@dataclass(frozen=True)
class Refusal:
    """A request the enclave refused in a session (protocol.md §12.1, kind ``refused``).

    Authenticated only in-session: the sealed error came under the session's AEAD from
    the enclave whose attestation document is ``attestation_hash``. Nothing offline can
    show that the enclave sent it (it is not signed), only that the log holds it. No
    message text: the code alone (the message may quote the input).
    """

    session_id: bytes
    seq: int
    code: str
    attestation_hash: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, bytes) or len(self.session_id) != SESSION_ID_BYTES:
            raise ValueError(f"sid is not {SESSION_ID_BYTES} bytes")
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 0:
            raise ValueError("seq is not an unsigned integer")
        if not isinstance(self.code, str) or not _CODE.fullmatch(self.code):
            raise ValueError("code is not an error code (1-40 of a-z, 0-9, _; a letter first)")
        if not isinstance(self.attestation_hash, bytes) or len(self.attestation_hash) != _HASH:
            raise ValueError(f"attestation is not {_HASH} bytes")

    def to_cbor(self) -> bytes:
        """The record's exact bytes: deterministic CBOR (protocol.md §12.1)."""
        return encode(
            {
                "t": REFUSAL_TYPE,
                "v": REFUSAL_VERSION,
                "sid": self.session_id,
                "seq": self.seq,
                "code": self.code,
                "attestation": self.attestation_hash,
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> Refusal:
        """Parse a stored record; ``ValueError`` with the reason (AU4 says which entry)."""
        try:
            m = decode_deterministic(data, what="refusal record", max_bytes=_MAX_REFUSAL_BYTES)
        except RemoteProtocolError as e:  # DecodeError or LimitError
            raise ValueError(str(e)) from e
        keys = {"t", "v", "sid", "seq", "code", "attestation"}
        if not isinstance(m, dict) or set(m) != keys or m["t"] != REFUSAL_TYPE:
            raise ValueError(f"not a refusal record (its fields must be {', '.join(sorted(keys))})")
        if m["v"] != REFUSAL_VERSION:
            raise ValueError(f"refusal record version {m['v']!r}, not {REFUSAL_VERSION}")
        return cls(m["sid"], m["seq"], m["code"], m["attestation"])

    def index(self) -> IndexFields:
        """The database columns of its entry: no receipt id, model or mode."""
        return IndexFields("", self.session_id.hex(), self.seq, "", "")


#: A refusal record is ~110 bytes; anything much longer is not one.
_MAX_REFUSAL_BYTES = 256


# ---------------------------------------------------------------- legacy lines


def parse_legacy_line(line: str) -> tuple[int, bytes, IndexFields]:
    """An old ``audit.jsonl`` line: (verified_at in ms, attestation hash, its fields).

    Raises ``ValueError`` with the reason (the caller names the file and the line).
    """
    try:
        d = json.loads(line)
    except ValueError as e:
        raise ValueError("not JSON") from e
    if not isinstance(d, dict) or set(d) != set(LEGACY_KEYS):
        raise ValueError(f"not an audit line (its fields must be {', '.join(LEGACY_KEYS)})")
    at = d["verified_at"]
    try:
        when = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ValueError("verified_at is not an ISO 8601 time with a zone")
    at_ms = int(when.timestamp() * 1000)
    for key, size in (
        ("receipt_id", 16),
        ("session_id", SESSION_ID_BYTES),
        ("attestation_hash", _HASH),
        ("request_hash", _HASH),
        ("response_hash", _HASH),
    ):
        v = d[key]
        if not isinstance(v, str) or len(v) != 2 * size or not _HEX.fullmatch(v):
            raise ValueError(f"{key} is not {size} bytes of lowercase hex")
    seq = d["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError("seq is not an unsigned integer")
    if not isinstance(d["model_id"], str) or not d["model_id"]:
        raise ValueError("model_id is not a non-empty string")
    if d["mode"] not in MODES:
        raise ValueError(f"mode is not one of {', '.join(sorted(MODES))}")
    fields = IndexFields(d["receipt_id"], d["session_id"], seq, d["model_id"], d["mode"])
    return at_ms, bytes.fromhex(d["attestation_hash"]), fields


# ---------------------------------------------------------------- bundles


@dataclass(frozen=True)
class Bundle:
    """An export bundle, parsed (protocol.md §12.3): its shape is checked, nothing
    else; the entries are checked like a log's (``_audit_check``)."""

    entries: tuple[StoredEntry, ...]
    #: SHA-256 → document bytes (each document once).
    attestations: Mapping[bytes, bytes]
    #: The hash of its last entry (GENESIS for an empty bundle), as the bundle states it.
    head: bytes


def encode_bundle(entries: Sequence[StoredEntry], attestations: Iterable[bytes]) -> bytes:
    """The bundle of ``entries`` and the documents they refer to (each once)."""
    docs = {hashlib.sha256(d).digest(): d for d in attestations}
    out: list[dict[str, Any]] = []
    for e in entries:
        m: dict[str, Any] = {
            "n": e.link.n,
            "at": e.link.at_ms,
            "kind": e.link.kind,
            "attestation": e.link.attestation_hash,
            "prev": e.link.prev,
            "hash": e.entry_hash,
        }
        m[RECORD_FIELDS[e.link.kind]] = e.record
        out.append(m)
    return encode(
        {
            "t": BUNDLE_TYPE,
            "v": BUNDLE_VERSION,
            "entries": out,
            "attestations": [docs[k] for k in sorted(docs)],
            "head": entries[-1].entry_hash if entries else GENESIS,
        }
    )


def looks_like_bundle(data: bytes) -> bool:
    """Whether ``data`` starts as a bundle does (a CBOR map whose first key is ``t``):
    a receipt starts with tag 18, so the two never meet."""
    return len(data) > 3 and 0xA0 <= data[0] <= 0xBB and data[1:3] == b"\x61t"


def _bad(message: str) -> VerificationError:
    return VerificationError(f"AU1 bundle: {message}")


_BUNDLE_KEYS = {"t", "v", "entries", "attestations", "head"}
_ENTRY_KEYS = {"n", "at", "kind", "attestation", "prev", "hash"}


def decode_bundle(data: bytes) -> Bundle:
    """Parse a bundle (AU1); raises a one-line :class:`VerificationError`."""
    try:
        m = decode_deterministic(
            data, what="audit bundle", max_bytes=MAX_BUNDLE_BYTES, max_items=MAX_BUNDLE_ITEMS
        )
    except RemoteProtocolError as e:  # DecodeError or LimitError
        raise _bad(str(e)) from e
    if not isinstance(m, dict) or set(m) != _BUNDLE_KEYS or m["t"] != BUNDLE_TYPE:
        raise _bad("not an ephemeralml audit bundle")
    if m["v"] != BUNDLE_VERSION:
        raise _bad(f"version {m['v']!r}; this client reads version {BUNDLE_VERSION}")
    if not isinstance(m["entries"], list) or not isinstance(m["attestations"], list):
        raise _bad("entries and attestations must be lists")
    if not isinstance(m["head"], bytes) or len(m["head"]) != _HASH:
        raise _bad(f"head is not {_HASH} bytes")
    docs: dict[bytes, bytes] = {}
    for i, d in enumerate(m["attestations"]):
        if not isinstance(d, bytes):
            raise _bad(f"attestations[{i}] is not bytes")
        key = hashlib.sha256(d).digest()
        if docs and key <= max(docs):
            raise _bad("attestation documents must be in SHA-256 order, each once")
        docs[key] = d
    entries = tuple(_bundle_entry(i, e) for i, e in enumerate(m["entries"]))
    return Bundle(entries, docs, m["head"])


def _bundle_entry(i: int, e: object) -> StoredEntry:
    if not isinstance(e, dict):
        raise _bad(f"entries[{i}] is not a map")
    kind = e.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise _bad(f"entries[{i}] does not have the fields of an entry")
    field = RECORD_FIELDS[kind]
    if set(e) != _ENTRY_KEYS | {field}:
        raise _bad(f"entries[{i}] does not have the fields of an entry")
    record = e[field]
    text = kind == "legacy"
    if not isinstance(record, str if text else bytes):
        raise _bad(f"entries[{i}].{field} is not {'text' if text else 'bytes'}")
    raw = record.encode() if isinstance(record, str) else record
    if not isinstance(e["hash"], bytes) or len(e["hash"]) != _HASH:
        raise _bad(f"entries[{i}].hash is not {_HASH} bytes")
    try:
        link = Link(
            n=e["n"],
            at_ms=e["at"],
            kind=kind,
            record_sha256=hashlib.sha256(raw).digest(),
            attestation_hash=e["attestation"],
            prev=e["prev"],
        )
    except ValueError as err:
        raise _bad(f"entries[{i}]: {err}") from err
    return StoredEntry(link, e["hash"], record)


def legacy_error(path: object, line: int, why: str) -> ConfigError:
    """AU9: the one-line error of a bad old line; nothing of the file is imported."""
    return ConfigError(f"AU9 migration: {path} line {line}: {why}; nothing imported")
