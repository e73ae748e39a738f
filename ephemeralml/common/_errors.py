"""One error root, split by who is at fault.

Every failure the project expects is an :class:`Error` with a stable ``code`` (it
travels in error frames and in ``--json`` output) and a one-line message (what the
CLI prints). Foreign exceptions (cbor2, cryptography, pycose, ``KeyError``...) are
translated at the boundary with ``raise ... from e``; nothing raw escapes a decoder
of untrusted bytes.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "BusyError",
    "CiphertextError",
    "ConfigError",
    "DecodeError",
    "Error",
    "InferenceError",
    "KeyReleaseError",
    "LimitError",
    "LocalProtocolError",
    "ManifestError",
    "PolicyError",
    "ProtocolError",
    "ReceiptError",
    "RemoteError",
    "RemoteProtocolError",
    "TransportError",
    "TruncatedError",
    "VerificationError",
    "error_from_code",
    "foreign_error",
]


class Error(Exception):
    """Root of every error this project raises on purpose."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints exactly this.
        message = " ".join(str(message).split())
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ProtocolError(Error):
    """The wire protocol was not followed."""

    code = "protocol"


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow (a bug on our side)."""

    code = "local_protocol"


class RemoteProtocolError(ProtocolError):
    """The peer (or something between us) sent bytes the protocol does not allow."""

    code = "remote_protocol"


class DecodeError(RemoteProtocolError):
    """Bytes that are not the strict, deterministic CBOR we accept."""

    code = "decode"


class LimitError(RemoteProtocolError):
    """A named limit was exceeded (frame size, input count, text length...)."""

    code = "limit"


class VerificationError(Error):
    """Something that must verify did not."""

    code = "verification"


class AttestationError(VerificationError):
    """An attestation document failed a check of protocol.md §3."""

    code = "attestation"


class ReceiptError(VerificationError):
    """A receipt failed a check of protocol.md §5."""

    code = "receipt"


class CiphertextError(VerificationError):
    """A sealed message failed authentication: tampered, replayed, reordered or misrouted."""

    code = "ciphertext"


class PolicyError(VerificationError):
    """Verified evidence does not satisfy the trust policy."""

    code = "policy"


class ManifestError(VerificationError):
    """A model manifest failed verification."""

    code = "manifest"


class TransportError(Error):
    """A socket could not be opened, or the peer went away."""

    code = "transport"


class KeyReleaseError(Error):
    """Key release (KMS with an attestation Recipient) failed."""

    code = "key_release"


class ConfigError(Error):
    """Configuration, flags or files given by the user are wrong."""

    code = "config"


class InferenceError(Error):
    """The request was well formed but cannot be served (unknown model, bad input)."""

    code = "inference"


class BusyError(Error):
    """The enclave has no room for this request now (a queue is full); the same
    request may succeed later, unlike a :class:`LimitError`, which it never will."""

    code = "busy"


class TruncatedError(Error):
    """A streamed answer ended without the enclave's authenticated end and receipt
    (protocol.md §2.8 S4): what arrived is not the answer, only a part of it."""

    code = "truncated"


class RemoteError(Error):
    """The peer reported an error in an error frame.

    ``remote_code`` is the peer's ``code``; the message is the peer's one line.
    An error frame is not authenticated (a hostile relay can forge one), so it can
    only ever end a session, never make us accept anything.
    """

    code = "remote"

    def __init__(self, remote_code: str, message: str) -> None:
        super().__init__(f"enclave reported {remote_code}: {message}")
        self.remote_code = remote_code


_BY_CODE: dict[str, type[Error]] = {
    cls.code: cls
    for cls in (
        Error,
        ProtocolError,
        LocalProtocolError,
        RemoteProtocolError,
        DecodeError,
        LimitError,
        VerificationError,
        AttestationError,
        CiphertextError,
        ReceiptError,
        PolicyError,
        ManifestError,
        TransportError,
        KeyReleaseError,
        ConfigError,
        InferenceError,
        TruncatedError,
        BusyError,
    )
}


def error_from_code(code: str) -> type[Error]:
    """The error class for a ``code``; unknown codes map to :class:`Error`."""
    return _BY_CODE.get(code, Error)


def foreign_error(e: BaseException, what: str) -> Error:
    """Our error for a foreign exception raised while handling untrusted ``what``.

    The boundary rule (style 3) for code paths where a library may raise types we
    cannot list (cryptography's per-field exceptions, pyhpke's, cbor2's): memory and
    recursion exhaustion become :class:`LimitError`, anything else
    :class:`RemoteProtocolError`, always one line naming the foreign type. Callers
    ``raise foreign_error(e, ...) from e``; an :class:`Error` passes through as is.
    """
    if isinstance(e, Error):
        return e
    if isinstance(e, MemoryError | RecursionError):
        return LimitError(f"{what} needs more resources than allowed ({type(e).__name__})")
    return RemoteProtocolError(f"{what} could not be processed: {type(e).__name__}: {e}")
