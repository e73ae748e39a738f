"""``scripts/bench.py``: bare ONNX Runtime vs the confidential path, side by side.

One run, one process tree, one machine:

* **bare**: :class:`~ephemeralml.enclave._model.Embedder` in this process, on the same
  model and the same sentences (single-sentence latency, then batches of ``c``
  sentences for the throughput at concurrency ``c``);
* **full**: the three real programs in mock mode (``ephemeral-host --mock``, then
  ``ephemeral-enclave --mock``), on loopback with kernel-chosen ports and a private
  ``EPHEMERALML_HOME``, driven by this process as the client (one session for the
  latency, ``c`` sessions in ``c`` threads for the throughput);
* in-memory microbenchmarks of the per-request crypto (both sans-IO state machines,
  no sockets) and of attestation verification (cold and with a chain cache);
* cold start, relay overhead, session setup, memory, 1,000 idle connections, and
  throughput as enclaves are added behind one host (round robin).

Everything is reported side by side, as a table and as JSON (``--json``), with the
targets of the issue evaluated (``MISS`` where one is missed). This is a benchmark,
not a test: it never fails because a number is slow (``--strict`` makes it exit 1).

Every child process is stopped (SIGTERM, then kill) when the run ends, fails or is
interrupted; every wait and loop is bounded. The pure parts (percentiles, log-line
parsing, target evaluation, the table) are at the top and unit-tested.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "CONCURRENCY",
    "SENTENCES",
    "TARGETS",
    "BenchError",
    "evaluate_targets",
    "finalize",
    "format_table",
    "main",
    "parse_loaded_line",
    "percentile",
    "summarize_ms",
]

PROG = "bench"
SCHEMA_VERSION = 1
MODEL = "all-MiniLM-L6-v2"

#: Concurrency levels of the throughput runs (bare: batches of this many sentences).
CONCURRENCY = (1, 4, 16, 64)

#: Short ordinary sentences, 10 to 14 tokens each ([CLS] and [SEP] included).
SENTENCES = (
    "The train to the city leaves every morning at seven.",
    "She bought fresh bread and cheese at the market today.",
    "Our team meeting has been moved to Thursday afternoon.",
    "The weather should be sunny with a light breeze tomorrow.",
    "He forgot his umbrella and got wet on the way home.",
    "Please send me the report before the end of the week.",
    "The children played in the park until it got dark.",
    "This restaurant serves the best pasta in the neighbourhood.",
    "My phone battery dies quickly when the screen is bright.",
    "The library closes early on Sundays and public holidays.",
    "We planted tomatoes and beans in the garden last spring.",
    "The new bridge will open to traffic next month.",
    "I usually drink a cup of tea before going to bed.",
    "The museum has a large collection of old maps.",
    "Traffic was heavy because of an accident on the highway.",
    "Her sister is studying medicine at a university abroad.",
    "The cat sleeps on the sofa most of the afternoon.",
    "They are planning a short trip to the mountains.",
    "The store offers free delivery for orders over fifty dollars.",
    "He practises the piano for an hour every evening.",
    "The printer on the second floor is out of paper.",
    "A good night's sleep helps you think more clearly.",
    "The bus was late again, so I walked to work.",
    "We watched an old film and ate popcorn last night.",
)


class BenchError(Exception):
    """The benchmark could not run (a program did not start, a request failed)."""


# ---------------------------------------------------------------------------
# Pure parts: statistics, log lines, targets, the table
# ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks
    (NumPy's default method). Raises ValueError for no values or q outside 0..100."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100 or math.isnan(q):
        raise ValueError(f"percentile {q} is not in 0..100")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = math.floor(k)
    hi = math.ceil(k)
    if lo == hi:
        return float(xs[lo])
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def summarize_ms(samples_s: Sequence[float]) -> dict[str, float | int]:
    """p50/p95/p99/mean/min/max in milliseconds of samples given in seconds."""
    ms = [s * 1000.0 for s in samples_s]
    return {
        "p50_ms": round(percentile(ms, 50), 4),
        "p95_ms": round(percentile(ms, 95), 4),
        "p99_ms": round(percentile(ms, 99), 4),
        "mean_ms": round(sum(ms) / len(ms), 4),
        "min_ms": round(min(ms), 4),
        "max_ms": round(max(ms), 4),
        "n": len(ms),
    }


_NUM = r"(\d+(?:\.\d+)?)"
_KEY_RELEASE_RE = re.compile(rf"key release {_NUM} ms")
_TRANSFER_RE = re.compile(rf"{_NUM} MB fetched and decrypted in {_NUM} ms")
_ONNX_LOAD_RE = re.compile(rf"ONNX Runtime load {_NUM} ms")
_LOADED_RE = re.compile(r"ephemeral-enclave: loaded (\S+)")
#: The enclave's "serving" line; group 1 is its port.
SERVING_RE = r"serving\b.*\bon tcp:127\.0\.0\.1:(\d+)"
#: The host's lines; group 1 is the port.
HOST_RELAY_RE = r"relaying tcp:127\.0\.0\.1:(\d+)"
HOST_SERVICES_RE = r"credentials for the enclave on tcp:127\.0\.0\.1:(\d+)"
HOST_KMS_RE = r"KMS forwarder tcp:127\.0\.0\.1:(\d+)"


def parse_loaded_line(line: str) -> dict[str, Any] | None:
    """The enclave's "loaded MODEL (...): key release N ms, X MB fetched and decrypted
    in N ms, ONNX Runtime load N ms" line, as numbers; ``None`` if it is not one.

    Each part is read on its own, so a part missing from a changed format is ``None``
    rather than the whole line being lost.
    """
    m = _LOADED_RE.search(line)
    if m is None:
        return None
    out: dict[str, Any] = {
        "model": m.group(1),
        "key_release_ms": None,
        "mb": None,
        "fetch_decrypt_ms": None,
        "onnx_load_ms": None,
    }
    if k := _KEY_RELEASE_RE.search(line):
        out["key_release_ms"] = float(k.group(1))
    if t := _TRANSFER_RE.search(line):
        out["mb"] = float(t.group(1))
        out["fetch_decrypt_ms"] = float(t.group(2))
    if o := _ONNX_LOAD_RE.search(line):
        out["onnx_load_ms"] = float(o.group(1))
    return out


def find_port(lines: Sequence[str], pattern: str) -> int:
    """The port in group 1 of the first line matching ``pattern``."""
    rx = re.compile(pattern)
    for line in lines:
        if m := rx.search(line):
            return int(m.group(1))
    raise BenchError(f"no line matches {pattern!r}:\n{''.join(lines)[-2000:]}")


def transfer_mb_s(mb: float | None, ms: float | None) -> float | None:
    """MB/s of a fetch+decrypt from the enclave's loaded line (None if unknown)."""
    if mb is None or ms is None:
        return None
    # The line rounds to whole ms: 0 ms means "under half a millisecond".
    return round(mb / (max(ms, 0.5) / 1000.0), 1)


def _get(r: Mapping[str, Any], path: str) -> Any:
    """``r["a"]["b"]`` for path "a.b"; None where any step is missing."""
    cur: Any = r
    for part in path.split("."):
        if not isinstance(cur, Mapping) or cur.get(part) is None:
            return None
        cur = cur[part]
    return cur


