"""One way to start the programs and to stop them: the benchmark, ``scripts/soak.py``
and the integration and adversarial tests all use it.

:func:`start_program` starts a program, reads its stderr on a thread (keeping the
lines for diagnostics and for tests that check a human line), and waits, bounded, for
its one machine-readable readiness line (:func:`ephemeralml.runtime._runner.parse_ready`;
no regex on human log lines). If the program exits or the time runs out first, it is
stopped and :class:`ProgramError` names it and shows its last lines. The fields of the
readiness line are :attr:`Running.ready`; ports come from them
(``running.port("relay")``). :meth:`Running.stop` is SIGTERM, then SIGKILL, each wait
bounded, and returns the exit code.

Host fields: ``relay``, ``enclaves``, ``services``, ``kms``, ``kms_upstream``,
``profile``; enclave fields: ``listen``, ``models``, ``failed``, ``profile``
(endpoints as strings such as ``tcp:127.0.0.1:5000``).

Everything binds to loopback: :func:`host_argv` and :func:`enclave_argv` build the
usual mock-mode command lines on 127.0.0.1 (port 0: chosen by the kernel).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ephemeralml.runtime._runner import parse_ready

__all__ = [
    "ENCLAVE",
    "HOST",
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "ProgramError",
    "Running",
    "enclave_argv",
    "endpoint_port",
    "free_port",
    "host_argv",
    "program_command",
    "program_env",
    "start_program",
]

HOST = "ephemeral-host"
ENCLAVE = "ephemeral-enclave"

#: How long a program may take to say it serves (the mock host packages the model first).
START_TIMEOUT_S = 90.0
#: How long each of SIGTERM and SIGKILL is given.
STOP_TIMEOUT_S = 15.0
#: How long the reader may take to collect the last lines once the program has exited.
_DRAIN_S = 5.0
#: Lines kept per program, the latest (a long soak's logs stay bounded).
MAX_LINES = 10_000
#: Lines of a program's own output an error shows.
TAIL_LINES = 20

_EDGE_MODULES = {HOST: "host", ENCLAVE: "enclave"}


class ProgramError(Exception):
    """A program did not become ready (it exited, or did not say it serves in
    time), or could not be stopped. ``summary`` is one line, ``tail`` its last lines,
    ``exit_code`` how it ended where :func:`start_program` stopped it."""

    def __init__(self, prog: str, what: str, tail: Sequence[str]) -> None:
        self.prog = prog
        self.exit_code: int | None = None
        self.summary = f"{prog} {what}"
        self.tail = [line.rstrip("\n") for line in tail]
        text = self.summary
        if self.tail:
            text += "; its last lines:\n" + "\n".join(f"  {line}" for line in self.tail)
        else:
            text += " (it printed nothing)"
        super().__init__(text)


class Running:
    """A started program (see :func:`start_program`).

    ``lines`` are its stderr lines as read (newline included), the latest
    :data:`MAX_LINES`; ``ready`` the fields of its readiness line; ``spawned`` and
    ``ready_at`` are :func:`time.monotonic` just before it was spawned and when its
    readiness line arrived.
    """

    def __init__(
        self, prog: str, argv: Sequence[str], proc: subprocess.Popen[str], spawned: float,
        *, max_lines: int = MAX_LINES,
    ) -> None:  # fmt: skip
        self.prog = prog
        self.argv = list(argv)
        self.proc = proc
        self.spawned = spawned
        self.lines: list[str] = []
        self.ready: dict[str, Any] = {}
        self.ready_at: float | None = None
        self._max_lines = max_lines
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, name=f"stderr-{prog}", daemon=True)

    def __repr__(self) -> str:
        return f"Running({self.prog!r}, pid={self.pid}, ready={self.ready!r})"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ready_s(self) -> float:
        """Seconds from spawning to the readiness line."""
        if self.ready_at is None:
            raise ProgramError(self.prog, "is not ready", self.tail())
        return self.ready_at - self.spawned

    def alive(self) -> bool:
        return self.proc.poll() is None

    def port(self, name: str) -> int:
        """The port of the endpoint in readiness field ``name`` (``relay``, ``listen``...)."""
        return endpoint_port(str(self.ready[name]))

    def tail(self, n: int = TAIL_LINES) -> list[str]:
        with self._cond:
            return self.lines[-n:]

    def _read(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        with stderr:
            for line in stderr:
                with self._cond:
                    self.lines.append(line)
                    if len(self.lines) > self._max_lines:
                        # Drop a tenth at once, so that trimming stays cheap.
                        del self.lines[: len(self.lines) - self._max_lines + self._max_lines // 10]
                    if self.ready_at is None:
                        fields = parse_ready(line.rstrip("\n"), self.prog)
                        if fields is not None:
                            self.ready, self.ready_at = fields, time.monotonic()
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.ready_at is None and not self._eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self.proc.poll() is not None:
                    break  # exited, its stderr perhaps still held open: drained below
                self._cond.wait(timeout=min(left, 0.5))
        if self.ready_at is not None:
            return
        if self.proc.poll() is None and not self._eof:
            raise ProgramError(self.prog, f"was not ready within {timeout_s:g} s", self.tail())
        self._reader.join(timeout=_DRAIN_S)
        if self.ready_at is not None:  # ready, then gone: the caller finds out
            return
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ProgramError(
                self.prog, "closed its stderr before it was ready", self.tail()
            ) from None
        raise ProgramError(self.prog, f"exited {code} before it was ready", self.tail())

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code (negative: the
        signal that ended it). Its last lines are in :attr:`lines` when this returns."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    raise ProgramError(
                        self.prog, f"(pid {self.pid}) did not exit after SIGKILL", self.tail()
                    ) from None
        if self._reader.ident is not None:
            self._reader.join(timeout=_DRAIN_S)
        return self.proc.returncode

    def __enter__(self) -> Running:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_program(
    prog: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout_s: float = START_TIMEOUT_S,
    max_lines: int = MAX_LINES,
) -> Running:
    """Start ``argv`` (which runs ``prog``, e.g. :data:`HOST`, possibly through a
    wrapper that execs it) and return once ``prog``'s readiness line is read.

    Raises :class:`ProgramError` if it exits or ``timeout_s`` passes first; it is
    stopped then (also when the wait is interrupted), so nothing is left running.
    """
    spawned = time.monotonic()
    proc = subprocess.Popen(
        list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, errors="replace",
    )  # fmt: skip
    running = Running(prog, argv, proc, spawned, max_lines=max_lines)
    try:
        running._reader.start()
        running._wait_ready(timeout_s)
    except BaseException as e:
        with contextlib.suppress(Exception):
            code = running.stop()
            if isinstance(e, ProgramError):
                e.exit_code = code
        raise
    return running


# ---------------------------------------------------------------- command lines


def endpoint_port(endpoint: str) -> int:
    """The port of ``tcp:127.0.0.1:5000`` (or ``127.0.0.1:5000``, ``vsock:16:5000``)."""
    return int(endpoint.rsplit(":", 1)[1])


def free_port() -> int:
    """A loopback port free now (for a program that must know its port in advance)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def program_command(prog: str) -> list[str]:
    """How to run ``prog``: the console script beside this interpreter, else on PATH,
    else ``python -m ephemeralml._edge host|enclave``."""
    exe = Path(sys.executable).parent / prog
    if exe.exists():
        return [str(exe)]
    found = shutil.which(prog)
    if found:
        return [found]
    return [sys.executable, "-m", "ephemeralml._edge", _EDGE_MODULES[prog]]


