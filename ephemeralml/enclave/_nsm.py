"""The Nitro Security Module seam: what the enclave asks of the NSM.

:class:`Nsm` is the interface: an attestation document, a PCR value, random bytes.
Production talks to ``/dev/nsm`` through libnsm (:mod:`._libnsm`); the mock, which
issues real COSE_Sign1 documents under a local CA, lives in :mod:`ephemeralml.mock`
and is never imported here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime

__all__ = ["MAX_RANDOM_BYTES", "Nsm", "utc_now"]

#: Most random bytes one get_random call returns. A guard against a caller asking
#: for megabytes through a path meant for keys and nonces; call again for more.
MAX_RANDOM_BYTES = 256


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Nsm(ABC):
    """What the enclave asks of the Nitro Security Module."""

    #: "mock" or "nitro"; shown in logs and health output.
    mode: str

    @abstractmethod
    def get_attestation_doc(
        self, *, public_key: bytes | None, user_data: bytes | None, nonce: bytes | None
    ) -> bytes:
        """A COSE_Sign1 attestation document (AWS format) over these optional fields."""

    @abstractmethod
    def describe_pcr(self, index: int) -> bytes:
        """The current value of PCR ``index``."""

    @abstractmethod
    def get_random(self, length: int) -> bytes:
        """``length`` random bytes from the module's generator."""
