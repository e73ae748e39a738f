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
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ephemeralml.common._cbor import encode
from ephemeralml.common._cms import open_recipient_envelope
from ephemeralml.common._errors import ConfigError, Error, KeyReleaseError

from ._nsm import Nsm

__all__ = [
    "KMS_ATTEMPTS",
    "KMS_BACKOFF_S",
    "KMS_CONNECT_TIMEOUT_S",
    "KMS_DEADLINE_S",
    "KMS_READ_TIMEOUT_S",
    "KeyReleaseEvidence",
    "KmsKeyRelease",
    "ReleasedKey",
    "kms_client_config",
]

log = logging.getLogger("ephemeralml.enclave.keyrelease")

#: Tries per release when KMS cannot be reached, times out, throttles or fails on its
#: side; with the backoff below that rides out a restart of the host's forwarder, and a
#: misconfiguration is still reported within a minute.
KMS_ATTEMPTS = 5
#: Seconds to wait before the 2nd, 3rd, ... try (exponential; the last value repeats).
KMS_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
#: Seconds one TCP connect to KMS (through the host's forwarder) may take: a live
#: forwarder answers in milliseconds, so more means it is down.
KMS_CONNECT_TIMEOUT_S = 5.0
#: Seconds KMS may take to answer one request: Decrypt with a Recipient is tens of
#: milliseconds on AWS; a stalled peer must not pin the enclave's boot.
KMS_READ_TIMEOUT_S = 15.0
#: Seconds one release may spend on retries in all: no new try starts after this, so
#: a boot against a slow or dead KMS ends with a clear error, not a hang.
KMS_DEADLINE_S = 60.0
#: KMS errors worth retrying (plus any HTTP 5xx); everything else (AccessDenied,
#: InvalidSignature, UnrecognizedClient, NotFound, ...) is final at once.
_RETRYABLE = frozenset(
    {
        "ThrottlingException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
    }
)


def kms_client_config(https_proxy: str | None = None) -> Any:
    """botocore ``Config`` for the enclave's KMS client: the timeouts above, one try each
    (the retry loop of :class:`KmsKeyRelease`, which keeps the evidence, decides), and,
    on Nitro, the ``https_proxy`` on the enclave's loopback that leads to the host's
    egress proxy (TLS to KMS goes through it as a ``CONNECT`` tunnel)."""
    from botocore.config import Config

    return Config(
        proxies={"https": https_proxy} if https_proxy else None,
        # total_max_attempts counts the first try; botocore's max_attempts counts retries.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=KMS_CONNECT_TIMEOUT_S,
        read_timeout=KMS_READ_TIMEOUT_S,
    )


def _certificate_failure(error: BaseException) -> str | None:
    """Why the peer's certificate was refused, if that is what ``error`` (botocore's,
    wrapping urllib3's, wrapping ssl's) comes down to."""
    todo, seen = [error], set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return str(e.verify_message or e.reason or e)
        kwargs = getattr(e, "kwargs", None)
        nested = (e.__cause__, e.__context__, *e.args, *(kwargs or {}).values())
        todo.extend(x for x in nested if isinstance(x, BaseException))
    return None


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
        deadline_s: float = KMS_DEADLINE_S,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if attempts < 1 or deadline_s <= 0:
            raise ConfigError("key release: attempts must be >= 1 and the deadline > 0 s")
        self.nsm = nsm
        self.kms = kms
        self.attempts = attempts
        self.deadline_s = deadline_s
        self._sleep = sleep
        self._monotonic = monotonic

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

        started = self._monotonic()
        last, tried = "", 0
        while tried < self.attempts:
            tried += 1
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
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code not in _RETRYABLE and not (isinstance(status, int) and status >= 500):
                    # A refusal (the policy, the signature, the credentials) does not
                    # change by asking again: final at once, nothing retried or kept.
                    raise KeyReleaseError(
                        f"KMS refused to release the key for {what}: {code}: {msg}"
                    ) from e
                last = code or f"HTTP {status}"
            except BotoCoreError as e:  # down (connect), slow (read timeout), cut off
                bad_certificate = _certificate_failure(e)
                if bad_certificate is not None:
                    # Not KMS, or not under the CAs this enclave trusts: asking again
                    # reaches the same peer. Final at once.
                    raise KeyReleaseError(
                        f"KMS's TLS certificate did not verify for {what}: {bad_certificate}"
                    ) from e
                last = type(e).__name__
            if tried >= self.attempts:
                break
            delay = KMS_BACKOFF_S[min(tried - 1, len(KMS_BACKOFF_S) - 1)]
            if self._monotonic() - started + delay >= self.deadline_s:
                break
            log.warning("KMS unavailable (%s); retrying in %.1f s", last, delay)
            self._sleep(delay)
        raise KeyReleaseError(
            f"KMS unreachable for {what} after {tried} attempts "
            f"in {self._monotonic() - started:.1f} s (last: {last})"
        )
