"""ephemeralml.runtime: the neutral runtime the three programs share for touching the OS.

Endpoints (TCP and AF_VSOCK) and asyncio streams over them, the relay that moves
framed or raw bytes between two endpoints without parsing them, files written
atomically, the local home folder, and strict readers for JSON, key files and S3
URLs. It imports :mod:`ephemeralml.common` and nothing of the programs; the enclave
image carries it (it is part of the enclave's measured code).
"""

from ._relay import Relay, RelayConfig, RelayStats
from ._transport import Endpoint, open_connection, server_endpoint, start_server

__all__ = [
    "Endpoint",
    "Relay",
    "RelayConfig",
    "RelayStats",
    "open_connection",
    "server_endpoint",
    "start_server",
]
