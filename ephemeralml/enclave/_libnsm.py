"""The production NSM: a ctypes binding to AWS's ``libnsm.so`` (nsm-lib).

The C ABI bound here is that of aws/aws-nitro-enclaves-nsm-api, ``nsm-lib/src/lib.rs``
(its ``#[no_mangle] extern "C"`` functions; cbindgen writes them to ``nsm.h``) and
``src/api/mod.rs`` (``ErrorCode``), read at commit
8785071d7f9414d28b4b03d02b74ea470386c4ee (release 0.5.1)::

    int32_t   nsm_lib_init(void);                  /* fd of /dev/nsm, or -1 */
    void      nsm_lib_exit(int32_t fd);
    ErrorCode nsm_describe_pcr(int32_t fd, uint16_t index, bool *lock,
                               uint8_t *data, uint32_t *data_len);
    ErrorCode nsm_extend_pcr(int32_t fd, uint16_t index,
                             const uint8_t *data, uint32_t data_len,
                             uint8_t *pcr_data, uint32_t *pcr_data_len);
    ErrorCode nsm_get_attestation_doc(int32_t fd,
                                      const uint8_t *user_data, uint32_t user_data_len,
                                      const uint8_t *nonce_data, uint32_t nonce_len,
                                      const uint8_t *pub_key_data, uint32_t pub_key_len,
                                      uint8_t *att_doc_data, uint32_t *att_doc_len);
    ErrorCode nsm_get_random(int32_t fd, uint8_t *buf, uintptr_t *buf_len);

``ErrorCode`` is a ``#[repr(C)]`` enum: a C ``int``. A NULL input pointer means the field
is absent (the document then carries null); a non-NULL pointer with length 0 is a present,
empty field. Every output length is in/out: capacity in, bytes written out; a buffer that
is too small gets a truncated copy and ``BufferTooSmall``. ``nsm_get_random`` may write
fewer bytes than asked for.

Errors are split by who is at fault (STYLE.md §2): codes that mean we sent something
wrong are :class:`LocalProtocolError`, codes that mean the device failed are
:class:`TransportError`, ``BufferTooSmall`` is :class:`LimitError`. Payloads are never
logged or put in messages; only call names, PCR indices, sizes and codes are.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Mapping
from enum import IntEnum
from types import MappingProxyType, TracebackType
from typing import Any

from ..common._attestation import MAX_ATTESTATION_BYTES, MAX_OPTIONAL_FIELD_BYTES, PCR_BYTES
from ..common._errors import ConfigError, Error, LimitError, LocalProtocolError, TransportError
from ._nsm import MAX_RANDOM_BYTES, Nsm

__all__ = [
    "DEFAULT_LIBNSM",
    "MAX_ATTESTATION_DOC_BYTES",
    "MAX_EXTEND_DATA_BYTES",
    "MAX_GET_RANDOM_CALLS",
    "NSM_PCR_COUNT",
    "NitroNsm",
    "NsmErrorCode",
]

#: The library the enclave image installs (found through the dynamic loader's search
#: path); ``NitroNsm.open`` takes another name or a path.
DEFAULT_LIBNSM = "libnsm.so"

#: Capacity of the attestation document buffer, in bytes. Real documents are about
#: 4.5 KiB, and the driver cannot return more than its response buffer
#: (NSM_RESPONSE_MAX_SIZE = 0x3000, 12 KiB, in nsm-api src/driver/mod.rs). We size it at
#: the verifier's own bound (MAX_ATTESTATION_BYTES, 16 KiB) so that whatever we hand out
#: is a document our verifier is willing to parse.
MAX_ATTESTATION_DOC_BYTES = MAX_ATTESTATION_BYTES

#: PCRs the NSM has (nsm-api docs: ``index = 0..31``).
NSM_PCR_COUNT = 32

#: Most bytes one extend_pcr call takes. Measurements are digests (48 bytes); 1 KiB
#: keeps the CBOR request far below the driver's 4 KiB NSM_REQUEST_MAX_SIZE.
MAX_EXTEND_DATA_BYTES = 1024

#: Most nsm_get_random calls for one get_random. The NSM returns up to 256 bytes a
#: call, so one call normally covers MAX_RANDOM_BYTES; a device that keeps returning
#: dribbles is broken, and we stop rather than spin on it.
MAX_GET_RANDOM_CALLS = 16

#: Output buffer for one PCR: 64 bytes holds the largest digest the NSM API knows
#: (SHA-512), so a device with another digest is reported as such, not as BufferTooSmall.
_PCR_BUFFER_BYTES = 64


class NsmErrorCode(IntEnum):
    """``ErrorCode`` of nsm-api (src/api/mod.rs), with its Rust names and C values."""

    Success = 0
    InvalidArgument = 1  # input argument(s) invalid
    InvalidIndex = 2  # PCR index out of bounds
    InvalidResponse = 3  # the response does not match the request
    ReadOnlyIndex = 4  # the PCR is locked and the operation would modify it
    InvalidOperation = 5  # the request needs a capability the module lacks
    BufferTooSmall = 6  # succeeded, but the output buffer was too small
    InputTooLarge = 7  # the user-provided input is too large
    InternalError = 8  # the module failed internally


#: Who is at fault for each failure code (STYLE.md §2).
_ERROR_CLASS: Mapping[NsmErrorCode, type[Error]] = MappingProxyType(
    {
        # We sent something the NSM refuses: a bug on our side.
        NsmErrorCode.InvalidArgument: LocalProtocolError,
        NsmErrorCode.InvalidIndex: LocalProtocolError,
        NsmErrorCode.ReadOnlyIndex: LocalProtocolError,
        NsmErrorCode.InputTooLarge: LocalProtocolError,
        # The device (or driver) failed or answered nonsense.
        NsmErrorCode.InvalidResponse: TransportError,
        NsmErrorCode.InvalidOperation: TransportError,
        NsmErrorCode.InternalError: TransportError,
        # The answer did not fit the buffer we gave: a named limit.
        NsmErrorCode.BufferTooSmall: LimitError,
    }
)

_u8p = ctypes.POINTER(ctypes.c_uint8)
_u32p = ctypes.POINTER(ctypes.c_uint32)
# (name, restype, argtypes) of every function we call. uintptr_t is bound as size_t:
# the same width on every Linux ABI.
_PROTOTYPES: tuple[tuple[str, Any, list[Any]], ...] = (
    ("nsm_lib_init", ctypes.c_int32, []),
    ("nsm_lib_exit", None, [ctypes.c_int32]),
    (
        "nsm_describe_pcr",
        ctypes.c_int,
        [ctypes.c_int32, ctypes.c_uint16, ctypes.POINTER(ctypes.c_bool), _u8p, _u32p],
    ),
    (
        "nsm_extend_pcr",
        ctypes.c_int,
        [ctypes.c_int32, ctypes.c_uint16, ctypes.c_char_p, ctypes.c_uint32, _u8p, _u32p],
    ),
    (
        "nsm_get_attestation_doc",
        ctypes.c_int,
        [ctypes.c_int32]
        + [ctypes.c_char_p, ctypes.c_uint32] * 3  # user_data, nonce, public_key
        + [_u8p, _u32p],
    ),
    ("nsm_get_random", ctypes.c_int, [ctypes.c_int32, _u8p, ctypes.POINTER(ctypes.c_size_t)]),
)


class NitroNsm(Nsm):
    """The Nitro Security Module through ``libnsm.so``. Build it with :meth:`open`.

    Thread-safe: one lock serialises every call on the device descriptor. Use it as a
    context manager, or call :meth:`close` (idempotent); calls after close raise
    :class:`LocalProtocolError`.
    """

    mode = "nitro"

    def __init__(self, lib: ctypes.CDLL, fd: int) -> None:
        """Wrap an already initialised library; :meth:`open` is the way in."""
        self._lib = lib
        self._fd: int | None = fd
        self._lock = threading.Lock()

    @classmethod
    def open(cls, library: str | os.PathLike[str] = DEFAULT_LIBNSM) -> NitroNsm:
        """Load ``library`` and open ``/dev/nsm`` through ``nsm_lib_init``.

        Raises :class:`ConfigError` if the library cannot be loaded, lacks a function
        of the ABI above, or cannot open the device (outside an enclave, it cannot).
        """
        if not isinstance(library, str | os.PathLike):
            raise ConfigError(f"NSM: library must be a name or a path, got {library!r}")
        name = os.fspath(library)
        if not isinstance(name, str):
            raise ConfigError(f"NSM: library must be a name or a path, got {library!r}")
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            raise ConfigError(f"NSM: cannot load {name}: {e}") from e
        for symbol, restype, argtypes in _PROTOTYPES:
            try:
                function = getattr(lib, symbol)
            except AttributeError as e:
                raise ConfigError(f"NSM: {name} is not libnsm: it has no {symbol}") from e
            function.restype = restype
            function.argtypes = argtypes
        fd = lib.nsm_lib_init()
        if fd < 0:
            raise ConfigError(
                f"NSM: cannot open /dev/nsm (nsm_lib_init returned {fd}); "
                "the NSM exists only inside a Nitro Enclave"
            )
        return cls(lib, fd)

    def close(self) -> None:
        """Close the device descriptor (``nsm_lib_exit``); a second close does nothing."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                self._lib.nsm_lib_exit(fd)

    def __enter__(self) -> NitroNsm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the Nsm seam ----------------------------------------------------------

    def get_attestation_doc(
        self, *, public_key: bytes | None, user_data: bytes | None, nonce: bytes | None
    ) -> bytes:
        for name, value in (("public_key", public_key), ("user_data", user_data), ("nonce", nonce)):
            _check_field(name, value)
        call = "nsm_get_attestation_doc"
        doc = (ctypes.c_uint8 * MAX_ATTESTATION_DOC_BYTES)()
        doc_len = ctypes.c_uint32(MAX_ATTESTATION_DOC_BYTES)
        # The C order is user_data, nonce, public_key; None passes NULL (field absent).
        self._call(
            call,
            self._lib.nsm_get_attestation_doc,
            user_data,
            _len(user_data),
            nonce,
            _len(nonce),
            public_key,
            _len(public_key),
            doc,
            ctypes.byref(doc_len),
        )
        if not 0 < doc_len.value <= MAX_ATTESTATION_DOC_BYTES:
            raise TransportError(f"NSM: {call} returned a document of {doc_len.value} bytes")
        return ctypes.string_at(doc, doc_len.value)

    def describe_pcr(self, index: int) -> bytes:
        """The value of PCR ``index`` (0..31): 48 bytes, SHA-384 being the NSM's digest."""
        return self.describe_pcr_locked(index)[0]

    def get_random(self, length: int) -> bytes:
        """``length`` (1..MAX_RANDOM_BYTES) bytes from the NSM's generator."""
        if type(length) is not int or not 1 <= length <= MAX_RANDOM_BYTES:
            raise LocalProtocolError(
                f"NSM: get_random length must be 1..{MAX_RANDOM_BYTES}, got {length!r}"
            )
        call = "nsm_get_random"
        out = bytearray()
        for _ in range(MAX_GET_RANDOM_CALLS):
            want = length - len(out)
            buf = (ctypes.c_uint8 * want)()
            got = ctypes.c_size_t(want)
            self._call(call, self._lib.nsm_get_random, buf, ctypes.byref(got))
            # The call may return fewer bytes than asked, never none and never more.
            if not 0 < got.value <= want:
                raise TransportError(f"NSM: {call} returned {got.value} bytes for {want} asked")
            out += ctypes.string_at(buf, got.value)
            if len(out) == length:
                return bytes(out)
        raise TransportError(
            f"NSM: {call} gave {len(out)} of {length} bytes in {MAX_GET_RANDOM_CALLS} calls"
        )

    # -- beyond the seam -------------------------------------------------------

    def describe_pcr_locked(self, index: int) -> tuple[bytes, bool]:
        """PCR ``index``'s value and whether it is locked (read-only)."""
        _check_index(index)
        return self._describe_pcr(index)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR ``index`` with ``data``; returns the new value (48 bytes).

        A locked PCR (0..15 once the enclave runs) fails with ``ReadOnlyIndex``.
        """
        _check_index(index)
        if not isinstance(data, bytes):
            raise LocalProtocolError("NSM: extend_pcr data must be bytes")
        if len(data) > MAX_EXTEND_DATA_BYTES:
            raise LimitError(
                f"NSM: extend_pcr data is {len(data)} bytes; the limit is {MAX_EXTEND_DATA_BYTES}"
            )
        call = f"nsm_extend_pcr({index})"
        pcr = (ctypes.c_uint8 * _PCR_BUFFER_BYTES)()
        pcr_len = ctypes.c_uint32(_PCR_BUFFER_BYTES)
        self._call(
            call,
            self._lib.nsm_extend_pcr,
            index,
            data,
            len(data),
            pcr,
            ctypes.byref(pcr_len),
        )
        return _pcr_value(call, pcr, pcr_len.value)

    # -- internals -------------------------------------------------------------

    def _describe_pcr(self, index: int) -> tuple[bytes, bool]:
        # No index check here: tests call this directly to reach the device's own
        # InvalidIndex.
        call = f"nsm_describe_pcr({index})"
        lock = ctypes.c_bool()
        pcr = (ctypes.c_uint8 * _PCR_BUFFER_BYTES)()
        pcr_len = ctypes.c_uint32(_PCR_BUFFER_BYTES)
        self._call(
            call,
            self._lib.nsm_describe_pcr,
            index,
            ctypes.byref(lock),
            pcr,
            ctypes.byref(pcr_len),
        )
        return _pcr_value(call, pcr, pcr_len.value), bool(lock.value)

    def _call(self, call: str, function: Callable[..., int], *args: object) -> None:
        """``function(fd, *args)`` under the lock; a failure code becomes our error."""
        with self._lock:
            if self._fd is None:
                raise LocalProtocolError(f"NSM: {call} called after close")
            # ctypes releases the GIL for the call: the lock, not the GIL, keeps
            # calls on the descriptor one at a time.
            code = function(self._fd, *args)
        _raise_for(call, code)


def _raise_for(call: str, code: int) -> None:
    if code == NsmErrorCode.Success:
        return
    try:
        known = NsmErrorCode(code)
    except ValueError:
        raise TransportError(f"NSM: {call} failed: unknown error code {code}") from None
    raise _ERROR_CLASS[known](f"NSM: {call} failed: {known.name}")


def _pcr_value(call: str, buf: ctypes.Array[ctypes.c_uint8], length: int) -> bytes:
    if length != PCR_BYTES:
        raise TransportError(f"NSM: {call} returned {length} bytes; a PCR is {PCR_BYTES}")
    return ctypes.string_at(buf, length)


def _check_index(index: object) -> None:
    if type(index) is not int or not 0 <= index < NSM_PCR_COUNT:
        raise LocalProtocolError(f"NSM: PCR index {index!r} not in 0..{NSM_PCR_COUNT - 1}")


def _check_field(name: str, value: object) -> None:
    # Same checks and messages as MockNsm, so both modes refuse the same inputs. The
    # NSM itself takes up to 1024 bytes; we stop at the verifier's bound (FACTS.md:
    # keep each field to 512) so we never obtain a document we would reject.
    if value is None:
        return
    if not isinstance(value, bytes):
        raise LocalProtocolError(f"NSM: {name} must be bytes or None")
    if len(value) > MAX_OPTIONAL_FIELD_BYTES:
        raise LimitError(
            f"NSM: {name} is {len(value)} bytes; the limit is {MAX_OPTIONAL_FIELD_BYTES}"
        )


def _len(value: bytes | None) -> int:
    return 0 if value is None else len(value)
