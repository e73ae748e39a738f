"""Attested key release: KMS Decrypt with a Recipient (ARCHITECTURE.md flow 1).

The enclave makes an RSA-2048 key pair, asks the NSM for an attestation document
whose ``public_key`` is that key's SubjectPublicKeyInfo, and calls KMS ``Decrypt``
with ``Recipient={AttestationDocument, KeyEncryptionAlgorithm: RSAES_OAEP_SHA_256}``.
KMS checks the document and the key policy's ``kms:RecipientAttestation:*``
conditions and answers with ``CiphertextForRecipient``, a CMS envelope only that RSA
key opens (:mod:`ephemeralml.common._cms`). The RSA key lives for one release.

The same code runs in mock mode: boto3 is pointed (``endpoint_url``) at the local
KMS-compatible server, which verifies the mock NSM's documents and enforces the
same policy conditions.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ephemeralml.common._cbor import encode
from ephemeralml.common._cms import open_recipient_envelope
from ephemeralml.common._errors import Error, KeyReleaseError

from ._nsm import Nsm

__all__ = ["KMS_ATTEMPTS", "KeyReleaseEvidence", "KmsKeyRelease", "ReleasedKey"]

log = logging.getLogger("ephemeralml.enclave.keyrelease")

#: Tries per release when KMS cannot be reached or throttles; with the backoff
#: below that is about 15 s before a clear error, enough to ride out a restart of
#: the host's forwarder, short enough that a misconfiguration is reported quickly.
KMS_ATTEMPTS = 5
_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
#: KMS errors worth retrying; everything else (AccessDenied above all) is final.
_RETRYABLE = frozenset(
    {
        "ThrottlingException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "ServiceUnavailable",
    }
)


@dataclass(frozen=True)
class KeyReleaseEvidence:
    """What ties an inference to the release of its model's key (receipts carry its digest)."""

    kms_request_id: str
    kms_key_id: str
    ciphertext_for_recipient_sha256: bytes
    attestation_sha256: bytes

    def to_cbor(self) -> bytes:
        return encode(
            {
                "kms_request_id": self.kms_request_id,
                "kms_key_id": self.kms_key_id,
                "cfr_sha256": self.ciphertext_for_recipient_sha256,
                "attestation_sha256": self.attestation_sha256,
            }
        )

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.to_cbor()).digest()


@dataclass
class ReleasedKey:
    """A data key and how it was released. Call :meth:`wipe` once it is used."""

    data_key: bytearray
    evidence: KeyReleaseEvidence
    attestation: bytes

    def wipe(self) -> None:
        self.data_key[:] = bytes(len(self.data_key))


class KmsKeyRelease:
    """Releases data keys through KMS with this enclave's attestation as Recipient."""

    def __init__(
        self,
        nsm: Nsm,
        kms: Any,
        *,
        attempts: int = KMS_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.nsm = nsm
        self.kms = kms
        self.attempts = attempts
        self._sleep = sleep

    def release(self, wrapped_key: bytes, *, kms_key_id: str, what: str) -> ReleasedKey:
        """Decrypt ``wrapped_key`` (a KMS CiphertextBlob) into this enclave only."""
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        spki = rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        doc = self.nsm.get_attestation_doc(
            public_key=spki, user_data=None, nonce=self.nsm.get_random(32)
        )
        response = self._decrypt(wrapped_key, kms_key_id, doc, what)
        cfr = response.get("CiphertextForRecipient")
        if not isinstance(cfr, bytes | bytearray) or not cfr:
            raise KeyReleaseError(f"KMS answered without CiphertextForRecipient for {what}")
        if response.get("Plaintext"):
            # With a Recipient, KMS must not return the plaintext key: if it does,
            # something other than KMS answered, or the key crossed the host in clear.
            raise KeyReleaseError(f"KMS returned a plaintext key for {what}; refusing it")
        try:
            data_key = open_recipient_envelope(bytes(cfr), rsa_key)
        except Error as e:
            raise KeyReleaseError(f"key release for {what}: {e}") from e
        finally:
            del rsa_key  # one release, one key
        request_id = str(response.get("ResponseMetadata", {}).get("RequestId", ""))
        evidence = KeyReleaseEvidence(
            kms_request_id=request_id,
            kms_key_id=str(response.get("KeyId", kms_key_id)),
            ciphertext_for_recipient_sha256=hashlib.sha256(cfr).digest(),
            attestation_sha256=hashlib.sha256(doc).digest(),
        )
        log.info("released the data key for %s (KMS request %s)", what, request_id or "?")
        return ReleasedKey(data_key, evidence, doc)

    def _decrypt(self, wrapped_key: bytes, kms_key_id: str, doc: bytes, what: str) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        last = ""
        for attempt in range(self.attempts):
            try:
                return self.kms.decrypt(
                    CiphertextBlob=wrapped_key,
                    KeyId=kms_key_id,
                    EncryptionAlgorithm="SYMMETRIC_DEFAULT",
                    Recipient={
                        "AttestationDocument": doc,
                        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                    },
                )
            except ClientError as e:
                err = e.response.get("Error", {})
                code, msg = str(err.get("Code", "")), str(err.get("Message", ""))
                if code not in _RETRYABLE:
                    raise KeyReleaseError(
                        f"KMS refused to release the key for {what}: {code}: {msg}"
                    ) from e
                last = code
            except BotoCoreError as e:
                last = type(e).__name__
            if attempt + 1 < self.attempts:
                delay = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                log.warning("KMS unavailable (%s); retrying in %.1f s", last, delay)
                self._sleep(delay)
        raise KeyReleaseError(
            f"KMS unreachable for {what} after {self.attempts} attempts (last: {last})"
        )
