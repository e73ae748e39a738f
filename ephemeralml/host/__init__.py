"""ephemeralml.host: the untrusted host, a blind relay between clients and enclaves.

It only ever handles ciphertext: it never parses, logs or keeps what it relays.
"""

from ephemeralml.runtime._relay import (
    CHUNK_BYTES,
    CONNECT_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_CONNECTIONS,
    Relay,
    RelayConfig,
    RelayStats,
)
from ephemeralml.runtime._transport import Endpoint, open_connection, server_endpoint, start_server

__all__ = [
    "CHUNK_BYTES",
    "CONNECT_TIMEOUT_S",
    "IDLE_TIMEOUT_S",
    "MAX_CONNECTIONS",
    "Endpoint",
    "Relay",
    "RelayConfig",
    "RelayStats",
    "open_connection",
    "server_endpoint",
    "start_server",
]
