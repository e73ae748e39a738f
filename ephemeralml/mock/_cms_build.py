"""Build ``CiphertextForRecipient`` the way AWS KMS does, for the mock KMS.

AWS KMS answers a request that carries a ``Recipient`` (a Nitro attestation document
whose ``public_key`` is an RSA SubjectPublicKeyInfo) with a CMS (RFC 5652)
``ContentInfo`` of type ``envelopedData`` that only the enclave's RSA key opens.
:func:`build_recipient_envelope` produces the same thing, byte layout included, so
that the enclave's parser (``common/_cms.py``) meets in mock mode exactly what it
meets on AWS. The layout was read off the real envelopes in ``shared/vectors``
(PROVENANCE.md §3; ``kms_cfr_1.ber`` for a 32-byte data key is 493 bytes, and so is
ours, equal byte for byte outside the key identifier, the wrapped key, the IV and the
ciphertext):

* ``EnvelopedData`` version 2 (RFC 5652 §6.1: a KeyTransRecipientInfo whose rid is a
  subjectKeyIdentifier makes the version 2);
* one ``KeyTransRecipientInfo`` version 2, ``rid`` = ``[0] subjectKeyIdentifier`` =
  SHA-256 of the recipient's SubjectPublicKeyInfo DER (what AWS puts there; it is
  not the RFC 5280 §4.2.1.2 SHA-1 method);
* ``keyEncryptionAlgorithm`` id-RSAES-OAEP (RFC 4055 §4.1) with explicit parameters
  ``hashAlgorithm`` sha256 (NULL parameters) and ``maskGenAlgorithm`` mgf1(sha256);
  ``pSourceAlgorithm`` is *absent*, i.e. its DEFAULT ``pSpecifiedEmpty`` (an empty
  label), exactly as in every real vector;
* the content-encryption key: 32 fresh random bytes, wrapped with RSA-OAEP-SHA256;
* ``encryptedContentInfo``: contentType ``data``, ``aes256-CBC`` with a fresh 16-byte
  IV as the algorithm parameters, PKCS#7 padding;
* BER the way OpenSSL's streaming CMS writer emits it: indefinite lengths on the
  ``ContentInfo`` SEQUENCE, its ``[0]`` content, the ``EnvelopedData`` SEQUENCE, the
  ``EncryptedContentInfo`` SEQUENCE and the ``encryptedContent`` ``[0]``, which is
  constructed and holds the ciphertext as OCTET STRING chunks; everything else
  (``recipientInfos`` and the algorithm identifiers) stays definite-length DER.

The value tree is built with asn1crypto and dumped as DER; the DER is then re-emitted
in that streaming BER form from the TLV tree (``asn1crypto.parser``). Cryptography is
the ``cryptography`` package's (OAEP, AES-CBC, PKCS#7); nothing is hand-rolled.
"""

from __future__ import annotations

import hashlib
import os

from asn1crypto import algos, cms, core, parser
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..common._errors import KeyReleaseError

__all__ = [
    "CEK_BYTES",
    "CONTENT_CHUNK_BYTES",
    "IV_BYTES",
    "MAX_RECIPIENT_PLAINTEXT_BYTES",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "build_recipient_envelope",
]

#: AES-256 content-encryption key, in bytes (the ``aes256-CBC`` of the real envelopes).
CEK_BYTES = 32
#: AES-CBC IV, in bytes: one AES block.
IV_BYTES = 16
#: Largest OCTET STRING chunk inside the constructed ``encryptedContent``, in bytes.
#: The real envelopes carry their (short) ciphertext as one chunk; this bound only
#: matters for long plaintexts, and keeps every chunk's length in two bytes.
CONTENT_CHUNK_BYTES = 1000
#: Smallest recipient key, in bits: AWS documents RSA-2048 for Recipient keys, and
#: anything shorter is below every current recommendation.
MIN_RSA_BITS = 2048
#: Largest recipient key, in bits: bounds the work an untrusted key can cause.
MAX_RSA_BITS = 4096
#: Largest plaintext, in bytes: the most any KMS operation returns (``Plaintext`` is at
#: most 4096 bytes in the KMS API model), with room to spare.
MAX_RECIPIENT_PLAINTEXT_BYTES = 64 * 1024

