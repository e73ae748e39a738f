"""The adversarial tier: the real programs on loopback, with a hostile relay between them.

Reuses the integration tier's process helpers (``tests/integration/conftest.py``, on
the one harness, ``ephemeralml.bench._processes``: a program is ready when it prints
its readiness line, whose fields give its ports). The enclave runs under an
address-space limit (:data:`ENCLAVE_MEMORY_LIMIT_BYTES`), so an input that makes it
allocate without bound ends it quickly (and the test fails) instead of eating the
machine. Every wait is bounded; every process is stopped at the end with
its exit code checked.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from ephemeralml.bench._processes import ENCLAVE, enclave_argv, start_program
from ephemeralml.client._api import connect
from ephemeralml.client._policy import ClientPolicy
from ephemeralml.common._errors import TransportError
from ephemeralml.common._messages import EmbedRequest
from ephemeralml.common._session import (
    Attested,
    ChunkReceived,
    ClientSession,
    RequestFailed,
    ResponseReceived,
    StreamEnded,
)
from tests.integration.conftest import BIN, Program, Stack, free_port, program_env, start_host
from tests.integration.conftest import kms_port as kms_port  # re-exported for the tests
from tests.integration.conftest import services_port as services_port

from .hostile import HostileRelay

#: Address space the enclave process may use: about five times what it needs with the
#: model loaded (VmPeak ~0.7 GB here), far below the machine. An amplification that
#: gets past the decoders hits this limit and ends the enclave (the test then fails)
#: rather than taking memory from everything else on the machine.
ENCLAVE_MEMORY_LIMIT_BYTES = 4 * 1024**3
#: The same bound for a client run as a subprocess (the CLI), for the same reason.
CLIENT_MEMORY_LIMIT_BYTES = 2 * 1024**3

#: Text the tests send; no byte of it may ever cross a relay in clear.
SECRET = "adversarial plaintext: the launch code is 0000-SECRET-4242"

_LIMIT_PRELUDE = (
    "import os, resource, sys; "
    "n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_AS, (n, n)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def limited(cmd: Sequence[str], limit_bytes: int) -> list[str]:
    """``cmd`` run under an address-space limit (exec'd, so the pid is the program's)."""
    return [sys.executable, "-c", _LIMIT_PRELUDE, str(limit_bytes), *cmd]


def launch_host(
    env: dict[str, str], enclave_port: int, listen_port: int = 0, *extra: str
) -> tuple[Program, int]:
    """The host in mock mode relaying to ``enclave_port``; and the port it relays on."""
    return start_host(env, enclave_port, listen_port, *extra)


def enclave_cmd(
    port: int, services: int, kms: int, *extra: str, host_wait_s: float = 30.0
) -> list[str]:
    """The enclave's command line, memory-limited (see :func:`limited`)."""
    argv = enclave_argv(port, services, kms, *extra, host_wait_s=host_wait_s)
    return limited(argv, ENCLAVE_MEMORY_LIMIT_BYTES)


def launch_enclave(
    env: dict[str, str], port: int, host: Program, *extra: str, kms: int | None = None
) -> Program:
    """A memory-limited enclave on ``port`` using ``host``'s services and (unless
    ``kms`` is given) its KMS egress proxy; returns once it serves."""
    cmd = enclave_cmd(port, services_port(host), kms if kms is not None else kms_port(host), *extra)
    return start_program(ENCLAVE, cmd, env)


def launch(home: Path, host_extra: Sequence[str] = (), enclave_extra: Sequence[str] = ()) -> Stack:
    """Host and enclave on kernel-chosen ports, the enclave memory-limited."""
    env = program_env(home)
    enclave_port = free_port()
    host, host_port = launch_host(env, enclave_port, 0, *host_extra)
    try:
        enclave = launch_enclave(env, enclave_port, host, *enclave_extra)
    except BaseException:
        host.stop()
        raise
    return Stack(home, env, enclave, host, enclave_port, host_port)


def stop_stack(s: Stack) -> None:
    codes = (s.host.stop(), s.enclave.stop())
    assert codes == (0, 0), "".join(s.host.lines + s.enclave.lines)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = launch(tmp_path_factory.mktemp("adv-home"))
    yield s
    stop_stack(s)


def policy(stack: Stack) -> ClientPolicy:
    return ClientPolicy.unsafe_mock(stack.home, warn=False)


@pytest.fixture(scope="module")
def secret_vector(stack: Stack) -> bytes:
    """The float32 bytes of SECRET's embedding (deterministic), from a clean session."""
    with connect(f"127.0.0.1:{stack.enclave_port}", policy=policy(stack), timeout=30) as s:
        v = s.embed([SECRET])[0].vectors
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def assert_no_plaintext(relay: HostileRelay, secret_vector: bytes, *texts: str) -> None:
    """No request text and no embedding byte run crossed ``relay`` in clear."""
    carried = relay.carried()
    for t in (SECRET, *texts):
        assert t.encode() not in carried
    assert b"SECRET" not in carried
    # The whole vector, and any 16-byte run of it (four float32s).
    assert secret_vector not in carried
    for i in range(0, len(secret_vector) - 16, 16):
        assert secret_vector[i : i + 16] not in carried


def assert_no_traceback(stack: Stack) -> None:
    """No foreign exception escaped into the host's or the enclave's log."""
    logs = "".join(stack.host.lines + stack.enclave.lines)
    assert "Traceback" not in logs, logs


def assert_serving(stack: Stack, *, via: str | None = None) -> None:
    """Host and enclave are alive and a legitimate client gets a verified result."""
    assert stack.enclave.proc.poll() is None, "".join(stack.enclave.lines)
    assert stack.host.proc.poll() is None, "".join(stack.host.lines)
    with connect(via or stack.address, policy=policy(stack), timeout=30) as s:
        e = s.embed(["a legitimate client after the attack"])[0]
    assert e.vectors.shape == (1, 384)
    assert e.receipt.receipt.seq == 0


def read_until_closed(sock: socket.socket, limit: int = 1 << 20, timeout_s: float = 10.0) -> bytes:
    """Everything the peer sends until it closes (bounded in bytes and time)."""
    data = bytearray()
    deadline = time.monotonic() + timeout_s
    while len(data) < limit and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def run_client_cli(
    env: dict[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """The real ``ephemeral`` CLI as a memory-limited subprocess (it may be attacked)."""
    return subprocess.run(
        limited([str(BIN / "ephemeral"), *args], CLIENT_MEMORY_LIMIT_BYTES),
        env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


class RawClient:
    """The client protocol over a plain socket, with several requests in flight (the
    library sends one at a time). Errors are the protocol core's own."""

    def __init__(self, address: str, pol: ClientPolicy, timeout: float) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.proto = ClientSession(pol.attestation)
        try:
            self.sock.sendall(self.proto.hello())
            assert isinstance(self.next_event(), Attested)
            self.sock.sendall(self.proto.data_to_send())
        except BaseException:
            self.sock.close()
            raise

    def send(self, *requests: EmbedRequest) -> None:
        self.sock.sendall(b"".join(self.proto.send_request(r)[1] for r in requests))

    def next_event(self) -> Attested | ResponseReceived | RequestFailed | ChunkReceived | StreamEnded:
        while (event := self.proto.next_event(now=datetime.now(UTC))) is None:
            data = self.sock.recv(65536)
            if not data:
                raise TransportError("the peer closed the connection")
            self.proto.receive_data(data)
        return event

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def wait_port_closed(port: int, timeout_s: float = 10.0) -> bool:
    """True once nothing accepts on ``port`` (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            return True
        time.sleep(0.1)
    return False
