"""The mock NSM: AWS-format documents that verify under the mock root only."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

from ephemeralml.common._attestation import (
    AttestationPolicy,
    PcrAllowlist,
    TrustedRoot,
    parse_unverified,
    verify_attestation,
)
from ephemeralml.common._errors import (
    AttestationError,
    ConfigError,
    LimitError,
    LocalProtocolError,
    PolicyError,
)
from ephemeralml.enclave._measure import code_digest
from ephemeralml.enclave._nsm import Nsm
from ephemeralml.mock._nsm import MockNsm, mock_measurements

START = datetime(2030, 1, 1, 8, 0, 0, 123456, tzinfo=UTC)
AWS_KEY_ORDER = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
]


class Clock:
    def __init__(self, t: datetime = START) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    (root / "pkg").mkdir(parents=True)
    (root / "a.py").write_text("A = 1\n")
    (root / "pkg" / "b.py").write_text("B = 2\n")
    return root


@pytest.fixture
def measurements(code_dir: Path) -> dict[int, bytes]:
    return mock_measurements(
        code_digest=code_digest(code_dir),
        model_digest=hashlib.sha256(b"model v1").digest(),
        runtime_id="test-runtime",
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def nsm(tmp_path: Path, measurements: dict[int, bytes], clock: Clock) -> MockNsm:
    return MockNsm.load_or_create(tmp_path / "state", measurements, clock=clock)


def _policy(nsm: MockNsm, measurements: dict[int, bytes]) -> AttestationPolicy:
    return AttestationPolicy(
        TrustedRoot.unsafe_mock(nsm.root_certificate_der), PcrAllowlist([measurements])
    )


def _doc(nsm: MockNsm, **kw: Any) -> bytes:
    fields: dict[str, Any] = {"public_key": None, "user_data": None, "nonce": None}
    fields.update(kw)
    return nsm.get_attestation_doc(**fields)


# ---------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------


def test_mock_document_verifies_under_mock_root(
    nsm: MockNsm, measurements: dict[int, bytes], clock: Clock
) -> None:
    assert isinstance(nsm, Nsm) and nsm.mode == "mock"
    nonce = os.urandom(32)
    raw = _doc(nsm, public_key=b"\x04" + bytes(64), user_data=b"hello", nonce=nonce)
    verified = verify_attestation(raw, _policy(nsm, measurements), now=clock.t, nonce=nonce)
    doc = verified.document
    assert verified.root.is_mock
    assert doc.timestamp_ms == int(START.timestamp() * 1000)  # 123456 us -> 123 ms
    assert doc.timestamp == START.replace(microsecond=123000)
    assert (doc.public_key, doc.user_data, doc.nonce) == (b"\x04" + bytes(64), b"hello", nonce)
    assert doc.module_id == nsm.module_id
    assert doc.module_id.startswith("i-mock0000000000000-enc") and len(doc.module_id) == 39
    assert not doc.is_debug
    for i in range(16):
        expected = measurements.get(i, bytes(48))
        assert doc.pcrs[i] == expected == nsm.describe_pcr(i)
    # Fresh documents keep verifying within the maximum age, then stop (A6).
    # (The document keeps milliseconds: the clock's extra 456 us are not in it.)
    at = doc.timestamp + timedelta(seconds=300)
    verify_attestation(raw, _policy(nsm, measurements), now=at)
    with pytest.raises(AttestationError, match=r"^A6 freshness: document is 300\.001 s old"):
        verify_attestation(raw, _policy(nsm, measurements), now=at + timedelta(milliseconds=1))


def test_mock_document_rejected_under_aws_root(
    nsm: MockNsm, measurements: dict[int, bytes], clock: Clock, att_aws_root_pem: bytes
) -> None:
    raw = _doc(nsm)
    aws = AttestationPolicy(TrustedRoot.aws_nitro(att_aws_root_pem), PcrAllowlist([measurements]))
    with pytest.raises(AttestationError) as info:
        verify_attestation(raw, aws, now=clock.t)
    assert str(info.value).startswith(
        "A4 chain: cabundle[0] is not the pinned root 'aws-nitro-root-g1'"
    )
    with pytest.raises(ConfigError, match="is not the AWS Nitro Enclaves Root-G1"):
        TrustedRoot.aws_nitro(nsm.root_certificate_der)


def test_mock_document_rejected_by_other_measurements(
    nsm: MockNsm, measurements: dict[int, bytes], clock: Clock, code_dir: Path
) -> None:
    other = mock_measurements(
        code_digest=code_digest(code_dir),
        model_digest=hashlib.sha256(b"model v2").digest(),
        runtime_id="test-runtime",
    )
    policy = AttestationPolicy(
        TrustedRoot.unsafe_mock(nsm.root_certificate_der), PcrAllowlist([other])
    )
    with pytest.raises(PolicyError, match=r"^A9 measurements: .*differs at PCR0"):
        verify_attestation(_doc(nsm), policy, now=clock.t)


def test_exact_aws_format(
    nsm: MockNsm, att_vectors_dir: Path, att_nitro_vectors: dict[str, Any]
) -> None:
    raw = _doc(nsm)
    real = (att_vectors_dir / "nitro_attestation_2.cbor").read_bytes()
    # Untagged COSE_Sign1: 84, protected bstr a1013822, unprotected a0, payload 59 xxxx.
    assert raw[:8] == real[:8] == bytes.fromhex("8444a1013822a059")
    outer = cbor2.loads(raw)
    assert type(outer) is list and len(outer) == 4
    protected, unprotected, payload, signature = outer
    assert protected == bytes.fromhex("a1013822")
    assert unprotected == {}
    assert len(signature) == 96
    body = cbor2.loads(payload)
    for meta in att_nitro_vectors["documents"]:
        assert meta["payload_keys_in_order"] == AWS_KEY_ORDER
    real_body = cbor2.loads(cbor2.loads(real)[2])
    assert list(body) == list(real_body) == AWS_KEY_ORDER
    assert body["public_key"] is None and body["user_data"] is None and body["nonce"] is None
    assert body["digest"] == "SHA384"
    assert list(body["pcrs"]) == list(range(16))
    assert all(len(v) == 48 for v in body["pcrs"].values())
    assert body["cabundle"][0] == nsm.root_certificate_der
    assert len(body["cabundle"]) == 2
    # Same encoder style as AWS: plain (insertion-ordered) CBOR, not the
    # deterministic order, which would sort "digest" before "module_id".
    assert cbor2.dumps(real_body) == cbor2.loads(real)[2]
    assert cbor2.dumps(body) == payload
    assert cbor2.dumps(body, canonical=True) != payload
    # Same types per field as the real document.
    assert [type(body[k]) for k in AWS_KEY_ORDER[:6]] == [
        type(real_body[k]) for k in AWS_KEY_ORDER[:6]
    ]


def test_pycose_verifies_mock_documents(nsm: MockNsm) -> None:
    obj = cbor2.loads(_doc(nsm, nonce=b"n" * 32))
    leaf = x509.load_der_x509_certificate(cbor2.loads(obj[2])["certificate"])
    msg = Sign1Message.from_cose_obj(list(obj), True)
    leaf_key = leaf.public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    msg.key = EC2Key._from_cryptography_key(leaf_key)
    assert msg.verify_signature()


def test_mock_chain_shape(nsm: MockNsm) -> None:
    body = cbor2.loads(cbor2.loads(_doc(nsm))[2])
    root, inter = (x509.load_der_x509_certificate(d) for d in body["cabundle"])
    leaf = x509.load_der_x509_certificate(body["certificate"])

    def bc(c: x509.Certificate) -> x509.BasicConstraints:
        return c.extensions.get_extension_for_class(x509.BasicConstraints).value

    def ku(c: x509.Certificate) -> x509.KeyUsage:
        return c.extensions.get_extension_for_class(x509.KeyUsage).value

    cn = x509.oid.NameOID.COMMON_NAME
    assert root.subject.get_attributes_for_oid(cn)[0].value == (
        "ephemeralml MOCK Nitro root - NOT AWS"
    )
    assert root.subject == root.issuer
    assert bc(root).ca and bc(root).path_length == 1
    assert ku(root).key_cert_sign and ku(root).crl_sign
    assert root.not_valid_after_utc - root.not_valid_before_utc > timedelta(days=29 * 365)
    assert bc(inter).ca and bc(inter).path_length == 0
    assert timedelta(days=29) < inter.not_valid_after_utc - inter.not_valid_before_utc
    assert not bc(leaf).ca and ku(leaf).digital_signature and not ku(leaf).key_cert_sign
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=3)
    for c in (root, inter, leaf):
        assert c.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# State and rotation
# ---------------------------------------------------------------------------


def test_state_persists(
    tmp_path: Path, nsm: MockNsm, measurements: dict[int, bytes], clock: Clock
) -> None:
    again = MockNsm.load_or_create(tmp_path / "state", measurements, clock=clock)
    assert again.root_certificate_der == nsm.root_certificate_der
    assert again.module_id == nsm.module_id
    b1 = cbor2.loads(cbor2.loads(_doc(nsm))[2])
    b2 = cbor2.loads(cbor2.loads(_doc(again))[2])
    assert b1["cabundle"] == b2["cabundle"]
    # A document from the reloaded mock verifies under the first one's root.
    verify_attestation(_doc(again), _policy(nsm, measurements), now=clock.t)
    # A different state folder is a different root and module id.
    other = MockNsm.load_or_create(tmp_path / "other", measurements, clock=clock)
    assert other.root_certificate_der != nsm.root_certificate_der
    assert other.module_id != nsm.module_id
    override = MockNsm.load_or_create(
        tmp_path / "state", measurements, clock=clock, module_id="i-custom-enc1"
    )
    assert parse_unverified(_doc(override)).module_id == "i-custom-enc1"


def test_state_files_and_permissions(tmp_path: Path, nsm: MockNsm) -> None:
    ca = tmp_path / "state" / "mock-ca"
    assert stat.S_IMODE(ca.stat().st_mode) == 0o700
    assert sorted(p.name for p in ca.iterdir()) == [
        "intermediate.pem",
        "module_id",
        "root.crt",
        "root.key",
    ]
    for key_file in ("root.key", "intermediate.pem"):
        assert stat.S_IMODE((ca / key_file).stat().st_mode) == 0o600
    # No temporary folder or file left behind.
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["mock-ca"]


def _leaf_and_inter(raw: bytes) -> tuple[bytes, bytes]:
    body = cbor2.loads(cbor2.loads(raw)[2])
    return body["certificate"], body["cabundle"][1]


def test_leaf_rotates(nsm: MockNsm, measurements: dict[int, bytes], clock: Clock) -> None:
    leaf0, inter0 = _leaf_and_inter(_doc(nsm))
    clock.t = START + timedelta(hours=2)
    assert _leaf_and_inter(_doc(nsm)) == (leaf0, inter0)  # 1 h left: kept
    clock.t = START + timedelta(hours=2, minutes=40)  # 20 min left: re-minted
    raw = _doc(nsm)
    leaf1, inter1 = _leaf_and_inter(raw)
    assert leaf1 != leaf0 and inter1 == inter0
    verify_attestation(raw, _policy(nsm, measurements), now=clock.t)
    # The new leaf starts at the second it was minted, like AWS's.
    cert = x509.load_der_x509_certificate(leaf1)
    assert cert.not_valid_before_utc == clock.t.replace(microsecond=0)
    # A clock moved backwards before the leaf's start also gets a new leaf.
    clock.t = START - timedelta(minutes=5)
    raw = _doc(nsm)
    assert _leaf_and_inter(raw)[0] not in (leaf0, leaf1)
    verify_attestation(raw, _policy(nsm, measurements), now=clock.t)


def test_intermediate_rotates_and_persists(
    tmp_path: Path, nsm: MockNsm, measurements: dict[int, bytes], clock: Clock
) -> None:
    _, inter0 = _leaf_and_inter(_doc(nsm))
    clock.t = START + timedelta(days=28)  # more than a day left: kept
    assert _leaf_and_inter(_doc(nsm))[1] == inter0
    clock.t = START + timedelta(days=29, hours=12)  # under a day left: re-minted
    raw = _doc(nsm)
    inter1 = _leaf_and_inter(raw)[1]
    assert inter1 != inter0
    verify_attestation(raw, _policy(nsm, measurements), now=clock.t)
    reloaded = MockNsm.load_or_create(tmp_path / "state", measurements, clock=clock)
    assert _leaf_and_inter(_doc(reloaded))[1] == inter1
    assert reloaded.root_certificate_der == nsm.root_certificate_der


def test_load_renews_a_stale_intermediate(
    tmp_path: Path, nsm: MockNsm, measurements: dict[int, bytes]
) -> None:
    _, inter0 = _leaf_and_inter(_doc(nsm))
    later = Clock(START + timedelta(days=45))  # intermediate long expired
    reloaded = MockNsm.load_or_create(tmp_path / "state", measurements, clock=later)
    raw = _doc(reloaded)
    assert _leaf_and_inter(raw)[1] != inter0
    verify_attestation(raw, _policy(reloaded, measurements), now=later.t)


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        (lambda ca: (ca / "root.key").write_bytes(b"garbage"), "root: unreadable"),
        (lambda ca: (ca / "intermediate.pem").unlink(), "intermediate.pem"),
        (lambda ca: (ca / "root.crt").write_bytes(b""), "root: unreadable"),
        (lambda ca: (ca / "module_id").write_text("nope\n"), "module_id 'nope' is malformed"),
    ],
)
def test_corrupt_state_is_a_config_error(
    tmp_path: Path,
    nsm: MockNsm,
    measurements: dict[int, bytes],
    damage: Callable[[Path], object],
    detail: str,
) -> None:
    ca = tmp_path / "state" / "mock-ca"
    damage(ca)
    with pytest.raises(ConfigError, match="is incomplete or corrupt; delete that folder") as info:
        MockNsm.load_or_create(tmp_path / "state", measurements)
    assert detail in str(info.value)


def test_foreign_intermediate(tmp_path: Path, measurements: dict[int, bytes]) -> None:
    MockNsm.load_or_create(tmp_path / "a", measurements, clock=Clock())
    MockNsm.load_or_create(tmp_path / "b", measurements, clock=Clock())
    (tmp_path / "a" / "mock-ca" / "intermediate.pem").write_bytes(
        (tmp_path / "b" / "mock-ca" / "intermediate.pem").read_bytes()
    )
    with pytest.raises(ConfigError, match="intermediate is not issued by the root"):
        MockNsm.load_or_create(tmp_path / "a", measurements)


def test_key_not_matching_certificate(tmp_path: Path, measurements: dict[int, bytes]) -> None:
    a = MockNsm.load_or_create(tmp_path / "a", measurements, clock=Clock())
    MockNsm.load_or_create(tmp_path / "b", measurements, clock=Clock())
    (tmp_path / "a" / "mock-ca" / "root.key").write_bytes(
        (tmp_path / "b" / "mock-ca" / "root.key").read_bytes()
    )
    with pytest.raises(ConfigError, match="root: key does not match its certificate"):
        MockNsm.load_or_create(tmp_path / "a", measurements)
    assert a.root_certificate_der  # the running instance is unaffected


def test_mock_ca_not_a_folder(tmp_path: Path, measurements: dict[int, bytes]) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mock-ca").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        MockNsm.load_or_create(tmp_path / "s", measurements)


def test_publish_root(tmp_path: Path, nsm: MockNsm) -> None:
    out = tmp_path / "pub" / "mock-root.pem"
    out.parent.mkdir()
    nsm.publish_root(out)
    pem = out.read_bytes()
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert TrustedRoot.unsafe_mock(pem).certificate_der == nsm.root_certificate_der
    nsm.publish_root(out)  # replacing is fine
    assert [p.name for p in out.parent.iterdir()] == ["mock-root.pem"]
    # A missing folder is created; a path under a regular file cannot be written.
    nsm.publish_root(tmp_path / "new-dir" / "root.pem")
    assert (tmp_path / "new-dir" / "root.pem").read_bytes() == pem
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot write root certificate"):
        nsm.publish_root(tmp_path / "a-file" / "root.pem")
    assert not list((tmp_path / "new-dir").glob(".*.tmp"))  # nothing half-written left


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def test_field_limits(nsm: MockNsm) -> None:
    _doc(nsm, user_data=bytes(512), nonce=bytes(512), public_key=bytes(512))
    for field in ("public_key", "user_data", "nonce"):
        with pytest.raises(LimitError, match=f"{field} is 513 bytes; the limit is 512"):
            _doc(nsm, **{field: bytes(513)})
        with pytest.raises(LocalProtocolError, match=f"{field} must be bytes or None"):
            _doc(nsm, **{field: "text"})


def test_describe_pcr_and_random(nsm: MockNsm, measurements: dict[int, bytes]) -> None:
    assert nsm.describe_pcr(0) == measurements[0]
    assert nsm.describe_pcr(15) == bytes(48)
    for bad in (-1, 16, "0"):
        with pytest.raises(LocalProtocolError):
            nsm.describe_pcr(bad)  # type: ignore[arg-type]
    a, b = nsm.get_random(32), nsm.get_random(32)
    assert len(a) == 32 and a != b
    for bad in (0, 257, -1):
        with pytest.raises(LocalProtocolError):
            nsm.get_random(bad)


def test_bad_arguments(tmp_path: Path) -> None:
    for pcrs in ({16: bytes(48)}, {0: bytes(32)}, {"0": bytes(48)}):
        with pytest.raises(ConfigError, match="mock NSM: PCR"):
            MockNsm.load_or_create(tmp_path, pcrs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timezone-aware"):
        MockNsm.load_or_create(tmp_path, {}, clock=lambda: datetime(2030, 1, 1))


# ---------------------------------------------------------------------------
# Measurements and code digest
# ---------------------------------------------------------------------------


def test_mock_measurements_formulas() -> None:
    code, model = bytes([1]) * 48, bytes([2]) * 32

    def h(*parts: object) -> bytes:
        return hashlib.sha384(cbor2.dumps(list(parts), canonical=True)).digest()

    m = mock_measurements(code_digest=code, model_digest=model, runtime_id="rt")
    assert m == {
        0: h("ephemeralml-mock-pcr0-image", "rt", code, model),
        1: h("ephemeralml-mock-kernel", "rt"),
        2: h("ephemeralml-mock-application", code),
        8: bytes(48),
    }
    other_model = mock_measurements(code_digest=code, model_digest=bytes(32), runtime_id="rt")
    assert other_model[0] != m[0] and other_model[2] == m[2] and other_model[1] == m[1]
    other_code = mock_measurements(code_digest=bytes(48), model_digest=model, runtime_id="rt")
    assert other_code[0] != m[0] and other_code[2] != m[2]
    other_rt = mock_measurements(code_digest=code, model_digest=model, runtime_id="rt2")
    assert other_rt[0] != m[0] and other_rt[1] != m[1] and other_rt[2] == m[2]
    with pytest.raises(ConfigError):
        mock_measurements(code_digest=b"", model_digest=model, runtime_id="rt")


def test_code_digest(tmp_path: Path, code_dir: Path) -> None:
    d0 = code_digest(code_dir)
    assert len(d0) == 48 and code_digest(code_dir) == d0
    # Not .py, caches and hidden folders do not count.
    (code_dir / "notes.txt").write_text("x")
    (code_dir / "__pycache__").mkdir()
    (code_dir / "__pycache__" / "a.py").write_text("cached")
    (code_dir / ".venv").mkdir()
    (code_dir / ".venv" / "site.py").write_text("x")
    assert code_digest(code_dir) == d0
    # The same tree elsewhere digests the same.
    copy = tmp_path / "elsewhere" / "renamed"
    (copy / "pkg").mkdir(parents=True)
    (copy / "a.py").write_text("A = 1\n")
    (copy / "pkg" / "b.py").write_text("B = 2\n")
    assert code_digest(copy) == d0
    # A changed, added or moved file changes it.
    (code_dir / "pkg" / "b.py").write_text("B = 3\n")
    d1 = code_digest(code_dir)
    assert d1 != d0
    (code_dir / "pkg" / "c.py").write_text("")
    d2 = code_digest(code_dir)
    assert d2 not in (d0, d1)
    (code_dir / "pkg" / "c.py").rename(code_dir / "c.py")
    assert code_digest(code_dir) not in (d0, d1, d2)
    # Several folders: order and content both count.
    assert code_digest([code_dir, copy]) != code_digest([copy, code_dir])
    with pytest.raises(ConfigError, match=r"no \*\.py files"):
        code_digest(_empty(tmp_path))
    with pytest.raises(ConfigError, match="is not a file or folder"):
        code_digest(tmp_path / "nope")


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "empty"
    p.mkdir()
    return p


def test_changed_code_changes_pcr0_and_pcr2(code_dir: Path) -> None:
    model = hashlib.sha256(b"m").digest()
    before = mock_measurements(
        code_digest=code_digest(code_dir), model_digest=model, runtime_id="rt"
    )
    (code_dir / "a.py").write_text("A = 2\n")
    after = mock_measurements(
        code_digest=code_digest(code_dir), model_digest=model, runtime_id="rt"
    )
    assert before[0] != after[0] and before[2] != after[2] and before[1] == after[1]