@dataclass(frozen=True)
class Target:
    """One target of the issue: ``measured`` (a result path) against a bound."""

    name: str
    what: str  # the line in the table
    rule: str  # the target in words
    measured: str  # path in the result
    unit: str
    bound: Callable[[Mapping[str, Any]], float | None]
    higher_is_better: bool = False


def _fixed(v: float) -> Callable[[Mapping[str, Any]], float]:
    return lambda r: v


def _latency_bound(r: Mapping[str, Any]) -> float | None:
    bare = _get(r, "bare.p50_ms")
    return None if bare is None else 1.3 * bare + 1.0


def _throughput_bound(r: Mapping[str, Any]) -> float | None:
    bare = _get(r, "bare.throughput.16")
    return None if bare is None else 0.7 * bare


TARGETS: tuple[Target, ...] = (
    Target(
        "latency_p50", "single-request p50, full path", "≤ 1.3 × bare p50 + 1 ms",
        "full.p50_ms", "ms", _latency_bound,
    ),
    Target(
        "throughput_16", "throughput at 16 sessions", "≥ 70 % of bare batched (batch 16)",
        "full.throughput.16", "inferences/s", _throughput_bound, higher_is_better=True,
    ),
    Target(
        "crypto", "crypto per request (seal+open+sign+verify)", "≤ 0.3 ms",
        "crypto_ms", "ms", _fixed(0.3),
    ),
    Target(
        "attestation_verify", "attestation verification, cold", "≤ 3 ms",
        "attestation_verify_ms", "ms", _fixed(3.0),
    ),
    Target(
        "attestation_verify_cached", "attestation verification, cached chain", "≤ 1 ms",
        "attestation_verify_cached_ms", "ms", _fixed(1.0),
    ),
    Target(
        "session_setup", "session setup (connect + close)", "≤ 15 ms",
        "session_setup_ms", "ms", _fixed(15.0),
    ),
    Target(
        "cold_start", "cold start, spawn → serving", "≤ 3 s", "cold_start_s", "s", _fixed(3.0),
    ),
    Target(
        "relay_overhead", "host relay overhead (p50 via host − direct)", "≤ 0.3 ms",
        "relay_overhead_ms", "ms", _fixed(0.3),
    ),
    Target(
        "host_idle_1000", "host RSS with 1000 idle connections", "≤ 200 MB",
        "host_idle_1000_rss_mb", "MB", _fixed(200.0),
    ),
    Target(
        "model_transfer", "model transfer store → host → enclave, decrypted", "≥ 200 MB/s",
        "model_transfer_mb_s", "MB/s", _fixed(200.0), higher_is_better=True,
    ),
)  # fmt: skip


