"""The host's model store and the service that serves it to the enclave (protocol.md §10).

The enclave has no network and no disk it trusts, so it asks the host for the three
files of a bundle (manifest.cose, model.key, model.enc): ciphertext and signed
metadata, which the host cannot read or forge undetected. The store is a local
directory (the default) or ``s3://bucket/prefix`` (boto3, streamed: an object is
never held whole in memory).

Service protocol, over the same framing as the client protocol (§1): the enclave
sends ``{"t": "get", "model": id, "file": name}``; the host answers with
``{"t": "data", "b": bytes}`` frames of at most :data:`STORE_CHUNK_BYTES`, then
``{"t": "end", "size": n}``, or ``{"t": "error", "code", "msg"}``. One request per
connection. The host logs model ids, file names and byte counts, never content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ephemeralml._strict import parse_s3_url
from ephemeralml.common._cbor import decode_deterministic, decode_strict, encode
from ephemeralml.common._errors import (
    ConfigError,
    Error,
    LimitError,
    RemoteProtocolError,
    TransportError,
)
from ephemeralml.common._frame import FrameDecoder, encode_frame

from ._transport import Endpoint, server_endpoint, set_nodelay, start_server

__all__ = [
    "STORE_CHUNK_BYTES",
    "STORE_FILES",
    "AwsCredentials",
    "LocalStore",
    "ModelStore",
    "S3Store",
    "StoreService",
    "fetch_credentials",
    "instance_credentials",
    "store_from_url",
]

log = logging.getLogger("ephemeralml.host.store")

#: Bytes per data frame: big enough that per-frame costs (an executor hop for the
#: file read, one frame encode and decode) vanish, far below MAX_FRAME_BYTES.
STORE_CHUNK_BYTES = 1024 * 1024
#: The only files a store serves.
STORE_FILES = frozenset({"manifest.cose", "model.key", "model.enc"})
#: A get request is a few dozen bytes.
_MAX_REQUEST_BYTES = 1024
_REQUEST_TIMEOUT_S = 30.0
_MODEL_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class ModelStore(ABC):
    """Where bundles rest. Implementations stream; they never parse content."""

    @abstractmethod
    def open(self, model_id: str, name: str) -> Iterator[bytes]:
        """Chunks of one file; raises ConfigError if it does not exist."""

    @staticmethod
    def check(model_id: str, name: str) -> None:
        if not _MODEL_ID.match(model_id) or model_id in {".", ".."}:
            raise RemoteProtocolError(f"bad model id {model_id!r}")
        if name not in STORE_FILES:
            raise RemoteProtocolError(f"the store serves only {sorted(STORE_FILES)}, not {name!r}")


@dataclass(frozen=True)
class LocalStore(ModelStore):
    root: Path

    def open(self, model_id: str, name: str) -> Iterator[bytes]:
        self.check(model_id, name)
        path = self.root / model_id / name
        try:
            f = open(path, "rb")
        except FileNotFoundError as e:
            raise ConfigError(f"model store has no {model_id}/{name}") from e
        except OSError as e:
            raise ConfigError(f"cannot read {model_id}/{name} from the store: {e.strerror}") from e

        def chunks() -> Iterator[bytes]:
            with f:
                while block := f.read(STORE_CHUNK_BYTES):
                    yield block

        return chunks()

    def __str__(self) -> str:
        return str(self.root)


@dataclass(frozen=True)
class S3Store(ModelStore):
    bucket: str
    prefix: str
    s3: Any

    def open(self, model_id: str, name: str) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        self.check(model_id, name)
        key = "/".join(p for p in (self.prefix, model_id, name) if p)
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404", "NoSuchBucket"}:
                raise ConfigError(f"model store has no s3://{self.bucket}/{key}") from e
            raise TransportError(f"S3 get of s3://{self.bucket}/{key} failed: {code}") from e
        except BotoCoreError as e:
            raise TransportError(f"S3 get of s3://{self.bucket}/{key} failed: {e}") from e

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(STORE_CHUNK_BYTES)
            except (ClientError, BotoCoreError) as e:
                raise TransportError(f"S3 read of s3://{self.bucket}/{key} failed: {e}") from e
            finally:
                body.close()

        return chunks()

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def store_from_url(url: str, *, s3: Any = None) -> ModelStore:
    """``s3://bucket/prefix`` or a directory path."""
    if url.startswith("s3://"):
        bucket, prefix = parse_s3_url(url)
        if s3 is None:
            import boto3

            s3 = boto3.client("s3")
        return S3Store(bucket, prefix, s3)
    return LocalStore(Path(url))


