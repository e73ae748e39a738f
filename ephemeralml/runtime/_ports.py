"""The ports of one deployment, all derived from one base port.

Every program finds every other at ``base + offset``, so one setting
(``--base-port`` or ``EPHEMERALML_BASE_PORT``) moves all of them at once: on a laptop
where 5000 is taken, and on a Nitro parent that runs two enclaves' hosts side by side.
In mock mode the ports are TCP on loopback; on Nitro the enclave's and the host
services' ports are vsock ports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ephemeralml.common._errors import ConfigError

__all__ = ["DEFAULT_BASE_PORT", "ENV_BASE_PORT", "Ports"]

ENV_BASE_PORT = "EPHEMERALML_BASE_PORT"
DEFAULT_BASE_PORT = 5000
#: The highest offset below (the mock KMS server): base + 9 must be a port.
_SPAN = 9


@dataclass(frozen=True)
class Ports:
    """``client`` (the host's relay for clients), ``ws`` (its WebSocket door for pages,
    when asked for), ``enclave`` (the enclave's listener), ``services`` (the host's
    model store and credentials), ``kms`` (the host's KMS egress), ``health`` (the
    host's /healthz, /readyz and /metrics) and, in mock mode, ``mock_kms`` (the local
    KMS server)."""

    base: int = DEFAULT_BASE_PORT

    def __post_init__(self) -> None:
        if (
            not isinstance(self.base, int)
            or isinstance(self.base, bool)
            or not 1 <= self.base <= 65535 - _SPAN
        ):
            raise ConfigError(f"the base port must be from 1 to {65535 - _SPAN}, not {self.base!r}")

    @classmethod
    def choose(cls, flag: int | None, env: Mapping[str, str]) -> Ports:
        """The flag, else ``EPHEMERALML_BASE_PORT``, else 5000."""
        if flag is not None:
            return cls(flag)
        text = env.get(ENV_BASE_PORT, "").strip()
        if not text:
            return cls()
        if not text.isdigit():
            raise ConfigError(f"{ENV_BASE_PORT}={text!r} is not a port number")
        return cls(int(text))

    @property
    def client(self) -> int:
        return self.base

    @property
    def ws(self) -> int:
        """The host's WebSocket door for pages (``--ws-listen``), when it has one."""
        return self.base + 1

    @property
    def logs(self) -> int:
        """The host's collector of the enclave's log lines and exit status."""
        return self.base + 4

    @property
    def enclave(self) -> int:
        return self.base + 5

    @property
    def services(self) -> int:
        return self.base + 6

    @property
    def kms(self) -> int:
        return self.base + 7

    @property
    def health(self) -> int:
        return self.base + 8

    @property
    def mock_kms(self) -> int:
        return self.base + _SPAN
