"""The edge where each program's profile is chosen: the console scripts start here.

No program imports :mod:`ephemeralml.mock` (the import contract in ``.importlinter``
forbids it). This module sits outside the programs and hands each one the mock
profile that ``--mock`` runs with. It imports the mock package only when a program
is started, so an installation without it (the Nitro enclave image runs
``python -m ephemeralml.enclave`` and carries no mock code) simply has no mock mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ephemeralml.runtime._ports import Ports

if TYPE_CHECKING:
    from ephemeralml.enclave._profile import EnclaveProfile
    from ephemeralml.host._profile import HostProfile

__all__ = ["enclave_main", "host_main"]


def _enclave_mock(home: Path, ports: Ports) -> EnclaveProfile:
    from ephemeralml.mock._profiles import enclave_profile

    return enclave_profile(home, ports)


def _host_mock(home: Path, ports: Ports) -> HostProfile:
    from ephemeralml.mock._profiles import host_profile

    return host_profile(home, ports)


def enclave_main(argv: Sequence[str] | None = None) -> int:
    """Console script ``ephemeral-enclave``."""
    from ephemeralml.enclave._cli import main

    return main(argv, mock_profile=_enclave_mock)


def host_main(argv: Sequence[str] | None = None) -> int:
    """Console script ``ephemeral-host``."""
    from ephemeralml.host._cli import main

    return main(argv, mock_profile=_host_mock)


_PROGRAMS = {"enclave": enclave_main, "host": host_main}

if __name__ == "__main__":
    # python -m ephemeralml._edge enclave|host [ARGS]: the console scripts, without
    # installing them (the benchmark and tests start the programs this way too).
    import sys

    if len(sys.argv) < 2 or sys.argv[1] not in _PROGRAMS:
        print("usage: python -m ephemeralml._edge enclave|host [ARGS]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(_PROGRAMS[sys.argv[1]](sys.argv[2:]))
