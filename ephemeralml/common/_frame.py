"""Length-prefixed framing (protocol.md §1.1).

A frame is a 4-byte big-endian length followed by that many bytes of
deterministic CBOR. The decoder is sans-IO: feed it bytes in any chunking and take
complete frames out. A length over :data:`MAX_FRAME_BYTES` is rejected as soon as
the 4 length bytes are seen, before any body is buffered.
"""

from __future__ import annotations

import struct

from ._errors import LimitError, LocalProtocolError, RemoteProtocolError

__all__ = ["FRAME_HEADER_BYTES", "MAX_FRAME_BYTES", "FrameClock", "FrameDecoder", "encode_frame"]

#: Hard maximum of one frame's body. The largest legitimate frame is a request of
#: MAX_INPUTS (64) texts of 16 KiB each (1 MiB of text plus CBOR overhead) sealed by
#: HPKE; 2 MiB leaves room for that and bounds what a peer can make us buffer.
MAX_FRAME_BYTES = 2 * 1024 * 1024

#: Size of the big-endian length prefix.
FRAME_HEADER_BYTES = 4

_LEN = struct.Struct(">I")


def encode_frame(body: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Prefix ``body`` with its length. Refuses (locally) to build an oversized frame."""
    if len(body) > max_bytes:
        raise LocalProtocolError(f"frame of {len(body)} bytes is over the limit of {max_bytes}")
    if not body:
        raise LocalProtocolError("refusing to send an empty frame")
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Reassembles frames from a byte stream (protocol.md §1.1)."""

    def __init__(self, *, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes
        self._need: int | None = None

    @property
    def max_bytes(self) -> int:
        """The largest frame body accepted from now on (check F1)."""
        return self._max

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        # A session raises its limit once the peer has authenticated (§1.1 F1): the
        # handshake frames are small, and nothing larger is buffered before it.
        if not 0 < value <= MAX_FRAME_BYTES:
            raise LocalProtocolError(f"frame limit {value} is not in 1..{MAX_FRAME_BYTES}")
        self._max = value

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet a complete frame."""
        return len(self._buf)

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or ``None`` if more bytes are needed."""
        if self._need is None:
            if len(self._buf) < FRAME_HEADER_BYTES:
                return None
            (n,) = _LEN.unpack_from(self._buf, 0)
            # §1.1 check F1: length within the hard maximum, before buffering a body.
            if n > self._max:
                raise LimitError(f"frame of {n} bytes is over the limit of {self._max}")
            # §1.1 check F2: no empty frames (every frame is one CBOR map).
            if n == 0:
                raise RemoteProtocolError("empty frame")
            self._need = n
            del self._buf[:FRAME_HEADER_BYTES]
        if len(self._buf) < self._need:
            return None
        body = bytes(self._buf[: self._need])
        del self._buf[: self._need]
        self._need = None
        return body


class FrameClock:
    """Where frames start and end in one direction of a stream, from the 4-byte
    big-endian length prefixes alone (protocol.md §1.1; the prefixes are not secret).

    It keeps no payload: a partial header (at most 3 bytes, as an integer), the body
    bytes still due, and times. The relay and the enclave use it to run a deadline per
    frame from its first byte, and to know when the handshake's frames have passed
    (protocol.md §7.1). It checks no limit itself: F1 and F2 stay the decoder's.
    """

    __slots__ = ("_body_left", "_hdr", "_hdr_len", "frames", "partial", "started_at")

    def __init__(self) -> None:
        self._hdr = 0
        self._hdr_len = 0
        self._body_left = 0
        #: Frames completed so far.
        self.frames = 0
        #: Bytes of the frame in progress seen so far (header included).
        self.partial = 0
        #: When the first byte of the frame in progress arrived; None between frames.
        self.started_at: float | None = None

    @property
    def in_frame(self) -> bool:
        return self.started_at is not None

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Account for ``data``, which arrived at ``now`` (a monotonic clock)."""
        i, n = 0, len(data)
        while i < n:
            if self.started_at is None:
                self.started_at = now
            if self._hdr_len < FRAME_HEADER_BYTES and self._body_left == 0:
                take = min(FRAME_HEADER_BYTES - self._hdr_len, n - i)
                for b in bytes(data[i : i + take]):
                    self._hdr = (self._hdr << 8) | b
                self._hdr_len += take
                self.partial += take
                i += take
                if self._hdr_len < FRAME_HEADER_BYTES:
                    return
                self._body_left = self._hdr
                if self._body_left == 0:
                    self._complete()
                continue
            take = min(self._body_left, n - i)
            self._body_left -= take
            self.partial += take
            i += take
            if self._body_left == 0:
                self._complete()

    def _complete(self) -> None:
        self.frames += 1
        self._hdr = self._hdr_len = self._body_left = self.partial = 0
        self.started_at = None
