"""A mock of the Nitro Security Module for machines without Nitro.

:class:`MockNsm` implements the enclave's :class:`~ephemeralml.enclave._nsm.Nsm` seam:
it issues real COSE_Sign1 documents in the exact AWS format,
signed by a locally generated P-384 chain whose root says "MOCK ... NOT AWS". A mock
document verifies only under ``TrustedRoot.unsafe_mock(...)``: never under the AWS
root (check A4 of protocol.md §3 refuses it).

Mock measurements (:func:`mock_measurements`) stand in for the PCRs a real EIF build
would produce, so that a policy can still tell one build or model from another:

* PCR0 ("image") = SHA-384 of ``encode(["ephemeralml-mock-pcr0-image", runtime_id,
  code_digest, model_digest])``: changes with any code file or the model.
* PCR1 ("kernel") = SHA-384 of ``encode(["ephemeralml-mock-kernel", runtime_id])``.
* PCR2 ("application") = SHA-384 of ``encode(["ephemeralml-mock-application",
  code_digest])``: changes with any code file.
* PCR8 = 48 zero bytes (the image is not signed).

``encode`` is the project's deterministic CBOR; the array framing keeps the fields
unambiguous (no concatenation can collide). Unset PCRs of 0..15 are zero, as on AWS.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ephemeralml.common._attestation import MAX_OPTIONAL_FIELD_BYTES, PCR_BYTES
from ephemeralml.common._cbor import encode
from ephemeralml.common._errors import ConfigError, LimitError, LocalProtocolError
from ephemeralml.enclave._measure import enclave_code_digest, image_config_digest, runtime_id
from ephemeralml.enclave._nsm import MAX_RANDOM_BYTES, Nsm, utc_now
from ephemeralml.runtime._home import write_atomic

from ._certs import cert_pem, issue, key_pem, load_pair, mock_name, new_key, whole_seconds

__all__ = [
    "MOCK_INTERMEDIATE_LIFETIME",
    "MOCK_INTERMEDIATE_RENEW_BEFORE",
    "MOCK_LEAF_LIFETIME",
    "MOCK_LEAF_RENEW_BEFORE",
    "MOCK_PCR_COUNT",
    "MOCK_ROOT_LIFETIME",
    "MockNsm",
    "mock_enclave_measurements",
    "mock_measurements",
]

#: PCRs an NSM document reports (AWS documents carry 0..15).
MOCK_PCR_COUNT = 16

#: Mock root lifetime: like AWS Root-G1, 30 years, so a published root stays put.
MOCK_ROOT_LIFETIME = timedelta(days=30 * 365)
#: Mock intermediate lifetime: AWS's regional intermediates live days to weeks.
MOCK_INTERMEDIATE_LIFETIME = timedelta(days=30)
#: Re-mint the intermediate when less than this is left: a leaf (3 h) issued under
#: it must never outlive it.
MOCK_INTERMEDIATE_RENEW_BEFORE = timedelta(days=1)
#: Mock leaf lifetime: AWS enclave leaf certificates live about 3 hours.
MOCK_LEAF_LIFETIME = timedelta(hours=3)
#: Re-mint the leaf when less than this is left, so that a document issued now
#: still verifies for the verifier's whole freshness window (5 min) and then some.
MOCK_LEAF_RENEW_BEFORE = timedelta(minutes=30)

_MOCK_ROOT_CN = "ephemeralml MOCK Nitro root - NOT AWS"
_MOCK_INTERMEDIATE_CN = "ephemeralml MOCK Nitro intermediate - NOT AWS"
_MODULE_ID_RE = re.compile(r"^i-mock0000000000000-enc[0-9a-f]{16}$")

_CA_DIR = "mock-ca"
_ROOT_KEY = "root.key"
_ROOT_CERT = "root.crt"
_INTERMEDIATE = "intermediate.pem"  # key and certificate together: replaced as one
_MODULE_ID = "module_id"

#: COSE protected header {1: -35} (alg: ES384), byte for byte what AWS sends.
_PROTECTED = bytes.fromhex("a1013822")


def _sha384(*parts: object) -> bytes:
    return hashlib.sha384(encode(list(parts))).digest()


def mock_measurements(
    *, code_digest: bytes, model_digest: bytes, runtime_id: str
) -> dict[int, bytes]:
    """Stand-in PCRs 0, 1, 2 and 8 for a mock enclave (formulas in the module docstring)."""
    if not isinstance(code_digest, bytes) or not code_digest:
        raise ConfigError("mock measurements: code_digest must be non-empty bytes")
    if not isinstance(model_digest, bytes) or not model_digest:
        raise ConfigError("mock measurements: model_digest must be non-empty bytes")
    if not isinstance(runtime_id, str) or not runtime_id:
        raise ConfigError("mock measurements: runtime_id must be non-empty text")
    return {
        0: _sha384("ephemeralml-mock-pcr0-image", runtime_id, code_digest, model_digest),
        1: _sha384("ephemeralml-mock-kernel", runtime_id),
        2: _sha384("ephemeralml-mock-application", code_digest),
        8: bytes(PCR_BYTES),
    }


def mock_enclave_measurements(
    owner_keys: Iterable[bytes], floors: Mapping[str, int] | None = None
) -> dict[int, bytes]:
    """PCR0/1/2/8 of a mock enclave running this code with these owner keys and floors."""
    return mock_measurements(
        code_digest=enclave_code_digest(),
        model_digest=image_config_digest(owner_keys, floors or {}),
        runtime_id=runtime_id(),
    )


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    write_atomic(path, data, mode=mode)


# ---------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    der: bytes


def _issued(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> _Issued:
    return _Issued(key=key, cert=cert, der=cert.public_bytes(serialization.Encoding.DER))


def _new_root(now: datetime) -> _Issued:
    key = new_key()
    name = mock_name(_MOCK_ROOT_CN)
    cert = issue(
        subject=name,
        key=key,
        issuer=name,
        issuer_key=key,
        not_before=whole_seconds(now) - timedelta(days=1),
        lifetime=MOCK_ROOT_LIFETIME,
        ca_path_length=1,
        is_ca=True,
    )
    return _issued(key, cert)


def _new_intermediate(root: _Issued, now: datetime) -> _Issued:
    key = new_key()
    cert = issue(
        subject=mock_name(_MOCK_INTERMEDIATE_CN),
        key=key,
        issuer=root.cert.subject,
        issuer_key=root.key,
        not_before=whole_seconds(now) - timedelta(hours=1),
        lifetime=MOCK_INTERMEDIATE_LIFETIME,
        ca_path_length=0,
        is_ca=True,
    )
    return _issued(key, cert)


def _new_leaf(intermediate: _Issued, module_id: str, now: datetime) -> _Issued:
    key = new_key()
    cert = issue(
        subject=mock_name(f"{module_id}.mock.ephemeralml"),
        key=key,
        issuer=intermediate.cert.subject,
        issuer_key=intermediate.key,
        # Like AWS: the leaf starts at the second it is minted.
        not_before=whole_seconds(now),
        lifetime=MOCK_LEAF_LIFETIME,
        ca_path_length=None,
        is_ca=False,
    )
    return _issued(key, cert)


# ---------------------------------------------------------------------------
# The mock
# ---------------------------------------------------------------------------


class MockNsm(Nsm):
    """An NSM stand-in that signs AWS-format documents with a local mock CA.

    The mock CA lives in ``state_dir / "mock-ca"`` (folder 0700, key files 0600,
    each file written atomically; the first creation is built in a temporary folder
    and renamed into place, so a crash never leaves half a CA). The root is kept for
    30 years; the intermediate is re-minted when under a day is left; the leaf lives
    in memory and is re-minted when under 30 minutes is left, all by the injected
    clock. Thread-safe.
    """

    mode = "mock"

    def __init__(
        self,
        *,
        ca_dir: Path,
        root: _Issued,
        intermediate: _Issued,
        pcrs: Mapping[int, bytes],
        module_id: str,
        clock: Callable[[], datetime],
    ) -> None:
        # Use load_or_create; this constructor trusts its arguments.
        self._ca_dir = ca_dir
        self._root = root
        self._intermediate = intermediate
        self._pcrs = pcrs
        self._module_id = module_id
        self._clock = clock
        self._leaf: _Issued | None = None
        self._lock = threading.Lock()

    # -- construction ------------------------------------------------------

    @classmethod
    def load_or_create(
        cls,
        state_dir: Path,
        pcrs: Mapping[int, bytes],
        *,
        module_id: str | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> MockNsm:
        """Load the mock CA from ``state_dir / "mock-ca"``, creating it on first use.

        ``pcrs`` gives PCR values for some of 0..15 (48 bytes each); the others are
        zero. ``module_id`` overrides the persisted one for this instance only.
        Raises :class:`ConfigError` for bad arguments or a corrupt CA folder.
        """
        full_pcrs = _full_pcrs(pcrs)
        if module_id is not None and (not isinstance(module_id, str) or not module_id):
            raise ConfigError("mock NSM: module_id must be non-empty text")
        now = _now(clock)
        state_dir = Path(state_dir)
        ca_dir = state_dir / _CA_DIR
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            if not ca_dir.exists():
                _create_ca_dir(state_dir, ca_dir, now)
            root, intermediate, stored_id = _load_ca_dir(ca_dir)
        except OSError as e:
            raise ConfigError(f"mock NSM: cannot use state folder {state_dir}: {e}") from e
        nsm = cls(
            ca_dir=ca_dir,
            root=root,
            intermediate=intermediate,
            pcrs=full_pcrs,
            module_id=module_id if module_id is not None else stored_id,
            clock=clock,
        )
        with nsm._lock:
            nsm._renew_intermediate(now)
        return nsm

    # -- public ------------------------------------------------------------

    @property
    def root_certificate_der(self) -> bytes:
        """The mock root certificate (DER): what ``TrustedRoot.unsafe_mock`` takes."""
        return self._root.der

    @property
    def module_id(self) -> str:
        return self._module_id

    @property
    def pcrs(self) -> Mapping[int, bytes]:
        """PCR 0..15 as this mock reports them."""
        return self._pcrs

    def publish_root(self, path: Path) -> None:
        """Write the mock root certificate as PEM to ``path`` (atomically, mode 0644)."""
        path = Path(path)
        try:
            _write_atomic(path, cert_pem(self._root.cert), mode=0o644)
        except OSError as e:
            raise ConfigError(f"mock NSM: cannot write root certificate to {path}: {e}") from e

    def get_attestation_doc(
        self, *, public_key: bytes | None, user_data: bytes | None, nonce: bytes | None
    ) -> bytes:
        for name, value in (("public_key", public_key), ("user_data", user_data), ("nonce", nonce)):
            _check_field(name, value)
        now = _now(self._clock)
        with self._lock:
            leaf = self._current_leaf(now)
            intermediate = self._intermediate
        # AWS's key order, which is not the deterministic order (so plain cbor2.dumps
        # of an insertion-ordered dict); unset optional fields are null, not absent.
        payload = cbor2.dumps(
            {
                "module_id": self._module_id,
                "digest": "SHA384",
                "timestamp": _ms(now),
                "pcrs": dict(self._pcrs),
                "certificate": leaf.der,
                "cabundle": [self._root.der, intermediate.der],
                "public_key": public_key,
                "user_data": user_data,
                "nonce": nonce,
            }
        )
        # RFC 9052 §4.4 Sig_structure for COSE_Sign1, external_aad empty.
        to_be_signed = cbor2.dumps(["Signature1", _PROTECTED, b"", payload])
        der_signature = leaf.key.sign(to_be_signed, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der_signature)
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        return cbor2.dumps([_PROTECTED, {}, payload, signature])

    def describe_pcr(self, index: int) -> bytes:
        if type(index) is not int or not 0 <= index < MOCK_PCR_COUNT:
            raise LocalProtocolError(
                f"mock NSM: PCR index {index!r} not in 0..{MOCK_PCR_COUNT - 1}"
            )
        return self._pcrs[index]

    def get_random(self, length: int) -> bytes:
        if type(length) is not int or not 1 <= length <= MAX_RANDOM_BYTES:
            raise LocalProtocolError(
                f"mock NSM: get_random length must be 1..{MAX_RANDOM_BYTES}, got {length!r}"
            )
        return os.urandom(length)

    # -- internals (hold self._lock) -----------------------------------------

    def _renew_intermediate(self, now: datetime) -> None:
        if self._intermediate.cert.not_valid_after_utc - now >= MOCK_INTERMEDIATE_RENEW_BEFORE:
            return
        fresh = _new_intermediate(self._root, now)
        try:
            _write_atomic(
                self._ca_dir / _INTERMEDIATE,
                key_pem(fresh.key) + cert_pem(fresh.cert),
                mode=0o600,
            )
        except OSError as e:
            raise ConfigError(f"mock NSM: cannot save a new intermediate: {e}") from e
        self._intermediate = fresh
        self._leaf = None

    def _current_leaf(self, now: datetime) -> _Issued:
        self._renew_intermediate(now)
        leaf = self._leaf
        if (
            leaf is None
            or now < leaf.cert.not_valid_before_utc
            or leaf.cert.not_valid_after_utc - now < MOCK_LEAF_RENEW_BEFORE
        ):
            leaf = _new_leaf(self._intermediate, self._module_id, now)
            self._leaf = leaf
        return leaf


def _ms(t: datetime) -> int:
    # Milliseconds since the epoch, exactly (no float rounding).
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _now(clock: Callable[[], datetime]) -> datetime:
    t = clock()
    if not isinstance(t, datetime) or t.tzinfo is None or t.utcoffset() is None:
        raise ConfigError("mock NSM: the clock must return a timezone-aware datetime")
    return t.astimezone(UTC)


def _check_field(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, bytes):
        raise LocalProtocolError(f"mock NSM: {name} must be bytes or None")
    # The real NSM refuses oversized fields; we refuse at the verifier's bound
    # (MAX_OPTIONAL_FIELD_BYTES) so the mock never issues a document we would reject.
    if len(value) > MAX_OPTIONAL_FIELD_BYTES:
        raise LimitError(
            f"mock NSM: {name} is {len(value)} bytes; the limit is {MAX_OPTIONAL_FIELD_BYTES}"
        )


def _full_pcrs(pcrs: Mapping[int, bytes]) -> Mapping[int, bytes]:
    if not isinstance(pcrs, Mapping):
        raise ConfigError("mock NSM: pcrs must be a mapping of index to 48 bytes")
    full = {i: bytes(PCR_BYTES) for i in range(MOCK_PCR_COUNT)}
    for index, value in pcrs.items():
        if type(index) is not int or not 0 <= index < MOCK_PCR_COUNT:
            raise ConfigError(f"mock NSM: PCR index {index!r} not in 0..{MOCK_PCR_COUNT - 1}")
        if not isinstance(value, bytes) or len(value) != PCR_BYTES:
            raise ConfigError(f"mock NSM: PCR{index} must be {PCR_BYTES} bytes")
        full[index] = value
    return MappingProxyType(full)


def _create_ca_dir(state_dir: Path, ca_dir: Path, now: datetime) -> None:
    """Build a new mock CA in a temporary folder, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(dir=state_dir, prefix=f".{_CA_DIR}."))
    try:
        os.chmod(tmp, 0o700)
        root = _new_root(now)
        intermediate = _new_intermediate(root, now)
        module_id = "i-mock0000000000000-enc" + secrets.token_hex(8)
        _write_atomic(tmp / _ROOT_KEY, key_pem(root.key), mode=0o600)
        _write_atomic(tmp / _ROOT_CERT, cert_pem(root.cert), mode=0o644)
        _write_atomic(
            tmp / _INTERMEDIATE,
            key_pem(intermediate.key) + cert_pem(intermediate.cert),
            mode=0o600,
        )
        _write_atomic(tmp / _MODULE_ID, module_id.encode() + b"\n", mode=0o644)
        try:
            os.rename(tmp, ca_dir)
        except OSError:
            # Another process created it first: use theirs.
            if not ca_dir.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_ca_dir(ca_dir: Path) -> tuple[_Issued, _Issued, str]:
    hint = (
        f"mock CA in {ca_dir} is incomplete or corrupt; delete that folder to start a new mock root"
    )
    if not ca_dir.is_dir():
        raise ConfigError(f"{hint} (not a folder)")
    try:
        root_key_pem = (ca_dir / _ROOT_KEY).read_bytes()
        root_cert_pem = (ca_dir / _ROOT_CERT).read_bytes()
        intermediate_pem = (ca_dir / _INTERMEDIATE).read_bytes()
        module_id = (ca_dir / _MODULE_ID).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{hint} ({e})") from e
    try:
        root_key, root_cert = load_pair(root_key_pem + root_cert_pem, what="root")
        inter_key, inter_cert = load_pair(intermediate_pem, what="intermediate")
    except ConfigError as e:
        raise ConfigError(f"{hint} ({e})") from e
    try:
        root_cert.verify_directly_issued_by(root_cert)
        inter_cert.verify_directly_issued_by(root_cert)
    except (InvalidSignature, ValueError, TypeError) as e:
        raise ConfigError(f"{hint} (intermediate is not issued by the root)") from e
    if not _MODULE_ID_RE.match(module_id):
        raise ConfigError(f"{hint} (module_id {module_id!r} is malformed)")
    return _issued(root_key, root_cert), _issued(inter_key, inter_cert), module_id
