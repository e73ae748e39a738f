"""The audit log (protocol.md §12): what an entry holds, its hash chain, and the attacks
on a stored log that ``ephemeral audit`` must find. Real receipts from the in-memory
pair, real signatures; tampering is done with SQL on the file, as an attacker would."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.client._audit import AuditLog, audit_log
from ephemeralml.client._audit_chain import GENESIS, LEGACY_KEYS, Link, Refusal
from ephemeralml.client._audit_check import AuditReport, check_log
from ephemeralml.client._policy import ClientPolicy
from ephemeralml.common._attestation import (
    AttestationPolicy,
    PcrAllowlist,
    verify_attestation,
)
from ephemeralml.common._cose import sign_eddsa
from ephemeralml.common._errors import ConfigError
from ephemeralml.common._receipt import VerifiedReceipt, sign_receipt, verify_receipt
from tests.pair import MockWorld, SessionPair

AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


@pytest.fixture(scope="module")
def receipts(world: MockWorld) -> list[VerifiedReceipt]:
    """Four receipts of one session, seq 0 to 3."""
    p = SessionPair(world)
    p.handshake()
    return [p.request((f"text {i}",)).receipt for i in range(4)]


@pytest.fixture(scope="module")
def other_session(world: MockWorld) -> list[VerifiedReceipt]:
    p = SessionPair(world)
    p.handshake()
    return [p.request((f"other {i}",)).receipt for i in range(2)]


def policy(world: MockWorld) -> ClientPolicy:
    return ClientPolicy(world.policy)


def audit(path: Path, world: MockWorld, **kw: bytes) -> AuditReport:
    return check_log(AuditLog(path), policy(world), **kw)


def messages(report: AuditReport) -> list[str]:
    return [f.message for f in report.findings]


def sql(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def rows(path: Path, columns: str = "n, receipt_id, seq, kind") -> list[tuple[object, ...]]:
    with sql(path) as db:
        return db.execute(f"SELECT {columns} FROM entries ORDER BY n").fetchall()


def rechain(path: Path) -> None:
    """What an attacker who can write the file does after an edit: recompute every
    entry's prev and entry_hash, in order, as the writer would have."""
    db = sql(path)
    prev = GENESIS
    for n, at, kind, rec, att in db.execute(
        "SELECT n, recorded_at_ms, kind, record_sha256, attestation_sha256 FROM entries ORDER BY n"
    ).fetchall():
        h = Link(n, at, kind, rec, att, prev).digest()
        db.execute("UPDATE entries SET prev_hash = ?, entry_hash = ? WHERE n = ?", (prev, h, n))
        prev = h
    db.close()


def log_of(tmp_path: Path, receipts: list[VerifiedReceipt]) -> Path:
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    for r in receipts:
        log.record(r, at=AT)
    return path


# ---------------------------------------------------------------- the format


def test_entry_hash_is_sha256_of_the_deterministic_cbor_of_its_link() -> None:
    # The worked example of protocol.md §12.1, byte for byte.
    link = Link(1, 1767323045678, "receipt", hashlib.sha256(b"receipt").digest(),
                hashlib.sha256(b"attestation").digest(), GENESIS)  # fmt: skip
    assert link.preimage().hex() == (
        "a8616e01617477657068656d6572616c6d6c20617564697420656e7472796176016261741b0000019b"
        "7ca98f2e646b696e646772656365697074647072657658200000000000000000000000000000000000"
        "000000000000000000000000000000667265636f726458206f32860910ca0fb2a20c7fda143666b09d"
        "bf8db5238195c90a586fb542ff0cad6b6174746573746174696f6e5820813a89a296973e35545cfa74"
        "fe3efd172a7d19443c97c625d699e9737229b0a2"
    )
    assert cbor2.loads(link.preimage()) == {
        "t": "ephemeralml audit entry", "v": 1, "n": 1, "at": 1767323045678, "kind": "receipt",
        "record": hashlib.sha256(b"receipt").digest(),
        "attestation": hashlib.sha256(b"attestation").digest(), "prev": bytes(32),
    }  # fmt: skip
    assert link.digest().hex() == "2dc907deb462559f892585fed7ae33a325f4f4f8a0d08aa198558ecd8b70c2e0"


