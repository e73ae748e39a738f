"""``ephemeral audit``, ``ephemeral audit export`` and ``ephemeral verify BUNDLE``: the
exact output, exit codes and one-line errors (protocol.md §12)."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path

import cbor2
import pytest

from ephemeralml.client._audit import AuditLog
from ephemeralml.client._audit_chain import decode_bundle
from ephemeralml.client._cli import main
from ephemeralml.common._attestation import PcrAllowlist
from ephemeralml.common._receipt import VerifiedReceipt
from tests.pair import MockWorld, SessionPair


@pytest.fixture(scope="module")
def receipts(world: MockWorld) -> list[VerifiedReceipt]:
    p = SessionPair(world)
    p.handshake()
    return [p.request((f"text {i}",)).receipt for i in range(3)]


@pytest.fixture
def home(tmp_path: Path, world: MockWorld, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$EPHEMERALML_HOME with what a mock enclave publishes (so --mock trusts ``world``)."""
    h = tmp_path / "home"
    (h / "published").mkdir(parents=True)
    (h / "published" / "mock-root.pem").write_bytes(world.nsm.root_certificate_der)
    m = world.policy.measurements
    assert isinstance(m, PcrAllowlist)
    pcrs = {f"PCR{i}": v.hex() for i, v in m.allowed[0].items()}
    (h / "published" / "measurements.json").write_text(json.dumps({"pcrs": pcrs}))
    monkeypatch.setenv("EPHEMERALML_HOME", str(h))
    return h


@pytest.fixture
def recorded(home: Path, receipts: list[VerifiedReceipt]) -> Path:
    log = AuditLog.in_home(home)
    for r in receipts:
        log.record(r)
    return home / "audit.db"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out)
    return code, out.getvalue()


def head_of(db: Path) -> str:
    with sqlite3.connect(db) as c:
        return bytes(c.execute("SELECT entry_hash FROM entries ORDER BY n DESC").fetchone()[0]).hex()


PUBLISHED = "checked (the measurements the mock enclave published)"


