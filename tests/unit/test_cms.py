"""KMS CiphertextForRecipient (CMS EnvelopedData): real KMS envelopes, and our own built to break."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache
from typing import Any, ClassVar

import pytest
from asn1crypto import algos, cms, core
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
    load_pem_private_key,
)

from ephemeralml.common._cms import (
    MAX_CMS_BYTES,
    EnvelopedKey,
    open_recipient_envelope,
    parse_recipient_envelope,
    spki_key_id,
)
from ephemeralml.common._errors import KeyReleaseError
from tests.vectors_path import REAL_VECTORS

DECRYPTABLE = ["kms_cfr_1.ber", "kms_cfr_2.ber", "kms_cfr_3.ber"]
PARSE_ONLY = ["kms_cfr_sdkc_1.ber", "kms_cfr_sdkc_2.ber"]

_OAEP_ERROR = "CMS: key encryption must be RSAES-OAEP with SHA-256 and MGF1-SHA-256"


# --- real vectors ------------------------------------------------------------------------


@cache
def _cases() -> dict[str, dict[str, Any]]:
    manifest = json.loads((REAL_VECTORS / "kms_cfr_vectors.json").read_text())
    return {case["blob_file"]: case for case in manifest["cases"]}


def _blob(name: str) -> bytes:
    return (REAL_VECTORS / name).read_bytes()


@cache
def _key(name: str) -> rsa.RSAPrivateKey:
    raw = (REAL_VECTORS / _cases()[name]["private_key_file"]).read_bytes()
    # 1 is PKCS#1 PEM, 2 PKCS#8 DER, 3 PKCS#1 DER: cryptography reads all three.
    key = (
        load_pem_private_key(raw, None)
        if raw.startswith(b"-----")
        else load_der_private_key(raw, None)
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@cache
def _other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _expected(name: str) -> bytes:
    return bytes.fromhex(_cases()[name]["expected_plaintext_hex"])


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def _raises(ber: bytes, key: rsa.RSAPrivateKey, message: str) -> None:
    with pytest.raises(KeyReleaseError) as info:
        open_recipient_envelope(ber, key)
    assert str(info.value) == message


def test_manifest_lists_what_we_test() -> None:
    assert sorted(_cases()) == sorted(DECRYPTABLE + PARSE_ONLY)


@pytest.mark.parametrize("name", DECRYPTABLE)
def test_real_kms_envelope_decrypts(name: str) -> None:
    key = _key(name)
    assert key.key_size == 2048
    plaintext = open_recipient_envelope(_blob(name), key)
    assert isinstance(plaintext, bytearray)
    assert plaintext == _expected(name)
    assert parse_recipient_envelope(_blob(name)).recipient_key_id == spki_key_id(key.public_key())


def test_kms_cfr_1_is_a_data_key() -> None:
    assert len(open_recipient_envelope(_blob("kms_cfr_1.ber"), _key("kms_cfr_1.ber"))) == 32


@pytest.mark.parametrize("name", PARSE_ONLY)
def test_sdk_c_envelope_parses_to_upstream_values(name: str) -> None:
    want = _cases()[name]["expected_parse"]
    envelope = parse_recipient_envelope(_blob(name))
    assert envelope.encrypted_key == bytes.fromhex(want["encrypted_key_hex"])
    assert envelope.iv == bytes.fromhex(want["iv_hex"])
    assert envelope.encrypted_content == bytes.fromhex(want["ciphertext_hex"])
    assert len(envelope.recipient_key_id) == 32


def test_sdk_c_vectors_cover_both_encrypted_content_layouts() -> None:
    # sdkc_1: [0] constructed, indefinite length, one OCTET STRING chunk of 48 bytes.
    chunked = bytes.fromhex(_cases()["kms_cfr_sdkc_1.ber"]["expected_parse"]["ciphertext_hex"])
    assert b"\xa0\x80\x04\x30" + chunked + b"\x00\x00" in _blob("kms_cfr_sdkc_1.ber")
    # sdkc_2: [0] primitive, definite length 16.
    flat = bytes.fromhex(_cases()["kms_cfr_sdkc_2.ber"]["expected_parse"]["ciphertext_hex"])
    assert b"\x80\x10" + flat in _blob("kms_cfr_sdkc_2.ber")


@pytest.mark.parametrize("name", DECRYPTABLE)
def test_real_envelope_for_another_key(name: str) -> None:
    _raises(_blob(name), _other_key(), "CMS: envelope is for another recipient key")


@pytest.mark.parametrize("name", DECRYPTABLE)
def test_real_envelope_with_a_flipped_wrapped_key(name: str) -> None:
    ber = _blob(name)
    at = ber.find(parse_recipient_envelope(ber).encrypted_key)
    assert at > 0
    for offset in (at, at + 128, at + 255):
        _raises(
            _flip(ber, offset), _key(name), "CMS: the wrapped key does not decrypt with this key"
        )


@pytest.mark.parametrize("name", DECRYPTABLE)
def test_real_envelope_with_a_flipped_last_block(name: str) -> None:
    ber = _blob(name)
    envelope = parse_recipient_envelope(ber)
    content = envelope.encrypted_content
    # Each of these envelopes stores its ciphertext in one chunk, so it is contiguous.
    end = ber.find(content) + len(content)
    assert end > len(content)
    # The last byte of the last block: AES decrypts it to noise, which fails the padding
    # check for these three envelopes (a random block passes it about once in 256).
    _raises(_flip(ber, end - 1), _key(name), "CMS: content does not decrypt")
    # The low bit of the last byte of the block before (the IV for a one-block content)
    # turns the last pad byte n into n^1, which is never valid PKCS#7 padding.
    before = end - 17 if len(content) > 16 else ber.find(envelope.iv) + 15
    _raises(_flip(ber, before), _key(name), "CMS: content does not decrypt")


def test_every_flip_and_truncation_of_kms_cfr_1() -> None:
    ber = _blob("kms_cfr_1.ber")
    key = _key("kms_cfr_1.ber")
    expected = _expected("kms_cfr_1.ber")
    envelope = parse_recipient_envelope(ber)
    iv_at = ber.find(envelope.iv)
    first_block_at = ber.find(envelope.encrypted_content)
    # CBC has no MAC: a flip in the IV or the first of the three ciphertext blocks only
    # changes the data key and never reaches the padding. CMS cannot detect it; TLS to
    # KMS has to (see the _cms module docstring). Pinned here so nobody assumes otherwise.
    malleable = set(range(iv_at, iv_at + 16)) | set(range(first_block_at, first_block_at + 16))
    outcomes = {"error": 0, "same": 0, "wrong_key": 0}
    for offset in range(len(ber)):
        for mask in (0x01, 0x80, 0xFF):
            try:
                plaintext = open_recipient_envelope(_flip(ber, offset, mask), key)
            except KeyReleaseError as e:
                assert str(e).startswith("CMS: ")
                outcomes["error"] += 1
                continue
            assert isinstance(plaintext, bytearray)
            if offset in malleable:
                assert len(plaintext) == 32
                assert plaintext != expected
                outcomes["wrong_key"] += 1
            else:
                assert plaintext == expected, f"flip {mask:#x} at {offset}"
                outcomes["same"] += 1
    assert outcomes["wrong_key"] == 3 * len(malleable)
    for length in range(len(ber)):
        with pytest.raises(KeyReleaseError):
            open_recipient_envelope(ber[:length], key)


def test_trailing_bytes_are_rejected() -> None:
    _raises(
        _blob("kms_cfr_1.ber") + b"\x00",
        _key("kms_cfr_1.ber"),
        "CMS: envelope is not well-formed BER/DER ASN.1",
    )


def test_deep_indefinite_nesting_is_rejected_not_a_crash() -> None:
    with pytest.raises(KeyReleaseError, match=r"^CMS: envelope is not well-formed"):
        parse_recipient_envelope(b"\x30\x80" * (MAX_CMS_BYTES // 2))


def test_over_the_size_limit() -> None:
    with pytest.raises(KeyReleaseError) as info:
        parse_recipient_envelope(b"\x30" * (MAX_CMS_BYTES + 1))
    assert (
        str(info.value) == f"CMS: envelope is {MAX_CMS_BYTES + 1} bytes, over the 65536-byte limit"
    )
    # At the limit it is the content, not the size, that fails.
    with pytest.raises(KeyReleaseError, match=r"^CMS: envelope is not well-formed"):
        parse_recipient_envelope(b"\x30" * MAX_CMS_BYTES)


# --- envelopes we build ------------------------------------------------------------------

_PLAINTEXT = bytes(range(32))


@cache
def _recipient_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _digest(name: str) -> dict[str, Any]:
    return {"algorithm": name}


def _oaep(
    hash_name: str = "sha256", mgf_hash: str = "sha256", label: bytes = b""
) -> dict[str, Any]:
    return {
        "algorithm": "rsaes_oaep",
        "parameters": {
            "hash_algorithm": _digest(hash_name),
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": _digest(mgf_hash)},
            "p_source_algorithm": {"algorithm": "p_specified", "parameters": label},
        },
    }


def _ktri(key: rsa.RSAPrivateKey, cek: bytes) -> dict[str, Any]:
    wrapped = key.public_key().encrypt(
        cek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    )
    return {
        "version": "v2",
        "rid": cms.RecipientIdentifier(
            name="subject_key_identifier", value=spki_key_id(key.public_key())
        ),
        "key_encryption_algorithm": _oaep(),
        "encrypted_key": wrapped,
    }


def _cbc(cek: bytes, iv: bytes, plaintext: bytes) -> bytes:
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


Mutation = Callable[[dict[str, Any], dict[str, Any]], None]


def _envelope(
    mutate: Mutation | None = None, *, cek: bytes | None = None, plaintext: bytes = _PLAINTEXT
) -> bytes:
    """A DER CiphertextForRecipient for _recipient_key(), in KMS's profile unless mutated.

    ``mutate(enveloped_data, ktri)`` edits the native dicts before they are encoded.
    """
    cek = os.urandom(32) if cek is None else cek
    iv = os.urandom(16)
    ktri = _ktri(_recipient_key(), cek)
    enveloped: dict[str, Any] = {
        "version": "v2",
        "recipient_infos": [],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
            # A wrapped key of the wrong size never gets this far; any AES-256 key will do.
            "encrypted_content": _cbc(cek if len(cek) == 32 else os.urandom(32), iv, plaintext),
        },
    }
    if mutate is not None:
        mutate(enveloped, ktri)
    if not enveloped["recipient_infos"]:
        enveloped["recipient_infos"] = [cms.RecipientInfo(name="ktri", value=ktri)]
    der: bytes = cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()
    return der


def test_own_envelope_round_trips() -> None:
    ber = _envelope()
    assert open_recipient_envelope(ber, _recipient_key()) == _PLAINTEXT
    assert parse_recipient_envelope(ber).recipient_key_id == spki_key_id(
        _recipient_key().public_key()
    )


class _BareDigest(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """An AlgorithmIdentifier without parameters (asn1crypto writes NULL for SHA-256)."""

    _fields: ClassVar[list[Any]] = [("algorithm", algos.DigestAlgorithmId)]


class _FullOaepParams(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """RSAES-OAEP-params with no DEFAULTs, so that every field is written out."""

    _fields: ClassVar[list[Any]] = [
        ("hash_algorithm", _BareDigest, {"explicit": 0}),
        ("mask_gen_algorithm", algos.MaskGenAlgorithm, {"explicit": 1}),
        ("p_source_algorithm", algos.PSourceAlgorithm, {"explicit": 2}),
    ]


def test_oaep_label_written_out_empty_and_sha256_without_null() -> None:
    # KMS omits pSourceAlgorithm and writes NULL after sha256; the other legal spellings
    # (RFC 4055 §2.1, RFC 8017 §A.2.1) of the same parameters are accepted too.
    full = _FullOaepParams(
        {
            "hash_algorithm": {"algorithm": "sha256"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
            "p_source_algorithm": {"algorithm": "p_specified", "parameters": b""},
        }
    ).dump()
    algorithm = {"algorithm": "rsaes_oaep", "parameters": algos.RSAESOAEPParams.load(full)}
    ber = _envelope(_set("ktri.key_encryption_algorithm", algorithm))
    assert full in ber and b"\xa2\x0f" in full
    assert open_recipient_envelope(ber, _recipient_key()) == _PLAINTEXT


@pytest.mark.parametrize("plaintext", [b"", b"x", bytes(16), bytes(1000)])
def test_own_envelope_round_trips_every_padding(plaintext: bytes) -> None:
    assert open_recipient_envelope(_envelope(plaintext=plaintext), _recipient_key()) == plaintext


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets ``ed.a.b`` (EnvelopedData) or ``ktri.a.b`` (the recipient)."""
    root, *keys = path.split(".")

    def mutate(enveloped: dict[str, Any], ktri: dict[str, Any]) -> None:
        node = enveloped if root == "ed" else ktri
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


