"""The client's trust policy, :class:`ClientPolicy`: which root, which measurements,
how old, which models; and the roots it names (the AWS Nitro root, a mock one).

Three ways to get one (:func:`~._policy_trust.trust_policy` chooses among them for
the CLI and the library):

* :meth:`ClientPolicy.from_file` — a JSON policy, unsigned (``policy.json``) or
  signed by a policy signer (``policy.cose``): P3, parsing, the root, then P4;
* :meth:`ClientPolicy.production` — the pinned AWS root and explicit measurements;
* :meth:`ClientPolicy.unsafe_mock` — the mock root and measurements that a local
  mock enclave published. It warns, loudly, every time.

P1 (models) and P2 (the enclave's policy version) run per session, against the
verified binding: :meth:`ClientPolicy.check_binding`.
"""

from __future__ import annotations

import hmac
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from ephemeralml.common._attestation import (
    MAX_ATTESTATION_AGE_S,
    AttestationPolicy,
    Measurements,
    PcrAllowlist,
    TrustedRoot,
)
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._errors import ConfigError, PolicyError
from ephemeralml.runtime._home import MOCK_MEASUREMENTS, MOCK_ROOT, default_home

from ._aws_root import AWS_NITRO_ROOT_G1_PEM
from ._policy_document import PemRoot, PolicyDocument, pcr_set, pinned_models
from ._policy_signed import MAX_POLICY_BYTES, checked_signers, load_policy_signers, open_policy
from ._policy_versions import PolicyVersionStore

__all__ = [
    "MOCK_WARNING",
    "ClientPolicy",
    "aws_root",
    "measurements_from_published",
    "mock_root",
    "warn_mock",
]

MOCK_WARNING = (
    "WARNING: trusting the MOCK attestation root ({where}). This is NOT a real enclave: "
    "the machine's owner can read everything. Use for development only."
)


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


def measurements_from_published(home: Path) -> tuple[PcrAllowlist, Path]:
    path = home / MOCK_MEASUREMENTS
    try:
        data = json.loads(path.read_bytes())
        pcrs = pcr_set(data["pcrs"], str(path))
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
        object.__setattr__(self, "models", pinned_models(self.models))
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
            pinned_models(models),
            "production",
        )

    @classmethod
    def unsafe_mock(
        cls, home: Path | None = None, *, warn: bool = True, stream: TextIO | None = None
    ) -> ClientPolicy:
        """Trust what a local mock enclave published. Warns every time."""
        home = home or default_home()
        root, root_path = mock_root(home)
        measurements, _ = measurements_from_published(home)
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
        signers = checked_signers(trusted_signers)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_POLICY_BYTES + 1)  # open_policy refuses the +1
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
