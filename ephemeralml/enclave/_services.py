"""The enclave's side of the host services (protocol.md §10): model files and credentials.

The loops that move bytes; the messages and their checks are
:mod:`ephemeralml.common._store`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ephemeralml.common._errors import LimitError, RemoteProtocolError, TransportError
from ephemeralml.common._frame import FrameDecoder, encode_frame
from ephemeralml.common._store import (
    STORE_CHUNK_BYTES,
    AwsCredentials,
    StoreData,
    decode_credentials,
    decode_store_frame,
    encode_creds_request,
    encode_get,
)
from ephemeralml.runtime._transport import Endpoint, open_connection

__all__ = ["fetch", "fetch_credentials"]

#: A credentials frame is a few hundred bytes (a session token is ~1 KiB).
_MAX_CREDENTIALS_FRAME = 64 * 1024


async def fetch_credentials(endpoint: Endpoint, *, timeout: float = 30.0) -> AwsCredentials:
    """Ask the host for the instance role's credentials (§10.2)."""
    reader, writer = await open_connection(endpoint, timeout=timeout, peer="host services")
    try:
        writer.write(encode_frame(encode_creds_request()))
        await writer.drain()
        dec = FrameDecoder(max_bytes=_MAX_CREDENTIALS_FRAME)
        while (frame := dec.next_frame()) is None:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                raise TransportError("host closed the connection before sending credentials")
            dec.receive_data(data)
        return decode_credentials(frame)
    except TimeoutError as e:
        raise TransportError("host services did not send credentials in time") from e
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def fetch(
    endpoint: Endpoint, model_id: str, name: str, *, max_bytes: int, timeout: float = 30.0
) -> AsyncIterator[bytes]:
    """Stream one file from the host's store (§10).

    Yields chunks as they arrive; raises if the host reports an error, closes early,
    or sends more than ``max_bytes`` (the manifest's size, so a hostile host cannot
    make the enclave buffer more than the signed size).
    """
    request = encode_get(model_id, name)
    reader, writer = await open_connection(endpoint, timeout=timeout, peer="host model store")
    try:
        writer.write(encode_frame(request))
        await writer.drain()
        dec = FrameDecoder()
        got = 0
        while True:
            while (frame := dec.next_frame()) is None:
                data = await asyncio.wait_for(reader.read(4 * STORE_CHUNK_BYTES), timeout)
                if not data:
                    raise TransportError(
                        f"host closed the store stream for {model_id}/{name} early"
                    )
                dec.receive_data(data)
            event = decode_store_frame(frame)
            if isinstance(event, StoreData):
                got += len(event.data)
                if got > max_bytes:
                    raise LimitError(f"host sent more than {max_bytes} bytes of {model_id}/{name}")
                yield event.data
            else:
                if event.size != got:
                    raise RemoteProtocolError(f"store stream for {model_id}/{name} lost bytes")
                return
    except TimeoutError as e:
        raise TransportError(f"host model store did not answer for {model_id}/{name}") from e
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
