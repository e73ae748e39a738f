"""Opening what AWS KMS returns to an attested Recipient: ``CiphertextForRecipient``.

When a KMS request (Decrypt, GenerateDataKey, ...) carries ``Recipient =
{AttestationDocument, KeyEncryptionAlgorithm: "RSAES_OAEP_SHA_256"}``, the plaintext
comes back only inside ``CiphertextForRecipient``: a CMS ``ContentInfo`` holding an
``EnvelopedData`` (RFC 5652 §6), BER with indefinite lengths, whose single
``KeyTransRecipientInfo`` wraps an AES-256-CBC content-encryption key to the RSA key
that the attestation document's ``public_key`` carries.

We accept exactly that profile and nothing else (the numbers match the checks in
:func:`parse_recipient_envelope`):

1. at most :data:`MAX_CMS_BYTES`;
2. a ``ContentInfo`` whose contentType is envelopedData (RFC 5652 §3, §6.1);
3. ``EnvelopedData`` version 2, without originatorInfo or unprotectedAttrs;
4. exactly one recipient: a ``KeyTransRecipientInfo`` version 2, identified by a 32-byte
   ``[0] subjectKeyIdentifier`` (KMS puts SHA-256 of the recipient's SPKI DER there);
5. key transport ``id-RSAES-OAEP`` with SHA-256, MGF1-SHA-256 and an empty label
   (RFC 8017 §7.1, RFC 4055 §4.1);
6. content type ``data``, content encryption ``aes256-CBC`` with a 16-byte IV as its
   parameter (RFC 3565 §4.1);
7. ``encryptedContent`` present (primitive, or constructed with indefinite length: both
   occur in KMS responses), non-empty, a whole number of AES blocks.

:func:`open_recipient_envelope` then checks that the envelope names *our* key, unwraps
the content-encryption key with RSA-OAEP and decrypts the content.

Not checked, because CMS EnvelopedData cannot: **integrity**. AES-CBC has no MAC:
flipping bits in the IV or the ciphertext changes the plaintext, and only damage that
reaches the padding in the last block is noticed. The envelope must reach us over a channel that is
authenticated end to end (TLS to KMS terminated inside the enclave), and a released key
should be used where a wrong key fails loudly (an AEAD, a signed manifest).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from asn1crypto import algos, cms, core
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._errors import KeyReleaseError

__all__ = [
    "MAX_CMS_BYTES",
    "MIN_RSA_BITS",
    "EnvelopedKey",
    "open_recipient_envelope",
    "parse_recipient_envelope",
    "spki_key_id",
]

#: A KMS response for a 32-byte data key is about 500 bytes, and KMS caps any plaintext
#: it returns at 4 KiB (GenerateRandom: 1024 bytes); 64 KiB leaves ample room while
#: bounding what the BER parser will walk through.
MAX_CMS_BYTES = 64 * 1024

#: KMS wraps to an RSA-2048 key (FACTS.md); anything smaller is not a key we would make.
MIN_RSA_BITS = 2048

#: KMS's subjectKeyIdentifier is a SHA-256 digest.
_KEY_ID_BYTES = 32
#: AES-256 (RFC 3565 §4.1: id-aes256-CBC).
_CEK_BYTES = 32
_AES_BLOCK_BYTES = 16

_OAEP_MESSAGE = "CMS: key encryption must be RSAES-OAEP with SHA-256 and MGF1-SHA-256"
_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


@dataclass(frozen=True)
class EnvelopedKey:
    """What a parsed ``CiphertextForRecipient`` holds; built by :func:`parse_recipient_envelope`.

    Nothing here is secret: the content-encryption key is still RSA-wrapped.
    """

    #: subjectKeyIdentifier: SHA-256 of the recipient's SubjectPublicKeyInfo DER.
    recipient_key_id: bytes
    #: The RSA-OAEP-wrapped AES-256 content-encryption key.
    encrypted_key: bytes
    #: AES-CBC IV, from the contentEncryptionAlgorithm parameters.
    iv: bytes
    #: The AES-256-CBC ciphertext, all chunks of a constructed OCTET STRING joined.
    encrypted_content: bytes

    def __post_init__(self) -> None:
        _check_key_id(self.recipient_key_id)
        if not self.encrypted_key:
            raise KeyReleaseError("CMS: encryptedKey is empty")
        _check_iv(self.iv)
        _check_content(self.encrypted_content)


def _check_key_id(key_id: bytes) -> None:
    if len(key_id) != _KEY_ID_BYTES:
        raise KeyReleaseError(
            f"CMS: subjectKeyIdentifier must be {_KEY_ID_BYTES} bytes, not {len(key_id)}"
        )


def _check_iv(iv: bytes) -> None:
    if len(iv) != _AES_BLOCK_BYTES:
        raise KeyReleaseError(f"CMS: AES-CBC IV must be {_AES_BLOCK_BYTES} bytes, not {len(iv)}")


def _check_content(content: bytes) -> None:
    if not content or len(content) % _AES_BLOCK_BYTES:
        raise KeyReleaseError(
            f"CMS: encryptedContent must be a non-empty multiple of {_AES_BLOCK_BYTES} bytes,"
            f" not {len(content)}"
        )


def spki_key_id(public_key: rsa.RSAPublicKey) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo DER: the identifier KMS gives the recipient."""
    return hashlib.sha256(
        public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).digest()