def test_audit_of_a_clean_log(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run("audit", "--mock")
    assert code == 0
    assert out.splitlines() == [
        f"audit log {recorded} VERIFIED",
        "  entries       3 (3 receipt(s) re-verified, 0 legacy: chain-checked only)",
        "  refusals      0 (recorded in-session, not verifiable offline)",
        "  attestations  1 document(s)",
        "  sessions      1",
        f"  head          entry 3 sha256 {head_of(recorded)}",
        f"  PCR policy    {PUBLISHED}",
    ]
    assert capsys.readouterr().err.startswith("WARNING: trusting the MOCK attestation root")
    code, out = run("audit", "--mock", "--json", "--head", head_of(recorded))
    assert code == 0
    assert json.loads(out) == {
        "verified": True, "log": str(recorded), "entries": 3, "receipts_verified": 3,
        "legacy": 0, "refused": 0, "attestations": 1, "sessions": 1,
        "head": {"entry": 3, "sha256": head_of(recorded)}, "pcr_policy": PUBLISHED,
        "findings": [],
    }  # fmt: skip


def test_audit_findings_are_one_line_each_and_exit_1(
    recorded: Path, receipts: list[VerifiedReceipt], capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(recorded) as db:
        db.execute("DELETE FROM entries WHERE n = 2")
    sid = receipts[0].receipt.session_id.hex()
    capsys.readouterr()
    code, out = run("audit", "--mock")
    assert code == 1
    assert out.splitlines()[0] == f"audit log {recorded} 3 FINDING(S)"
    assert out.splitlines()[-3:] == [
        "AU2 numbering: entry 2 is missing (deleted?)",
        "AU3 chain: entry 3 does not follow entry 1 (prev differs)",
        f"AU7 gap: session {sid[:16]}…: seq 1 is missing",
    ]
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ephemeral: verification error: 3 finding(s) in the audit log {recorded} "
        "(one per line above)"
    )
    code, out = run("audit", "--mock", "--json")
    assert code == 1
    doc = json.loads(out)  # one document: the report and the error
    assert doc["verified"] is False
    assert doc["findings"] == [
        {"check": "AU2", "kind": "numbering", "entry": 3, "session": None,
         "message": "AU2 numbering: entry 2 is missing (deleted?)"},
        {"check": "AU3", "kind": "chain", "entry": 3, "session": None,
         "message": "AU3 chain: entry 3 does not follow entry 1 (prev differs)"},
        {"check": "AU7", "kind": "gap", "entry": None, "session": sid,
         "message": f"AU7 gap: session {sid[:16]}…: seq 1 is missing"},
    ]  # fmt: skip
    assert doc["error"] == {
        "code": "verification", "message": f"3 finding(s) in the audit log {recorded}"
    }


def test_audit_needs_a_trust_flag_a_log_and_a_good_head(
    home: Path, recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("audit")[0] == 2
    assert capsys.readouterr().err == (
        "ephemeral: error: audit needs --policy FILE (allowed measurements), --mock for a mock "
        "log, or --root PEM (PCRs then not checked)\n"
    )
    assert run("audit", "--mock", "--db", str(home / "none.db"))[0] == 2
    assert capsys.readouterr().err == (
        f"ephemeral: error: no audit log at {home / 'none.db'} (nothing recorded yet)\n"
    )
    assert run("audit", "--mock", "--head", "abc")[0] == 2
    assert capsys.readouterr().err == (
        "ephemeral: error: --head 'abc' is not an entry hash (64 hex digits)\n"
    )


def test_export_then_verify_the_bundle_alone(
    recorded: Path, receipts: list[VerifiedReceipt], tmp_path: Path
) -> None:
    out_file = tmp_path / "audit.bundle"
    code, out = run("audit", "export", str(out_file))
    assert code == 0
    size = out_file.stat().st_size
    assert out.splitlines() == [
        f"wrote {out_file}: 3 entries, 1 attestation document(s), {size} bytes",
        "  refusals      0 (recorded in-session, not verifiable offline)",
        f"  head          {head_of(recorded)}",
        f"  check it with ephemeral verify {out_file} (and the trust flags)",
    ]
    assert out_file.stat().st_mode & 0o777 == 0o600
    # The format (protocol.md §12.3): receipts' exact bytes, the document once, the head.
    b = cbor2.loads(out_file.read_bytes())
    assert list(b) == ["t", "v", "head", "entries", "attestations"]
    assert (b["t"], b["v"], b["head"].hex()) == ("ephemeralml audit bundle", 1, head_of(recorded))
    assert [e["receipt"] for e in b["entries"]] == [r.raw for r in receipts]
    assert b["attestations"] == [receipts[0].attestation.document.raw]
    assert sorted(b["entries"][0]) == ["at", "attestation", "hash", "kind", "n", "prev", "receipt"]
    # Another machine: nothing but the bundle and the trust flags.
    recorded.unlink()
    code, out = run("verify", str(out_file), "--mock")
    assert code == 0
    assert out.splitlines()[0] == f"audit bundle {out_file} VERIFIED"
    code, out = run("verify", str(out_file), "--mock", "--json")
    assert code == 0 and json.loads(out)["entries"] == 3 and json.loads(out)["bundle"] == str(out_file)
    assert not recorded.exists()  # a bundle is someone's log: verifying it records nothing
    code, out = run("audit", "export", str(tmp_path / "x"), "--json")
    assert code == 2  # no log left to export


def test_a_tampered_bundle_fails_verify(
    recorded: Path, receipts: list[VerifiedReceipt], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "audit.bundle"
    assert run("audit", "export", str(out_file))[0] == 0
    b = cbor2.loads(out_file.read_bytes())
    raw = bytearray(b["entries"][1]["receipt"])
    raw[-1] ^= 1
    b["entries"][1]["receipt"] = bytes(raw)
    out_file.write_bytes(cbor2.dumps(b, canonical=True))
    code, out = run("verify", str(out_file), "--mock")
    assert code == 1
    sid = receipts[0].receipt.session_id.hex()[:16]
    assert out.splitlines()[-3:] == [
        "AU3 chain: entry 2 does not hash to its entry_hash (edited?)",
        "AU6 signature: entry 2: R4 signature: the receipt signature does not verify",
        f"AU7 gap: session {sid}…: seq 1 is missing",
    ]
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"ephemeral: verification error: 3 finding(s) in the audit bundle {out_file} "
        "(one per line above)"
    )
    # Entries cut from the end, the head left as it was: AU8.
    b = cbor2.loads(out_file.read_bytes())
    b["entries"] = b["entries"][:1]
    out_file.write_bytes(cbor2.dumps(b, canonical=True))
    code, out = run("verify", str(out_file), "--mock")
    assert code == 1
    assert out.splitlines()[-1] == (
        "AU8 head: the bundle's head is not its last entry's hash (entries removed from the end?)"
    )


def test_a_malformed_bundle_and_single_receipt_flags_are_one_line(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(cbor2.dumps({"t": "ephemeralml audit bundle", "v": 2}, canonical=True))
    assert run("verify", str(bad), "--mock")[0] == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ephemeral: verification error: AU1 bundle: not an ephemeralml audit bundle"
    )
    good = tmp_path / "good.bundle"
    assert run("audit", "export", str(good))[0] == 0
    assert run("verify", str(good), "--mock", "--request", str(bad))[0] == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ephemeral: error: --attestation, --request and --response are for one receipt, "
        "not an audit bundle"
    )
    b = decode_bundle(good.read_bytes())
    assert [e.n for e in b.entries] == [1, 2, 3]
    assert hashlib.sha256(b.attestations[next(iter(b.attestations))]).digest() in b.attestations


def test_export_refuses_a_broken_chain(recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(recorded) as db:
        db.execute("UPDATE entries SET recorded_at_ms = 0 WHERE n = 2")
    assert run("audit", "export", str(tmp_path / "out"))[0] == 1
    assert capsys.readouterr().err == (
        "ephemeral: verification error: AU3 chain: entry 2 does not hash to its entry_hash "
        "(edited?); not exported (ephemeral audit lists what is wrong)\n"
    )
    assert not (tmp_path / "out").exists()


def test_verify_of_a_single_receipt_is_unchanged(
    home: Path, receipts: list[VerifiedReceipt], tmp_path: Path
) -> None:
    r = receipts[0]
    doc = r.attestation.document
    (tmp_path / f"{doc.sha256_hex}.attestation.cbor").write_bytes(doc.raw)
    path = tmp_path / f"{r.receipt.receipt_id_hex}.receipt.cbor"
    path.write_bytes(r.raw)
    code, out = run("verify", str(path), "--mock")
    assert code == 0 and out.splitlines()[0] == f"receipt {r.receipt.receipt_id_hex} VERIFIED"
    with sqlite3.connect(home / "audit.db") as db:
        assert db.execute("SELECT receipt FROM entries").fetchall() == [(r.raw,)]


def test_a_reordered_bundle_fails_verify(recorded: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "audit.bundle"
    assert run("audit", "export", str(out_file))[0] == 0
    b = cbor2.loads(out_file.read_bytes())
    b["entries"] = [b["entries"][0], b["entries"][2], b["entries"][1]]
    b["head"] = b["entries"][-1]["hash"]
    out_file.write_bytes(cbor2.dumps(b, canonical=True))
    code, out = run("verify", str(out_file), "--mock")
    assert code == 1
    assert out.splitlines()[-4:] == [
        "AU2 numbering: entry 2 is missing (deleted?)",
        "AU3 chain: entry 3 does not follow entry 1 (prev differs)",
        "AU2 numbering: entry 2 is out of place (after entry 3)",
        "AU3 chain: entry 2 does not follow entry 3 (prev differs)",
    ]


REFUSALS = "recorded in-session, not verifiable offline"


def test_a_bundle_with_refusals_verifies_and_says_what_they_are(
    recorded: Path, home: Path, receipts: list[VerifiedReceipt], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    r = receipts[0]
    sid, doc = r.receipt.session_id, r.attestation.document
    AuditLog.in_home(home).record_refusal(r.attestation, sid, 3, "limit")
    AuditLog.in_home(home).record_refusal(r.attestation, sid, 4, "inference")
    code, out = run("audit", "--mock")
    assert code == 0
    assert out.splitlines()[1:3] == [
        "  entries       5 (3 receipt(s) re-verified, 0 legacy: chain-checked only)",
        f"  refusals      2 ({REFUSALS})",
    ]
    out_file = tmp_path / "audit.bundle"
    code, out = run("audit", "export", str(out_file))
    assert code == 0
    size = out_file.stat().st_size
    assert out.splitlines()[:2] == [
        f"wrote {out_file}: 5 entries, 1 attestation document(s), {size} bytes",
        f"  refusals      2 ({REFUSALS})",
    ]
    # The format (protocol.md §12.3): a refusal entry carries its record as "refusal".
    b = cbor2.loads(out_file.read_bytes())
    assert [e["kind"] for e in b["entries"]] == ["receipt"] * 3 + ["refused"] * 2
    assert sorted(b["entries"][3]) == ["at", "attestation", "hash", "kind", "n", "prev", "refusal"]
    assert cbor2.loads(b["entries"][3]["refusal"]) == {
        "t": "ephemeralml refusal", "v": 1, "sid": sid, "seq": 3, "code": "limit",
        "attestation": doc.sha256,
    }  # fmt: skip
    assert b["entries"][4]["attestation"] == doc.sha256
    assert b["attestations"] == [doc.raw]
    code, out = run("audit", "export", str(tmp_path / "again.bundle"), "--json")
    assert code == 0 and (json.loads(out)["entries"], json.loads(out)["refused"]) == (5, 2)
    recorded.unlink()  # another machine: the bundle alone
    code, out = run("verify", str(out_file), "--mock")
    assert code == 0
    assert out.splitlines()[:4] == [
        f"audit bundle {out_file} VERIFIED",
        "  entries       5 (3 receipt(s) re-verified, 0 legacy: chain-checked only)",
        f"  refusals      2 ({REFUSALS})",
        "  attestations  1 document(s)",
    ]
    code, out = run("verify", str(out_file), "--mock", "--json")
    assert code == 0
    doc_json = json.loads(out)
    assert (doc_json["entries"], doc_json["receipts_verified"], doc_json["refused"]) == (5, 3, 2)
    assert doc_json["findings"] == []
    # An edited refusal (seq 3 made seq 2, the receipt's): the chain shows it.
    b["entries"][3]["refusal"] = cbor2.dumps(
        {**cbor2.loads(b["entries"][3]["refusal"]), "seq": 2}, canonical=True
    )
    out_file.write_bytes(cbor2.dumps(b, canonical=True))
    capsys.readouterr()
    code, out = run("verify", str(out_file), "--mock")
    assert code == 1
    assert out.splitlines()[-3:] == [
        "AU3 chain: entry 4 does not hash to its entry_hash (edited?)",
        f"AU7 repeat: session {sid.hex()[:16]}…: seq 2 has both a receipt and a refusal "
        "(entries 3 and 4)",
        f"AU7 gap: session {sid.hex()[:16]}…: seq 3 is missing",
    ]
    # A refusal entry whose record is not bytes is not an entry (AU1).
    b["entries"][3]["refusal"] = "limit"
    out_file.write_bytes(cbor2.dumps(b, canonical=True))
    assert run("verify", str(out_file), "--mock")[0] == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ephemeral: verification error: AU1 bundle: entries[3].refusal is not bytes"
    )
