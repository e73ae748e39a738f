"""The one way to start and stop the programs (``ephemeralml.bench._processes``),
with stand-in programs: small Python scripts that print what a program prints.

Each stand-in is bounded (it sleeps at most 60 s and is stopped long before); each
wait here is well under a few seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ephemeralml.bench._processes import (
    ENCLAVE,
    HOST,
    ProgramError,
    enclave_argv,
    endpoint_port,
    host_argv,
    program_command,
    program_env,
    start_program,
)
from ephemeralml.runtime._runner import ready_line

READY_FIELDS = {"listen": "tcp:127.0.0.1:4242", "models": ["m"], "failed": [], "profile": "mock"}
READY = ready_line("fake", **READY_FIELDS)


def fake(body: str) -> list[str]:
    """A stand-in program: ``say(line)`` prints a stderr line, ``ready()`` its readiness."""
    prelude = textwrap.dedent(
        f"""
        import signal, sys, time
        def say(line):
            print(line, file=sys.stderr, flush=True)
        def ready():
            say({READY!r})
        """
    )
    return [sys.executable, "-c", prelude + textwrap.dedent(body)]


ENV = dict(os.environ)

SERVER = """
    def on_term(*_):
        say("fake: stopped")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    say("fake: starting")
    say("fake: ready {not the readiness line")
    ready()
    say("fake: serving")
    time.sleep(60)
"""


def test_ready_fields_lines_and_a_clean_stop() -> None:
    p = start_program("fake", fake(SERVER), ENV, timeout_s=20)
    try:
        assert p.ready == READY_FIELDS
        assert p.port("listen") == 4242
        assert p.alive()
        assert p.ready_at is not None and 0 < p.ready_s < 20
        assert p.lines[:3] == [
            "fake: starting\n",
            "fake: ready {not the readiness line\n",
            READY + "\n",
        ]
        # The stand-in says "serving" after its readiness line; a stop sent before it
        # has would end the lines early (a loaded machine can take that long).
        deadline = time.monotonic() + 10
        while "fake: serving\n" not in p.lines and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        code = p.stop(timeout_s=10)
    assert code == 0
    # The last lines are collected before stop() returns.
    assert p.lines[-2:] == ["fake: serving\n", "fake: stopped\n"]
    assert not p.alive()
    assert p.stop() == 0  # stopping again is harmless


def test_as_a_context_manager() -> None:
    with start_program("fake", fake(SERVER), ENV, timeout_s=20) as p:
        assert p.ready["profile"] == "mock"
    assert p.proc.returncode == 0


def test_exits_before_ready() -> None:
    body = """
        say("fake: loading")
        say("fake: error: no model loaded (m: nope)")
        sys.exit(2)
    """
    with pytest.raises(ProgramError) as ei:
        start_program("fake", fake(body), ENV, timeout_s=20)
    e = ei.value
    assert e.prog == "fake"
    assert e.summary == "fake exited 2 before it was ready"
    assert e.tail == ["fake: loading", "fake: error: no model loaded (m: nope)"]
    assert e.exit_code == 2
    assert str(e) == (
        "fake exited 2 before it was ready; its last lines:\n"
        "  fake: loading\n"
        "  fake: error: no model loaded (m: nope)"
    )


def test_exits_silently() -> None:
    with pytest.raises(ProgramError) as ei:
        start_program("fake", fake("sys.exit(3)"), ENV, timeout_s=20)
    assert str(ei.value) == "fake exited 3 before it was ready (it printed nothing)"


def test_another_programs_readiness_line_does_not_count() -> None:
    body = """
        ready()
        sys.exit(0)
    """
    with pytest.raises(ProgramError, match=r"^other exited 0 before it was ready; "):
        start_program("other", fake(body), ENV, timeout_s=20)


def test_timeout_stops_the_program() -> None:
    body = """
        say("fake: waiting for something")
        time.sleep(60)
    """
    with pytest.raises(ProgramError) as ei:
        start_program("fake", fake(body), ENV, timeout_s=1.5)
    e = ei.value
    assert e.summary == "fake was not ready within 1.5 s"
    assert e.tail == ["fake: waiting for something"]
    assert e.exit_code == -signal.SIGTERM  # stopped, not left running


def test_stop_kills_a_program_that_ignores_sigterm() -> None:
    body = """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ready()
        time.sleep(60)
    """
    p = start_program("fake", fake(body), ENV, timeout_s=20)
    assert p.stop(timeout_s=0.5) == -signal.SIGKILL


def test_only_the_latest_lines_are_kept() -> None:
    body = """
        for i in range(50):
            say(f"fake: line {i}")
        ready()
        time.sleep(60)
    """
    p = start_program("fake", fake(body), ENV, timeout_s=20, max_lines=10)
    try:
        assert p.ready == READY_FIELDS  # found although its line was trimmed later or not
        assert 9 <= len(p.lines) <= 10
        assert p.lines[-1] == READY + "\n"
        assert p.lines[-2] == "fake: line 49\n"
    finally:
        p.stop(timeout_s=5)


def test_a_missing_program() -> None:
    with pytest.raises(FileNotFoundError):
        start_program("fake", ["/nonexistent/ephemeral-nothing"], ENV, timeout_s=5)


@pytest.mark.parametrize(
    ("endpoint", "port"),
    [("tcp:127.0.0.1:5000", 5000), ("127.0.0.1:1", 1), ("vsock:16:5005", 5005)],
)
def test_endpoint_port(endpoint: str, port: int) -> None:
    assert endpoint_port(endpoint) == port


def test_host_argv() -> None:
    argv = host_argv([5005, 5006], "--handshake-timeout=2", listen_port=4000)
    assert argv[: len(program_command(HOST))] == program_command(HOST)
    assert argv[len(program_command(HOST)) :] == [
        "--mock", "--listen", "127.0.0.1:4000",
        "--services-listen", "127.0.0.1:0", "--kms-listen", "127.0.0.1:0",
        "--mock-kms-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
        "--enclave", "tcp:127.0.0.1:5005", "--enclave", "tcp:127.0.0.1:5006",
        "--handshake-timeout=2",
    ]  # fmt: skip


def test_enclave_argv() -> None:
    argv = enclave_argv(0, 6001, 6002, "--threads=1", host_wait_s=30.0)
    assert argv[len(program_command(ENCLAVE)) :] == [
        "--mock", "--listen", "127.0.0.1:0",
        "--host-services", "tcp:127.0.0.1:6001", "--host-kms", "tcp:127.0.0.1:6002",
        "--host-wait", "30", "--threads=1",
    ]  # fmt: skip
    assert enclave_argv(1, 2, 3)[-2:] == ["--host-wait", "60"]


def test_program_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Beside this interpreter (a virtual environment's bin/), where the scripts are here.
    assert program_command(HOST) == [str(Path(sys.executable).parent / HOST)]
    # Neither beside it nor on PATH: the edge module.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert program_command(ENCLAVE) == [str(tmp_path / "python"), "-m", "ephemeralml._edge",
                                        "enclave"]  # fmt: skip


def test_program_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EPHEMERALML_BASE_PORT", "7000")
    monkeypatch.setenv("EPHEMERAL_SOMETHING", "x")
    monkeypatch.setenv("UNRELATED", "kept")
    env = program_env(tmp_path)
    assert env["EPHEMERALML_HOME"] == str(tmp_path)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["UNRELATED"] == "kept"
    assert [k for k in env if k.startswith("EPHEMERAL")] == ["EPHEMERALML_HOME"]