def _two_recipients(enveloped: dict[str, Any], ktri: dict[str, Any]) -> None:
    enveloped["recipient_infos"] = [cms.RecipientInfo(name="ktri", value=ktri)] * 2


def _kek_recipient(enveloped: dict[str, Any], ktri: dict[str, Any]) -> None:
    kekri = {
        "version": "v4",
        "kekid": {"key_identifier": b"k"},
        "key_encryption_algorithm": {"algorithm": "aes256_wrap"},
        "encrypted_key": bytes(40),
    }
    enveloped["recipient_infos"] = [cms.RecipientInfo(name="kekri", value=kekri)]


def _no_oaep_params(enveloped: dict[str, Any], ktri: dict[str, Any]) -> None:
    ktri["key_encryption_algorithm"] = {"algorithm": "rsaes_oaep"}


def _no_content(enveloped: dict[str, Any], ktri: dict[str, Any]) -> None:
    del enveloped["encrypted_content_info"]["encrypted_content"]


_ISSUER_AND_SERIAL = cms.RecipientIdentifier(
    name="issuer_and_serial_number",
    value={"issuer": cms.Name.build({"common_name": "x"}), "serial_number": 1},
)

BROKEN: dict[str, tuple[Mutation, str]] = {
    "enveloped_data_v0": (_set("ed.version", "v0"), "CMS: EnvelopedData version must be 2, not v0"),
    "enveloped_data_v3": (_set("ed.version", "v3"), "CMS: EnvelopedData version must be 2, not v3"),
    "originator_info": (
        _set("ed.originator_info", {"certs": []}),
        "CMS: originatorInfo is not allowed",
    ),
    "unprotected_attrs": (
        _set("ed.unprotected_attrs", [{"type": "content_type", "values": ["data"]}]),
        "CMS: unprotectedAttrs are not allowed",
    ),
    "two_recipients": (_two_recipients, "CMS: expected exactly one recipient, found 2"),
    "kek_recipient": (
        _kek_recipient,
        "CMS: the recipient must be a KeyTransRecipientInfo, not kekri",
    ),
    "ktri_v0": (_set("ktri.version", "v0"), "CMS: KeyTransRecipientInfo version must be 2, not v0"),
    "issuer_and_serial": (
        _set("ktri.rid", _ISSUER_AND_SERIAL),
        "CMS: the recipient must be named by a subjectKeyIdentifier",
    ),
    "sha1_key_id": (
        _set("ktri.rid", cms.RecipientIdentifier(name="subject_key_identifier", value=bytes(20))),
        "CMS: subjectKeyIdentifier must be 32 bytes, not 20",
    ),
    "oaep_sha1": (_set("ktri.key_encryption_algorithm", _oaep(hash_name="sha1")), _OAEP_ERROR),
    "oaep_sha384": (_set("ktri.key_encryption_algorithm", _oaep(hash_name="sha384")), _OAEP_ERROR),
    "mgf1_sha1": (_set("ktri.key_encryption_algorithm", _oaep(mgf_hash="sha1")), _OAEP_ERROR),
    "oaep_all_defaults": (_no_oaep_params, _OAEP_ERROR),
    "pkcs1v15": (_set("ktri.key_encryption_algorithm", {"algorithm": "rsa"}), _OAEP_ERROR),
    "oaep_label": (
        _set("ktri.key_encryption_algorithm", _oaep(label=b"label")),
        "CMS: key encryption must use an empty OAEP label",
    ),
    "inner_signed_data": (
        _set("ed.encrypted_content_info.content_type", "signed_data"),
        "CMS: encrypted content type must be data, not signed_data",
    ),
    "aes128_cbc": (
        _set(
            "ed.encrypted_content_info.content_encryption_algorithm",
            {"algorithm": "aes128_cbc", "parameters": bytes(16)},
        ),
        "CMS: content encryption must be AES-256-CBC, not aes128_cbc",
    ),
    "des3": (
        _set(
            "ed.encrypted_content_info.content_encryption_algorithm",
            {"algorithm": "tripledes_3key", "parameters": bytes(8)},
        ),
        "CMS: content encryption must be AES-256-CBC, not tripledes_3key",
    ),
    "short_iv": (
        _set(
            "ed.encrypted_content_info.content_encryption_algorithm",
            {"algorithm": "aes256_cbc", "parameters": bytes(8)},
        ),
        "CMS: AES-CBC IV must be 16 bytes, not 8",
    ),
    "no_iv": (
        _set("ed.encrypted_content_info.content_encryption_algorithm", {"algorithm": "aes256_cbc"}),
        "CMS: AES-256-CBC has no IV parameter",
    ),
    "no_content": (_no_content, "CMS: encryptedContent is absent"),
    "empty_content": (
        _set("ed.encrypted_content_info.encrypted_content", b""),
        "CMS: encryptedContent must be a non-empty multiple of 16 bytes, not 0",
    ),
    "ragged_content": (
        _set("ed.encrypted_content_info.encrypted_content", bytes(33)),
        "CMS: encryptedContent must be a non-empty multiple of 16 bytes, not 33",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_own_envelope_outside_the_profile(case: str) -> None:
    mutate, message = BROKEN[case]
    ber = _envelope(mutate)
    with pytest.raises(KeyReleaseError) as info:
        parse_recipient_envelope(ber)
    assert str(info.value) == message
    _raises(ber, _recipient_key(), message)


def test_content_info_of_another_type() -> None:
    ber = cms.ContentInfo({"content_type": "data", "content": b"hello"}).dump()
    with pytest.raises(KeyReleaseError) as info:
        parse_recipient_envelope(ber)
    assert str(info.value) == "CMS: content type is data, not envelopedData"


def test_wrapped_aes128_key_is_rejected() -> None:
    _raises(
        _envelope(cek=os.urandom(16)),
        _recipient_key(),
        "CMS: the unwrapped content-encryption key must be 32 bytes, not 16",
    )


def test_content_without_valid_padding_does_not_decrypt() -> None:
    cek = os.urandom(32)

    def unpadded(enveloped: dict[str, Any], ktri: dict[str, Any]) -> None:
        eci = enveloped["encrypted_content_info"]
        iv = eci["content_encryption_algorithm"]["parameters"]
        # Two zero blocks, no PKCS#7 padding: the last byte decrypts to 0, never valid.
        encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
        eci["encrypted_content"] = encryptor.update(bytes(32)) + encryptor.finalize()

    _raises(_envelope(unpadded, cek=cek), _recipient_key(), "CMS: content does not decrypt")


def test_small_rsa_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    _raises(_envelope(), small, "CMS: RSA key must be at least 2048 bits, not 1024")


def test_non_rsa_key_is_refused() -> None:
    key: Any = ec.generate_private_key(ec.SECP256R1())
    _raises(_envelope(), key, "CMS: the recipient key must be an RSA private key")


def test_enveloped_key_checks_its_invariants() -> None:
    good = parse_recipient_envelope(_blob("kms_cfr_1.ber"))
    with pytest.raises(
        KeyReleaseError, match=r"^CMS: subjectKeyIdentifier must be 32 bytes, not 31$"
    ):
        EnvelopedKey(
            good.recipient_key_id[:31], good.encrypted_key, good.iv, good.encrypted_content
        )
    with pytest.raises(KeyReleaseError, match=r"^CMS: encryptedKey is empty$"):
        EnvelopedKey(good.recipient_key_id, b"", good.iv, good.encrypted_content)
    with pytest.raises(KeyReleaseError, match=r"^CMS: AES-CBC IV must be 16 bytes, not 12$"):
        EnvelopedKey(
            good.recipient_key_id, good.encrypted_key, good.iv[:12], good.encrypted_content
        )
    with pytest.raises(KeyReleaseError, match=r"^CMS: encryptedContent must be a non-empty"):
        EnvelopedKey(
            good.recipient_key_id, good.encrypted_key, good.iv, good.encrypted_content[:-1]
        )
