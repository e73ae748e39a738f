"""ephemeralml.common: the protocol core, shared by the three programs.

Sans-IO: no sockets, threads, files or environment. Bytes in, events and bytes out.
See docs/protocol.md for the wire protocol and the numbered checks cited in the code.
"""

from ._attestation import (
    AttestationDocument,
    AttestationPolicy,
    PcrAllowlist,
    TrustedRoot,
    UnsafeAnyMeasurements,
    VerifiedAttestation,
    parse_unverified,
    verify_attestation,
)
from ._errors import (
    AttestationError,
    CiphertextError,
    ConfigError,
    Error,
    InferenceError,
    LimitError,
    PolicyError,
    ProtocolError,
    ReceiptError,
    RemoteError,
    TransportError,
    VerificationError,
)
from ._receipt import Receipt, VerifiedReceipt, verify_receipt

__all__ = [
    "AttestationDocument",
    "AttestationError",
    "AttestationPolicy",
    "CiphertextError",
    "ConfigError",
    "Error",
    "InferenceError",
    "LimitError",
    "PcrAllowlist",
    "PolicyError",
    "ProtocolError",
    "Receipt",
    "ReceiptError",
    "RemoteError",
    "TransportError",
    "TrustedRoot",
    "UnsafeAnyMeasurements",
    "VerificationError",
    "VerifiedAttestation",
    "VerifiedReceipt",
    "parse_unverified",
    "verify_attestation",
    "verify_receipt",
]
