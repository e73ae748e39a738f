"""The client's trust policy: which root, which measurements, how old, which models.

Built at the edge (CLI flags or a policy file) and handed to the library. Three
ways to get one:

* :meth:`ClientPolicy.from_file` — a JSON policy, unsigned (``policy.json``) or
  signed by a policy signer (``policy.cose``); the production path;
* :meth:`ClientPolicy.production` — the pinned AWS root and explicit measurements;
* :meth:`ClientPolicy.unsafe_mock` — the mock root and measurements that a local
  mock enclave published. It warns, loudly, every time.

The layers of a policy file, in the order they run (protocol.md §8):

1. :func:`open_policy` — bytes in: check P3 (the signature, over the bytes received)
   and return the JSON payload. No JSON is parsed before P3 has passed.
2. :meth:`PolicyDocument.from_json` — pure parsing: every field, its type and range.
3. :meth:`ClientPolicy.from_file` — resolves the root (reads files), then check P4
   against a :class:`PolicyVersionStore` (rollback), and records the version only
   once everything else has passed.

P1 (models) and P2 (the enclave's policy version) run later, against the verified
binding of each session: :meth:`ClientPolicy.check_binding`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ephemeralml.common._attestation import (
    MAX_ATTESTATION_AGE_S,
    AttestationPolicy,
    Measurements,
    PcrAllowlist,
    TrustedRoot,
    UnsafeAnyMeasurements,
)
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._cose import ALG_EDDSA, decode_sign1, sign_eddsa, verify_eddsa
from ephemeralml.common._errors import ConfigError, DecodeError, Error, PolicyError
from ephemeralml.runtime._home import MOCK_MEASUREMENTS, MOCK_ROOT, default_home, write_atomic
from ephemeralml.runtime._strict import generate_ed25519_key, load_ed25519_key, loads_json

from ._aws_root import AWS_NITRO_ROOT_G1_PEM

__all__ = [
    "MAX_PINNED_DIGESTS",
    "MOCK_WARNING",
    "POLICY_SIGNERS_FILE",
    "POLICY_VERSIONS_FILE",
    "ClientPolicy",
    "PemRoot",
    "PolicyDocument",
    "PolicyVersionStore",
    "aws_root",
    "generate_signer_key",
    "load_policy_signers",
    "load_signer_key",
    "mock_root",
    "open_policy",
    "parse_signer_keys",
    "policy_signer_kid",
    "sign_policy",
    "trust_policy",
    "warn_mock",
]

MOCK_WARNING = (
    "WARNING: trusting the MOCK attestation root ({where}). This is NOT a real enclave: "
    "the machine's owner can read everything. Use for development only."
)

#: A policy file (signed or not) is small; anything bigger is a mistake.
_MAX_POLICY_BYTES = 64 * 1024
#: Manifest digests one policy may pin for one model (P1): a rolling upgrade needs
#: the old and the new release, a staged one a few more; a longer list is a mistake.
MAX_PINNED_DIGESTS = 16

#: Relative to the home: trusted policy signers, one raw Ed25519 public key (64 hex)
#: a line. When it names any key, unsigned policies are refused (P3).
POLICY_SIGNERS_FILE = Path("policy-signers")
#: Relative to the home: the highest policy version accepted per identity (P4).
POLICY_VERSIONS_FILE = Path("policy-versions.json")

_VERSIONS_FORMAT = "ephemeralml-policy-versions/1"
_FIELDS = frozenset(
    {
        "version",
        "root",
        "max_age_s",
        "measurements",
        "allow_debug",
        "models",
        "owner_keys",
        "min_enclave_policy_version",
        "session_mode",
    }
)
#: First byte of a COSE_Sign1: tag 18 (0xd2) or, untagged, an array of 4 (0x84).
#: Any other file is read as an unsigned JSON policy.
_COSE_FIRST_BYTES = frozenset({0xD2, 0x84})


def warn_mock(where: Path | str, stream: TextIO | None = None) -> None:
    print(MOCK_WARNING.format(where=where), file=stream or sys.stderr, flush=True)


def aws_root() -> TrustedRoot:
    return TrustedRoot.aws_nitro(AWS_NITRO_ROOT_G1_PEM)


def mock_root(home: Path | None = None) -> tuple[TrustedRoot, Path]:
    path = (home or default_home()) / MOCK_ROOT
    try:
        pem = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(
            f"no mock root at {path}: start `ephemeral-enclave --mock` first "
            "(or set EPHEMERALML_HOME to the enclave's)"
        ) from e
    except OSError as e:
        raise ConfigError(f"cannot read the mock root at {path}: {e.strerror}") from e
    return TrustedRoot.unsafe_mock(pem), path


def _hex(value: Any, what: str, length: int) -> bytes:
    try:
        b = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        b = None
    if b is None or len(b) != length:
        raise ConfigError(f"{what} must be {length * 2} hex digits")
    return b


def _pcr_set(obj: Any, where: str) -> dict[int, bytes]:
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(f"{where}: a measurement set is a non-empty object of PCRn: hex")
    out: dict[int, bytes] = {}
    for k, v in obj.items():
        name = str(k).upper().removeprefix("PCR")
        if not name.isdigit() or not 0 <= int(name) <= 31:
            raise ConfigError(f"{where}: {k!r} is not a PCR name (PCR0..PCR31)")
        if int(name) in out:
            raise ConfigError(f"{where}: PCR{int(name)} is named twice")
        out[int(name)] = _hex(v, f"{where}: {k}", 48)
    return out


def _measurements_from_published(home: Path) -> tuple[PcrAllowlist, Path]:
    path = home / MOCK_MEASUREMENTS
    try:
        data = json.loads(path.read_bytes())
        pcrs = _pcr_set(data["pcrs"], str(path))
    except FileNotFoundError as e:
        raise ConfigError(
            f"no mock measurements at {path}: start `ephemeral-enclave --mock` first"
        ) from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read mock measurements at {path}: {e}") from e
    return PcrAllowlist([pcrs]), path


# ---------------------------------------------------------------- signer keys


def policy_signer_kid(public_key: bytes) -> bytes:
    """The id of a policy signer: SHA-256 of its 32 raw Ed25519 public-key bytes."""
    return hashlib.sha256(public_key).digest()


def _ed25519_public(value: Any, what: str) -> bytes:
    raw = _hex(value, what, 32)
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise ConfigError(f"{what} is not an Ed25519 public key") from e
    return raw


def parse_signer_keys(
    hex_keys: Iterable[str], *, where: str = "--policy-signer"
) -> dict[bytes, bytes]:
    """Raw Ed25519 public keys as hex → ``{kid: key}``, the form ``from_file`` takes."""
    out: dict[bytes, bytes] = {}
    for text in hex_keys:
        key = _ed25519_public(text.strip(), f"{where} {text.strip()[:16]!r}")
        out[policy_signer_kid(key)] = key
    return out


def load_policy_signers(home: Path) -> dict[bytes, bytes]:
    """The signers listed in ``home/policy-signers`` (absent file: none).

    One 64-hex raw Ed25519 public key a line; blank lines and ``#`` comments are
    ignored. A line that is not a key is an error, never skipped.
    """
    path = home / POLICY_SIGNERS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read policy signers {path}: {e}") from e
    out: dict[bytes, bytes] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.update(parse_signer_keys([line], where=f"{path} line {n}:"))
    return out


def _checked_signers(trusted: Mapping[bytes, bytes]) -> Mapping[bytes, bytes]:
    for kid, key in trusted.items():
        if not isinstance(key, bytes) or len(key) != 32:
            raise ConfigError("policy signers: each key must be 32 raw Ed25519 bytes")
        if not isinstance(kid, bytes) or not hmac.compare_digest(kid, policy_signer_kid(key)):
            raise ConfigError(
                "policy signers: map kid -> key, with kid = SHA-256 of the raw public key"
            )
    return trusted


def generate_signer_key(path: Path) -> bytes:
    """Write a new Ed25519 policy-signing key (PKCS#8 PEM, 0600); returns the raw public key."""
    try:
        return generate_ed25519_key(path)
    except FileExistsError as e:
        raise ConfigError(f"{path} exists; refusing to overwrite a key") from e


def load_signer_key(path: Path) -> Ed25519PrivateKey:
    try:
        return load_ed25519_key(path)
    except OSError as e:
        raise ConfigError(f"cannot read policy signing key {path}: {e.strerror}") from e
    except ValueError as e:
        raise ConfigError(f"{path} {e}") from e


# ---------------------------------------------------------------- P3: the envelope


def open_policy(
    raw: bytes, *, where: str, trusted_signers: Mapping[bytes, bytes]
) -> tuple[bytes, bytes | None]:
    """Check P3 on a policy file's bytes; return ``(json_payload, signer_kid or None)``.

    A file whose first byte opens a COSE_Sign1 (tag 18, or an untagged array of 4) is
    a signed policy: its envelope and EdDSA signature are checked against
    ``trusted_signers`` (kid → raw public key) over the bytes received, and only then
    is the payload handed back. Any other file is an unsigned policy, refused when
    any signer is trusted. Does not parse or check the JSON itself.
    """
    if len(raw) > _MAX_POLICY_BYTES:
        raise ConfigError(f"policy {where} is over {_MAX_POLICY_BYTES} bytes")
    if not raw or raw[0] not in _COSE_FIRST_BYTES:
        # P3: once a signer is configured, only its signature makes a policy.
        if trusted_signers:
            raise PolicyError(
                f"P3 policy signature: policy is not signed but signers are configured ({where})"
            )
        return raw, None
    try:
        env = decode_sign1(raw, what=f"policy {where}", max_bytes=_MAX_POLICY_BYTES)
    except DecodeError as e:
        raise PolicyError(f"P3 policy signature: {e}") from e
    kid = env.protected_map.get(4)
    # P3: protected header exactly {alg: EdDSA, kid: 32 bytes}, as for receipts (R1).
    if set(env.protected_map) != {1, 4} or env.protected_map[1] != ALG_EDDSA:
        raise PolicyError(
            f"P3 policy signature: {where}: protected header must be exactly {{alg: EdDSA, kid}}"
        )
    if not isinstance(kid, bytes) or len(kid) != 32 or env.unprotected or len(env.signature) != 64:
        raise PolicyError(
            f"P3 policy signature: {where}: bad kid, unprotected header or signature length"
        )
    public = trusted_signers.get(kid)
    if public is None:
        hint = "" if trusted_signers else "; no policy signers are configured (--policy-signer)"
        raise PolicyError(
            f"P3 policy signature: signed by an unknown key {kid.hex()[:16]}… ({where}){hint}"
        )
    try:
        ok = verify_eddsa(env, public)
    except DecodeError as e:
        raise PolicyError(f"P3 policy signature: {where}: {e}") from e
    if not ok:
        raise PolicyError(
            f"P3 policy signature: the signature on {where} does not verify "
            f"with signer {kid.hex()[:16]}…"
        )
    return env.payload, kid


def sign_policy(
    payload: bytes, key: Ed25519PrivateKey, *, where: str
) -> tuple[bytes, PolicyDocument]:
    """Sign a policy's JSON bytes, unchanged, after checking them as a signed policy."""
    doc = PolicyDocument.from_json(payload, where=where, signed=True)
    kid = policy_signer_kid(key.public_key().public_bytes_raw())
    signed = sign_eddsa(payload, key, kid=kid)
    if len(signed) > _MAX_POLICY_BYTES:
        raise ConfigError(f"signed policy {where} would be over {_MAX_POLICY_BYTES} bytes")
    return signed, doc


# ---------------------------------------------------------------- pure parsing


@dataclass(frozen=True)
class PemRoot:
    """``{"pem": path, "sha256": hex}``: a root read from a file beside the policy."""

    path: str
    #: SHA-256 of the certificate's DER; required in a signed policy (the file is
    #: not covered by the signature, the pin is).
    sha256: bytes | None = None


def _digest_pins(value: Any, what: str) -> frozenset[bytes]:
    """A model's pinned manifest digests: one 64-hex string, or a list of them (P1)."""
    if isinstance(value, str):
        return frozenset({_hex(value, what, 32)})
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PINNED_DIGESTS:
        raise ConfigError(
            f"{what} must be a manifest digest (64 hex) or a list of 1..{MAX_PINNED_DIGESTS}"
        )
    return frozenset(_hex(v, f"{what}[{i}]", 32) for i, v in enumerate(value))


def _pinned_models(
    models: Mapping[str, bytes | Iterable[bytes]] | None,
) -> Mapping[str, frozenset[bytes]] | None:
    """Models as code gives them (id → digest, or → digests), as P1 reads them."""
    if models is None:
        return None
    out: dict[str, frozenset[bytes]] = {}
    for model_id, pins in models.items():
        try:
            digests = frozenset({pins} if isinstance(pins, bytes) else pins)
        except TypeError as e:  # not iterable, or unhashable items
            raise ConfigError(f"models: {model_id!r}: give a digest or a list of digests") from e
        if not isinstance(model_id, str) or not 1 <= len(digests) <= MAX_PINNED_DIGESTS:
            raise ConfigError(f"models: {model_id!r} needs 1..{MAX_PINNED_DIGESTS} digests")
        if not all(isinstance(d, bytes) and len(d) == 32 for d in digests):
            raise ConfigError(f"models: {model_id!r}: a manifest digest is 32 bytes (SHA-256)")
        out[model_id] = digests
    return MappingProxyType(out)


def _int_field(doc: Mapping[str, Any], name: str, where: str) -> int:
    value = doc.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"policy {where}: {name} must be a non-negative integer")
    return value


