"""A program with no console streams its stderr and exit status to its parent: the
enclave's side (tee, bounded queue) and the host's (one line per record)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeralml.runtime import _logstream
from ephemeralml.runtime._logstream import LogCollector, LogStream
from ephemeralml.runtime._transport import Endpoint
from tests.vectors_path import REPO_ROOT


class Collector:
    """The host's collector on loopback, its event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.collector = LogCollector(Endpoint.parse("127.0.0.1:0"), "enclave")

    def __enter__(self) -> LogCollector:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.collector.start(), self.loop).result(10)
        return self.collector

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.collector.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def collector() -> Iterator[LogCollector]:
    with Collector() as c:
        yield c


def test_the_enclave_program_streams_its_error_and_exit_status(
    collector: LogCollector, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert collector.bound is not None
    done = subprocess.run(
        [sys.executable, "-m", "ephemeralml._edge", "enclave", "--mock", "--home", str(tmp_path),
         "--listen", "127.0.0.1:0", "--host-wait", "0", "--log-to", str(collector.bound)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ephemeral-enclave: error: ")
    # The same line reached the host, then the exit status (bounded wait for the thread).
    for _ in range(100):
        if collector.exits:
            break
        threading.Event().wait(0.05)
    assert (collector.starts, collector.exits, collector.last_exit) == (1, 1, 2)
    got = capsys.readouterr().err.splitlines()
    assert got[0] == "enclave: started"
    assert got[-2:] == [f"enclave: {last}", "enclave: exited with status 2"]


def test_lines_are_cut_and_the_oldest_dropped_when_the_parent_lags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_logstream, "MAX_QUEUED", 3)
    stream = LogStream(Endpoint.parse("127.0.0.1:9"))  # never installed: queue only
    for i in range(5):
        stream._enqueue(f"line {i}")
    stream._enqueue("x" * (_logstream.MAX_LINE_CHARS + 10))
    stream._closing = 1
    stream._starting = True  # what install() sets: the run's first record says it began
    records = [json.loads(r) for r in stream._records()]
    assert records == [
        {"t": "start"},
        {"t": "log", "line": "[3 log lines dropped]"},
        {"t": "log", "line": "line 3"},
        {"t": "log", "line": "line 4"},
        {"t": "log", "line": "x" * _logstream.MAX_LINE_CHARS + " [cut]"},
        {"t": "exit", "code": 1},
    ]


def test_the_collector_takes_only_its_records(collector: LogCollector, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    assert collector.bound is not None
    with socket.create_connection(("127.0.0.1", collector.bound.port), timeout=10) as s:
        s.sendall(
            b'{"t":"start"}\n{"t":"log","line":"fine\\rline"}\nnot json\n{"t":"exit","code":"7"}\n'
            b'{"t":"start","by":"me"}\n{"t":"exit","code":0}\n{"t":"start"}\n{"t":"log","line":"up"}\n'
        )
    for _ in range(100):
        if collector.starts == 2 and collector.exits:
            break
        threading.Event().wait(0.05)
    assert capsys.readouterr().err.splitlines() == [
        "enclave: started",
        "enclave: fine line",
        "enclave: [log stream: a malformed record]",
        "enclave: [log stream: a malformed record]",
        "enclave: [log stream: a malformed record]",
        "enclave: exited with status 0",
        "enclave: started again (restart 1)",
        "enclave: up",
    ]
    assert (collector.starts, collector.restarts, collector.exits, collector.last_exit) == (2, 1, 1, 0)