def test_an_entry_holds_the_receipt_and_its_document_once(
    tmp_path: Path, receipts: list[VerifiedReceipt]
) -> None:
    path = log_of(tmp_path, receipts[:3])
    assert path.stat().st_mode & 0o777 == 0o600
    doc = receipts[0].attestation.document
    with sql(path) as db:
        assert db.execute("SELECT sha256, document FROM attestations").fetchall() == [
            (doc.sha256, doc.raw)
        ]
        got = db.execute(
            "SELECT n, recorded_at_ms, kind, record_sha256, attestation_sha256, receipt, legacy, "
            "receipt_id, session_id, seq, model_id, mode, prev_hash, entry_hash "
            "FROM entries ORDER BY n"
        ).fetchall()
    prev = GENESIS
    for (n, at, kind, rec, att, raw, legacy, rid, sid, seq, model, mode, p, h), r in zip(
        got, receipts, strict=False
    ):
        assert (at, kind, rec, att, raw, legacy) == (
            1767323045678, "receipt", hashlib.sha256(r.raw).digest(), doc.sha256, r.raw, None
        )
        assert (rid, sid, seq, model, mode) == (
            r.receipt.receipt_id.hex(), r.receipt.session_id.hex(), r.receipt.seq,
            r.receipt.model_id, "mock",
        )  # fmt: skip
        assert p == prev and h == Link(n, at, kind, rec, att, prev).digest()
        prev = h
    assert [g[0] for g in got] == [1, 2, 3]
    assert b"text 0" not in path.read_bytes()


def test_a_receipt_already_in_the_log_is_not_recorded_again(
    tmp_path: Path, receipts: list[VerifiedReceipt]
) -> None:
    path = log_of(tmp_path, [receipts[0], receipts[1], receipts[0]])
    assert [r[0] for r in rows(path)] == [1, 2]


def test_off_records_nothing_and_audit_choices(tmp_path: Path, receipts: list[VerifiedReceipt]) -> None:
    off = AuditLog.off()
    off.check()
    off.record(receipts[0])
    assert repr(off) == "AuditLog(None)" and not off.exists()
    home = tmp_path / "home"
    mine = audit_log(True, home=home)
    assert (mine.path, mine.legacy) == (home / "audit.db", home / "audit.jsonl")
    assert audit_log(str(tmp_path / "x.db")).path == tmp_path / "x.db"
    with pytest.raises(ConfigError) as info:
        audit_log(3)  # type: ignore[arg-type]
    assert str(info.value) == "audit must be True, False, a path or an AuditLog, got 3"


def test_a_log_that_cannot_be_written_is_one_line(tmp_path: Path, receipts: list[VerifiedReceipt]) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    for call in (AuditLog(folder).check, lambda: AuditLog(folder).record(receipts[0])):
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == f"cannot write the audit log {folder}: Is a directory"


def test_a_file_that_is_not_an_audit_log_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "audit.jsonl"
    old.write_text('{"receipt_id": "00"}\n' * 100)
    with pytest.raises(ConfigError) as info:
        AuditLog(old).check()
    assert str(info.value) == (
        f"AU1 database: {old} is damaged or not an audit database (file is not a database)"
    )
    other = tmp_path / "other.db"
    with sql(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(ConfigError) as info:
        AuditLog(other).check()
    assert str(info.value) == f"AU1 database: {other} is not an audit database (no audit tables)"
    with pytest.raises(ConfigError) as info:
        AuditLog(tmp_path / "none.db").reader()
    assert str(info.value) == f"no audit log at {tmp_path / 'none.db'} (nothing recorded yet)"


def test_a_failed_record_leaves_nothing_half_written(
    tmp_path: Path, receipts: list[VerifiedReceipt], other_session: list[VerifiedReceipt]
) -> None:
    path = log_of(tmp_path, receipts[:1])
    with sql(path) as db:  # the disk fills up after the document went in
        db.execute("CREATE TRIGGER full BEFORE INSERT ON entries "
                   "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")  # fmt: skip
    with pytest.raises(ConfigError) as info:
        AuditLog(path).record(other_session[0])
    assert str(info.value) == f"cannot write the audit log {path}: database or disk is full"
    with sql(path) as db:
        assert db.execute("SELECT count(*) FROM attestations").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM entries").fetchone() == (1,)


# ---------------------------------------------------------------- attacks


def test_a_clean_log_has_no_finding(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt], other_session: list[VerifiedReceipt]
) -> None:
    path = log_of(tmp_path, [receipts[0], other_session[0], receipts[1], other_session[1]])
    report = audit(path, world)
    assert report.findings == ()
    assert (report.entries, report.verified, report.legacy, report.attestations, report.sessions) == (
        4, 4, 0, 2, 2
    )
    assert report.head == (4, rows(path, "entry_hash")[-1][0])
    with pytest.raises(TypeError):
        bool(report)


