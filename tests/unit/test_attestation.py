"""protocol.md §3: verification of Nitro attestation documents (checks A1 to A10).

Real AWS documents come from tests/vectors/real (PROVENANCE.md); synthetic documents
signed by throwaway chains cover what no real document shows (bad CA constraints,
absent optional fields, millisecond edges).

Longer than 600 lines on purpose: one test per check or attack, each asserting its exact
error, reads better in one file than spread over several.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

from ephemeralml.common._attestation import (
    AWS_NITRO_ROOT_SHA256,
    MAX_ATTESTATION_AGE_S,
    MAX_ATTESTATION_BYTES,
    MAX_CLOCK_SKEW_S,
    MAX_OPTIONAL_FIELD_BYTES,
    AttestationDocument,
    AttestationPolicy,
    Measurements,
    PcrAllowlist,
    TrustedRoot,
    UnsafeAnyMeasurements,
    VerifiedAttestation,
    parse_unverified,
    verify_attestation,
)
from ephemeralml.common._errors import AttestationError, ConfigError, Error, PolicyError

DOCS = [1, 2, 3, 4, 5]
PROTECTED = bytes.fromhex("a1013822")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws_root(att_aws_root_pem: bytes) -> TrustedRoot:
    return TrustedRoot.aws_nitro(att_aws_root_pem)


def _raw(vectors: Path, n: int | str) -> bytes:
    return (vectors / f"nitro_attestation_{n}.cbor").read_bytes()


def _meta(nitro_vectors: dict[str, Any], n: int) -> dict[str, Any]:
    doc: dict[str, Any] = nitro_vectors["documents"][n - 1]
    assert doc["file"] == f"nitro_attestation_{n}.cbor"
    return doc


def _own_policy(raw: bytes, root: TrustedRoot, **kw: Any) -> AttestationPolicy:
    return AttestationPolicy(root, PcrAllowlist.from_document(parse_unverified(raw)), **kw)


def _ts(raw: bytes) -> datetime:
    return parse_unverified(raw).timestamp


def _leaf(raw: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(parse_unverified(raw).certificate)


def _reject(exc: type[Error], prefix: str, fn: Callable[[], object], *, contains: str = "") -> str:
    with pytest.raises(exc) as info:
        fn()
    assert type(info.value) is exc, f"expected exactly {exc.__name__}, got {type(info.value)}"
    msg = str(info.value)
    assert msg.startswith(prefix), msg
    assert contains in msg, msg
    return msg


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


# -- synthetic chains and documents ------------------------------------------

T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def _cert(
    *,
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_cn: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool | None,
    path_length: int | None = None,
    key_cert_sign: bool | None = None,
    not_before: datetime = T0 - timedelta(days=1),
    not_after: datetime = T0 + timedelta(days=1),
    unknown_critical: bool = False,
) -> bytes:
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        b = b.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if key_cert_sign is not None:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=not key_cert_sign,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=key_cert_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if unknown_critical:
        # An extension no verifier of ours processes, marked critical (RFC 5280 §4.2).
        b = b.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
            critical=True,
        )
    return b.sign(issuer_key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)


def _p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@dataclass
class Chain:
    root_der: bytes
    cabundle: list[bytes]
    leaf_der: bytes
    leaf_key: ec.EllipticCurvePrivateKey

    @property
    def trusted(self) -> TrustedRoot:
        return TrustedRoot.from_pem_or_der(self.root_der, name="test-root")


def _chain(
    *,
    root_path_length: int | None = 1,
    inter_ca: bool | None = True,
    inter_key_cert_sign: bool | None = True,
    leaf_ca: bool | None = False,
    leaf_key: ec.EllipticCurvePrivateKey | None = None,
    leaf_not_before: datetime = T0 - timedelta(hours=1),
    leaf_not_after: datetime = T0 + timedelta(hours=2),
    inter_unknown_critical: bool = False,
    leaf_unknown_critical: bool = False,
) -> Chain:
    root_key, inter_key = _p384(), _p384()
    lkey = leaf_key if leaf_key is not None else _p384()
    root = _cert(
        cn="test root",
        key=root_key,
        issuer_cn="test root",
        issuer_key=root_key,
        ca=True,
        path_length=root_path_length,
        key_cert_sign=True,
    )
    inter = _cert(
        cn="test intermediate",
        key=inter_key,
        issuer_cn="test root",
        issuer_key=root_key,
        ca=inter_ca,
        path_length=0,
        key_cert_sign=inter_key_cert_sign,
        unknown_critical=inter_unknown_critical,
    )
    leaf = _cert(
        cn="test leaf",
        key=lkey,
        issuer_cn="test intermediate",
        issuer_key=inter_key,
        ca=leaf_ca,
        key_cert_sign=False,
        not_before=leaf_not_before,
        not_after=leaf_not_after,
        unknown_critical=leaf_unknown_critical,
    )
    return Chain(root_der=root, cabundle=[root, inter], leaf_der=leaf, leaf_key=lkey)


def _ms(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _payload(chain: Chain, *, timestamp: datetime = T0, **override: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
        "digest": "SHA384",
        "timestamp": _ms(timestamp),
        "pcrs": {i: (bytes([0x11]) * 48 if i == 0 else bytes(48)) for i in range(16)},
        "certificate": chain.leaf_der,
        "cabundle": list(chain.cabundle),
        "public_key": None,
        "user_data": None,
        "nonce": None,
    }
    for k, v in override.items():
        if v is _ABSENT:
            del body[k]
        else:
            body[k] = v
    return body


_ABSENT = object()


def _sign(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    tbs = cbor2.dumps(["Signature1", PROTECTED, b"", payload])
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA384())))
    n = (key.curve.key_size + 7) // 8
    return r.to_bytes(n, "big") + s.to_bytes(n, "big")


def _doc(chain: Chain, body: dict[str, Any] | None = None) -> bytes:
    payload = cbor2.dumps(body if body is not None else _payload(chain))
    return cbor2.dumps([PROTECTED, {}, payload, _sign(payload, chain.leaf_key)])


def _any(root: TrustedRoot, **kw: Any) -> AttestationPolicy:
    return AttestationPolicy(root, UnsafeAnyMeasurements(), **kw)


def _with_payload(raw: bytes, mutate: Callable[[dict[str, Any]], object]) -> bytes:
    """Re-encode ``raw`` with a changed payload, keeping the (now wrong) signature."""
    protected, unprotected, payload, sig = cbor2.loads(raw)
    body = cbor2.loads(payload)
    mutate(body)
    return cbor2.dumps([protected, unprotected, cbor2.dumps(body), sig])


# ---------------------------------------------------------------------------
# Real documents verify (all checks) and parse to the recorded values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", DOCS)
def test_real_document_verifies_at_its_timestamp(
    n: int, att_vectors_dir: Path, att_nitro_vectors: dict[str, Any], aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, n)
    meta = _meta(att_nitro_vectors, n)
    now = datetime.fromisoformat(meta["timestamp_utc"])
    verified = verify_attestation(raw, _own_policy(raw, aws_root), now=now)

    assert isinstance(verified, VerifiedAttestation)
    assert verified.root is aws_root
    assert verified.verified_at == now
    doc = verified.document
    assert doc.raw == raw
    assert doc.sha256_hex == meta["sha256"] == hashlib.sha256(raw).hexdigest()
    assert doc.sha256 == bytes.fromhex(meta["sha256"])
    assert doc.module_id == meta["module_id"]
    assert doc.digest == "SHA384"
    assert doc.timestamp_ms == meta["timestamp_ms"]
    assert doc.timestamp == now
    assert doc.is_debug is meta["debug_mode_pcr0_all_zero"]
    assert {i: v.hex() for i, v in doc.pcrs.items()} == {int(k): v for k, v in meta["pcrs"].items()}
    assert list(doc.pcrs) == list(range(16))
    assert len(doc.cabundle) == meta["cabundle_len"] == 4
    assert doc.cabundle[0] == aws_root.certificate_der
    for field in ("public_key", "user_data", "nonce"):
        value = getattr(doc, field)
        assert (value.hex() if value is not None else None) == meta[f"{field}_hex"], field
    leaf = x509.load_der_x509_certificate(doc.certificate)
    assert leaf.subject.rfc4514_string() == meta["leaf_subject"]


@pytest.mark.parametrize("n", DOCS)
def test_real_document_verifies_mid_chain_window(
    n: int, att_vectors_dir: Path, att_nitro_vectors: dict[str, Any], aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, n)
    start, end = (
        datetime.fromisoformat(t) for t in _meta(att_nitro_vectors, n)["chain_valid_window_utc"]
    )
    now = start + (end - start) / 2
    # An archived document is hours old at mid-window: allow that age here.
    policy = _own_policy(raw, aws_root, max_age_s=24 * 3600)
    assert verify_attestation(raw, policy, now=now).verified_at == now
    # ... and the default maximum age refuses it (A6), after A5 passed.
    _reject(
        AttestationError,
        "A6 freshness:",
        lambda: verify_attestation(raw, _own_policy(raw, aws_root), now=now),
        contains="old",
    )


def test_parse_unverified_verifies_nothing(att_vectors_dir: Path) -> None:
    bad = parse_unverified(_raw(att_vectors_dir, "bad_sig"))
    good = parse_unverified(_raw(att_vectors_dir, 2))
    assert bad.module_id == good.module_id
    assert bad.sha256 != good.sha256


def test_verified_attestation_has_no_truth_value(
    att_vectors_dir: Path, aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, 2)
    verified = verify_attestation(raw, _own_policy(raw, aws_root), now=_ts(raw))
    with pytest.raises(TypeError, match="use its fields"):
        bool(verified)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.root = aws_root  # type: ignore[misc]
    with pytest.raises(TypeError):
        verified.document.pcrs[0] = bytes(48)  # type: ignore[index]


# ---------------------------------------------------------------------------
# Real documents are rejected when anything is off
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", DOCS)
def test_real_document_rejected_now_a5(
    n: int, att_vectors_dir: Path, aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, n)
    # The regional intermediate (about 20 days) is the first certificate to expire.
    _reject(
        AttestationError,
        "A5 validity: cabundle[1] is not valid at now",
        lambda: verify_attestation(raw, _own_policy(raw, aws_root), now=datetime.now(UTC)),
    )


@pytest.mark.parametrize("n", DOCS)
def test_real_document_every_signature_byte_flip_a3(
    n: int, att_vectors_dir: Path, aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, n)
    policy, now = _own_policy(raw, aws_root), _ts(raw)
    # The signature is the last 96 bytes of an untagged COSE_Sign1 (bstr head 58 60).
    assert raw[-98:-96] == b"\x58\x60"
    for i in range(len(raw) - 96, len(raw)):
        _reject(
            AttestationError,
            "A3 signature: COSE ES384 signature does not verify",
            partial(verify_attestation, _flip(raw, i, 0x80), policy, now=now),
        )


@pytest.mark.parametrize("n", DOCS)
def test_real_document_pcr0_byte_flip_a3(
    n: int, att_vectors_dir: Path, aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, n)
    pcr0 = parse_unverified(raw).pcrs[0]
    at = raw.find(b"\x00\x58\x30" + pcr0)  # key 0, then a 48-byte bstr
    assert at > 0
    mutated = _flip(raw, at + 3 + 17)
    assert parse_unverified(mutated).pcrs[0] != pcr0
    _reject(
        AttestationError,
        "A3 signature:",
        lambda: verify_attestation(mutated, _own_policy(raw, aws_root), now=_ts(raw)),
    )


def test_bad_sig_vector_rejected_a3(att_vectors_dir: Path, aws_root: TrustedRoot) -> None:
    raw = _raw(att_vectors_dir, "bad_sig")
    _reject(
        AttestationError,
        "A3 signature: COSE ES384 signature does not verify",
        lambda: verify_attestation(raw, _own_policy(raw, aws_root), now=_ts(raw)),
    )


@pytest.mark.parametrize("n", DOCS)
def test_real_document_other_root_a4(
    n: int, att_vectors_dir: Path, att_other_root_pem: bytes
) -> None:
    raw = _raw(att_vectors_dir, n)
    other = TrustedRoot.from_pem_or_der(att_other_root_pem, name="impostor")
    _reject(
        AttestationError,
        "A4 chain: cabundle[0] is not the pinned root 'impostor' (fingerprint "
        + AWS_NITRO_ROOT_SHA256,
        lambda: verify_attestation(raw, _own_policy(raw, other), now=_ts(raw)),
    )
    with pytest.raises(ConfigError, match="is not the AWS Nitro Enclaves Root-G1"):
        TrustedRoot.aws_nitro(att_other_root_pem)


@pytest.mark.parametrize("n", DOCS)
def test_real_document_leaf_validity_edges_a5(
    n: int, att_vectors_dir: Path, aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, n)
    leaf = _leaf(raw)
    policy = _own_policy(raw, aws_root, max_age_s=24 * 3600)
    after = leaf.not_valid_after_utc
    before = leaf.not_valid_before_utc
    verify_attestation(raw, policy, now=after)  # inclusive
    _reject(
        AttestationError,
        "A5 validity: leaf is not valid at now",
        lambda: verify_attestation(raw, policy, now=after + timedelta(seconds=1)),
    )
    _reject(
        AttestationError,
        "A5 validity: leaf is not valid at now",
        lambda: verify_attestation(raw, policy, now=before - timedelta(seconds=1)),
    )
    if _ts(raw) - before <= timedelta(seconds=MAX_CLOCK_SKEW_S):
        verify_attestation(raw, policy, now=before)  # inclusive (doc #1: 100 ms after)


def test_doc1_is_100ms_after_leaf_not_before(att_vectors_dir: Path, aws_root: TrustedRoot) -> None:
    raw = _raw(att_vectors_dir, 1)
    assert _ts(raw) - _leaf(raw).not_valid_before_utc == timedelta(milliseconds=100)
    verify_attestation(raw, _own_policy(raw, aws_root), now=_ts(raw))


@pytest.mark.parametrize("n", DOCS)
def test_tag_18_accepted_other_tags_rejected_a1(
    n: int, att_vectors_dir: Path, aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, n)
    policy, now = _own_policy(raw, aws_root), _ts(raw)
    tagged = b"\xd2" + raw
    assert verify_attestation(tagged, policy, now=now).document.raw == tagged
    _reject(
        AttestationError,
        "A1 envelope: attestation document has CBOR tag 998 at byte 0, which is not accepted",
        lambda: verify_attestation(b"\xd9\x03\xe6" + raw, policy, now=now),
    )
    _reject(
        AttestationError,
        "A1 envelope: attestation document has CBOR tag 98 at byte 0, which is not accepted",  # COSE_Sign
        lambda: verify_attestation(b"\xd8\x62" + raw, policy, now=now),
    )
    _reject(
        AttestationError,
        "A1 envelope: attestation document has CBOR tag 18 at byte 1, which is not accepted",
        lambda: verify_attestation(b"\xd2\xd2" + raw, policy, now=now),
    )
    # Finding 6 of issue 7: self-described CBOR (55799) around a valid document was
    # stripped by cbor2 and verified, a second "valid" encoding of one document.
    for wrapped, at in ((b"\xd9\xd9\xf7" + raw, 0), (b"\xd9\xd9\xf7\xd2" + raw, 0)):
        _reject(
            AttestationError,
            f"A1 envelope: attestation document has CBOR tag 55799 at byte {at}, "
            "which is not accepted",
            partial(verify_attestation, wrapped, policy, now=now),
        )
    _reject(
        AttestationError,
        "A1 envelope: attestation document has CBOR tag 55799 at byte 1, which is not accepted",
        lambda: verify_attestation(b"\xd2\xd9\xd9\xf7" + raw, policy, now=now),
    )


# ---------------------------------------------------------------------------
# A1 envelope and A2 payload format
# ---------------------------------------------------------------------------


def _real2(vectors: Path) -> tuple[bytes, list[Any]]:
    raw = _raw(vectors, 2)
    return raw, list(cbor2.loads(raw))


@pytest.mark.parametrize(
    ("name", "build", "expected"),
    [
        (
            "trailing byte",
            lambda raw, o: raw + b"\x00",
            "A1 envelope: attestation document has 1 trailing",
        ),
        (
            "truncated",
            lambda raw, o: raw[:-1],
            "A1 envelope: attestation document is not well-formed",
        ),
        ("empty", lambda raw, o: b"", "A1 envelope: attestation document is empty"),
        (
            "oversized",
            lambda raw, o: raw + bytes(MAX_ATTESTATION_BYTES),
            f"A1 envelope: document is {4461 + MAX_ATTESTATION_BYTES} bytes; the limit is",
        ),
        (
            "not an array",
            lambda raw, o: cbor2.dumps({"a": 1}),
            "A1 envelope: not a COSE_Sign1 array",
        ),
        (
            "5 elements",
            lambda raw, o: cbor2.dumps([*o, b""]),
            "A1 envelope: not a COSE_Sign1 array",
        ),
        (
            "indefinite array",
            lambda raw, o: b"\x9f" + b"".join(cbor2.dumps(x) for x in o) + b"\xff",
            "A1 envelope: attestation document is not well-formed",
        ),
        (
            "alg ES256",
            lambda raw, o: cbor2.dumps([cbor2.dumps({1: -7}), *o[1:]]),
            "A1 envelope: protected header must be exactly {1: -35} (ES384), got a10126",
        ),
        (
            "alg -35 long form",
            lambda raw, o: cbor2.dumps([b"\xa1\x01\x39\x00\x22", *o[1:]]),
            "A1 envelope: protected header must be exactly",
        ),
        (
            "extra protected",
            lambda raw, o: cbor2.dumps([cbor2.dumps({1: -35, 4: b"k"}), *o[1:]]),
            "A1 envelope: protected header must be exactly",
        ),
        (
            "protected not bstr",
            lambda raw, o: cbor2.dumps([{1: -35}, *o[1:]]),
            "A1 envelope: protected header must be exactly",
        ),
        (
            "unprotected kid",
            lambda raw, o: cbor2.dumps([o[0], {4: b"kid"}, *o[2:]]),
            "A1 envelope: unprotected header must be an empty map",
        ),
        (
            "payload text",
            lambda raw, o: cbor2.dumps([o[0], o[1], "x", o[3]]),
            "A1 envelope: payload must be a byte string",
        ),
        (
            "signature 95",
            lambda raw, o: cbor2.dumps([*o[:3], o[3][:95]]),
            "A1 envelope: signature must be 96 bytes",
        ),
        (
            "DER signature",
            lambda raw, o: cbor2.dumps(
                [
                    *o[:3],
                    encode_dss_signature(
                        int.from_bytes(o[3][:48], "big"), int.from_bytes(o[3][48:], "big")
                    ),
                ]
            ),
            "A1 envelope: signature must be 96 bytes",
        ),
    ],
)
def test_envelope_rejected_a1(
    name: str,
    build: Callable[[bytes, list[Any]], bytes],
    expected: str,
    att_vectors_dir: Path,
    aws_root: TrustedRoot,
) -> None:
    raw, obj = _real2(att_vectors_dir)
    mutated = build(raw, obj)
    policy = _own_policy(raw, aws_root)
    _reject(AttestationError, expected, lambda: verify_attestation(mutated, policy, now=_ts(raw)))
    with pytest.raises(AttestationError):
        parse_unverified(mutated)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        body[key] = value

    return mutate


def _del(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        del body[key]

    return mutate


def _set_pcr(index: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        body["pcrs"][index] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_del("module_id"), "A2 payload: missing module_id"),
        (_del("cabundle"), "A2 payload: missing cabundle"),
        (_set("extra", 1), "A2 payload: unexpected keys"),
        (_set("module_id", ""), "A2 payload: module_id must be non-empty text"),
        (_set("module_id", b"i-0"), "A2 payload: module_id must be non-empty text"),
        (_set("digest", "SHA256"), "A2 payload: digest must be 'SHA384'"),
        (_set("timestamp", 0), "A2 payload: timestamp must be a positive integer"),
        (_set("timestamp", -5), "A2 payload: timestamp must be a positive integer"),
        (_set("timestamp", True), "A2 payload: timestamp must be a positive integer"),
        (_set("timestamp", 1.5e12), "A2 payload: timestamp must be a positive integer"),
        (_set("timestamp", 2**64 - 1), "A2 payload: timestamp must be a positive integer"),
        (_set("pcrs", {}), "A2 payload: pcrs must be a map of 1 to 32"),
        (_set("pcrs", [bytes(48)]), "A2 payload: pcrs is not a map"),
        (
            _set("pcrs", {i: bytes(48) for i in range(33)}),
            "A2 payload: pcrs must be a map of 1 to 32",
        ),
        (_set_pcr(32, bytes(48)), "A2 payload: PCR index 32 is not an integer"),
        (_set_pcr(-1, bytes(48)), "A2 payload: PCR index -1 is not an integer"),
        (_set_pcr("1", bytes(48)), "A2 payload: PCR index '1' is not an integer"),
        (_set_pcr(3, bytes(32)), "A2 payload: PCR3 must be 48 bytes"),
        (_set("pcrs", {1: bytes(48)}), "A2 payload: PCR0 is missing"),
        (_set("certificate", None), "A2 payload: certificate must be non-empty bytes"),
        (_set("cabundle", []), "A2 payload: cabundle must hold 1 to 8"),
        (_set("cabundle", [b"x"] * 9), "A2 payload: cabundle must hold 1 to 8"),
        (_set("cabundle", b"x"), "A2 payload: cabundle is not an array"),
        (_set("cabundle", [b"x", "y"]), "A2 payload: cabundle[1] must be non-empty bytes"),
        (_set("nonce", "abc"), "A2 payload: nonce must be bytes or null"),
        (
            _set("user_data", bytes(MAX_OPTIONAL_FIELD_BYTES + 1)),
            "A2 payload: user_data is 513 bytes; the limit is 512",
        ),
        (_set("public_key", bytes(1024)), "A2 payload: public_key is 1024 bytes"),
    ],
)
def test_payload_rejected_a2(
    mutate: Callable[[dict[str, Any]], None],
    expected: str,
    att_vectors_dir: Path,
    aws_root: TrustedRoot,
) -> None:
    raw = _raw(att_vectors_dir, 2)
    mutated = _with_payload(raw, mutate)
    _reject(
        AttestationError,
        expected,
        lambda: verify_attestation(mutated, _own_policy(raw, aws_root), now=_ts(raw)),
    )


@pytest.mark.parametrize(
    "mutate",
    [_del("nonce"), _del("public_key"), _set("user_data", bytes(MAX_OPTIONAL_FIELD_BYTES))],
)
def test_payload_shape_ok_then_signature_a3(
    mutate: Callable[[dict[str, Any]], None], att_vectors_dir: Path, aws_root: TrustedRoot
) -> None:
    # Absent optional fields and a 512-byte field pass A2; the changed payload then
    # fails A3, which proves A2 passed.
    raw = _raw(att_vectors_dir, 2)
    mutated = _with_payload(raw, mutate)
    _reject(
        AttestationError,
        "A3 signature:",
        lambda: verify_attestation(mutated, _own_policy(raw, aws_root), now=_ts(raw)),
    )


def test_payload_not_a_map_or_duplicate_key_a2(
    att_vectors_dir: Path, aws_root: TrustedRoot
) -> None:
    raw, obj = _real2(att_vectors_dir)
    policy = _own_policy(raw, aws_root)
    as_list = cbor2.dumps([obj[0], obj[1], cbor2.dumps([1, 2]), obj[3]])
    _reject(
        AttestationError,
        "A2 payload: payload is not a map",
        lambda: verify_attestation(as_list, policy, now=_ts(raw)),
    )
    payload = obj[2]
    assert payload[0] == 0xA9  # a map of 9 entries
    dup = b"\xaa" + payload[1:] + cbor2.dumps("nonce") + b"\xf6"
    mutated = cbor2.dumps([obj[0], obj[1], dup, obj[3]])
    _reject(
        AttestationError,
        "A2 payload: payload is not well-formed CBOR",
        lambda: verify_attestation(mutated, policy, now=_ts(raw)),
    )


# ---------------------------------------------------------------------------
# A3, A4, A5 on synthetic chains
# ---------------------------------------------------------------------------


def test_synthetic_document_verifies_with_absent_optionals() -> None:
    chain = _chain()
    body = _payload(chain, public_key=_ABSENT, user_data=_ABSENT, nonce=_ABSENT)
    raw = _doc(chain, body)
    doc = verify_attestation(raw, _any(chain.trusted), now=T0).document
    assert (doc.public_key, doc.user_data, doc.nonce) == (None, None, None)
    _reject(
        AttestationError,
        "A7 nonce: document nonce is absent",
        lambda: verify_attestation(raw, _any(chain.trusted), now=T0, nonce=b"n"),
    )


def test_leaf_key_not_p384_a3() -> None:
    chain = _chain(leaf_key=ec.generate_private_key(ec.SECP256R1()))
    payload = cbor2.dumps(_payload(chain))
    sig = _sign(payload, chain.leaf_key) + bytes(32)  # pad to 96 to pass A1
    raw = cbor2.dumps([PROTECTED, {}, payload, sig])
    _reject(
        AttestationError,
        "A3 signature: leaf key is not EC P-384",
        lambda: verify_attestation(raw, _any(chain.trusted), now=T0),
    )


def test_leaf_not_a_certificate_a3() -> None:
    chain = _chain()
    raw = _doc(chain, _payload(chain, certificate=b"\x30\x03\x02\x01\x01"))
    _reject(
        AttestationError,
        "A3 signature: leaf certificate is not a DER X.509",
        lambda: verify_attestation(raw, _any(chain.trusted), now=T0),
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"inter_ca": False}, "A4 chain: cabundle[1] is not a CA (basicConstraints)"),
        ({"inter_ca": None}, "A4 chain: cabundle[1] is not a CA (basicConstraints)"),
        ({"inter_key_cert_sign": False}, "A4 chain: cabundle[1] may not sign certificates"),
        ({"leaf_ca": True}, "A4 chain: leaf is a CA (basicConstraints)"),
        ({"root_path_length": 0}, "A4 chain: cabundle[0] allows path length 0, but 1 CAs follow"),
    ],
)
def test_ca_constraints_a4(kwargs: dict[str, Any], expected: str) -> None:
    chain = _chain(**kwargs)
    _reject(
        AttestationError,
        expected,
        lambda: verify_attestation(_doc(chain), _any(chain.trusted), now=T0),
    )


def test_leaf_without_ca_extension_is_fine() -> None:
    chain = _chain(leaf_ca=None)
    verify_attestation(_doc(chain), _any(chain.trusted), now=T0)


@pytest.mark.parametrize(
    ("where", "inter_critical", "leaf_critical"),
    [("cabundle[1]", True, False), ("leaf", False, True)],
)
def test_unknown_critical_extension_is_refused_a4(
    where: str, inter_critical: bool, leaf_critical: bool
) -> None:
    # Issue 7, finding 7 (RFC 5280 §4.2): this chain verified before the check.
    chain = _chain(inter_unknown_critical=inter_critical, leaf_unknown_critical=leaf_critical)
    _reject(
        AttestationError,
        f"A4 chain: {where} has a critical extension this verifier does not process "
        "(1.3.6.1.4.1.55555.1); refused (RFC 5280 §4.2)",
        lambda: verify_attestation(_doc(chain), _any(chain.trusted), now=T0),
    )


def test_chain_links_a4() -> None:
    chain, other = _chain(), _chain()
    # Reversed cabundle (intermediate first): the first entry is not the root.
    rev = _doc(chain, _payload(chain, cabundle=chain.cabundle[::-1]))
    _reject(
        AttestationError,
        "A4 chain: cabundle[0] is not the pinned root 'test-root'",
        lambda: verify_attestation(rev, _any(chain.trusted), now=T0),
    )
    # Intermediate of another root with the same names.
    mixed = _doc(chain, _payload(chain, cabundle=[chain.root_der, other.cabundle[1]]))
    _reject(
        AttestationError,
        "A4 chain: cabundle[1] is not issued by cabundle[0]",
        lambda: verify_attestation(mixed, _any(chain.trusted), now=T0),
    )
    # Missing intermediate: leaf directly under the root by name? No: by signature.
    short = _doc(chain, _payload(chain, cabundle=[chain.root_der]))
    _reject(
        AttestationError,
        "A4 chain: leaf is not issued by cabundle[0]",
        lambda: verify_attestation(short, _any(chain.trusted), now=T0),
    )
    # Issue 7, finding 5: a version field cryptography does not know raised its own
    # x509.InvalidVersion (not a ValueError) past the boundary.
    der = bytearray(chain.cabundle[1])
    at = der.index(b"\xa0\x03\x02\x01\x02")
    der[at + 4] = 0x05
    badver = _doc(chain, _payload(chain, cabundle=[chain.root_der, bytes(der)]))
    _reject(
        AttestationError,
        "A4 chain: cabundle[1] is not a DER X.509 certificate (InvalidVersion: ",
        lambda: verify_attestation(badver, _any(chain.trusted), now=T0),
    )
    # Garbage certificate inside cabundle.
    junk = _doc(chain, _payload(chain, cabundle=[chain.root_der, b"junk"]))
    _reject(
        AttestationError,
        "A4 chain: cabundle[1] is not a DER X.509",
        lambda: verify_attestation(junk, _any(chain.trusted), now=T0),
    )


def test_document_time_edges_in_milliseconds_a5() -> None:
    # Leaf valid [T0 - 1 h, T0 + 2 h]. A document 1 ms outside must fail even though
    # it rounds or truncates to a valid second.
    chain = _chain()
    nb, na = T0 - timedelta(hours=1), T0 + timedelta(hours=2)
    policy = _any(chain.trusted, max_age_s=24 * 3600)
    for ts, ok in [
        (nb, True),
        (nb - timedelta(milliseconds=1), False),
        (na, True),
        (na + timedelta(milliseconds=1), False),
        (na + timedelta(milliseconds=999), False),
    ]:
        raw = _doc(chain, _payload(chain, timestamp=ts))
        now = na  # valid now, so only the document time decides
        if ok:
            verify_attestation(raw, policy, now=now)
        else:
            _reject(
                AttestationError,
                "A5 validity: leaf is not valid at the document timestamp",
                partial(verify_attestation, raw, policy, now=now),
            )


# ---------------------------------------------------------------------------
# A6 freshness, A7 nonce
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", DOCS)
def test_max_age_a6(n: int, att_vectors_dir: Path, aws_root: TrustedRoot) -> None:
    raw = _raw(att_vectors_dir, n)
    ts = _ts(raw)
    policy = _own_policy(raw, aws_root)
    assert policy.max_age_s == MAX_ATTESTATION_AGE_S == 300.0
    verify_attestation(raw, policy, now=ts + timedelta(seconds=MAX_ATTESTATION_AGE_S))
    _reject(
        AttestationError,
        "A6 freshness: document is 301.000 s old (limit 300 s)",
        lambda: verify_attestation(
            raw, policy, now=ts + timedelta(seconds=MAX_ATTESTATION_AGE_S + 1)
        ),
    )
    short = _own_policy(raw, aws_root, max_age_s=10)
    _reject(
        AttestationError,
        "A6 freshness: document is 11.000 s old (limit 10 s)",
        lambda: verify_attestation(raw, short, now=ts + timedelta(seconds=11)),
    )


def test_future_document_a6(att_vectors_dir: Path, aws_root: TrustedRoot) -> None:
    # Doc #5's leaf was issued 43 minutes before it, so A5 passes a minute early.
    raw = _raw(att_vectors_dir, 5)
    ts = _ts(raw)
    policy = _own_policy(raw, aws_root)
    verify_attestation(raw, policy, now=ts - timedelta(seconds=MAX_CLOCK_SKEW_S))
    _reject(
        AttestationError,
        "A6 freshness: document timestamp 2025-05-05T23:27:32.119Z is "
        "61.000 s in the future (limit 60 s)",
        lambda: verify_attestation(raw, policy, now=ts - timedelta(seconds=MAX_CLOCK_SKEW_S + 1)),
    )


def test_nonce_a7(
    att_vectors_dir: Path, att_nitro_vectors: dict[str, Any], aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, 2)
    nonce = bytes.fromhex(_meta(att_nitro_vectors, 2)["nonce_hex"])
    assert len(nonce) == 32
    policy, now = _own_policy(raw, aws_root), _ts(raw)
    assert verify_attestation(raw, policy, now=now, nonce=nonce).document.nonce == nonce
    for wrong in (_flip(nonce, 31), nonce[:31], b""):
        _reject(
            AttestationError,
            "A7 nonce: document nonce does not match the challenge",
            partial(verify_attestation, raw, policy, now=now, nonce=wrong),
        )
    raw1 = _raw(att_vectors_dir, 1)
    _reject(
        AttestationError,
        "A7 nonce: document nonce is absent",
        lambda: verify_attestation(raw1, _own_policy(raw1, aws_root), now=_ts(raw1), nonce=nonce),
    )


# ---------------------------------------------------------------------------
# A9 measurements, and the order of checks
# ---------------------------------------------------------------------------


def test_pcr_allowlist_mismatch_a9(att_vectors_dir: Path, aws_root: TrustedRoot) -> None:
    raw = _raw(att_vectors_dir, 2)
    doc = parse_unverified(raw)
    wrong = PcrAllowlist([{0: bytes([1]) * 48}, {0: doc.pcrs[0], 1: bytes([2]) * 48}])
    msg = _reject(
        PolicyError,
        "A9 measurements: PCRs match none of the 2 allowed entries",
        lambda: verify_attestation(raw, AttestationPolicy(aws_root, wrong), now=doc.timestamp),
    )
    assert "entry 0 differs at PCR0" in msg and "entry 1 differs at PCR1" in msg
    absent = PcrAllowlist([{20: bytes(48)}])
    _reject(
        PolicyError,
        "A9 measurements: PCRs match none",
        lambda: verify_attestation(raw, AttestationPolicy(aws_root, absent), now=doc.timestamp),
    )
    # The second entry matching is enough.
    right = PcrAllowlist([{0: bytes([1]) * 48}, {i: doc.pcrs[i] for i in (0, 1, 2)}])
    verify_attestation(raw, AttestationPolicy(aws_root, right), now=doc.timestamp)


@pytest.mark.parametrize("n", [1, 3])
def test_debug_document_refused_unless_allowed_a9(
    n: int, att_vectors_dir: Path, aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, n)
    doc = parse_unverified(raw)
    assert doc.is_debug
    explicit = {i: doc.pcrs[i] for i in (0, 1, 2)}
    _reject(
        PolicyError,
        "A9 measurements: debug-mode enclave (PCR0 all zero) refused",
        lambda: verify_attestation(
            raw, AttestationPolicy(aws_root, PcrAllowlist([explicit])), now=doc.timestamp
        ),
    )
    allowed = PcrAllowlist([explicit], allow_debug=True)
    verify_attestation(raw, AttestationPolicy(aws_root, allowed), now=doc.timestamp)


def test_pcr_allowlist_config_errors() -> None:
    bad: object
    for bad in ([], [{}], [{0: b"short"}], [{32: bytes(48)}], [{"0": bytes(48)}], ["x"]):
        with pytest.raises(ConfigError, match="PCR allowlist"):
            PcrAllowlist(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sequence"):
        PcrAllowlist({0: bytes(48)})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="never allow-all"):
        PcrAllowlist([])


def test_from_document_takes_pcrs_0_1_2_3_4_8(att_vectors_dir: Path) -> None:
    doc = parse_unverified(_raw(att_vectors_dir, 5))
    allow = PcrAllowlist.from_document(doc)
    assert allow.allow_debug
    assert dict(allow.allowed[0]) == {i: doc.pcrs[i] for i in (0, 1, 2, 3, 4, 8)}


class _Spy(Measurements):
    def __init__(self) -> None:
        self.calls = 0

    def check(self, doc: AttestationDocument) -> None:
        self.calls += 1


def test_policy_never_sees_unverified_documents(
    att_vectors_dir: Path, aws_root: TrustedRoot, att_other_root_pem: bytes
) -> None:
    spy = _Spy()
    good = _raw(att_vectors_dir, 2)
    bad = _raw(att_vectors_dir, "bad_sig")
    other = TrustedRoot.from_pem_or_der(att_other_root_pem)
    for raw, root, now in [
        (bad, aws_root, _ts(good)),
        (good, other, _ts(good)),
        (good, aws_root, datetime.now(UTC)),
        (good, aws_root, _ts(good) + timedelta(hours=1)),
    ]:
        with pytest.raises(AttestationError):
            verify_attestation(raw, AttestationPolicy(root, spy), now=now)
    assert spy.calls == 0
    verify_attestation(good, AttestationPolicy(aws_root, spy), now=_ts(good))
    assert spy.calls == 1


def test_mock_root_kind_a10(att_vectors_dir: Path, att_aws_root_pem: bytes) -> None:
    # A10: a mock root is a policy choice of the caller; verification itself passes.
    raw = _raw(att_vectors_dir, 2)
    mock = TrustedRoot.unsafe_mock(att_aws_root_pem)
    assert mock.is_mock
    verified = verify_attestation(raw, _own_policy(raw, mock), now=_ts(raw))
    assert verified.root.is_mock


# ---------------------------------------------------------------------------
# Configuration: roots, policies, now
# ---------------------------------------------------------------------------


def test_aws_root_pinned(att_aws_root_pem: bytes, att_other_root_pem: bytes) -> None:
    root = TrustedRoot.aws_nitro(att_aws_root_pem)
    assert root.fingerprint == AWS_NITRO_ROOT_SHA256
    assert not root.is_mock
    der = x509.load_pem_x509_certificate(att_aws_root_pem).public_bytes(serialization.Encoding.DER)
    assert root.certificate_der == der
    assert TrustedRoot.aws_nitro(der) == root
    with pytest.raises(ConfigError, match="is not the AWS Nitro Enclaves Root-G1"):
        TrustedRoot.aws_nitro(att_other_root_pem)
    with pytest.raises(ConfigError, match=r"not a PEM or DER X\.509 certificate"):
        TrustedRoot.aws_nitro(b"not a certificate")
    with pytest.raises(ConfigError, match="exactly one PEM certificate"):
        TrustedRoot.from_pem_or_der(att_aws_root_pem + att_other_root_pem)
    custom = TrustedRoot.from_pem_or_der(att_other_root_pem, name="mine")
    assert (custom.name, custom.is_mock) == ("mine", False)


def test_root_must_be_a_self_signed_ca() -> None:
    chain = _chain()
    with pytest.raises(ConfigError, match="is not a CA"):
        TrustedRoot.from_pem_or_der(chain.leaf_der)
    with pytest.raises(ConfigError, match="is not self-signed"):
        TrustedRoot.from_pem_or_der(chain.cabundle[1])


def test_policy_and_now_config_errors(att_vectors_dir: Path, aws_root: TrustedRoot) -> None:
    for age in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="max_age_s"):
            AttestationPolicy(aws_root, UnsafeAnyMeasurements(), max_age_s=age)
    raw = _raw(att_vectors_dir, 2)
    naive = _ts(raw).replace(tzinfo=None)
    with pytest.raises(ConfigError, match="timezone-aware"):
        verify_attestation(raw, _own_policy(raw, aws_root), now=naive)


# ---------------------------------------------------------------------------
# Second opinion, fuzzing, speed
# ---------------------------------------------------------------------------


def _pycose_verifies(raw: bytes) -> bool:
    obj = cbor2.loads(raw)
    leaf = x509.load_der_x509_certificate(cbor2.loads(obj[2])["certificate"])
    msg = Sign1Message.from_cose_obj(list(obj), True)
    leaf_key = leaf.public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    msg.key = EC2Key._from_cryptography_key(leaf_key)
    return bool(msg.verify_signature())


def _our_a3(raw: bytes, root: TrustedRoot) -> bool:
    try:
        verify_attestation(raw, _any(root, max_age_s=1e9), now=_ts(raw))
    except AttestationError as e:
        assert str(e).startswith("A3 signature:"), str(e)
        return False
    return True


@pytest.mark.parametrize("n", [*DOCS, "bad_sig"])
def test_pycose_agrees_on_signatures(
    n: int | str, att_vectors_dir: Path, aws_root: TrustedRoot
) -> None:
    raw = _raw(att_vectors_dir, n)
    for candidate in (raw, _flip(raw, len(raw) - 1), _flip(raw, len(raw) - 60)):
        ours = _our_a3(candidate, aws_root)
        assert ours == _pycose_verifies(candidate)
    assert _our_a3(raw, aws_root) is (n != "bad_sig")


def test_fuzz_only_our_errors_escape(att_vectors_dir: Path, aws_root: TrustedRoot) -> None:
    rng = random.Random(0x5EED)
    cases: list[bytes] = []
    for n in DOCS:
        raw = _raw(att_vectors_dir, n)
        cases += [_flip(raw, rng.randrange(len(raw)), rng.randrange(1, 256)) for _ in range(60)]
        cases += [raw[: rng.randrange(len(raw))] for _ in range(12)]
    assert len(cases) == 360
    policies = {n: _own_policy(_raw(att_vectors_dir, n), aws_root) for n in DOCS}
    for i, mutated in enumerate(cases):
        n = DOCS[i // 72]
        original = _raw(att_vectors_dir, n)
        if mutated == original:
            continue
        try:
            verify_attestation(mutated, policies[n], now=_ts(original))
        except Error:
            pass
        except Exception as e:  # pragma: no cover - the assertion below reports it
            pytest.fail(f"case {i}: {type(e).__name__} escaped: {e}")
        else:
            pytest.fail(f"case {i}: a mutated document was accepted")
        try:
            parse_unverified(mutated)
        except Error:
            pass
        except Exception as e:  # pragma: no cover
            pytest.fail(f"case {i}: parse_unverified let {type(e).__name__} escape: {e}")


def test_non_bytes_input_a1(aws_root: TrustedRoot) -> None:
    policy = _any(aws_root)
    for bad in ("text", None, 123, [1, 2]):
        _reject(
            AttestationError,
            "A1 envelope: expected bytes",
            partial(verify_attestation, bad, policy, now=T0),  # type: ignore[arg-type]  # deliberately not bytes
        )