def parse_recipient_envelope(ber: bytes) -> EnvelopedKey:
    """Parse a ``CiphertextForRecipient`` held to the KMS profile (module docstring).

    Decrypts nothing and does not check whom it is for; see :func:`open_recipient_envelope`.
    """
    # (1) Bound the input before the parser sees it.
    if len(ber) > MAX_CMS_BYTES:
        raise KeyReleaseError(
            f"CMS: envelope is {len(ber)} bytes, over the {MAX_CMS_BYTES}-byte limit"
        )
    try:
        return _parse(ber)
    except KeyReleaseError:
        raise
    except Exception as e:
        # asn1crypto parses lazily and reports malformed input mostly as ValueError
        # (UnicodeDecodeError included), but fuzzing also drew TypeError and
        # AttributeError from inside it; its failure set is not a documented closed one,
        # so everything it raises on untrusted bytes becomes one of ours.
        raise KeyReleaseError("CMS: envelope is not well-formed BER/DER ASN.1") from e


def _parse(ber: bytes) -> EnvelopedKey:
    # strict: trailing bytes after the ContentInfo are an error, not ignored.
    info = cms.ContentInfo.load(ber, strict=True)
    # Walk the whole tree now, so that a malformed element anywhere is reported as
    # malformed rather than tripping a later check half-way.
    _ = info.native

    # (2) RFC 5652 §3: ContentInfo; §6.1: id-envelopedData.
    content_type = info["content_type"].native
    if content_type != "enveloped_data":
        raise KeyReleaseError(f"CMS: content type is {content_type}, not envelopedData")
    enveloped = info["content"]

    # (3) RFC 5652 §6.1: version 2 when a recipient is identified by subjectKeyIdentifier
    # and there is no originatorInfo or unprotectedAttrs; every KMS sample we have is v2.
    version = enveloped["version"].native
    if version != "v2":
        raise KeyReleaseError(f"CMS: EnvelopedData version must be 2, not {version}")
    if not isinstance(enveloped["originator_info"], core.Void):
        raise KeyReleaseError("CMS: originatorInfo is not allowed")
    if not isinstance(enveloped["unprotected_attrs"], core.Void):
        raise KeyReleaseError("CMS: unprotectedAttrs are not allowed")

    # (4) One KeyTransRecipientInfo, v2, rid = [0] subjectKeyIdentifier (RFC 5652 §6.2.1).
    recipients = enveloped["recipient_infos"]
    if len(recipients) != 1:
        raise KeyReleaseError(f"CMS: expected exactly one recipient, found {len(recipients)}")
    recipient = recipients[0]
    if recipient.name != "ktri":
        raise KeyReleaseError(
            f"CMS: the recipient must be a KeyTransRecipientInfo, not {recipient.name}"
        )
    ktri = recipient.chosen
    ktri_version = ktri["version"].native
    if ktri_version != "v2":
        raise KeyReleaseError(f"CMS: KeyTransRecipientInfo version must be 2, not {ktri_version}")
    rid = ktri["rid"]
    if rid.name != "subject_key_identifier":
        raise KeyReleaseError("CMS: the recipient must be named by a subjectKeyIdentifier")
    recipient_key_id: bytes = rid.chosen.native
    _check_key_id(recipient_key_id)

    # (5) RFC 4055 §4.1 RSAES-OAEP-params; every field has a SHA-1 default, so each one
    # is checked, present or not.
    _check_oaep(ktri["key_encryption_algorithm"])
    encrypted_key: bytes = ktri["encrypted_key"].native

    # (6) RFC 5652 §6.1 EncryptedContentInfo; RFC 3565 §4.1: the parameter is the IV.
    eci = enveloped["encrypted_content_info"]
    inner_type = eci["content_type"].native
    if inner_type != "data":
        raise KeyReleaseError(f"CMS: encrypted content type must be data, not {inner_type}")
    cea = eci["content_encryption_algorithm"]
    cea_name = cea["algorithm"].native
    if cea_name != "aes256_cbc":
        raise KeyReleaseError(f"CMS: content encryption must be AES-256-CBC, not {cea_name}")
    iv_param = cea["parameters"]
    if not isinstance(iv_param, core.OctetString):
        raise KeyReleaseError("CMS: AES-256-CBC has no IV parameter")
    iv: bytes = iv_param.native
    _check_iv(iv)

    # (7) encryptedContent is [0] IMPLICIT OCTET STRING, OPTIONAL. KMS sends it either
    # primitive or constructed with indefinite length; asn1crypto joins the chunks.
    encrypted = eci["encrypted_content"]
    if not isinstance(encrypted, core.OctetString):
        raise KeyReleaseError("CMS: encryptedContent is absent")
    encrypted_content: bytes = encrypted.native
    _check_content(encrypted_content)

    return EnvelopedKey(
        recipient_key_id=recipient_key_id,
        encrypted_key=encrypted_key,
        iv=iv,
        encrypted_content=encrypted_content,
    )