@dataclass(frozen=True)
class PolicyDocument:
    """A parsed policy (protocol.md §8), before any file it names is read."""

    version: int
    root: str | PemRoot  # "aws-nitro", "mock" or a PemRoot
    max_age_s: float
    measurements: PcrAllowlist
    #: Model id → the manifest digests P1 accepts for it; None: any attested model.
    models: Mapping[str, frozenset[bytes]] | None
    #: Model-owner keys (kid → raw Ed25519 key), as ``verify_manifest`` takes them.
    owner_keys: Mapping[bytes, bytes] | None
    min_enclave_policy_version: int
    #: "fresh" (a new attestation per session) or "cached" (protocol.md §2.2.1).
    session_mode: str = "fresh"

    @classmethod
    def from_json(cls, raw: bytes, *, where: str, signed: bool = False) -> PolicyDocument:
        """Parse a policy's JSON bytes (UTF-8, no duplicate keys). No I/O.

        ``signed``: the bytes came out of a verified signature; then a ``{"pem"}``
        root must carry its ``sha256``.
        """
        try:
            doc = loads_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"policy {where} is not JSON: {e}") from e
        try:
            return cls._from_obj(doc, where, signed)
        except Error:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"policy {where}: {e}") from e

    @classmethod
    def _from_obj(cls, doc: Any, where: str, signed: bool) -> PolicyDocument:
        if not isinstance(doc, dict):
            raise ConfigError(f"policy {where}: not a JSON object")
        if unknown := set(doc) - _FIELDS:
            raise ConfigError(f"policy {where}: unknown fields {sorted(unknown)}")
        version = _int_field(doc, "version", where)
        min_pv = _int_field(doc, "min_enclave_policy_version", where)
        root_spec = doc.get("root", "aws-nitro")
        root: str | PemRoot
        if root_spec in ("aws-nitro", "mock"):
            root = root_spec
        elif (
            isinstance(root_spec, dict)
            and "pem" in root_spec
            and set(root_spec) <= {"pem", "sha256"}
            and isinstance(root_spec["pem"], str)
        ):
            pin = root_spec.get("sha256")
            root = PemRoot(
                root_spec["pem"],
                None if pin is None else _hex(pin, f"policy {where}: root.sha256", 32),
            )
            if signed and root.sha256 is None:
                raise ConfigError(
                    f"policy {where}: a signed policy must pin its root: "
                    '{"pem": PATH, "sha256": HEX}'
                )
        else:
            raise ConfigError(
                f'policy {where}: root must be "aws-nitro", "mock" or {{"pem": PATH}}'
            )
        sets = doc.get("measurements")
        if not isinstance(sets, list) or not sets:
            raise ConfigError(f"policy {where}: measurements must be a non-empty list")
        allow_debug = doc.get("allow_debug", False)
        if not isinstance(allow_debug, bool):
            raise ConfigError(f"policy {where}: allow_debug must be true or false")
        allowlist = PcrAllowlist(
            [_pcr_set(s, f"policy {where} measurements[{i}]") for i, s in enumerate(sets)],
            allow_debug=allow_debug,
        )
        max_age = doc.get("max_age_s", MAX_ATTESTATION_AGE_S)
        if (
            isinstance(max_age, bool)
            or not isinstance(max_age, int | float)
            or not math.isfinite(max_age)
            or max_age <= 0
        ):
            raise ConfigError(f"policy {where}: max_age_s must be a positive number of seconds")
        models = doc.get("models")
        if models is not None:
            if not isinstance(models, dict):
                raise ConfigError(f"policy {where}: models must be an object of id: digest hex")
            models = {k: _digest_pins(v, f"policy {where}: models.{k}") for k, v in models.items()}
        owners = doc.get("owner_keys")
        owner_keys: dict[bytes, bytes] | None = None
        if owners is not None:
            if not isinstance(owners, list):
                raise ConfigError(f"policy {where}: owner_keys must be a list of 64-hex keys")
            keys = [
                _ed25519_public(k, f"policy {where}: owner_keys[{i}]") for i, k in enumerate(owners)
            ]
            owner_keys = {policy_signer_kid(k): k for k in keys}
        return cls(
            version=version,
            root=root,
            max_age_s=max_age,
            measurements=allowlist,
            models=MappingProxyType(models) if models is not None else None,
            owner_keys=MappingProxyType(owner_keys) if owner_keys is not None else None,
            min_enclave_policy_version=min_pv,
            session_mode=_session_mode(doc, where),
        )