def test_a_deleted_entry_is_found(tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]) -> None:
    path = log_of(tmp_path, receipts[:3])
    with sql(path) as db:
        db.execute("DELETE FROM entries WHERE n = 2")
    sid = receipts[0].receipt.session_id.hex()[:16]
    assert messages(audit(path, world)) == [
        "AU2 numbering: entry 2 is missing (deleted?)",
        "AU3 chain: entry 3 does not follow entry 1 (prev differs)",
        f"AU7 gap: session {sid}…: seq 1 is missing",
    ]


def test_a_deleted_entry_with_a_rebuilt_chain_still_leaves_a_seq_gap(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    path = log_of(tmp_path, receipts[:3])
    with sql(path) as db:
        db.execute("DELETE FROM entries WHERE n = 2")
        db.execute("UPDATE entries SET n = 2 WHERE n = 3")
    rechain(path)
    sid = receipts[0].receipt.session_id.hex()[:16]
    assert messages(audit(path, world)) == [f"AU7 gap: session {sid}…: seq 1 is missing"]


def test_an_edited_field_is_found(tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]) -> None:
    path = log_of(tmp_path, receipts[:3])
    with sql(path) as db:
        db.execute("UPDATE entries SET seq = 7, model_id = 'other' WHERE n = 2")
        db.execute("UPDATE entries SET recorded_at_ms = recorded_at_ms - 1000 WHERE n = 3")
    assert messages(audit(path, world)) == [
        "AU4 record: entry 2: the indexed seq, model_id differ from its record (edited?)",
        "AU3 chain: entry 3 does not hash to its entry_hash (edited?)",
    ]


def test_an_edited_receipt_is_found(tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]) -> None:
    path = log_of(tmp_path, receipts[:2])
    raw = bytearray(receipts[1].raw)
    raw[-1] ^= 1  # the signature's last byte
    with sql(path) as db:
        db.execute("UPDATE entries SET receipt = ? WHERE n = 2", (bytes(raw),))
    assert messages(audit(path, world)) == [
        "AU4 record: entry 2's receipt bytes are not the ones recorded (edited?)"
    ]


def test_a_swapped_pair_is_found(tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]) -> None:
    path = log_of(tmp_path, receipts[:4])
    with sql(path) as db:
        db.execute("UPDATE entries SET n = -2 WHERE n = 2")
        db.execute("UPDATE entries SET n = 2 WHERE n = 3")
        db.execute("UPDATE entries SET n = 3 WHERE n = -2")
    assert messages(audit(path, world)) == [
        "AU3 chain: entry 2 does not follow entry 1 (prev differs)",
        "AU3 chain: entry 2 does not hash to its entry_hash (edited?)",
        "AU3 chain: entry 3 does not follow entry 2 (prev differs)",
        "AU3 chain: entry 3 does not hash to its entry_hash (edited?)",
        "AU3 chain: entry 4 does not follow entry 3 (prev differs)",
    ]