@dataclass(frozen=True)
class AwsCredentials:
    """The instance role's temporary credentials, handed to the enclave (§10.2).

    Not secret from the host (it has them anyway): the key policy, which demands the
    enclave's attestation for Decrypt, is what protects the model key.
    """

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = "us-east-1"

    def to_cbor(self) -> bytes:
        return encode(
            {
                "t": "creds",
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
                "session_token": self.session_token,
                "region": self.region,
            }
        )

    @classmethod
    def from_map(cls, m: Any) -> AwsCredentials:
        keys = {"t", "access_key_id", "secret_access_key", "session_token", "region"}
        if not isinstance(m, dict) or set(m) != keys or m["t"] != "creds":
            raise RemoteProtocolError("host sent a malformed credentials frame")
        for k in ("access_key_id", "secret_access_key", "region"):
            if not isinstance(m[k], str) or not m[k] or len(m[k]) > 4096:
                raise RemoteProtocolError(f"credentials: bad {k}")
        if m["session_token"] is not None and not isinstance(m["session_token"], str):
            raise RemoteProtocolError("credentials: bad session_token")
        return cls(m["access_key_id"], m["secret_access_key"], m["session_token"], m["region"])


def instance_credentials(region: str | None = None) -> Callable[[], AwsCredentials]:
    """The host's own AWS credentials (instance role), read fresh at each request."""

    def get() -> AwsCredentials:
        import boto3

        session = boto3.Session()
        creds = session.get_credentials()
        if creds is None:
            raise ConfigError("the host has no AWS credentials to hand to the enclave")
        frozen = creds.get_frozen_credentials()
        return AwsCredentials(
            frozen.access_key,
            frozen.secret_key,
            frozen.token,
            region or session.region_name or "us-east-1",
        )

    return get