def _session_mode(doc: Mapping[str, Any], where: str) -> str:
    mode = doc.get("session_mode", "fresh")
    if mode not in ("fresh", "cached"):
        raise ConfigError(f'policy {where}: session_mode must be "fresh" or "cached"')
    return str(mode)


# ---------------------------------------------------------------- P4: the version store


class PolicyVersionStore:
    """The highest policy version accepted, per identity (check P4, protocol.md §8).

    A JSON file (``{"format": ..., "accepted": {identity: version}}``) written with
    :func:`write_atomic` under an exclusive ``flock`` on ``<path>.lock``, so two
    clients never lose each other's update. A store that cannot be read is an error,
    never treated as empty: that would reset rollback protection.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_home(cls, home: Path) -> PolicyVersionStore:
        return cls(home / POLICY_VERSIONS_FILE)

    def accepted(self) -> dict[str, int]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise ConfigError(f"cannot read policy version store {self.path}: {e.strerror}") from e
        try:
            data = json.loads(raw)
            if data.get("format") != _VERSIONS_FORMAT or not isinstance(data["accepted"], dict):
                raise ValueError("not a policy version store")
            out = dict(data["accepted"])
            if not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in out.values()
            ):
                raise ValueError("versions must be non-negative integers")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(
                f"policy version store {self.path} is unreadable ({e}); refusing to "
                "reset rollback protection: repair or remove it by hand"
            ) from e
        return out

    def check(self, identity: str, version: int) -> None:
        """P4 without recording: raise if ``version`` is below the one accepted."""
        seen = self.accepted().get(identity)
        if seen is not None and version < seen:
            raise PolicyError(
                f"P4 policy version: version {version} is older than version {seen} "
                f"already accepted from {identity}"
            )

    def check_and_record(self, identity: str, version: int) -> None:
        """P4, then remember ``version`` for ``identity`` if it is higher."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                accepted = self.accepted()
                self.check(identity, version)
                if accepted.get(identity, -1) < version:
                    accepted[identity] = version
                    data = {"format": _VERSIONS_FORMAT, "accepted": dict(sorted(accepted.items()))}
                    write_atomic(self.path, (json.dumps(data, indent=1) + "\n").encode())
            finally:
                with contextlib.suppress(OSError):
                    fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- the client policy


