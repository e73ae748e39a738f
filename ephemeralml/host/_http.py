"""Reading one HTTP/1.1 request head with h11, for the host's small HTTP endpoints
(the egress proxy and the health endpoint): bounded by the caller's h11 connection
(``max_incomplete_event_size``) and the caller's deadline."""

from __future__ import annotations

import asyncio

import h11

__all__ = ["read_request"]


async def read_request(
    conn: h11.Connection, reader: asyncio.StreamReader, *, chunk: int
) -> h11.Request | None:
    """The request head, or None if the peer closed first or sent something that is not
    a request head. ``h11.RemoteProtocolError`` if it is not HTTP (or too big)."""
    while (event := conn.next_event()) is h11.NEED_DATA:
        data = await reader.read(chunk)
        conn.receive_data(data)  # b"" tells h11 the peer closed
        if not data:
            return None
    return event if isinstance(event, h11.Request) else None