async def fetch_credentials(endpoint: Endpoint, *, timeout: float = 30.0) -> AwsCredentials:
    """The enclave's side of §10.2."""
    from ._transport import open_connection

    reader, writer = await open_connection(endpoint, timeout=timeout, peer="host services")
    try:
        writer.write(encode_frame(encode({"t": "creds"})))
        await writer.drain()
        dec = FrameDecoder(max_bytes=64 * 1024)
        while (frame := dec.next_frame()) is None:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                raise TransportError("host closed the connection before sending credentials")
            dec.receive_data(data)
        m = decode_deterministic(frame, what="credentials")
        if isinstance(m, dict) and m.get("t") == "error":
            raise ConfigError(f"host services: {str(m.get('msg'))[:300]}")
        return AwsCredentials.from_map(m)
    except TimeoutError as e:
        raise TransportError("host services did not send credentials in time") from e
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class StoreService:
    """Serves a :class:`ModelStore` to enclaves (§10)."""

    def __init__(
        self,
        store: ModelStore,
        listen: Endpoint,
        *,
        credentials: Callable[[], AwsCredentials] | None = None,
    ) -> None:
        self.store = store
        self.listen = listen
        self.credentials = credentials
        self._server: asyncio.AbstractServer | None = None
        self.bound: Endpoint | None = None

    async def start(self) -> None:
        self._server = await start_server(self.listen, self._on_connection)
        self.bound = server_endpoint(self._server, self.listen)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _send_credentials(self, writer: asyncio.StreamWriter) -> None:
        if self.credentials is None:
            raise ConfigError("this host hands out no AWS credentials")
        loop = asyncio.get_running_loop()
        c = await loop.run_in_executor(None, self.credentials)
        writer.write(encode_frame(c.to_cbor()))
        await writer.drain()
        # Which credentials, never their secret parts.
        log.info("handed credentials %s… to the enclave", c.access_key_id[:4])

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        set_nodelay(writer)
        try:
            request = await asyncio.wait_for(_read_request(reader), _REQUEST_TIMEOUT_S)
            if request is None:
                await self._send_credentials(writer)
                return
            model_id, name = request
            sent = 0
            loop = asyncio.get_running_loop()
            chunks = await loop.run_in_executor(None, self.store.open, model_id, name)
            while (block := await loop.run_in_executor(None, next, chunks, None)) is not None:
                writer.write(encode_frame(encode({"t": "data", "b": block})))
                sent += len(block)
                await writer.drain()  # backpressure: one chunk in flight per read
            writer.write(encode_frame(encode({"t": "end", "size": sent})))
            await writer.drain()
            log.info("served %s/%s (%d bytes)", model_id, name, sent)
        except Error as e:
            log.warning("store request failed: %s", e)
            with contextlib.suppress(Exception):
                writer.write(
                    encode_frame(encode({"t": "error", "code": e.code, "msg": e.message[:300]}))
                )
                await writer.drain()
        except TimeoutError:
            log.warning("store request timed out")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """A get request's (model, file), or None for a credentials request."""
    dec = FrameDecoder(max_bytes=_MAX_REQUEST_BYTES)
    while (frame := dec.next_frame()) is None:
        data = await reader.read(_MAX_REQUEST_BYTES)
        if not data:
            raise RemoteProtocolError("store request: connection closed before a request")
        dec.receive_data(data)
    m = decode_deterministic(frame, what="store request")
    if isinstance(m, dict) and m == {"t": "creds"}:
        return None
    if not isinstance(m, dict) or set(m) != {"t", "model", "file"} or m["t"] != "get":
        raise RemoteProtocolError("host request must be {t: get, model, file} or {t: creds}")
    if not isinstance(m["model"], str) or not isinstance(m["file"], str):
        raise RemoteProtocolError("store request: model and file must be text")
    ModelStore.check(m["model"], m["file"])
    return m["model"], m["file"]


async def fetch(
    endpoint: Endpoint, model_id: str, name: str, *, max_bytes: int, timeout: float = 30.0
) -> AsyncIterator[bytes]:
    """The enclave's side: stream one file from the host's store (§10).

    Yields chunks as they arrive; raises if the host reports an error, closes early,
    or sends more than ``max_bytes`` (the manifest's size, so a hostile host cannot
    make the enclave buffer more than the signed size).
    """
    from ._transport import open_connection

    ModelStore.check(model_id, name)
    reader, writer = await open_connection(endpoint, timeout=timeout, peer="host model store")
    try:
        writer.write(encode_frame(encode({"t": "get", "model": model_id, "file": name})))
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
            # Strict but not re-encoded: a data frame carries a megabyte that the
            # manifest authenticates anyway (M7-M9); re-encoding it would copy it again.
            m = decode_strict(frame, what="store frame")
            t = m.get("t") if isinstance(m, dict) else None
            if t == "data" and isinstance(m.get("b"), bytes) and set(m) == {"t", "b"}:
                got += len(m["b"])
                if got > max_bytes:
                    raise LimitError(f"host sent more than {max_bytes} bytes of {model_id}/{name}")
                yield m["b"]
            elif t == "end" and set(m) == {"t", "size"}:
                if m["size"] != got:
                    raise RemoteProtocolError(f"store stream for {model_id}/{name} lost bytes")
                return
            elif t == "error" and set(m) == {"t", "code", "msg"}:
                raise ConfigError(f"host model store: {str(m['msg'])[:300]}")
            else:
                raise RemoteProtocolError("unexpected frame in the store stream")
    except TimeoutError as e:
        raise TransportError(f"host model store did not answer for {model_id}/{name}") from e
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