@dataclass(frozen=True)
class ClientPolicy:
    attestation: AttestationPolicy
    #: Allowed models (id -> the manifest digests pinned for it, P1), or None to
    #: accept any attested model. Given as id -> digest or id -> digests; kept as sets.
    models: Mapping[str, frozenset[bytes]] | None = None
    #: Where the policy came from, for messages.
    source: str = "built in"
    #: Version of the policy document (from the file; 0 if built in code).
    version: int = 0
    _: KW_ONLY
    #: P2: the lowest policy version an enclave may report in its binding.
    min_enclave_policy_version: int = 0
    #: Model-owner keys (kid → raw Ed25519 key) this client accepts, or None.
    #: Not checked against the enclave (its binding names manifest digests, not owners);
    #: for tools that verify manifests (``verify_manifest``).
    owner_keys: Mapping[bytes, bytes] | None = None
    #: Kid of the policy signer whose signature passed P3; None for an unsigned policy.
    signer: bytes | None = None
    #: Session mode the client asks for: "fresh" or "cached" (protocol.md §2.2.1).
    session_mode: str = "fresh"
    #: Built for offline checks only (:meth:`for_offline`, ``trust_policy(offline=True)``):
    #: its file skipped P4, or it checks no measurements. ``connect()`` refuses it:
    #: auditing old evidence is not accepting that policy for a new session.
    offline_only: bool = False
    _warned: list[bool] = field(default_factory=lambda: [False], repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", _pinned_models(self.models))
        if self.owner_keys is not None:
            object.__setattr__(self, "owner_keys", MappingProxyType(dict(self.owner_keys)))
        v = self.min_enclave_policy_version
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError("min_enclave_policy_version must be a non-negative integer")

    @property
    def is_mock(self) -> bool:
        return self.attestation.root.is_mock

    @property
    def checks_measurements(self) -> bool:
        """Whether A9 compares PCRs (False: an offline check that only shows them)."""
        return isinstance(self.attestation.measurements, PcrAllowlist)

    def check_binding(self, binding: EnclaveBinding) -> None:
        """Policy checks on a *verified* attestation's binding: P1, then P2.

        Raises :class:`PolicyError`. Does not check the attestation itself (that is
        §3, done before) nor which model the caller will use (:meth:`check_model`).
        """
        self.check_models(binding)
        # P2 enclave policy version: protocol.md §8.
        if binding.policy_version < self.min_enclave_policy_version:
            raise PolicyError(
                f"P2 enclave policy version: the enclave enforces policy version "
                f"{binding.policy_version}, the policy ({self.source}) requires at least "
                f"{self.min_enclave_policy_version}"
            )

    def check_models(self, binding: EnclaveBinding) -> None:
        """Policy check P1: every model the enclave serves that we would use is allowed.

        The served manifest digest must be one the policy pins for that model: an
        older bundle (a rollback, M11's concern on the enclave side) has another
        digest, so pinning the current releases refuses it whatever the enclave's
        floor is. The binding carries digests, not releases, so P1 compares digests.
        """
        if self.models is None:
            return
        for model_id, digest in binding.models.items():
            pins = self.models.get(model_id)
            if pins is not None and digest not in pins:
                allowed = ", ".join(sorted(d.hex()[:16] + "…" for d in pins))
                raise PolicyError(
                    f"P1 model: enclave serves {model_id!r} with digest {digest.hex()[:16]}…, "
                    f"the policy allows {allowed}"
                )

    def check_model(self, binding: EnclaveBinding, model_id: str) -> None:
        if self.models is not None and model_id not in self.models:
            raise PolicyError(
                f"P1 model: {model_id!r} is not allowed by the policy ({self.source})"
            )
        self.check_models(binding)

    def to_json(self) -> dict[str, Any]:
        """The effective policy, for ``ephemeral policy show --json``."""
        root = self.attestation.root
        m = self.attestation.measurements
        return {
            "source": self.source,
            "version": self.version,
            "signer": self.signer.hex() if self.signer else None,
            "root": {"name": root.name, "sha256": root.fingerprint, "mock": root.is_mock},
            "max_age_s": self.attestation.max_age_s,
            "measurements": [{f"PCR{i}": v.hex() for i, v in s.items()} for s in m.allowed]
            if isinstance(m, PcrAllowlist)
            else type(m).__name__,
            "allow_debug": m.allow_debug if isinstance(m, PcrAllowlist) else None,
            "models": None
            if self.models is None
            else {k: sorted(d.hex() for d in v) for k, v in self.models.items()},
            "owner_keys": [k.hex() for k in self.owner_keys.values()]
            if self.owner_keys is not None
            else None,
            "min_enclave_policy_version": self.min_enclave_policy_version,
            "session_mode": self.session_mode,
        }

    # ---------------------------------------------------------------- presets

    @classmethod
    def production(
        cls,
        measurements: Measurements,
        *,
        max_age_s: float = MAX_ATTESTATION_AGE_S,
        models: Mapping[str, bytes | Iterable[bytes]] | None = None,
    ) -> ClientPolicy:
        return cls(
            AttestationPolicy(aws_root(), measurements, max_age_s),
            _pinned_models(models),
            "production",
        )

    @classmethod
    def unsafe_mock(
        cls, home: Path | None = None, *, warn: bool = True, stream: TextIO | None = None
    ) -> ClientPolicy:
        """Trust what a local mock enclave published. Warns every time."""
        home = home or default_home()
        root, root_path = mock_root(home)
        measurements, _ = _measurements_from_published(home)
        if warn:
            warn_mock(root_path, stream)
        return cls(AttestationPolicy(root, measurements), None, f"--mock ({home})")

    @classmethod
    def from_file(
        cls,
        path: Path | str,
        *,
        home: Path | None = None,
        trusted_signers: Mapping[bytes, bytes] | None = None,
        versions: PolicyVersionStore | None = None,
        record: bool = True,
        stream: TextIO | None = None,
    ) -> ClientPolicy:
        """A policy file, unsigned JSON or signed COSE_Sign1 (protocol.md §8), for
        new sessions.

        In order: P3 over the bytes read (``trusted_signers``: kid → raw Ed25519 key;
        by default those in ``home``'s ``policy-signers`` file, as the CLI reads them;
        with none configured, unsigned policies are accepted and signed ones refused),
        parsing, the root, then P4 against ``versions``
        (default: ``policy-versions.json`` in ``home``). The version is recorded only
        after all of that passed, and not at all with ``record=False``. P1 and P2
        run later, per session (:meth:`check_binding`).

        To check old evidence (a stored receipt) against the policy of its time, use
        :meth:`for_offline`: that runs no P4 and records nothing.
        """
        home = home or default_home()
        policy, identity = cls._load(path, home, trusted_signers, stream)
        # P4 policy version (online rule): adopting a policy for new sessions.
        store = versions or PolicyVersionStore.in_home(home)
        if record:
            store.check_and_record(identity, policy.version)
        else:
            store.check(identity, policy.version)
        return policy

    @classmethod
    def for_offline(
        cls,
        path: Path | str,
        *,
        home: Path | None = None,
        trusted_signers: Mapping[bytes, bytes] | None = None,
        stream: TextIO | None = None,
    ) -> ClientPolicy:
        """A policy file for checking stored evidence (``ephemeral verify``).

        P3, parsing and the root as :meth:`from_file`, but no P4 (offline rule): an
        auditor checks an old receipt against the policy of its time, which may well
        be older than one already accepted, and that is not accepting the old policy
        for a new session, so the rollback state is neither read nor written. The
        result is marked :attr:`offline_only`; ``connect()`` refuses it.
        """
        policy, _ = cls._load(path, home or default_home(), trusted_signers, stream)
        return replace(policy, offline_only=True)

    @classmethod
    def _load(
        cls,
        path: Path | str,
        home: Path,
        trusted_signers: Mapping[bytes, bytes] | None,
        stream: TextIO | None,
    ) -> tuple[ClientPolicy, str]:
        """P3, parsing and the root; the policy and its P4 identity (not checked here)."""
        path = Path(path)
        where = str(path)
        if trusted_signers is None:
            # The same signers the CLI trusts: a library user must not get a weaker
            # check than `ephemeral --policy` for the same home.
            trusted_signers = load_policy_signers(home)
        signers = _checked_signers(trusted_signers)
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_POLICY_BYTES + 1)  # open_policy refuses the +1
        except OSError as e:
            raise ConfigError(f"cannot read policy {path}: {e.strerror}") from e
        payload, kid = open_policy(raw, where=where, trusted_signers=signers)
        doc = PolicyDocument.from_json(payload, where=where, signed=kid is not None)
        policy = cls._resolve(doc, path, home, stream, signer=kid)
        # P4's identity: the signer for a signed policy (one signer, one series of
        # versions), the file itself for an unsigned one.
        identity = kid.hex() if kid is not None else str(path.resolve())
        return policy, identity

    @classmethod
    def _resolve(
        cls,
        doc: PolicyDocument,
        path: Path,
        home: Path,
        stream: TextIO | None,
        *,
        signer: bytes | None,
    ) -> ClientPolicy:
        if doc.root == "aws-nitro":
            root = aws_root()
        elif doc.root == "mock":
            root, root_path = mock_root(home)
            warn_mock(root_path, stream)
        else:
            assert isinstance(doc.root, PemRoot)
            pem_path = (path.parent / doc.root.path).resolve()
            try:
                root = TrustedRoot.from_pem_or_der(pem_path.read_bytes(), name=str(pem_path))
            except OSError as e:
                raise ConfigError(
                    f"policy {path}: cannot read root {pem_path}: {e.strerror}"
                ) from e
            pin = doc.root.sha256
            # P3: the pin carries the signature over to the root file it names.
            if pin is not None and not hmac.compare_digest(root.fingerprint, pin.hex()):
                raise PolicyError(
                    f"P3 policy signature: root {pem_path} has SHA-256 {root.fingerprint[:16]}…, "
                    f"the policy pins {pin.hex()[:16]}…"
                )
        return cls(
            AttestationPolicy(root, doc.measurements, doc.max_age_s),
            doc.models,
            str(path),
            doc.version,
            min_enclave_policy_version=doc.min_enclave_policy_version,
            owner_keys=doc.owner_keys,
            signer=signer,
            session_mode=doc.session_mode,
        )