# Universal tags and classes (X.690 §8.1.2).
_CLASS_UNIVERSAL = 0
_CLASS_CONTEXT = 2
_CONSTRUCTED = 1
_PRIMITIVE = 0
_TAG_OCTET_STRING = 4
_TAG_SEQUENCE = 16
_END_OF_CONTENTS = b"\x00\x00"


def _recipient_key(recipient_spki_der: bytes) -> rsa.RSAPublicKey:
    if not isinstance(recipient_spki_der, bytes):
        raise KeyReleaseError("recipient public key must be SubjectPublicKeyInfo DER bytes")
    try:
        key = serialization.load_der_public_key(recipient_spki_der)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyReleaseError("recipient public key is not a SubjectPublicKeyInfo DER") from e
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyReleaseError("recipient public key is not an RSA key (RSAES-OAEP needs one)")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise KeyReleaseError(
            f"recipient RSA key is {key.key_size} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} allowed"
        )
    return key


def _sha256_null() -> algos.DigestAlgorithm:
    # The real envelopes carry sha256 with explicit NULL parameters.
    return algos.DigestAlgorithm({"algorithm": "sha256", "parameters": core.Null()})


def _build_der(*, ski: bytes, wrapped_key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    oaep_params = algos.RSAESOAEPParams(
        {
            "hash_algorithm": _sha256_null(),
            "mask_gen_algorithm": algos.MaskGenAlgorithm(
                {"algorithm": "mgf1", "parameters": _sha256_null()}
            ),
            # p_source_algorithm left at its DEFAULT (pSpecifiedEmpty): DER omits it,
            # and so do the real envelopes.
        }
    )
    ktri = cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": cms.RecipientIdentifier({"subject_key_identifier": ski}),
            "key_encryption_algorithm": cms.KeyEncryptionAlgorithm(
                {"algorithm": "rsaes_oaep", "parameters": oaep_params}
            ),
            "encrypted_key": wrapped_key,
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v2",
            "recipient_infos": [cms.RecipientInfo(name="ktri", value=ktri)],
            "encrypted_content_info": cms.EncryptedContentInfo(
                {
                    "content_type": "data",
                    "content_encryption_algorithm": algos.EncryptionAlgorithm(
                        {"algorithm": "aes256_cbc", "parameters": core.OctetString(iv)}
                    ),
                    "encrypted_content": ciphertext,
                }
            ),
        }
    )
    info = cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped})
    der: bytes = info.dump(force=True)
    return der


# ---------------------------------------------------------------------------
# DER -> streaming BER
# ---------------------------------------------------------------------------


def _children(contents: bytes) -> list[tuple[int, int, int, bytes, bytes, bytes]]:
    out = []
    rest = contents
    while rest:
        node = parser.parse(rest)
        out.append(node)
        rest = rest[len(node[3]) + len(node[4]) + len(node[5]) :]
    return out


def _expect(
    node: tuple[int, int, int, bytes, bytes, bytes], cls: int, method: int, tag: int, what: str
) -> bytes:
    c, m, t, _header, contents, _trailer = node
    if (c, m, t) != (cls, method, tag):
        # Our own DER from asn1crypto: a mismatch is a bug here, never bad input.
        raise AssertionError(
            f"CMS layout: {what} is ({c}, {m}, {t}), expected ({cls}, {method}, {tag})"
        )
    return contents


def _der_node(node: tuple[int, int, int, bytes, bytes, bytes]) -> bytes:
    return node[3] + node[4] + node[5]


def _indefinite(cls: int, tag: int, body: bytes) -> bytes:
    # X.690 §8.1.3.6: constructed, length octet 0x80, contents, end-of-contents.
    # Every tag here is below 31, so the identifier is a single octet (§8.1.2.3).
    return bytes([(cls << 6) | (_CONSTRUCTED << 5) | tag, 0x80]) + body + _END_OF_CONTENTS


def _chunked_octets(cls: int, tag: int, data: bytes) -> bytes:
    # X.690 §8.7.3: a constructed OCTET STRING is the concatenation of its segments.
    chunks = b"".join(
        parser.emit(
            _CLASS_UNIVERSAL, _PRIMITIVE, _TAG_OCTET_STRING, data[i : i + CONTENT_CHUNK_BYTES]
        )
        for i in range(0, len(data), CONTENT_CHUNK_BYTES)
    )
    return _indefinite(cls, tag, chunks)