def _check_oaep(algorithm: cms.KeyEncryptionAlgorithm) -> None:
    if algorithm["algorithm"].native != "rsaes_oaep":
        raise KeyReleaseError(_OAEP_MESSAGE)
    params = algorithm["parameters"]
    if not isinstance(params, algos.RSAESOAEPParams):
        # Absent parameters mean all defaults: SHA-1.
        raise KeyReleaseError(_OAEP_MESSAGE)
    digest = params["hash_algorithm"]
    mgf = params["mask_gen_algorithm"]
    mgf_digest = mgf["parameters"]
    if not (
        _is_sha256(digest)
        and mgf["algorithm"].native == "mgf1"
        and isinstance(mgf_digest, algos.DigestAlgorithm)
        and _is_sha256(mgf_digest)
    ):
        raise KeyReleaseError(_OAEP_MESSAGE)
    # RFC 8017 §A.2.1: pSourceAlgorithm defaults to pSpecified with an empty label; the
    # real KMS samples omit it. Anything else would be a label we do not use.
    source = params["p_source_algorithm"]
    if source["algorithm"].native != "p_specified" or source["parameters"].native != b"":
        raise KeyReleaseError("CMS: key encryption must use an empty OAEP label")


def _is_sha256(digest: algos.DigestAlgorithm) -> bool:
    # RFC 4055 §2.1: the SHA-2 parameters may be absent or NULL; accept both, nothing else.
    return bool(digest["algorithm"].native == "sha256" and digest["parameters"].native is None)


def open_recipient_envelope(ber: bytes, private_key: rsa.RSAPrivateKey) -> bytearray:
    """Parse ``ber`` (see :func:`parse_recipient_envelope`) and decrypt it with our key.

    Returns the plaintext (for GenerateDataKey, the 32-byte data key) as a ``bytearray``
    the caller should wipe when done. Not checked: integrity (module docstring); a
    tampered IV or early ciphertext block yields a wrong plaintext, not an error.
    """
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise KeyReleaseError("CMS: the recipient key must be an RSA private key")
    if private_key.key_size < MIN_RSA_BITS:
        raise KeyReleaseError(
            f"CMS: RSA key must be at least {MIN_RSA_BITS} bits, not {private_key.key_size}"
        )
    envelope = parse_recipient_envelope(ber)
    if not hmac.compare_digest(envelope.recipient_key_id, spki_key_id(private_key.public_key())):
        raise KeyReleaseError("CMS: envelope is for another recipient key")

    # Wiping is best effort: cryptography hands the unwrapped key back as immutable
    # bytes, and OpenSSL keeps its own copies; we zero the bytearrays we own, so at
    # least no long-lived reference of ours keeps key material around.
    try:
        unwrapped = private_key.decrypt(envelope.encrypted_key, _OAEP)
    except (ValueError, TypeError) as e:
        # One message for every OAEP failure, with no detail: distinguishable OAEP
        # errors are what Manger's attack feeds on.
        raise KeyReleaseError("CMS: the wrapped key does not decrypt with this key") from e
    cek = bytearray(unwrapped)
    del unwrapped
    try:
        if len(cek) != _CEK_BYTES:
            raise KeyReleaseError(
                f"CMS: the unwrapped content-encryption key must be {_CEK_BYTES} bytes,"
                f" not {len(cek)}"
            )
        return _decrypt_content(cek, envelope.iv, envelope.encrypted_content)
    finally:
        _wipe(cek)


def _decrypt_content(cek: bytearray, iv: bytes, ciphertext: bytes) -> bytearray:
    # Decrypt straight into a buffer we own (update_into needs one block of slack).
    out = bytearray(len(ciphertext) + _AES_BLOCK_BYTES - 1)
    try:
        decryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
        n = decryptor.update_into(ciphertext, out)
        decryptor.finalize()
        if n != len(ciphertext):  # CBC without padding returns every whole block at once
            raise ValueError("short CBC output")
        # RFC 5652 §6.3 padding (PKCS #7) lives in the last block only: give cryptography's
        # unpadder just that block, so no other plaintext is copied into immutable bytes.
        unpadder = sym_padding.PKCS7(8 * _AES_BLOCK_BYTES).unpadder()
        tail = unpadder.update(bytes(out[n - _AES_BLOCK_BYTES : n])) + unpadder.finalize()
    except ValueError as e:
        _wipe(out)
        raise KeyReleaseError("CMS: content does not decrypt") from e
    # Copy out rather than shrink in place: a shrinking bytearray may move, leaving an
    # unwiped copy of the plaintext behind in freed memory.
    plaintext = out[: n - _AES_BLOCK_BYTES + len(tail)]
    _wipe(out)
    return plaintext


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))
