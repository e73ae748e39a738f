"""The integration tier: the three real programs as processes on loopback.

The enclave and the host are started once per module with their own state
directory (``EPHEMERALML_HOME``) and kernel-chosen ports, and stopped (SIGTERM,
checked exit code) at the end. Every wait is bounded.

Programs start the one way the benchmark and ``scripts/soak.py`` start them
(:func:`ephemeralml.bench._processes.start_program`): each says it serves in one
machine-readable readiness line, and the ports come from its fields. Tests that
check a human log line (an enclave's error line) read it from ``Program.lines``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ephemeralml.bench._processes import (
    ENCLAVE,
    HOST,
    Running,
    enclave_argv,
    free_port,
    host_argv,
    program_env,
    start_program,
)
from ephemeralml.common._cbor import decode_deterministic, encode
from ephemeralml.common._frame import encode_frame

__all__ = [
    "BIN",
    "FrameEdit",
    "Program",
    "Stack",
    "TamperProxy",
    "free_port",
    "kms_port",
    "program_env",
    "services_port",
    "start_enclave",
    "start_host",
]

BIN = Path(sys.executable).parent

#: A started program: ``proc``, ``lines`` (its stderr), ``ready`` (the fields of its
#: readiness line), ``port(field)``, ``stop()`` (the exit code).
Program = Running


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    enclave: Program
    host: Program
    enclave_port: int
    host_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.host_port}"

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the real ``ephemeral`` console script."""
        return subprocess.run(
            [str(BIN / "ephemeral"), *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def start_host(
    env: dict[str, str], enclave_port: int, listen_port: int = 0, *extra: str
) -> tuple[Program, int]:
    """The host in mock mode on kernel-chosen ports (its local KMS included), relaying
    to ``enclave_port``; and the port it relays on."""
    host = start_program(HOST, host_argv([enclave_port], *extra, listen_port=listen_port), env)
    return host, host.port("relay")


def services_port(host: Program) -> int:
    """The port of the host's model store and credentials for the enclave."""
    return host.port("services")


def kms_port(host: Program) -> int:
    """The port of the host's KMS egress proxy."""
    return host.port("kms")


def start_enclave(env: dict[str, str], port: int, host: Program, *extra: str) -> Program:
    """The enclave in mock mode on ``port``, using ``host``'s services and KMS."""
    enclave = start_program(
        ENCLAVE, enclave_argv(port, services_port(host), kms_port(host), *extra), env
    )
    if enclave.ready.get("profile") != "mock":
        enclave.stop()
        raise AssertionError(f"not a mock enclave: {enclave.ready}")
    return enclave


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("home")
    env = program_env(home)
    enclave_port = free_port()
    host, host_port = start_host(env, enclave_port)
    try:
        enclave = start_enclave(env, enclave_port, host)
    except BaseException:
        host.stop()
        raise
    s = Stack(home, env, enclave, host, enclave_port, host_port)
    yield s
    codes = (host.stop(), enclave.stop())
    assert codes == (0, 0), "".join(host.lines + enclave.lines)


Tamper = Callable[[str, int, bytes], bytes]


class TamperProxy:
    """A hostile relay on loopback: forwards bytes, letting a test change them.

    ``tamper(direction, offset, chunk)`` sees each chunk with its offset in that
    direction's stream ("up": client → host, "down": host → client). It records
    everything it carried so a test can search it for plaintext. ``close_after``
    ends the connection once that many bytes have gone down (a peer that vanishes).
    """

    def __init__(
        self, upstream_port: int, tamper: Tamper | None = None, close_after: int | None = None
    ):
        self.upstream = upstream_port
        self.tamper = tamper or (lambda d, o, b: b)
        self.close_after = close_after
        self.seen = {"up": bytearray(), "down": bytearray()}
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(30)
        self.port = int(self._srv.getsockname()[1])
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept_one, daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept_one(self) -> None:
        try:
            client, _ = self._srv.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
        for src, dst, d in ((client, upstream, "up"), (upstream, client, "down")):
            t = threading.Thread(target=self._pump, args=(src, dst, d), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        src.settimeout(30)
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                offset = len(self.seen[direction])
                self.seen[direction] += chunk
                out = self.tamper(direction, offset, chunk)
                if (
                    direction == "down"
                    and self.close_after is not None
                    and len(self.seen["down"]) >= self.close_after
                ):
                    dst.sendall(out[: max(0, self.close_after - offset)])
                    break
                dst.sendall(out)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._srv.close()
        for t in self._threads:
            t.join(timeout=10)


class FrameEdit:
    """A tamper function for :class:`TamperProxy` that sees whole frames going down
    and may change the streamed-answer chunks (protocol.md §2.8): ``edit(i, m)`` gets
    the chunk's index among all chunk frames so far and its map, and returns the
    frames to send instead (a list of maps), or raises OSError to cut the connection.
    Other frames pass on whole."""

    def __init__(self, edit: Callable[[int, dict], list[dict]]) -> None:  # type: ignore[type-arg]
        self.edit = edit
        self.buffer = bytearray()
        self.chunks = 0

    def __call__(self, direction: str, offset: int, data: bytes) -> bytes:
        if direction == "up":
            return data
        self.buffer += data
        out = bytearray()
        while len(self.buffer) >= 4:
            n = int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < 4 + n:
                break
            frame, self.buffer = bytes(self.buffer[: 4 + n]), self.buffer[4 + n :]
            m = decode_deterministic(frame[4:])
            if m.get("t") != "chunk":
                out += frame
                continue
            i, self.chunks = self.chunks, self.chunks + 1
            out += b"".join(encode_frame(encode(x)) for x in self.edit(i, m))
        return bytes(out)