def _to_streaming_ber(der: bytes) -> bytes:
    """Re-emit our ContentInfo DER with OpenSSL's streaming BER layout (module docstring)."""
    top = parser.parse(der, strict=True)
    content_type, explicit = _children(
        _expect(top, _CLASS_UNIVERSAL, _CONSTRUCTED, _TAG_SEQUENCE, "ContentInfo")
    )
    (enveloped,) = _children(_expect(explicit, _CLASS_CONTEXT, _CONSTRUCTED, 0, "content [0]"))
    version, recipient_infos, eci = _children(
        _expect(enveloped, _CLASS_UNIVERSAL, _CONSTRUCTED, _TAG_SEQUENCE, "EnvelopedData")
    )
    eci_type, eci_alg, eci_content = _children(
        _expect(eci, _CLASS_UNIVERSAL, _CONSTRUCTED, _TAG_SEQUENCE, "EncryptedContentInfo")
    )
    ciphertext = _expect(eci_content, _CLASS_CONTEXT, _PRIMITIVE, 0, "encryptedContent [0]")

    eci_ber = _indefinite(
        _CLASS_UNIVERSAL,
        _TAG_SEQUENCE,
        _der_node(eci_type) + _der_node(eci_alg) + _chunked_octets(_CLASS_CONTEXT, 0, ciphertext),
    )
    enveloped_ber = _indefinite(
        _CLASS_UNIVERSAL,
        _TAG_SEQUENCE,
        _der_node(version) + _der_node(recipient_infos) + eci_ber,
    )
    return _indefinite(
        _CLASS_UNIVERSAL,
        _TAG_SEQUENCE,
        _der_node(content_type) + _indefinite(_CLASS_CONTEXT, 0, enveloped_ber),
    )


# ---------------------------------------------------------------------------
# The envelope
# ---------------------------------------------------------------------------


def build_recipient_envelope(plaintext: bytes, recipient_spki_der: bytes) -> bytes:
    """``plaintext`` sealed to ``recipient_spki_der`` as AWS KMS's ``CiphertextForRecipient``.

    ``recipient_spki_der`` is the attestation document's ``public_key``: an RSA
    SubjectPublicKeyInfo, DER, of :data:`MIN_RSA_BITS` to :data:`MAX_RSA_BITS` bits.
    Its SHA-256, over these exact bytes, is the recipient's subjectKeyIdentifier.
    Raises :class:`KeyReleaseError` for a key that is not such a key, or a plaintext
    that is not bytes or is over :data:`MAX_RECIPIENT_PLAINTEXT_BYTES`.

    Not done here: anything about the attestation document (the caller verifies it
    and takes the key from it). The envelope is not signed (neither is AWS's): it is
    confidential to the key holder, not authenticated to come from KMS; the TLS
    connection to KMS is what authenticates it.
    """
    if not isinstance(plaintext, bytes | bytearray):
        raise KeyReleaseError("recipient plaintext must be bytes")
    if len(plaintext) > MAX_RECIPIENT_PLAINTEXT_BYTES:
        raise KeyReleaseError(
            f"recipient plaintext is {len(plaintext)} bytes; "
            f"the limit is {MAX_RECIPIENT_PLAINTEXT_BYTES}"
        )
    key = _recipient_key(recipient_spki_der)
    ski = hashlib.sha256(recipient_spki_der).digest()

    cek = bytearray(os.urandom(CEK_BYTES))
    iv = os.urandom(IV_BYTES)
    try:
        padder = padding.PKCS7(algorithms.AES.block_size).padder()
        padded = padder.update(bytes(plaintext)) + padder.finalize()
        encryptor = Cipher(algorithms.AES(bytes(cek)), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padded) + encryptor.finalize()
        wrapped_key = key.encrypt(
            bytes(cek),
            OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        )
    finally:
        # Best effort: the bytes() copies handed to OpenSSL cannot be wiped from Python.
        for i in range(len(cek)):
            cek[i] = 0
    der = _build_der(ski=ski, wrapped_key=wrapped_key, iv=iv, ciphertext=ciphertext)
    return _to_streaming_ber(der)