def test_an_inserted_forgery_with_a_rebuilt_chain_fails_its_signature(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    path = log_of(tmp_path, receipts[:2])
    real = receipts[1].receipt
    forged_payload = dataclasses.replace(real, seq=2, receipt_id=bytes(16))
    forged = sign_eddsa(forged_payload.to_cbor(), Ed25519PrivateKey.generate(),
                        kid=real.attestation_hash)  # fmt: skip
    with sql(path) as db:
        db.execute(
            "INSERT INTO entries SELECT 3, recorded_at_ms, kind, ?, attestation_sha256, prev_hash, "
            "entry_hash, ?, legacy, ?, session_id, 2, model_id, mode, refusal FROM entries WHERE n = 2",
            (hashlib.sha256(forged).digest(), forged, bytes(16).hex()),
        )
    rechain(path)
    assert messages(audit(path, world)) == [
        "AU6 signature: entry 3: R4 signature: the receipt signature does not verify"
    ]


def test_an_altered_attestation_document_is_found(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    path = log_of(tmp_path, receipts[:2])
    doc = receipts[0].attestation.document
    with sql(path) as db:
        db.execute("UPDATE attestations SET document = ?", (doc.raw[:-1] + bytes([doc.raw[-1] ^ 1]),))
    why = f"attestation document {doc.sha256.hex()} is not the stored bytes' hash (altered?)"
    assert messages(audit(path, world)) == [
        f"AU5 attestation: entry 1: {why}",
        f"AU5 attestation: entry 2: {why}",
    ]
    with sql(path) as db:
        db.execute("DELETE FROM attestations")
    assert messages(audit(path, world))[0] == (
        f"AU5 attestation: entry 1: attestation document {doc.sha256.hex()} is not stored"
    )


def test_a_truncated_database_is_refused(tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]) -> None:
    path = log_of(tmp_path, receipts * 10)
    with sql(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    cut = tmp_path / "cut.db"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError) as info:
        audit(cut, world)
    assert str(info.value) == (
        f"AU1 database: {cut} is damaged or not an audit database (database disk image is malformed)"
    )


def test_a_repeated_receipt_is_found(tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]) -> None:
    path = log_of(tmp_path, receipts[:3])
    with sql(path) as db:
        db.execute("INSERT INTO entries SELECT 4, recorded_at_ms, kind, record_sha256, "
                   "attestation_sha256, prev_hash, entry_hash, receipt, legacy, receipt_id, "
                   "session_id, seq, model_id, mode, refusal FROM entries WHERE n = 2")  # fmt: skip
    rechain(path)
    rid = receipts[1].receipt.receipt_id.hex()
    assert messages(audit(path, world)) == [
        f"AU7 repeat: receipt {rid} is recorded twice (entries 2 and 4)"
    ]


def test_a_seq_gap_and_two_receipts_for_one_seq_are_found(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    r0 = receipts[0]
    # A second, validly signed receipt for seq 0 (the enclave's key, another id).
    twin = sign_receipt(dataclasses.replace(r0.receipt, receipt_id=b"\x01" * 16),
                        world.identity.receipt_key)  # fmt: skip
    doc = verify_attestation(r0.attestation.document.raw, world.policy,
                             now=r0.attestation.document.timestamp)  # fmt: skip
    path = log_of(tmp_path, [r0, receipts[2], receipts[3], verify_receipt(twin, doc)])
    sid = r0.receipt.session_id.hex()[:16]
    assert messages(audit(path, world)) == [
        f"AU7 repeat: session {sid}…: seq 0 is in different receipts (entries 1 and 4)",
        f"AU7 gap: session {sid}…: seq 1 is missing",
    ]
    report = audit(path, world)
    assert [(f.check, f.kind, f.entry, f.session) for f in report.findings] == [
        ("AU7", "repeat", None, r0.receipt.session_id.hex()),
        ("AU7", "gap", None, r0.receipt.session_id.hex()),
    ]


def test_unknown_measurements_are_found(tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]) -> None:
    path = log_of(tmp_path, receipts[:1])
    other = ClientPolicy(AttestationPolicy(world.policy.root, PcrAllowlist([{0: b"\x00" * 48}])))
    report = check_log(AuditLog(path), other)
    (f,) = report.findings
    assert (f.check, f.kind, f.entry) == ("AU5", "measurements", 1)
    doc = receipts[0].attestation.document
    assert f.message.startswith(f"AU5 measurements: entry 1: attestation document {doc.sha256_hex[:16]}…: A9 ")