def evaluate_targets(r: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: {"target", "measured", "ok", "rule", "unit"}}; ``ok`` is None where
    either side is unknown (a section that did not run or failed)."""
    out: dict[str, dict[str, Any]] = {}
    for t in TARGETS:
        measured = _get(r, t.measured)
        bound = t.bound(r)
        ok: bool | None
        if measured is None or bound is None:
            ok = None
        else:
            ok = measured >= bound if t.higher_is_better else measured <= bound
        out[t.name] = {
            "target": None if bound is None else round(bound, 4),
            "measured": measured,
            "ok": ok,
            "rule": t.rule,
            "unit": t.unit,
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def finalize(r: dict[str, Any]) -> dict[str, Any]:
    """Add the derived parts to a result: ratios full/bare, targets and a verdict."""
    ratios: dict[str, Any] = {}
    for k in ("p50_ms", "p95_ms", "p99_ms"):
        ratios[k.removesuffix("_ms")] = _ratio(_get(r, f"full.{k}"), _get(r, f"bare.{k}"))
    ratios["throughput"] = {
        str(c): _ratio(_get(r, f"full.throughput.{c}"), _get(r, f"bare.throughput.{c}"))
        for c in CONCURRENCY
    }
    r["ratios"] = ratios
    r["targets"] = evaluate_targets(r)
    missed = [k for k, v in r["targets"].items() if v["ok"] is False]
    unknown = [k for k, v in r["targets"].items() if v["ok"] is None]
    r["summary"] = {
        "missed": missed,
        "not_measured": unknown,
        "all_met": not missed and not unknown,
    }
    return r


def _f(v: Any, digits: int = 2, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float | int):
        return f"{v:,.{digits}f}{unit}"
    return str(v)


def format_table(r: Mapping[str, Any]) -> str:
    """The human-readable report of a finalized result."""
    m = r.get("machine") or {}
    lines: list[str] = []
    add = lines.append
    add(
        f"ephemeralml benchmark ({r.get('mode', '?')}): {r.get('model', MODEL)}, "
        f"{m.get('cpu_count', '?')} cores ({m.get('affinity', '?')} usable), "
        f"Python {m.get('python', '?')}, ONNX Runtime {m.get('onnxruntime', '?')}, "
        f"commit {(r.get('git') or {}).get('commit_short') or 'n/a'}"
    )
    extra = _get(r, "plan.enclave_args")
    if extra:
        add(f"enclave flags: {' '.join(extra)}")
    inp = r.get("inputs") or {}
    add(
        f"inputs: {inp.get('sentences', '?')} sentences, "
        f"{_f(inp.get('mean_tokens'), 1)} tokens on average ([CLS]/[SEP] included)"
    )
    add("")
    head = f"{'bare ORT':>10}{'full path':>12}{'full/bare':>11}"
    add(f"{'Latency, one request of one sentence':<38}{head}{'direct to enclave':>20}")
    for k in ("p50", "p95", "p99"):
        add(
            f"{'  ' + k + ' ms':<38}{_f(_get(r, f'bare.{k}_ms')):>10}"
            f"{_f(_get(r, f'full.{k}_ms')):>12}"
            f"{_f(_get(r, f'ratios.{k}'), 2, '×'):>11}"
            f"{_f(_get(r, f'direct.{k}_ms')):>20}"
        )
    add("")
    add(f"{'Throughput, inferences/s':<38}{head}   cores used (full: host/enclave/client)")
    for c in CONCURRENCY:
        cpu = _get(r, f"full.cpu_cores.{c}") or {}
        cores = (
            f"{_f(cpu.get('host'))}/{_f(cpu.get('enclave'))}/{_f(cpu.get('client'))}"
            if cpu
            else "n/a"
        )
        add(
            f"{f'  c={c} (bare: batch of {c})':<38}"
            f"{_f(_get(r, f'bare.throughput.{c}'), 0):>10}"
            f"{_f(_get(r, f'full.throughput.{c}'), 0):>12}"
            f"{_f(_get(r, f'ratios.throughput.{c}'), 2, '×'):>11}   {cores}"
        )
    bare_cores = _get(r, "bare.cpu_cores") or {}
    if bare_cores:
        add(
            "  bare ORT cores used per batch size: "
            + ", ".join(f"{k}: {_f(v)}" for k, v in bare_cores.items())
        )
    per = _get(r, "full.throughput_detail.16.cpu_ms_per_request") or {}
    bare16 = _get(r, "bare.throughput.16")
    if per and bare_cores.get("16") is not None and bare16:
        add(
            f"  CPU ms per inference at c=16: host {_f(per.get('host'), 3)}, enclave "
            f"{_f(per.get('enclave'), 3)}, client {_f(per.get('client'), 3)}; "
            f"bare ORT (batch of 16) {_f(1000 * bare_cores['16'] / bare16, 3)}"
        )
    add("")
    parts = r.get("crypto_parts_ms") or {}
    add(
        f"Crypto per request (in memory, 1×384 float32): {_f(r.get('crypto_ms'), 3)} ms "
        f"(seal request {_f(parts.get('seal_request'), 3)}, open request "
        f"{_f(parts.get('open_request'), 3)}, sign receipt + seal response "
        f"{_f(parts.get('respond'), 3)}, open response + verify receipt "
        f"{_f(parts.get('open_verify'), 3)}; alone: sign {_f(parts.get('sign_receipt'), 3)}, "
        f"verify {_f(parts.get('verify_receipt'), 3)})"
    )
    add(
        f"Attestation verification: cold {_f(r.get('attestation_verify_ms'), 3)} ms, "
        f"cached chain {_f(r.get('attestation_verify_cached_ms'), 3)} ms "
        f"(mock NSM makes a document in {_f(r.get('attestation_doc_create_ms'), 3)} ms)"
    )
    modes = r.get("session_setup_by_mode_ms") or {}
    add(
        f"Session setup (connect + close via host, p50, {r.get('session_setup_mode', 'fresh')}"
        f" mode): {_f(r.get('session_setup_ms'))} ms (p95 {_f(_get(r, 'session_setup.p95_ms'))}"
        " ms)"
        + ("; by mode: " + ", ".join(f"{k} {_f(v)} ms" for k, v in modes.items()) if modes else "")
    )
    add(f"Relay overhead (p50 via host − p50 direct): {_f(r.get('relay_overhead_ms'), 3)} ms")
    cs = r.get("cold_start") or {}
    add(
        f"Cold start (spawn → serving): {_f(r.get('cold_start_s'))} s: key release "
        f"{_f(cs.get('key_release_ms'), 0)} ms, {_f(cs.get('mb'), 1)} MB fetched and decrypted "
        f"in {_f(cs.get('fetch_decrypt_ms'), 0)} ms ({_f(r.get('model_transfer_mb_s'), 0)} MB/s), "
        f"ONNX Runtime load {_f(cs.get('onnx_load_ms'), 0)} ms, the rest (interpreter, imports, "
        f"NSM, credentials) {_f(cs.get('other_ms'), 0)} ms"
    )
    peak = r.get("peak_rss_mb") or {}
    add(
        f"Peak RSS: host {_f(peak.get('host'), 0)} MB, enclave {_f(peak.get('enclave'), 0)} MB, "
        f"bench process (client + bare ORT) {_f(peak.get('bench'), 0)} MB"
    )
    idle = r.get("idle") or {}
    add(
        f"{idle.get('connections', 1000)} idle connections: host "
        f"{_f(r.get('host_idle_1000_rss_mb'), 0)} MB RSS "
        f"(from {_f(idle.get('host_before_mb'), 0)}), "
        f"enclave {_f(idle.get('enclave_after_mb'), 0)} MB (from "
        f"{_f(idle.get('enclave_before_mb'), 0)}, it holds a session per connection)"
    )
    scaling = r.get("scaling") or {}
    if scaling:
        add(
            f"Scaling, {r.get('scaling_concurrency', 16)} sessions round robin: "
            + ", ".join(
                f"{n} enclave{'s' if n != '1' else ''} {_f(v, 0)}/s" for n, v in scaling.items()
            )
        )
    add("")
    add("Targets")
    for name, t in (r.get("targets") or {}).items():
        verdict = {True: "ok  ", False: "MISS", None: "n/a "}[t["ok"]]
        what = next((x.what for x in TARGETS if x.name == name), name)
        add(
            f"  {verdict}  {what:<46} {_f(t['measured'], 3):>10} {t['unit']:<13}"
            f" target {t['rule']} (= {_f(t['target'], 3)})"
        )
    summary = r.get("summary") or {}
    if summary.get("missed"):
        add(f"MISSED: {', '.join(summary['missed'])} (see docs/benchmarks.md for why)")
    for note in r.get("notes") or []:
        add(f"note: {note}")
    if r.get("duration_s") is not None:
        add(f"run took {_f(r['duration_s'], 1)} s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Child programs
# ---------------------------------------------------------------------------

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


def _say(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


@dataclass
class Program:
    """A child program whose stderr lines are collected (with arrival times)."""

    name: str
    proc: subprocess.Popen[str]
    spawned: float  # time.monotonic() just before Popen
    lines: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _eof: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self.times.append(time.monotonic())
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(
        self, pattern: str, timeout: float = START_TIMEOUT_S
    ) -> tuple[re.Match[str], float]:
        """The first line matching ``pattern`` and when it arrived; raises if the
        program exits or ``timeout`` passes first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = 0
        with self._cond:
            while True:
                while i < len(self.lines):
                    if m := rx.search(self.lines[i]):
                        return m, self.times[i]
                    i += 1
                if self._eof:
                    code = self.proc.wait(timeout=STOP_TIMEOUT_S)
                    raise BenchError(f"{self.name} exited {code}:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"{self.name}: no line matching {pattern!r} within {timeout:.0f} s:\n"
                        f"{self.tail()}"
                    )
                self._cond.wait(timeout=min(left, 1.0))

    def tail(self, n: int = 20) -> str:
        return "".join(self.lines[-n:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=timeout)
        return self.proc.returncode


def _program_cmd(script: str, module: str) -> list[str]:
    exe = Path(sys.executable).parent / script
    if exe.exists():
        return [str(exe)]
    found = shutil.which(script)
    if found:
        return [found]
    return [sys.executable, "-m", "ephemeralml._edge", module]


def program_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERAL")}
    env["EPHEMERALML_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Children:
    """Every program this run started; :meth:`stop_all` stops them, last first."""

    def __init__(self) -> None:
        self.programs: list[Program] = []
        self.exit_codes: dict[str, int | None] = {}
        #: CPU seconds each program had used when it was stopped.
        self.cpu_s: dict[str, float | None] = {}

    def start(self, name: str, cmd: list[str], env: Mapping[str, str]) -> Program:
        spawned = time.monotonic()
        proc = subprocess.Popen(
            cmd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, errors="replace",
        )  # fmt: skip
        prog = Program(name, proc, spawned)
        self.programs.append(prog)
        threading.Thread(target=prog._pump, name=f"pump-{name}", daemon=True).start()
        return prog

    def stop(self, prog: Program) -> int | None:
        self.cpu_s[prog.name] = proc_cpu_s(prog.pid)
        code = prog.stop()
        self.exit_codes[prog.name] = code
        with contextlib.suppress(ValueError):
            self.programs.remove(prog)
        return code

    def stop_all(self) -> None:
        for prog in reversed(list(self.programs)):
            with contextlib.suppress(Exception):
                self.stop(prog)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HostInfo:
    prog: Program
    port: int
    services: int
    kms: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_host(children: Children, name: str, home: Path, enclave_ports: Sequence[int]) -> HostInfo:
    cmd = [
        *_program_cmd("ephemeral-host", "host"), "--mock",
        "--listen", "127.0.0.1:0", "--services-listen", "127.0.0.1:0",
        "--kms-listen", "127.0.0.1:0", "--mock-kms-listen", "127.0.0.1:0",
    ]  # fmt: skip
    for p in enclave_ports:
        cmd += ["--enclave", f"tcp:127.0.0.1:{p}"]
    prog = children.start(name, cmd, program_env(home))
    m, _ = prog.wait_for(HOST_RELAY_RE)
    return HostInfo(
        prog,
        int(m.group(1)),
        find_port(prog.lines, HOST_SERVICES_RE),
        find_port(prog.lines, HOST_KMS_RE),
    )


@dataclass
class EnclaveInfo:
    prog: Program
    port: int
    cold_start: dict[str, Any]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_enclave(
    children: Children,
    name: str,
    home: Path,
    host: HostInfo,
    port: int = 0,
    extra_args: Sequence[str] = (),
) -> EnclaveInfo:
    cmd = [
        *_program_cmd("ephemeral-enclave", "enclave"), "--mock",
        "--listen", f"127.0.0.1:{port}",
        "--host-services", f"tcp:127.0.0.1:{host.services}",
        "--host-kms", f"tcp:127.0.0.1:{host.kms}", "--host-wait", "60",
        *extra_args,
    ]  # fmt: skip
    prog = children.start(name, cmd, program_env(home))
    m, t_serving = prog.wait_for(SERVING_RE)
    loaded = next((x for x in map(parse_loaded_line, prog.lines) if x is not None), None)
    cold: dict[str, Any] = {"total_s": round(t_serving - prog.spawned, 3)}
    cold.update(loaded or {"key_release_ms": None, "mb": None, "fetch_decrypt_ms": None,
                           "onnx_load_ms": None})  # fmt: skip
    known = [cold.get(k) for k in ("key_release_ms", "fetch_decrypt_ms", "onnx_load_ms")]
    parts = [float(v) for v in known if v is not None]
    cold["other_ms"] = (
        round(1000 * cold["total_s"] - sum(parts), 0) if len(parts) == len(known) else None
    )
    return EnclaveInfo(prog, int(m.group(1)), cold)


# ---------------------------------------------------------------------------
# /proc readings
# ---------------------------------------------------------------------------


def proc_status_mb(pid: int | str, key: str) -> float | None:
    """A "VmRSS"/"VmHWM" line of /proc/PID/status in MB (None where unreadable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return round(int(m.group(1)) / 1024, 1) if m else None


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_stat() -> list[int] | None:
    """The machine's "cpu" line of /proc/stat: jiffies per state."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return [int(x) for x in line.split()[1:]]


def cpu_usage(before: list[int] | None, after: list[int] | None) -> dict[str, Any]:
    """Share of the machine's CPU time busy and stolen between two readings, and the
    busy CPU seconds."""
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return {}
    d = [a - b for a, b in zip(after, before, strict=False)]
    total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal
    busy = total - d[3] - d[4] - d[7]
    return {
        "busy_fraction": round(busy / total, 3),
        "steal_fraction": round(d[7] / total, 3),
        "busy_cpu_s": round(busy / _CLK_TCK, 2),
    }


def thread_count() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much work each section does (--quick or full)."""

    mode: str
    latency_n: int
    warmup: int
    throughput_total: int  # requests (sentences) per concurrency level
    setup_n: int
    crypto_n: int
    attest_n: int
    idle_connections: int
    max_enclaves: int
    rounds: int  # latency: interleaved blocks of bare / via host / direct
    reps: int  # throughput and scaling: repetitions, the median is reported
    scaling_concurrency: int = 16
    enclave_args: tuple[str, ...] = ()  # extra flags for every ephemeral-enclave


QUICK = Plan("quick", latency_n=300, warmup=30, throughput_total=384, setup_n=40,
             crypto_n=1000, attest_n=200, idle_connections=1000, max_enclaves=2,
             rounds=10, reps=3)  # fmt: skip
FULL = Plan("full", latency_n=2000, warmup=100, throughput_total=2048, setup_n=200,
            crypto_n=5000, attest_n=1000, idle_connections=1000, max_enclaves=3,
            rounds=20, reps=5)  # fmt: skip


def _sentence(i: int) -> str:
    return SENTENCES[i % len(SENTENCES)]


class Bare:
    """The bare baseline: the enclave's own :class:`Embedder`, in this process."""

    def __init__(self) -> None:
        from ephemeralml.client._modeldir import default_model_files
        from ephemeralml.enclave._model import Embedder

        files = default_model_files()
        threads_before = thread_count()
        t0 = time.perf_counter()
        self.embedder: Any = Embedder(files)
        self.load_s = round(time.perf_counter() - t0, 3)
        threads_after = thread_count()
        self.ort_threads_started = (
            threads_after - threads_before
            if threads_before is not None and threads_after is not None
            else None
        )
        tokenizer = getattr(self.embedder, "_tokenizer", None)
        self.tokens = (
            [len(tokenizer.encode(s).ids) for s in SENTENCES] if tokenizer is not None else []
        )

    def embed(self, texts: list[str]) -> Any:
        return self.embedder.embed(texts)

    def throughput(self, c: int, total: int) -> dict[str, Any]:
        """Batches of ``c`` sentences, ``total`` sentences in all: sentences/s."""
        batches = max(1, total // c)
        _settle()
        self.embedder.embed([_sentence(i) for i in range(c)])  # warm this shape
        cpu0, t0 = self_cpu_s(), time.perf_counter()
        for b in range(batches):
            self.embedder.embed([_sentence(b * c + i) for i in range(c)])
        wall = time.perf_counter() - t0
        return {
            "ips": round(batches * c / wall, 1),
            "cores": round((self_cpu_s() - cpu0) / wall, 2),
        }

    def close(self) -> None:
        self.embedder = None
        gc.collect()


def bench_crypto(plan: Plan, state_dir: Path) -> dict[str, Any]:
    """Per-request crypto through both sans-IO state machines, in memory."""
    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ephemeralml.common._attestation import (
        AttestationPolicy,
        PcrAllowlist,
        TrustedRoot,
        parse_unverified,
    )
    from ephemeralml.common._messages import EmbedRequest, EmbedResult
    from ephemeralml.common._receipt import (
        ReceiptExpectations,
        sign_receipt,
        verify_receipt,
    )
    from ephemeralml.common._session import (
        Attested,
        ClientSession,
        EnclaveIdentity,
        EnclaveSession,
        HelloReceived,
        RequestReceived,
        ResponseReceived,
    )
    from ephemeralml.mock._nsm import MockNsm, mock_measurements

    model_digest = hashlib.sha256(b"bench model manifest").digest()
    pcrs = mock_measurements(
        code_digest=hashlib.sha384(b"bench code").digest(),
        model_digest=model_digest,
        runtime_id="bench",
    )
    nsm = MockNsm.load_or_create(state_dir, pcrs)
    identity = EnclaveIdentity(
        receipt_key=Ed25519PrivateKey.generate(),
        models={MODEL: model_digest},
        key_releases={MODEL: hashlib.sha256(b"bench key release").digest()},
        policy_version=1,
        mode="mock",
        pcrs={i: nsm.describe_pcr(i) for i in range(16)},
    )
    policy = AttestationPolicy(
        TrustedRoot.unsafe_mock(nsm.root_certificate_der),
        PcrAllowlist([{i: pcrs[i] for i in (0, 1, 2)}]),
    )
    client = ClientSession(policy)
    enclave = EnclaveSession(identity)
    enclave.receive_data(client.hello())
    hello = enclave.next_event()
    assert isinstance(hello, HelloReceived)
    doc = nsm.get_attestation_doc(
        public_key=enclave.public_key, user_data=enclave.binding.to_cbor(), nonce=hello.nonce
    )
    client.receive_data(enclave.attest(doc, timestamp_ms=parse_unverified(doc).timestamp_ms))
    attested = client.next_event(now=datetime.now(UTC))
    assert isinstance(attested, Attested)
    enclave.receive_data(client.data_to_send())

    vec = np.random.default_rng(0).standard_normal((1, 384)).astype("<f4")
    vec /= np.linalg.norm(vec)
    result = EmbedResult(MODEL, 384, 1, vec.tobytes())
    parts: dict[str, list[float]] = {
        k: [] for k in ("seal_request", "open_request", "respond", "open_verify")
    }
    totals: list[float] = []
    last_receipt: Any = None
    clock = time.perf_counter
    for i in range(plan.crypto_n + 50):
        request = EmbedRequest(MODEL, (_sentence(i),))
        now_ms = int(time.time() * 1000)
        now = datetime.now(UTC)
        t0 = clock()
        _, frame = client.send_request(request)
        t1 = clock()
        enclave.receive_data(frame)
        ev = enclave.next_event()
        t2 = clock()
        assert isinstance(ev, RequestReceived)
        out = enclave.respond(ev, result, model_digest=model_digest, time_ms=now_ms,
                              duration_us=2000)  # fmt: skip
        t3 = clock()
        client.receive_data(out)
        resp = client.next_event(now=now)
        t4 = clock()
        assert isinstance(resp, ResponseReceived)
        if i < 50:  # warm-up
            continue
        last_receipt = resp.receipt
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            v_ms = v * 1000
            parts[k].append(v_ms)
        totals.append((t4 - t0) * 1000)

    # Sign and verify alone, on the last receipt of the loop.
    receipt = last_receipt.receipt
    raw = last_receipt.raw
    expect = ReceiptExpectations(seq=receipt.seq, model_id=MODEL)
    sign_ms, verify_ms = [], []
    for _ in range(max(200, plan.crypto_n // 5)):
        t0 = clock()
        sign_receipt(receipt, identity.receipt_key)
        t1 = clock()
        verify_receipt(raw, attested.attestation, expect=expect)
        t2 = clock()
        sign_ms.append((t1 - t0) * 1000)
        verify_ms.append((t2 - t1) * 1000)
    med = {k: round(percentile(v, 50), 4) for k, v in parts.items()}
    med["sign_receipt"] = round(percentile(sign_ms, 50), 4)
    med["verify_receipt"] = round(percentile(verify_ms, 50), 4)
    return {
        "crypto_ms": round(percentile(totals, 50), 4),
        "crypto_p95_ms": round(percentile(totals, 95), 4),
        "crypto_enclave_ms": round(med["open_request"] + med["respond"], 4),
        "crypto_client_ms": round(med["seal_request"] + med["open_verify"], 4),
        "crypto_parts_ms": med,
        "crypto_n": len(totals),
    }


def bench_attestation(plan: Plan, state_dir: Path) -> dict[str, Any]:
    """verify_attestation of mock documents: cold, and with a chain cache if there is one."""
    from ephemeralml.common import _attestation as att
    from ephemeralml.mock._nsm import MockNsm, mock_measurements

    pcrs = mock_measurements(
        code_digest=hashlib.sha384(b"bench code").digest(),
        model_digest=hashlib.sha256(b"bench model manifest").digest(),
        runtime_id="bench",
    )
    nsm = MockNsm.load_or_create(state_dir, pcrs)
    policy = att.AttestationPolicy(
        att.TrustedRoot.unsafe_mock(nsm.root_certificate_der),
        att.PcrAllowlist([{i: pcrs[i] for i in (0, 1, 2)}]),
    )
    docs: list[tuple[bytes, bytes]] = []
    create_ms = []
    for _ in range(20):
        nonce = secrets.token_bytes(32)
        t0 = time.perf_counter()
        raw = nsm.get_attestation_doc(
            public_key=secrets.token_bytes(32), user_data=secrets.token_bytes(200), nonce=nonce
        )
        create_ms.append((time.perf_counter() - t0) * 1000)
        docs.append((raw, nonce))

    def run(n: int, **kw: Any) -> list[float]:
        samples = []
        for i in range(n):
            raw, nonce = docs[i % len(docs)]
            now = datetime.now(UTC)
            t0 = time.perf_counter()
            att.verify_attestation(raw, policy, now=now, nonce=nonce, **kw)
            samples.append((time.perf_counter() - t0) * 1000)
        return samples

    run(20)  # warm-up (imports, OpenSSL tables)
    cold = run(plan.attest_n)
    out: dict[str, Any] = {
        "attestation_verify_ms": round(percentile(cold, 50), 4),
        "attestation_verify_p95_ms": round(percentile(cold, 95), 4),
        "attestation_doc_create_ms": round(percentile(create_ms, 50), 4),
        "attestation_verify_cached_ms": None,
    }
    notes = []
    if hasattr(att, "ChainCache"):
        try:
            cache = att.ChainCache()
            run(len(docs), chain_cache=cache)  # fill it (all documents share one chain)
            cached = run(plan.attest_n, chain_cache=cache)
            out["attestation_verify_cached_ms"] = round(percentile(cached, 50), 4)
            out["attestation_verify_cached_p95_ms"] = round(percentile(cached, 95), 4)
            hits = getattr(cache, "hits", None)
            if hits is not None:
                out["attestation_cache_hits"] = hits
        except TypeError as e:
            notes.append(f"ChainCache exists but not with the API the benchmark expects: {e}")
    else:
        notes.append(
            "attestation_verify_cached_ms is null: common._attestation has no ChainCache yet"
        )
    out["_notes"] = notes
    return out


def _policy(home: Path) -> Any:
    from ephemeralml.client._policy import ClientPolicy

    return ClientPolicy.unsafe_mock(home, warn=False)


def _sequential_latency(
    calls: Mapping[str, Callable[[list[str]], Any]], n: int, warmup: int, rounds: int
) -> dict[str, list[float]]:
    """``n`` sequential one-sentence calls of each of ``calls``, interleaved in
    ``rounds`` blocks (the order rotating), so that drift hits each of them alike."""
    for call in calls.values():
        for i in range(warmup):
            call([_sentence(i)])
    samples: dict[str, list[float]] = {k: [] for k in calls}
    per_round = max(1, n // rounds)
    order = list(calls.items())
    clock = time.perf_counter
    for r in range(rounds):
        k0 = r % len(order)
        for k, call in order[k0:] + order[:k0]:
            lat = samples[k]
            _settle()
            for i in range(SETTLE_CALLS):
                call([_sentence(i)])
            for i in range(per_round):
                text = [_sentence(r * per_round + i)]
                t0 = clock()
                call(text)
                lat.append(clock() - t0)
    return samples


#: Pause between measured blocks, and unmeasured calls at the start of each. ONNX
#: Runtime's worker threads spin for a while after each run (session option
#: ``session.intra_op.allow_spinning``, on by default), so the first tens of ms
#: after one block finishes still belong to it: without the pause, whichever side
#: ran last taxes the next (measured: ~15 slow calls of 4-11 ms after each switch).
SETTLE_S = 0.1
SETTLE_CALLS = 3


def _settle() -> None:
    time.sleep(SETTLE_S)


def _round_p50s(samples_s: Sequence[float], rounds: int) -> list[float]:
    """p50 in ms of each of ``rounds`` consecutive equal chunks (drift shows here)."""
    per = max(1, len(samples_s) // rounds)
    chunks = [samples_s[i : i + per] for i in range(0, per * rounds, per)]
    return [round(percentile(c, 50) * 1000, 3) for c in chunks if c]


def session_modes() -> list[str]:
    """The session modes this client offers (``["fresh", "cached"]``), or ``[]`` when
    :func:`connect` has no ``session_mode`` (then only its default is measured)."""
    import inspect

    from ephemeralml.client._api import connect
    from ephemeralml.common._messages import ClientHello

    if "session_mode" not in inspect.signature(connect).parameters:
        return []
    return sorted((str(m) for m in getattr(ClientHello, "MODES", ())), key=lambda m: m != "fresh")


def _session_setup(address: str, policy: Any, n: int, mode: str | None = None) -> list[float]:
    """``n`` times connect + close; ``mode`` None is the client's default."""
    from ephemeralml.client._api import connect

    for _ in range(3):  # warm-up (in cached mode: the enclave's first document)
        connect(address, policy=policy, session_mode=mode).close()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        s = connect(address, policy=policy, session_mode=mode)
        s.close()
        samples.append(time.perf_counter() - t0)
    return samples


def _throughput(
    address: str, policy: Any, c: int, total: int, pids: Mapping[str, Sequence[int]]
) -> dict[str, Any]:
    """``c`` sessions in ``c`` threads, ``total // c`` one-sentence requests each,
    all opened and warmed before the clock starts."""
    from ephemeralml.client._api import connect

    per = max(1, total // c)
    sessions = []
    try:
        for _ in range(c):
            sessions.append(connect(address, policy=policy))
        for i, s in enumerate(sessions):
            s.embed([_sentence(i)])
        _settle()
        barrier = threading.Barrier(c + 1, timeout=60)
        latencies: list[list[float]] = [[] for _ in range(c)]
        errors: list[BaseException] = []

        def work(k: int) -> None:
            s = sessions[k]
            lat = latencies[k]
            try:
                barrier.wait()
                for i in range(per):
                    text = [_sentence(k * per + i)]
                    t0 = time.perf_counter()
                    s.embed(text)
                    lat.append(time.perf_counter() - t0)
            except BaseException as e:  # reported below; a thread must not die silently
                errors.append(e)

        threads = [
            threading.Thread(target=work, args=(k,), name=f"bench-{k}", daemon=True)
            for k in range(c)
        ]
        for t in threads:
            t.start()
        cpu0 = {name: [proc_cpu_s(p) for p in ps] for name, ps in pids.items()}
        self0 = self_cpu_s()
        barrier.wait()
        t0 = time.perf_counter()
        deadline = time.monotonic() + 300
        for t in threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        wall = time.perf_counter() - t0
        if any(t.is_alive() for t in threads):
            raise BenchError(f"throughput at {c} sessions did not finish within 300 s")
        if errors:
            raise BenchError(f"throughput at {c} sessions: {errors[0]!r}") from errors[0]
        cores: dict[str, float | None] = {}
        for name, ps in pids.items():
            after = [proc_cpu_s(p) for p in ps]
            spent = [
                a - b
                for a, b in zip(after, cpu0[name], strict=True)
                if a is not None and b is not None
            ]
            cores[name] = round(sum(spent) / wall, 2) if spent else None
        cores["client"] = round((self_cpu_s() - self0) / wall, 2)
        flat = [x for lat in latencies for x in lat]
        return {
            "ips": round(len(flat) / wall, 1),
            "wall_s": round(wall, 3),
            "requests": len(flat),
            "latency": summarize_ms(flat),
            "cores": cores,
            "cpu_ms_per_request": {
                k: None if v is None else round(v * wall * 1000 / len(flat), 3)
                for k, v in cores.items()
            },
        }
    finally:
        for s in sessions:
            s.close()


def _idle_connections(
    host: HostInfo, enclave_pids: Sequence[int], n: int, timeout: float = 60.0
) -> dict[str, Any]:
    """Open ``n`` idle TCP connections to the host; its RSS (and the enclaves')."""
    host_fds0 = fd_count(host.prog.pid) or 0
    enc_fds0 = sum(fd_count(p) or 0 for p in enclave_pids)
    out: dict[str, Any] = {
        "connections": n,
        "host_before_mb": proc_status_mb(host.prog.pid, "VmRSS"),
        "enclave_before_mb": sum(proc_status_mb(p, "VmRSS") or 0 for p in enclave_pids),
    }
    socks: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            s = socket.create_connection(("127.0.0.1", host.port), timeout=10)
            socks.append(s)
        # Each relayed connection is two sockets in the host and one in the enclave.
        while time.monotonic() < deadline:
            h = (fd_count(host.prog.pid) or 0) - host_fds0
            e = sum(fd_count(p) or 0 for p in enclave_pids) - enc_fds0
            if h >= 2 * len(socks) and e >= len(socks):
                break
            time.sleep(0.1)
        time.sleep(0.5)  # let allocations settle
        out["opened"] = len(socks)
        out["host_fds_added"] = (fd_count(host.prog.pid) or 0) - host_fds0
        out["enclave_fds_added"] = sum(fd_count(p) or 0 for p in enclave_pids) - enc_fds0
        out["host_after_mb"] = proc_status_mb(host.prog.pid, "VmRSS")
        out["enclave_after_mb"] = sum(proc_status_mb(p, "VmRSS") or 0 for p in enclave_pids)
        if out["host_after_mb"] is not None and out["host_before_mb"] is not None and socks:
            out["host_kb_per_connection"] = round(
                (out["host_after_mb"] - out["host_before_mb"]) * 1024 / len(socks), 1
            )
        return out
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


def _raise_fd_limit(want: int) -> dict[str, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft2, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"before": soft, "after": soft2, "hard": hard}


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": None,
        "memory_gb": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": None,
    }
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        info["cpu_model"] = m.group(1).strip() if m else None
    with contextlib.suppress(OSError):
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        info["memory_gb"] = round(int(m.group(1)) / 1024**2, 1) if m else None
    with contextlib.suppress(ImportError):
        info["onnxruntime"] = importlib.import_module("onnxruntime").__version__
    info["versions"] = {
        d: _version(d)
        for d in (
            "ephemeralml",
            "onnxruntime",
            "numpy",
            "tokenizers",
            "cryptography",
            "pyhpke",
            "cbor2",
        )
    }
    return info


def git_info() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    out: dict[str, Any] = {"commit": None, "commit_short": None, "dirty": None}
    if not (root / ".git").exists() or shutil.which("git") is None:
        return out
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        out["commit"] = head or None
        out["commit_short"] = head[:10] or None
        status = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        out["dirty"] = bool(status.strip())
    return out


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


class _Stages:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.durations: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        _say(f"[{time.monotonic() - self.t0:6.1f} s] {what}")
        t = time.monotonic()
        try:
            yield
        finally:
            self.durations[name] = round(time.monotonic() - t, 2)


def run_benchmark(plan: Plan, work_dir: Path) -> dict[str, Any]:
    """Every section, in order; the programs are stopped before this returns.

    Bare and full are measured interleaved (latency in alternating rounds, throughput
    bare then full at each concurrency), so that a machine that slows down or speeds
    up during the run moves both sides of each ratio alike.
    """
    st = _Stages()
    # What else runs here: the machine's CPU use over one second before we start.
    before = cpu_stat()
    time.sleep(1.0)
    stat0 = cpu_stat()
    background = cpu_usage(before, stat0).get("busy_fraction")
    self_cpu0, wall0 = self_cpu_s(), time.monotonic()
    r: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "mode": plan.mode,
        "model": MODEL,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "plan": {
            "latency_requests": plan.latency_n,
            "latency_rounds": plan.rounds,
            "throughput_repetitions": plan.reps,
            "warmup_requests": plan.warmup,
            "throughput_requests_per_level": plan.throughput_total,
            "session_setups": plan.setup_n,
            "crypto_requests": plan.crypto_n,
            "attestation_verifies": plan.attest_n,
            "idle_connections": plan.idle_connections,
            "max_enclaves": plan.max_enclaves,
            "enclave_args": list(plan.enclave_args),
        },
        "fd_limit": _raise_fd_limit(4 * plan.idle_connections + 1024),
    }
    notes: list[str] = []
    r["notes"] = notes
    r["machine"]["background_busy_fraction"] = background
    if background is not None and background > 0.1:
        notes.append(
            f"{100 * background:.0f} % of the machine's CPU was busy before the run started"
            " (another workload): the numbers are noisier than usual"
        )

    with st.stage("crypto", "crypto: seal + open + receipt sign + verify, in memory"):
        r.update(bench_crypto(plan, work_dir / "nsm-crypto"))
    with st.stage("attestation", "attestation verification, cold and cached chain"):
        att = bench_attestation(plan, work_dir / "nsm-crypto")
        notes.extend(att.pop("_notes"))
        r.update(att)

    children = Children()
    bare: Bare | None = None
    try:
        with st.stage("bare_load", "loading the bare ONNX Runtime baseline in this process"):
            bare = Bare()
            tokens = bare.tokens
            r["inputs"] = {
                "sentences": len(SENTENCES),
                "mean_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None,
                "min_tokens": min(tokens) if tokens else None,
                "max_tokens": max(tokens) if tokens else None,
            }
        home = work_dir / "home"
        home.mkdir(mode=0o700)
        with st.stage("start", "starting ephemeral-host --mock, then ephemeral-enclave --mock"):
            enclave_port = free_port()
            host = start_host(children, "host", home, [enclave_port])
            enc = start_enclave(children, "enclave", home, host, enclave_port, plan.enclave_args)
            r["cold_start"] = enc.cold_start
            r["cold_start_s"] = enc.cold_start["total_s"]
            r["model_transfer_mb_s"] = transfer_mb_s(
                enc.cold_start.get("mb"), enc.cold_start.get("fetch_decrypt_ms")
            )
            policy = _policy(home)
        b: dict[str, Any] = {"load_s": bare.load_s, "ort_threads_started": bare.ort_threads_started}
        full: dict[str, Any] = {}
        r["bare"], r["full"] = b, full
        with st.stage("latency", "latency: bare, via host, direct to the enclave (interleaved)"):
            from ephemeralml.client._api import connect

            with contextlib.ExitStack() as stack:
                via_host = stack.enter_context(connect(host.address, policy=policy))
                direct = stack.enter_context(connect(enc.address, policy=policy))
                lat = _sequential_latency(
                    {"bare": bare.embed, "host": via_host.embed, "direct": direct.embed},
                    plan.latency_n, plan.warmup, plan.rounds,
                )  # fmt: skip
            b.update(summarize_ms(lat["bare"]))
            full.update(summarize_ms(lat["host"]))
            r["direct"] = summarize_ms(lat["direct"])
            for k, d in (("bare", b), ("host", full), ("direct", r["direct"])):
                d["p50_ms_by_round"] = _round_p50s(lat[k], plan.rounds)
            r["relay_overhead_ms"] = round(full["p50_ms"] - r["direct"]["p50_ms"], 4)
        with st.stage("setup", "session setup (connect + close) via host"):
            setup = summarize_ms(_session_setup(host.address, policy, plan.setup_n))
            r["session_setup"] = setup
            r["session_setup_ms"] = setup["p50_ms"]
            r["session_setup_mode"] = getattr(policy, "session_mode", None) or "fresh"
            by_mode = {}
            for mode in session_modes():
                try:
                    by_mode[mode] = summarize_ms(
                        _session_setup(host.address, policy, plan.setup_n, mode)
                    )["p50_ms"]
                except Exception as e:  # a mode this enclave refuses: noted, not fatal
                    notes.append(f"session setup in {mode} mode: {e}")
            r["session_setup_by_mode_ms"] = by_mode
        with st.stage("throughput", f"throughput at {CONCURRENCY}: bare batch of c, c sessions"):
            pids = {"host": [host.prog.pid], "enclave": [enc.prog.pid]}
            bare_runs: dict[str, list[float]] = {str(c): [] for c in CONCURRENCY}
            full_runs: dict[str, list[float]] = {str(c): [] for c in CONCURRENCY}
            b["cpu_cores"], full["cpu_cores"], full["throughput_detail"] = {}, {}, {}
            for rep in range(plan.reps):
                for c in CONCURRENCY:
                    bt = bare.throughput(c, plan.throughput_total)
                    bare_runs[str(c)].append(bt["ips"])
                    b["cpu_cores"][str(c)] = bt["cores"]
                    t = _throughput(host.address, policy, c, plan.throughput_total, pids)
                    full_runs[str(c)].append(t["ips"])
                    full["cpu_cores"][str(c)] = t["cores"]
                    full["throughput_detail"][str(c)] = {
                        k: t[k] for k in ("wall_s", "requests", "latency", "cpu_ms_per_request")
                    }
                    _say(
                        f"  {rep + 1}/{plan.reps} c={c}: bare {bt['ips']:.0f}/s, "
                        f"full {t['ips']:.0f}/s, cores {t['cores']}"
                    )
            b["throughput"] = {k: round(percentile(v, 50), 1) for k, v in bare_runs.items()}
            full["throughput"] = {k: round(percentile(v, 50), 1) for k, v in full_runs.items()}
            b["throughput_runs"], full["throughput_runs"] = bare_runs, full_runs
        r["peak_rss_mb"] = {
            "host": proc_status_mb(host.prog.pid, "VmHWM"),
            "enclave": proc_status_mb(enc.prog.pid, "VmHWM"),
            "bench": proc_status_mb("self", "VmHWM"),
        }
        bare.close()
        bare = None
        with st.stage("scaling", f"scaling: 1..{plan.max_enclaves} enclaves behind one host"):
            try:
                r.update(_scaling(plan, children, work_dir, home, host, enc, policy))
            except (BenchError, OSError) as e:
                notes.append(f"scaling did not complete: {e}")
                r.setdefault("scaling", None)
        with st.stage("idle", f"{plan.idle_connections} idle connections to the host"):
            try:
                idle = _idle_connections(host, [enc.prog.pid], plan.idle_connections)
                r["idle"] = idle
                r["host_idle_1000_rss_mb"] = idle.get("host_after_mb")
                r["enclave_idle_1000_rss_mb"] = idle.get("enclave_after_mb")
                if idle.get("opened") != plan.idle_connections:
                    notes.append(f"only {idle.get('opened')} idle connections could be opened")
            except OSError as e:
                notes.append(f"idle connections: {e}")
                r["host_idle_1000_rss_mb"] = None
        if plan.idle_connections != 1000:
            notes.append(
                f"host_idle_1000_rss_mb was measured with {plan.idle_connections} connections"
            )
    finally:
        with st.stage("stop", "stopping the programs"):
            children.stop_all()
            if bare is not None:
                bare.close()
        r["exit_codes"] = children.exit_codes
    bad = {k: v for k, v in children.exit_codes.items() if v not in (0, None)}
    if bad:
        notes.append(f"programs exited with non-zero codes: {bad}")
    r["stages_s"] = st.durations
    r["duration_s"] = round(time.monotonic() - st.t0, 1)
    during = cpu_usage(stat0, cpu_stat())
    r["machine"]["during_run"] = during
    ours = self_cpu_s() - self_cpu0 + sum(v for v in children.cpu_s.values() if v is not None)
    if during.get("busy_cpu_s") is not None:
        # Whatever else ran on this machine meanwhile, in cores on average.
        other = max(0.0, during["busy_cpu_s"] - ours) / (time.monotonic() - wall0)
        during["benchmark_cpu_s"] = round(ours, 2)
        during["other_cores"] = round(other, 2)
        if other > 0.1:
            notes.append(
                f"other processes on this machine used {other:.2f} cores on average during"
                " the run: the numbers are noisier than on a quiet machine"
            )
    steal = during.get("steal_fraction")
    if steal is not None and steal > 0.05:
        notes.append(
            f"the hypervisor took {100 * steal:.0f} % of the CPU time (steal) during the run:"
            " the numbers are noisier than usual"
        )
    notes.append(
        "client, host, enclave and ONNX Runtime share this machine's "
        f"{r['machine'].get('affinity')} cores: the full path competes with itself, "
        "the bare baseline does not"
    )
    return finalize(r)


def _scaling(
    plan: Plan,
    children: Children,
    work_dir: Path,
    home: Path,
    host: HostInfo,
    first: EnclaveInfo,
    policy: Any,
) -> dict[str, Any]:
    """Throughput at 16 sessions with 1, 2, ... enclaves behind one host (round robin).

    Each extra enclave uses the first host's store and KMS. For each count n ≥ 2 a
    relay host is started with ``--enclave`` once for each of the first n enclaves
    (in a private home of its own, so its own mock services, unused). Everything is
    started first; then the counts are measured in turn, ``plan.reps`` times, and
    the median is reported.
    """
    c = plan.scaling_concurrency
    enclaves = [first]
    relays: dict[int, HostInfo] = {1: host}
    cold = []
    try:
        for n in range(2, plan.max_enclaves + 1):
            extra = start_enclave(
                children, f"enclave-{n}", home, host, extra_args=plan.enclave_args
            )
            enclaves.append(extra)
            cold.append(extra.cold_start["total_s"])
            relay_home = work_dir / f"relay-home-{n}"
            relay_home.mkdir(mode=0o700)
            relays[n] = start_host(
                children, f"relay-host-{n}", relay_home, [e.port for e in enclaves]
            )
        runs: dict[str, list[float]] = {str(n): [] for n in relays}
        cores: dict[str, Any] = {}
        for _ in range(plan.reps):
            for n, relay in relays.items():
                pids = {"host": [relay.prog.pid], "enclave": [e.prog.pid for e in enclaves[:n]]}
                t = _throughput(relay.address, policy, c, plan.throughput_total, pids)
                runs[str(n)].append(t["ips"])
                cores[str(n)] = t["cores"]
        scaling = {n: round(percentile(v, 50), 1) for n, v in runs.items()}
        _say("  " + ", ".join(f"{n} enclave(s): {v:.0f}/s" for n, v in scaling.items()))
        return {
            "scaling": scaling,
            "scaling_runs": runs,
            "scaling_concurrency": c,
            "scaling_cpu_cores": cores,
            "cold_start_more_s": cold,
        }
    finally:
        # Only the first host and enclave stay, for the idle-connection test.
        for n, relay in relays.items():
            if n != 1:
                children.stop(relay.prog)
        for e in enclaves[1:]:
            children.stop(e.prog)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Bare ONNX Runtime vs the full confidential path (mock mode), side by side.",
    )
    p.add_argument("--quick", action="store_true", help="less work per section (about a minute)")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON to FILE")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    p.add_argument(
        "--enclaves", type=int, metavar="N", help="scale up to N enclaves (default 2 quick, 3 full)"
    )
    p.add_argument(
        "--idle-connections", type=int, metavar="N", help="idle connections to open (default 1000)"
    )
    p.add_argument(
        "--enclave-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to every enclave, e.g. --enclave-arg=--batch-wait-ms=2 (repeatable)",
    )
    return p


class _Interrupted(BaseException):
    pass


def main(argv: list[str] | None = None) -> int:
    """``scripts/bench.py``. Returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    plan = QUICK if args.quick else FULL
    if args.enclaves is not None:
        if not 1 <= args.enclaves <= 8:
            print(f"{PROG}: error: --enclaves must be 1 to 8", file=sys.stderr)
            return 2
        plan = _replace(plan, max_enclaves=args.enclaves)
    if args.enclave_arg:
        plan = _replace(plan, enclave_args=tuple(args.enclave_arg))
    if args.idle_connections is not None:
        if not 1 <= args.idle_connections <= 4000:
            print(f"{PROG}: error: --idle-connections must be 1 to 4000", file=sys.stderr)
            return 2
        plan = _replace(plan, idle_connections=args.idle_connections)

    # SIGTERM to the benchmark stops its children too (as Ctrl-C does).
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted()

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, on_term)
    try:
        with tempfile.TemporaryDirectory(prefix="ephemeralml-bench-") as tmp:
            result = run_benchmark(plan, Path(tmp))
    except (KeyboardInterrupt, _Interrupted):
        print(f"{PROG}: interrupted; programs stopped", file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # one line, not a traceback, for any of our typed errors
        from ephemeralml.common._errors import Error

        if isinstance(e, Error):
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)

    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n")
    table = format_table(result)
    if args.json:
        print(table, file=sys.stderr)
        print(text)
    else:
        print(table)
    if args.strict and result["summary"]["missed"]:
        return 1
    return 0


def _replace(plan: Plan, **changes: Any) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, **changes)


if __name__ == "__main__":
    sys.exit(main())
