"""The integration tier: the three real programs as processes on loopback.

The enclave and the host are started once per module with their own state
directory (``EPHEMERALML_HOME``) and kernel-chosen ports, and stopped (SIGTERM,
checked exit code) at the end. Every wait is bounded.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90.0


@dataclass
class Program:
    proc: subprocess.Popen[str]
    lines: list[str]

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return self.proc.returncode


def start(cmd: list[str], env: dict[str, str], pattern: str) -> tuple[Program, re.Match[str]]:
    """Start ``cmd`` and wait (bounded) for a stderr line matching ``pattern``."""
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    rx = re.compile(pattern)
    while True:
        try:
            line = q.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            proc.kill()
            raise RuntimeError(f"{cmd[0]} did not start: {''.join(lines)}") from None
        if line is None:
            raise RuntimeError(f"{cmd[0]} exited {proc.wait()}: {''.join(lines)}")
        if m := rx.search(line):
            return Program(proc, lines), m


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


def program_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERAL")}
    env["EPHEMERALML_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_host(env: dict[str, str], enclave_port: int) -> tuple[Program, int]:
    """The host in mock mode on kernel-chosen ports (its local KMS included)."""
    host, m = start(
        [str(BIN / "ephemeral-host"), "--mock", "--listen", "127.0.0.1:0",
         "--enclave", f"tcp:127.0.0.1:{enclave_port}", "--services-listen", "127.0.0.1:0",
         "--kms-listen", "127.0.0.1:0", "--mock-kms-listen", "127.0.0.1:0"],
        env, r"relaying tcp:127\.0\.0\.1:(\d+)",
    )  # fmt: skip
    return host, int(m.group(1))


def host_port_of(host: Program, pattern: str) -> int:
    for line in host.lines:
        if m := re.search(pattern, line):
            return int(m.group(1))
    raise AssertionError(f"no line matches {pattern!r}: {''.join(host.lines)}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("home")
    env = program_env(home)
    enclave_port = free_port()
    host, host_port = start_host(env, enclave_port)
    try:
        services = host_port_of(host, r"credentials for the enclave on tcp:127\.0\.0\.1:(\d+)")
        kms = host_port_of(host, r"KMS forwarder tcp:127\.0\.0\.1:(\d+)")
        enclave, _ = start(
            [str(BIN / "ephemeral-enclave"), "--mock", "--listen", f"127.0.0.1:{enclave_port}",
             "--host-services", f"tcp:127.0.0.1:{services}", "--host-kms", f"tcp:127.0.0.1:{kms}",
             "--host-wait", "60"],
            env,
            r"serving .* on tcp:127\.0\.0\.1:\d+ \(MOCK mode",
        )  # fmt: skip
    except BaseException:
        host.stop()
        raise
    s = Stack(home, env, enclave, host, enclave_port, host_port)
    yield s
    codes = (host.stop(), enclave.stop())
    assert codes == (0, 0), "".join(host.lines + enclave.lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