def program_env(home: Path) -> dict[str, str]:
    """This process's environment without any ``EPHEMERAL*`` variable, with
    ``EPHEMERALML_HOME`` set to ``home`` (a private state folder) and unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERAL")}
    env["EPHEMERALML_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def host_argv(enclave_ports: Sequence[int], *extra: str, listen_port: int = 0) -> list[str]:
    """``ephemeral-host --mock`` relaying to the enclaves on ``enclave_ports``, with its
    services, KMS egress proxy, local KMS and health endpoint on kernel-chosen loopback
    ports."""
    argv = [
        *program_command(HOST), "--mock", "--listen", f"127.0.0.1:{listen_port}",
        "--services-listen", "127.0.0.1:0", "--kms-listen", "127.0.0.1:0",
        "--mock-kms-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
    ]  # fmt: skip
    for p in enclave_ports:
        argv += ["--enclave", f"tcp:127.0.0.1:{p}"]
    return [*argv, *extra]


def enclave_argv(
    listen_port: int, services_port: int, kms_port: int, *extra: str, host_wait_s: float = 60.0
) -> list[str]:
    """``ephemeral-enclave --mock`` on ``listen_port`` (0: kernel-chosen), using the
    host's services and KMS egress proxy on the given loopback ports."""
    return [
        *program_command(ENCLAVE), "--mock", "--listen", f"127.0.0.1:{listen_port}",
        "--host-services", f"tcp:127.0.0.1:{services_port}",
        "--host-kms", f"tcp:127.0.0.1:{kms_port}", "--host-wait", f"{host_wait_s:g}",
        *extra,
    ]  # fmt: skip