def test_a_removed_tail_is_found_only_against_a_kept_head(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    path = log_of(tmp_path, receipts[:3])
    head = audit(path, world).head
    assert head is not None
    with sql(path) as db:
        db.execute("DELETE FROM entries WHERE n = 3")
    assert messages(audit(path, world)) == []  # what a chain alone cannot see
    assert messages(audit(path, world, head=head[1])) == [
        f"AU8 head: no entry has hash {head[1].hex()} (entries removed, or another log)"
    ]


def test_a_row_of_the_wrong_types_is_reported_not_raised(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    path = log_of(tmp_path, receipts[:2])
    with sql(path) as db:
        db.execute("UPDATE entries SET prev_hash = 'text' WHERE n = 1")
    sid = receipts[0].receipt.session_id.hex()[:16]
    assert messages(audit(path, world)) == [
        "AU4 record: entry 1 is damaged: prev is not 32 bytes",
        "AU3 chain: entry 2 does not follow entry 1 (prev differs)",
        f"AU7 gap: session {sid}…: seq 0 is missing",  # its receipt is not counted
    ]


# ---------------------------------------------------------------- refusals


def refuse(log: AuditLog, r: VerifiedReceipt, seq: int, code: str = "limit") -> None:
    """Record a refusal of ``seq`` in the session of ``r`` (as a Session does)."""
    log.record_refusal(r.attestation, r.receipt.session_id, seq, code, at=AT)


def test_a_refusal_record_is_the_deterministic_cbor_of_protocol_12_1() -> None:
    # The worked example of protocol.md §12.1 (refusals), byte for byte.
    att = hashlib.sha256(b"attestation").digest()
    record = Refusal(bytes(range(16)), 3, "limit", att).to_cbor()
    assert record.hex() == (
        "a6617473657068656d6572616c6d6c207265667573616c617601637365710363736964500001020304"
        "05060708090a0b0c0d0e0f64636f6465656c696d69746b6174746573746174696f6e5820813a89a296"
        "973e35545cfa74fe3efd172a7d19443c97c625d699e9737229b0a2"
    )
    assert cbor2.loads(record) == {
        "t": "ephemeralml refusal", "v": 1, "sid": bytes(range(16)), "seq": 3, "code": "limit",
        "attestation": att,
    }  # fmt: skip
    rec = hashlib.sha256(record).digest()
    assert rec.hex() == "6ffabdfc014d84f4ebbe940db9b8dab08d77a5d7c235f4c3a351fb62e2508cf4"
    first = bytes.fromhex("2dc907deb462559f892585fed7ae33a325f4f4f8a0d08aa198558ecd8b70c2e0")
    link = Link(2, 1767323045678, "refused", rec, att, first)
    assert link.digest().hex() == "c51a8b4635d1a2b3e670b04d81e62fee9a21b605cd1eeb51c07ac2633546348a"
    assert Refusal.from_cbor(record) == Refusal(bytes(range(16)), 3, "limit", att)


def test_a_refusal_entry_holds_its_record_and_the_document_once(
    tmp_path: Path, receipts: list[VerifiedReceipt]
) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    r = receipts[0]
    doc = r.attestation.document
    refuse(log, r, 1)
    refuse(log, r, 2, "Not A Code: input 0 is 'secret'")  # never free text
    log.record(r, at=AT)
    sid = r.receipt.session_id
    with sql(path) as db:
        assert db.execute("SELECT sha256 FROM attestations").fetchall() == [(doc.sha256,)]
    got = rows(path, "n, kind, seq, session_id, receipt_id, model_id, mode, attestation_sha256, "
                     "receipt, legacy, refusal, record_sha256")  # fmt: skip
    one, two = Refusal(sid, 1, "limit", doc.sha256), Refusal(sid, 2, "malformed", doc.sha256)
    assert got[:2] == [
        (1, "refused", 1, sid.hex(), "", "", "", doc.sha256, None, None, one.to_cbor(),
         hashlib.sha256(one.to_cbor()).digest()),
        (2, "refused", 2, sid.hex(), "", "", "", doc.sha256, None, None, two.to_cbor(),
         hashlib.sha256(two.to_cbor()).digest()),
    ]  # fmt: skip
    assert b"secret" not in path.read_bytes()
    off = AuditLog.off()
    refuse(off, r, 1)  # nothing, and no error


def test_a_refused_seq_is_no_gap(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    log.record(receipts[0], at=AT)
    refuse(log, receipts[0], 1)
    log.record(receipts[2], at=AT)
    refuse(log, receipts[0], 3)
    report = audit(path, world)
    assert report.findings == ()
    assert (report.entries, report.verified, report.refused, report.legacy) == (4, 2, 2, 0)
    assert (report.attestations, report.sessions) == (1, 1)


def test_a_refusal_alone_is_a_session(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt], other_session: list[VerifiedReceipt]
) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    log.record(receipts[0], at=AT)
    refuse(log, other_session[0], 0)
    report = audit(path, world)
    assert report.findings == () and (report.sessions, report.refused) == (2, 1)


def test_a_seq_with_a_receipt_and_a_refusal_or_two_refusals_is_found(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    log.record(receipts[0], at=AT)
    log.record(receipts[1], at=AT)
    refuse(log, receipts[0], 1)  # seq 1 has a receipt already
    refuse(log, receipts[0], 2)
    refuse(log, receipts[0], 2, "inference")  # and seq 2 is refused twice
    sid = receipts[0].receipt.session_id.hex()
    report = audit(path, world)
    assert messages(report) == [
        f"AU7 repeat: session {sid[:16]}…: seq 1 has both a receipt and a refusal (entries 2 and 3)",
        f"AU7 repeat: session {sid[:16]}…: seq 2 is refused more than once (entries 4 and 5)",
    ]
    assert [(f.check, f.kind, f.entry, f.session) for f in report.findings] == [
        ("AU7", "repeat", None, sid), ("AU7", "repeat", None, sid)
    ]


def test_a_forged_refusal_breaks_the_chain(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    # A receipt deleted and a refusal of its seq put in its place, the chain not rebuilt.
    path = log_of(tmp_path, receipts[:3])
    r = receipts[1]
    forged = Refusal(r.receipt.session_id, 1, "limit", r.attestation.document.sha256).to_cbor()
    with sql(path) as db:
        db.execute("UPDATE entries SET kind = 'refused', receipt = NULL, refusal = ?, "
                   "record_sha256 = ?, receipt_id = '', model_id = '', mode = '' WHERE n = 2",
                   (forged, hashlib.sha256(forged).digest()))  # fmt: skip
    assert messages(audit(path, world)) == [
        "AU3 chain: entry 2 does not hash to its entry_hash (edited?)"
    ]
    # A refusal is not signed: with the chain rebuilt, nothing offline tells it from a
    # real one (protocol.md §12.4); only a head kept from before pins it.
    head = audit(path, world).head
    rechain(path)
    assert messages(audit(path, world)) == []
    assert head is not None
    assert messages(audit(path, world, head=head[1])) == [
        f"AU8 head: no entry has hash {head[1].hex()} (entries removed, or another log)"
    ]


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        ({"code": "Limit"}, "code is not an error code (1-40 of a-z, 0-9, _; a letter first)"),
        ({"code": ""}, "code is not an error code (1-40 of a-z, 0-9, _; a letter first)"),
        ({"seq": -1}, "seq is not an unsigned integer"),
        ({"sid": b"short"}, "sid is not 16 bytes"),
        ({"attestation": "text"}, "attestation is not 32 bytes"),
        ({"v": 2}, "refusal record version 2, not 1"),
        ({"msg": "input 0 is 300 tokens"},
         "not a refusal record (its fields must be attestation, code, seq, sid, t, v)"),
    ],
)
def test_a_malformed_refusal_is_an_au4_finding(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt], edit: dict[str, Any], why: str
) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    log.record(receipts[0], at=AT)
    refuse(log, receipts[0], 1)
    with sql(path) as db:
        (raw,) = db.execute("SELECT refusal FROM entries WHERE n = 2").fetchone()
        bad = cbor2.dumps({**cbor2.loads(raw), **edit}, canonical=True)
        db.execute("UPDATE entries SET refusal = ?, record_sha256 = ? WHERE n = 2",
                   (bad, hashlib.sha256(bad).digest()))  # fmt: skip
    rechain(path)
    assert messages(audit(path, world)) == [f"AU4 record: entry 2: not a refusal record: {why}"]


def test_an_edited_refusal_is_found(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    log.record(receipts[0], at=AT)
    refuse(log, receipts[0], 1)
    with sql(path) as db:
        db.execute("UPDATE entries SET seq = 5 WHERE n = 2")
    assert messages(audit(path, world)) == [
        "AU4 record: entry 2: the indexed seq differs from its record (edited?)"
    ]
    with sql(path) as db:
        db.execute("UPDATE entries SET seq = 1, refusal = ? WHERE n = 2", (b"\xa0",))
    assert messages(audit(path, world)) == [
        "AU4 record: entry 2's refusal bytes are not the ones recorded (edited?)"
    ]
    with sql(path) as db:
        db.execute("UPDATE entries SET refusal = NULL WHERE n = 2")
    assert messages(audit(path, world)) == [
        "AU4 record: entry 2 is damaged: its refusal record is missing"
    ]


def test_a_refusal_whose_document_is_gone_does_not_count(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt], other_session: list[VerifiedReceipt]
) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    refuse(log, other_session[0], 0)
    doc = other_session[0].attestation.document
    with sql(path) as db:
        db.execute("DELETE FROM attestations")
    assert messages(audit(path, world)) == [
        f"AU5 attestation: entry 1: attestation document {doc.sha256.hex()} is not stored"
    ]


def test_a_log_from_before_refusals_gets_the_column(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    path = log_of(tmp_path, receipts[:1])
    with sql(path) as db:  # the schema as it was
        db.execute("ALTER TABLE entries DROP COLUMN refusal")
    refuse(AuditLog(path), receipts[0], 1)
    AuditLog(path).record(receipts[2], at=AT)
    with sql(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(entries)")]
    assert columns[-2:] == ["mode", "refusal"]
    assert audit(path, world).findings == ()


# ---------------------------------------------------------------- concurrency


def test_many_threads_record_one_chain(tmp_path: Path, world: MockWorld) -> None:
    pairs = [SessionPair(world) for _ in range(8)]
    for p in pairs:
        p.handshake()
    made = [[p.request((f"t{i}",)).receipt for i in range(12)] for p in pairs]
    path = tmp_path / "audit.db"
    shared = AuditLog(path)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        log = shared if i % 2 else AuditLog(path)  # one object shared, and one each
        try:
            for r in made[i]:
                log.record(r)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    report = audit(path, world)
    assert report.findings == () and report.entries == 96 and report.sessions == 8
    assert sorted(str(r[1]) for r in rows(path)) == sorted(
        r.receipt.receipt_id.hex() for rs in made for r in rs
    )


def _record_in_child(path: str, items: list[tuple[bytes, bytes, bytes]], start: Any) -> None:
    """A second process: verify each receipt from its bytes (as a client would) and
    record it, on a log another process is writing at the same time."""
    from ephemeralml.common._attestation import TrustedRoot, parse_unverified
    from ephemeralml.common._trust import UnsafeAnyMeasurements

    log = AuditLog(path)
    start.wait(60)  # both children record at once
    for raw, doc_raw, root in items:
        policy = AttestationPolicy(TrustedRoot.unsafe_mock(root), UnsafeAnyMeasurements())
        doc = verify_attestation(doc_raw, policy, now=parse_unverified(doc_raw).timestamp)
        log.record(verify_receipt(raw, doc))


def test_two_processes_record_one_chain(tmp_path: Path, world: MockWorld) -> None:
    pairs = [SessionPair(world) for _ in range(2)]
    for p in pairs:
        p.handshake()
    made = [[p.request((f"t{i}",)).receipt for i in range(40)] for p in pairs]
    root = world.nsm.root_certificate_der
    path = tmp_path / "audit.db"
    AuditLog(path).check()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_record_in_child,
                    args=(str(path), [(r.raw, r.attestation.document.raw, root) for r in rs], start))
        for rs in made
    ]  # fmt: skip
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    report = audit(path, world)
    assert report.findings == () and report.entries == 80 and report.sessions == 2
    # Interleaved, not one after the other: both sessions appear in the first half.
    assert len({str(r[0]) for r in rows(path, "session_id")[:40]}) == 2


# ---------------------------------------------------------------- migration


def _old_line(r: VerifiedReceipt, at: datetime = AT) -> str:
    """A line as the old audit.jsonl held it."""
    x = r.receipt
    return json.dumps({
        "verified_at": at.isoformat(timespec="milliseconds"), "receipt_id": x.receipt_id.hex(),
        "session_id": x.session_id.hex(), "seq": x.seq, "model_id": x.model_id,
        "attestation_hash": x.attestation_hash.hex(), "request_hash": x.request_hash.hex(),
        "response_hash": x.response_hash.hex(), "mode": x.mode,
    })  # fmt: skip


def test_an_old_audit_jsonl_is_imported_once_then_renamed(
    tmp_path: Path, world: MockWorld, receipts: list[VerifiedReceipt]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    lines = [_old_line(r) for r in receipts[:2]]
    (home / "audit.jsonl").write_text("".join(x + "\n" for x in lines))
    log = AuditLog.in_home(home)
    log.check()
    assert not (home / "audit.jsonl").exists()
    assert (home / "audit.jsonl.migrated").read_text() == "".join(x + "\n" for x in lines)
    log.record(receipts[2], at=AT)
    log.record(receipts[1], at=AT)  # the full receipt of a legacy line: now re-verifiable
    assert rows(home / "audit.db", "n, kind, legacy, seq") == [
        (1, "legacy", lines[0], 0), (2, "legacy", lines[1], 1),
        (3, "receipt", None, 2), (4, "receipt", None, 1),
    ]  # fmt: skip
    with sql(home / "audit.db") as db:
        (rec,) = db.execute("SELECT record_sha256 FROM entries WHERE n = 1").fetchone()
    assert rec == hashlib.sha256(lines[0].encode()).digest()
    report = check_log(AuditLog.in_home(home), policy(world))
    assert report.findings == ()
    assert (report.entries, report.verified, report.legacy, report.sessions) == (4, 2, 2, 1)
    # A legacy entry is chained like the others: editing it is found.
    with sql(home / "audit.db") as db:
        db.execute("UPDATE entries SET legacy = replace(legacy, '\"seq\": 0', '\"seq\": 9') WHERE n = 1")
    sid = receipts[0].receipt.session_id.hex()[:16]
    assert messages(check_log(AuditLog.in_home(home), policy(world))) == [
        "AU4 record: entry 1's legacy bytes are not the ones recorded (edited?)",
        f"AU7 gap: session {sid}…: seq 0 is missing",
    ]


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("not json", "not JSON"),
        ('{"receipt_id": "00"}', "not an audit line (its fields must be " + ", ".join(LEGACY_KEYS) + ")"),
        ("SEQ", "seq is not an unsigned integer"),
        ("TIME", "verified_at is not an ISO 8601 time with a zone"),
        ("HEX", "attestation_hash is not 32 bytes of lowercase hex"),
    ],
)
def test_a_bad_old_line_imports_nothing(
    tmp_path: Path, receipts: list[VerifiedReceipt], bad: str, why: str
) -> None:
    good = _old_line(receipts[0])
    d = json.loads(good)
    if bad == "SEQ":
        bad = json.dumps({**d, "seq": -1})
    elif bad == "TIME":
        bad = json.dumps({**d, "verified_at": "2026-01-02T03:04:05"})
    elif bad == "HEX":
        bad = json.dumps({**d, "attestation_hash": "AB" * 32})
    home = tmp_path / "home"
    home.mkdir()
    old = home / "audit.jsonl"
    old.write_text(f"{good}\n{bad}\n{good}\n")
    with pytest.raises(ConfigError) as info:
        AuditLog.in_home(home).check()
    assert str(info.value) == f"AU9 migration: {old} line 2: {why}; nothing imported"
    assert old.exists() and not (home / "audit.jsonl.migrated").exists()
    assert rows(home / "audit.db") == []


def test_an_old_file_beside_a_log_with_entries_is_left_alone(
    tmp_path: Path, receipts: list[VerifiedReceipt]
) -> None:
    home = tmp_path / "home"
    AuditLog.in_home(home).record(receipts[0])
    (home / "audit.jsonl").write_text(_old_line(receipts[1]) + "\n")
    AuditLog.in_home(home).record(receipts[2])
    assert (home / "audit.jsonl").exists()
    assert [r[3] for r in rows(home / "audit.db")] == ["receipt", "receipt"]


@pytest.fixture
def _umask() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def test_the_log_is_0600_whatever_the_umask(_umask: None, tmp_path: Path, receipts: list[VerifiedReceipt]) -> None:
    log_of(tmp_path, receipts[:1])
    for p in tmp_path.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p
