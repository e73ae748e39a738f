"""The one trust choice, :func:`trust_policy`: what ``--mock``, ``--policy FILE`` and
``--root PEM`` mean, for a session or for checking stored evidence, for the CLI and
the library alike."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from ephemeralml.common._attestation import (
    AttestationPolicy,
    Measurements,
    TrustedRoot,
    UnsafeAnyMeasurements,
)
from ephemeralml.common._errors import ConfigError
from ephemeralml.runtime._home import MOCK_MEASUREMENTS, default_home, read_bounded

from ._policy_client import (
    ClientPolicy,
    aws_root,
    measurements_from_published,
    mock_root,
    warn_mock,
)
from ._policy_signed import load_policy_signers, parse_signer_keys

__all__ = ["trust_policy"]

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
            measurements, _ = measurements_from_published(home)
        warn_mock(root_path, stream)
        source = f"--mock ({home})"
    elif root is not None:
        trusted = TrustedRoot.from_pem_or_der(_read_root(Path(root)), name=str(root))
        source = f"--root {root}"
    else:
        trusted, source = aws_root(), "the AWS Nitro root"
    return ClientPolicy(AttestationPolicy(trusted, measurements), None, source, offline_only=True)


def _read_root(path: Path) -> bytes:
    return read_bounded(path, _MAX_ROOT_BYTES, "root")
