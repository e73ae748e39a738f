"""The client's trust policy: which root, which measurements, how old, which models.

Built at the edge (CLI flags or a policy file) and handed to the library. Three
ways to get one:

* :meth:`ClientPolicy.from_file` — a JSON policy (the production path);
* :meth:`ClientPolicy.production` — the pinned AWS root and explicit measurements;
* :meth:`ClientPolicy.unsafe_mock` — the mock root and measurements that a local
  mock enclave published. It warns, loudly, every time.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from ephemeralml._home import MOCK_MEASUREMENTS, MOCK_ROOT, default_home
from ephemeralml.common._attestation import (
    MAX_ATTESTATION_AGE_S,
    AttestationPolicy,
    Measurements,
    PcrAllowlist,
    TrustedRoot,
)
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._errors import ConfigError, Error, PolicyError

from ._aws_root import AWS_NITRO_ROOT_G1_PEM

__all__ = ["MOCK_WARNING", "ClientPolicy", "aws_root", "mock_root", "warn_mock"]

MOCK_WARNING = (
    "WARNING: trusting the MOCK attestation root ({where}). This is NOT a real enclave: "
    "the machine's owner can read everything. Use for development only."
)

#: A policy file is small; anything bigger is a mistake.
_MAX_POLICY_BYTES = 64 * 1024


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


@dataclass(frozen=True)
class ClientPolicy:
    attestation: AttestationPolicy
    #: Allowed models (id -> manifest digest), or None to accept any attested model.
    models: Mapping[str, bytes] | None = None
    #: Where the policy came from, for messages.
    source: str = "built in"
    #: Version of the policy document (from the file; 0 if built in code).
    version: int = 0
    _warned: list[bool] = field(default_factory=lambda: [False], repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.models is not None:
            object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    @property
    def is_mock(self) -> bool:
        return self.attestation.root.is_mock

    def check_models(self, binding: EnclaveBinding) -> None:
        """Policy check P1: every model the enclave serves that we would use is allowed."""
        if self.models is None:
            return
        for model_id, digest in binding.models.items():
            if model_id in self.models and self.models[model_id] != digest:
                raise PolicyError(
                    f"P1 model: enclave serves {model_id!r} with digest {digest.hex()[:16]}…, "
                    f"the policy allows {self.models[model_id].hex()[:16]}…"
                )

    def check_model(self, binding: EnclaveBinding, model_id: str) -> None:
        if self.models is not None and model_id not in self.models:
            raise PolicyError(
                f"P1 model: {model_id!r} is not allowed by the policy ({self.source})"
            )
        self.check_models(binding)

    # ---------------------------------------------------------------- presets

    @classmethod
    def production(
        cls,
        measurements: Measurements,
        *,
        max_age_s: float = MAX_ATTESTATION_AGE_S,
        models: Mapping[str, bytes] | None = None,
    ) -> ClientPolicy:
        return cls(AttestationPolicy(aws_root(), measurements, max_age_s), models, "production")

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
        cls, path: Path, *, home: Path | None = None, stream: TextIO | None = None
    ) -> ClientPolicy:
        """A JSON policy file; see README "Trust policy" for the format."""
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read policy {path}: {e.strerror}") from e
        if len(raw) > _MAX_POLICY_BYTES:
            raise ConfigError(f"policy {path} is over {_MAX_POLICY_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise ConfigError(f"policy {path} is not JSON: {e}") from e
        try:
            return cls._from_json(doc, path, home, stream)
        except Error:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"policy {path}: {e}") from e

    @classmethod
    def _from_json(
        cls, doc: Any, path: Path, home: Path | None, stream: TextIO | None
    ) -> ClientPolicy:
        if not isinstance(doc, dict):
            raise ConfigError(f"policy {path}: not a JSON object")
        known = {"version", "root", "max_age_s", "measurements", "allow_debug", "models"}
        if unknown := set(doc) - known:
            raise ConfigError(f"policy {path}: unknown fields {sorted(unknown)}")
        version = doc.get("version", 0)
        if not isinstance(version, int) or version < 0:
            raise ConfigError(f"policy {path}: version must be a non-negative integer")
        root_spec = doc.get("root", "aws-nitro")
        if root_spec == "aws-nitro":
            root = aws_root()
        elif root_spec == "mock":
            root, root_path = mock_root(home)
            warn_mock(root_path, stream)
        elif isinstance(root_spec, dict) and set(root_spec) == {"pem"}:
            pem_path = (path.parent / root_spec["pem"]).resolve()
            try:
                root = TrustedRoot.from_pem_or_der(pem_path.read_bytes(), name=str(pem_path))
            except OSError as e:
                raise ConfigError(
                    f"policy {path}: cannot read root {pem_path}: {e.strerror}"
                ) from e
        else:
            raise ConfigError(f'policy {path}: root must be "aws-nitro", "mock" or {{"pem": PATH}}')
        sets = doc.get("measurements")
        if not isinstance(sets, list) or not sets:
            raise ConfigError(f"policy {path}: measurements must be a non-empty list")
        allowlist = PcrAllowlist(
            [_pcr_set(s, f"policy {path} measurements[{i}]") for i, s in enumerate(sets)],
            allow_debug=bool(doc.get("allow_debug", False)),
        )
        max_age = doc.get("max_age_s", MAX_ATTESTATION_AGE_S)
        models = doc.get("models")
        if models is not None:
            if not isinstance(models, dict):
                raise ConfigError(f"policy {path}: models must be an object of id: digest hex")
            models = {k: _hex(v, f"policy {path}: models.{k}", 32) for k, v in models.items()}
        return cls(AttestationPolicy(root, allowlist, max_age), models, str(path), version)