# ---------------------------------------------------------------- the trust choice

#: A root certificate file is small; anything bigger is a mistake.
_MAX_ROOT_BYTES = 64 * 1024


def trust_policy(
    *,
    mock: bool = False,
    policy: Path | str | None = None,
    root: Path | str | None = None,
    offline: bool = False,
    home: Path | None = None,
    policy_signers: Iterable[str] = (),
    stream: TextIO | None = None,
) -> ClientPolicy:
    """The one trust choice, for the CLI and the library alike: what ``--mock``,
    ``--policy FILE`` and ``--root PEM`` mean, for a session (``offline=False``) or
    for checking stored evidence (``offline=True``). At most one of the three.

    ==============  ===========================================  ================================
    choice          session                                      offline
    ==============  ===========================================  ================================
    ``policy``      :meth:`ClientPolicy.from_file`: P3, the      :meth:`ClientPolicy.for_offline`:
                    root, P4 enforced and recorded               P3, the root, no P4
    ``mock``        the mock root and the measurements the       the mock root; the published
                    mock enclave published (both required)       measurements if there are any,
                                                                 else PCRs are not checked
    ``root``        refused: a session needs measurements        that root; PCRs not checked
    none            refused                                      the AWS Nitro root; PCRs not
                                                                 checked
    ==============  ===========================================  ================================

    ``policy_signers``: raw Ed25519 public keys (hex) trusted to sign policies, on
    top of ``home``'s ``policy-signers`` file (``--policy-signer``). Every offline
    result is :attr:`~ClientPolicy.offline_only`; :attr:`~ClientPolicy.checks_measurements`
    says whether A9 compares PCRs. A mock root warns on ``stream`` (stderr) every time.
    """
    home = home or default_home()
    extra = parse_signer_keys(policy_signers)
    if sum((bool(mock), policy is not None, root is not None)) > 1:
        raise ConfigError("give one of --mock, --policy FILE or --root PEM, not several")
    if policy is not None:
        signers = {**load_policy_signers(home), **extra}
        if offline:
            return ClientPolicy.for_offline(
                policy, home=home, trusted_signers=signers, stream=stream
            )
        return ClientPolicy.from_file(policy, home=home, trusted_signers=signers, stream=stream)
    if not offline:
        if root is not None:
            raise ConfigError(
                "--root PEM is for offline checks; a session needs --policy FILE "
                "(the measurements to expect) or --mock"
            )
        if not mock:
            raise ConfigError(
                "no trust policy: give --policy FILE (allowed PCRs for a real enclave) "
                "or --mock to trust a local mock enclave"
            )
        return ClientPolicy.unsafe_mock(home, stream=stream)
    measurements: Measurements = UnsafeAnyMeasurements()
    if mock:
        trusted, root_path = mock_root(home)
        # A mock enclave that published its measurements is held to them; without
        # them the document's PCRs are shown, not checked.
        if (home / MOCK_MEASUREMENTS).exists():
            measurements, _ = _measurements_from_published(home)
        warn_mock(root_path, stream)
        source = f"--mock ({home})"
    elif root is not None:
        trusted = TrustedRoot.from_pem_or_der(_read_root(Path(root)), name=str(root))
        source = f"--root {root}"
    else:
        trusted, source = aws_root(), "the AWS Nitro root"
    return ClientPolicy(AttestationPolicy(trusted, measurements), None, source, offline_only=True)


def _read_root(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_ROOT_BYTES + 1)
    except FileNotFoundError as e:
        raise ConfigError(f"root {path} does not exist") from e
    except OSError as e:
        raise ConfigError(f"cannot read root {path}: {e.strerror}") from e
    if len(data) > _MAX_ROOT_BYTES:
        raise ConfigError(f"root {path} is over {_MAX_ROOT_BYTES} bytes")
    return data
