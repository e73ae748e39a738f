#!/usr/bin/env python3
"""Soak: many legitimate sessions for minutes while hostile connections and faults hit
the real enclave and host (mock mode, loopback only). Issue 7, "Soak".

    .venv/bin/python scripts/soak.py --duration 180 --sessions 8 --idle 1000 \\
        --latency-idle 10000                    # a few minutes, the figures for benchmarks.md
    .venv/bin/python scripts/soak.py --duration 8 --sessions 2 --idle 50   # a short check

What it does, in order, bounded in time and count throughout:

1. raises the open-file limit (soft to hard; the programs inherit it), starts
   ``ephemeral-host --mock`` and ``ephemeral-enclave --mock`` on kernel-chosen ports
   in a private state folder (with ``ephemeralml.bench._processes``, the harness the
   benchmark and the tests use: the ports come from each program's readiness line);
2. with ``--latency-idle N``: the legitimate client's p50 latency (connect, and one
   request) with no hostile connection, then with N hostile idle connections held
   open against the relay (from many source addresses; refused or evicted ones come
   back after ``--reconnect-after`` seconds), and the ratio (goal: within 2x);
3. the soak: ``--sessions`` legitimate clients (threads, 127.0.0.1) connect, make
   short requests and reconnect, for ``--duration`` seconds, while a hostile process
   (sources 127.0.1.x and up) keeps ``--idle`` idle connections, ``--drip`` peers
   dripping a hello one byte a second, ``--garbage`` peers sending random bytes,
   ``--oversize`` peers declaring a 4 GiB frame, and ``--churn-rate`` connections a
   second opened and dropped (half of them with a reset); with ``--kill-enclave``
   the enclave is killed (SIGKILL) half-way and restarted;
4. checks, and exits 1 if one fails: every request got exactly one verified response
   or one typed error with a one-line message; no error outside a fault window; every
   session's receipt sequence is 0, 1, 2, ... with no gap or repeat; host and enclave
   are alive and their RSS stayed flat (VmRSS after warm-up vs at the end, within
   ``RSS_GROWTH_MAX_MB`` MiB plus ``RSS_GROWTH_MAX_FRACTION``); both stop cleanly.

Prints a summary, then one JSON line (``{"soak": ...}``).

About 650 lines, one script on purpose: the hostile process, the legitimate clients
and the checks share the counters and the fault windows of one run; the parts others
need (starting and stopping the programs) live in ``ephemeralml.bench._processes``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ephemeralml.bench._processes import (
    ENCLAVE,
    HOST,
    ProgramError,
    Running,
    enclave_argv,
    free_port,
    host_argv,
    program_env,
    start_program,
)

ROOT = Path(__file__).resolve().parent.parent

#: How long a program may take to start (the mock host packages the model first).
START_TIMEOUT_S = 180.0
#: How long each of SIGTERM and SIGKILL is given when the programs are stopped.
STOP_TIMEOUT_S = 20.0
#: RSS may grow this much between warm-up and the end and still count as flat:
#: allocator and interpreter caches settle in tens of MiB; a leak of one buffer
#: per request or connection over minutes is far more.
RSS_GROWTH_MAX_MB = 48.0
RSS_GROWTH_MAX_FRACTION = 0.25
#: Seconds after a fault during which legitimate errors are expected.
FAULT_GRACE_S = 5.0
#: The legitimate clients' deadline per connect and per request (L6).
CLIENT_TIMEOUT_S = 30.0
#: Source addresses the hostile connections come from (127.0.1.1 and up): distinct
#: from the legitimate client's 127.0.0.1, so per-source limits can tell them apart.
HOSTILE_SOURCES = 250


# ------------------------------------------------------------------ the programs


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Stack:
    """Host and enclave, started the one way (``ephemeralml.bench._processes``): ports
    come from their readiness lines."""

    def __init__(self, home: Path, host_args: list[str], enclave_args: list[str]) -> None:
        self.home = home
        self.env = program_env(home)
        self.enclave_port = free_port()
        self.enclave_args = enclave_args
        self.host = start_program(
            HOST, host_argv([self.enclave_port], *host_args), self.env, timeout_s=START_TIMEOUT_S
        )
        self.port = self.host.port("relay")
        self.services = self.host.port("services")
        self.kms = self.host.port("kms")
        try:
            self.enclave = self.start_enclave()
        except BaseException:
            self.host.stop()
            raise

    def start_enclave(self) -> Running:
        argv = enclave_argv(self.enclave_port, self.services, self.kms, *self.enclave_args)
        return start_program(ENCLAVE, argv, self.env, timeout_s=START_TIMEOUT_S)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> tuple[int, int]:
        return self.host.stop(STOP_TIMEOUT_S), self.enclave.stop(STOP_TIMEOUT_S)


# ------------------------------------------------------------------ legitimate clients


@dataclass
class Record:
    """What one legitimate client saw."""

    requests: int = 0
    ok: int = 0
    request_errors: int = 0
    errors: list[tuple[float, str, str]] = field(default_factory=list)  # (t, type, message)
    unclear: list[str] = field(default_factory=list)  # anything that is not our Error
    connects: int = 0
    connect_latency: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    #: Each session's receipt sequence numbers, in the order received.
    sequences: list[list[int]] = field(default_factory=list)


def legit_client(
    address: str, home: Path, until: float, rec: Record, *, per_session: tuple[int, int]
) -> None:
    from ephemeralml.client._api import connect
    from ephemeralml.client._policy import ClientPolicy
    from ephemeralml.common._errors import Error

    policy = ClientPolicy.unsafe_mock(home, warn=False)
    rng = random.Random()
    while time.monotonic() < until:
        t0 = time.perf_counter()
        try:
            session = connect(address, policy=policy, timeout=CLIENT_TIMEOUT_S)
        except Error as e:
            rec.errors.append((time.monotonic(), type(e).__name__, e.message))
            time.sleep(0.5)
            continue
        except Exception as e:  # counted as a failed check, not hidden
            rec.unclear.append(f"connect: {type(e).__name__}: {e}")
            time.sleep(0.5)
            continue
        rec.connects += 1
        rec.connect_latency.append(time.perf_counter() - t0)
        seqs: list[int] = []
        rec.sequences.append(seqs)
        try:
            for _ in range(rng.randint(*per_session)):
                if time.monotonic() >= until:
                    break
                rec.requests += 1
                t1 = time.perf_counter()
                try:
                    [out] = session.embed([f"soak sentence {rng.randrange(10**6)}"])
                except Error as e:
                    rec.request_errors += 1
                    rec.errors.append((time.monotonic(), type(e).__name__, e.message))
                    break  # that session is over; a new one follows
                except Exception as e:
                    rec.unclear.append(f"request: {type(e).__name__}: {e}")
                    break
                rec.latency.append(time.perf_counter() - t1)
                rec.ok += 1
                seqs.append(out.receipt.receipt.seq)
        finally:
            session.close()


def p50(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * 0.99))] if s else float("nan")


def measure_latency(address: str, home: Path, requests: int, connects: int) -> dict[str, float]:
    """p50 of one request in one session, and of a connect (handshake included)."""
    from ephemeralml.client._api import connect
    from ephemeralml.client._policy import ClientPolicy

    policy = ClientPolicy.unsafe_mock(home, warn=False)
    conn_lat = []
    for _ in range(connects):
        t0 = time.perf_counter()
        connect(address, policy=policy, timeout=CLIENT_TIMEOUT_S).close()
        conn_lat.append(time.perf_counter() - t0)
    lat = []
    with connect(address, policy=policy, timeout=CLIENT_TIMEOUT_S) as session:
        for i in range(requests):
            t0 = time.perf_counter()
            session.embed([f"latency probe {i}"])
            lat.append(time.perf_counter() - t0)
    return {
        "request_p50_ms": 1000 * p50(lat),
        "request_p99_ms": 1000 * p99(lat),
        "connect_p50_ms": 1000 * p50(conn_lat),
        "connect_p99_ms": 1000 * p99(conn_lat),
    }


# ------------------------------------------------------------------ hostile peers (own process)


def hostile_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="soak.py hostile")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--idle", type=int, default=0)
    p.add_argument("--drip", type=int, default=0)
    p.add_argument("--garbage", type=int, default=0)
    p.add_argument("--oversize", type=int, default=0)
    p.add_argument("--churn-rate", type=float, default=0.0)
    p.add_argument("--reconnect-after", type=float, default=5.0)
    a = p.parse_args(argv)
    raise_nofile()
    counts: dict[str, int] = {}
    stats = asyncio.run(_hostile(a, counts))
    print(json.dumps({"hostile": stats}), flush=True)
    return 0


async def _hostile(a: argparse.Namespace, counts: dict[str, int]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    until = loop.time() + a.duration
    held = {"now": 0, "max": 0}
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    rng = random.Random()

    def bump(key: str, n: int = 1) -> None:
        counts[key] = counts.get(key, 0) + n

    def source(i: int) -> str:
        j = i % HOSTILE_SOURCES
        return f"127.0.{1 + j // 250}.{1 + j % 250}"

    async def session(i: int, kind: str) -> None:
        # Spread the first connections over a second or two.
        await asyncio.sleep(rng.uniform(0, 2))
        # Checked as well as cancelled: asyncio.wait_for in 3.11 can swallow a
        # cancellation that arrives as its inner read completes.
        while loop.time() < until and not stopped.is_set():
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", a.port, local_addr=(source(i), 0)), 10
                )
            except (OSError, TimeoutError):
                bump(f"{kind}_connect_failed")
                await asyncio.sleep(a.reconnect_after)
                continue
            bump(f"{kind}_opened")
            held["now"] += 1
            held["max"] = max(held["max"], held["now"])
            t0 = loop.time()
            try:
                if kind == "drip":
                    hello = struct.pack(">I", 60) + os.urandom(60)

                    async def drip(w: asyncio.StreamWriter = w, hello: bytes = hello) -> None:
                        for b in hello:
                            w.write(bytes([b]))
                            await w.drain()
                            await asyncio.sleep(1.0)

                    dripper = asyncio.create_task(drip())
                elif kind == "garbage":
                    w.write(os.urandom(4096))
                elif kind == "oversize":
                    w.write(b"\xff\xff\xff\xff" + os.urandom(1000))
                left = until - loop.time()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(r.read(), max(0.1, left))  # until the far end closes
                if kind == "drip":
                    dripper.cancel()
                if loop.time() < until and not stopped.is_set():
                    bump(f"{kind}_closed_by_peer")
                    bump(f"{kind}_held_ms", int(1000 * (loop.time() - t0)))
            except OSError:
                bump(f"{kind}_reset")
            finally:
                held["now"] -= 1
                w.transport.abort()
            await asyncio.sleep(a.reconnect_after * rng.uniform(0.5, 1.5))

    async def churn() -> None:
        i = 0
        while a.churn_rate > 0 and loop.time() < until and not stopped.is_set():
            await asyncio.sleep(1 / a.churn_rate)
            i += 1
            try:
                s = socket.socket()
                s.setblocking(False)
                s.bind((source(i), 0))
                await loop.sock_connect(s, ("127.0.0.1", a.port))
                if i % 2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
                bump("churn_dropped")
            except OSError:
                bump("churn_failed")
                s.close()

    async def sample() -> None:
        samples = []
        while loop.time() < until and not stopped.is_set():
            await asyncio.sleep(1.0)
            samples.append(held["now"])
        counts["held_mean"] = int(sum(samples) / len(samples)) if samples else 0

    coros = [
        *(session(i, "idle") for i in range(a.idle)),
        *(session(a.idle + i, "drip") for i in range(a.drip)),
        *(session(a.idle + a.drip + i, "garbage") for i in range(a.garbage)),
        *(session(a.idle + a.drip + a.garbage + i, "oversize") for i in range(a.oversize)),
        churn(),
        sample(),
    ]
    tasks = [asyncio.create_task(c) for c in coros]
    everything = asyncio.gather(*tasks, return_exceptions=True)
    stop = asyncio.create_task(stopped.wait())
    await asyncio.wait([everything, stop], return_when=asyncio.FIRST_COMPLETED)
    if stopped.is_set():  # told to stop early (SIGTERM): end every peer now
        for t in tasks:
            t.cancel()
    await everything
    stop.cancel()
    counts["held_max"] = held["max"]
    return dict(sorted(counts.items()))


class Hostile:
    """The hostile process: its own interpreter, so it takes no GIL from the clients."""

    def __init__(self, port: int, duration: float, *, nice: int = 0, **kinds: float) -> None:
        args = [f"--{k.replace('_', '-')}={v}" for k, v in kinds.items()]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "hostile", f"--port={port}", f"--duration={duration}",
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            # An attacker's CPU is usually not the host's: --hostile-nice lowers its
            # priority so that on a small machine it takes only what is left over.
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )  # fmt: skip
        self.duration = duration

    def result(self) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=self.duration + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        for line in out.splitlines():
            if line.startswith('{"hostile"'):
                result: dict[str, Any] = json.loads(line)["hostile"]
                return result
        return {"error": f"hostile process exited {self.proc.returncode}: {err[-500:]}"}


# ------------------------------------------------------------------ the run


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of soak (default 60)")
    p.add_argument("--sessions", type=int, default=4, help="legitimate clients (default 4)")
    p.add_argument("--requests-per-session", default="5,40", help="MIN,MAX (default 5,40)")
    p.add_argument("--idle", type=int, default=500, help="hostile idle connections")
    p.add_argument("--drip", type=int, default=20, help="hostile peers dripping a byte a second")
    p.add_argument("--garbage", type=int, default=10, help="hostile peers sending random bytes")
    p.add_argument("--oversize", type=int, default=10, help="hostile peers declaring 4 GiB")
    p.add_argument("--churn-rate", type=float, default=20.0, help="connect-and-drop per second")
    p.add_argument(
        "--reconnect-after", type=float, default=5.0,
        help="seconds a closed hostile peer waits (x0.5-1.5) before it comes back",
    )  # fmt: skip
    p.add_argument(
        "--hostile-nice", type=int, default=0,
        help="run the hostile process at this nice level (its CPU is not the host's)",
    )  # fmt: skip
    p.add_argument("--kill-enclave", action="store_true", help="SIGKILL and restart it half-way")
    p.add_argument(
        "--latency-idle", type=int, default=0,
        help="measure p50 with this many hostile idle connections vs none first",
    )  # fmt: skip
    p.add_argument("--latency-requests", type=int, default=200)
    p.add_argument("--latency-connects", type=int, default=30)
    p.add_argument("--warmup", type=float, default=None, help="seconds before the RSS baseline")
    p.add_argument("--host-arg", action="append", default=[], help="extra ephemeral-host flag")
    p.add_argument("--enclave-arg", action="append", default=[], help="extra enclave flag")
    return p


def main(argv: list[str]) -> int:
    if argv[:1] == ["hostile"]:
        return hostile_main(argv[1:])
    a = _parser().parse_args(argv)
    lo, hi = (int(x) for x in a.requests_per_session.split(","))
    if not (a.duration > 0 and a.sessions >= 1 and 1 <= lo <= hi):
        raise SystemExit(
            "soak: --duration > 0, --sessions >= 1, --requests-per-session 1<=MIN<=MAX"
        )
    nofile = raise_nofile()
    t_start = time.monotonic()
    summary: dict[str, Any] = {"nofile": nofile, "args": vars(a)}
    checks: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        home = Path(tmp)
        try:
            stack = Stack(home, a.host_arg, a.enclave_arg)
        except ProgramError as e:
            raise SystemExit(f"soak: {e}") from None
        try:
            summary["startup_s"] = round(time.monotonic() - t_start, 1)
            print(
                f"soak: host pid {stack.host.pid} on {stack.address}, enclave pid "
                f"{stack.enclave.pid}; started in {summary['startup_s']} s",
                flush=True,
            )
            if a.latency_idle:
                summary["latency"] = latency_phase(stack, a)
                print(json.dumps({"soak_latency": summary["latency"]}), flush=True)
            run_soak(stack, a, summary, checks)
        finally:
            codes = stack.stop()
        # After --kill-enclave the enclave stopped here is the restarted one.
        checks["host and enclave stop cleanly (exit 0)"] = codes == (0, 0)
        summary["exit_codes"] = list(codes)
        # The host's own account: connections taken, refused, upstream failures.
        summary["host_stopped"] = next(
            (ln.strip() for ln in reversed(stack.host.lines) if "stopped (" in ln), None
        )
    summary["checks"] = checks
    summary["ok"] = all(checks.values())
    summary["wall_s"] = round(time.monotonic() - t_start, 1)
    print_summary(summary)
    print(json.dumps({"soak": summary}, sort_keys=True), flush=True)
    return 0 if summary["ok"] else 1


def latency_phase(stack: Stack, a: argparse.Namespace) -> dict[str, Any]:
    """p50 with no hostile connection (before and after, averaged: the machine may be
    shared), and with ``--latency-idle`` hostile idle connections held open."""
    print("soak: latency with no hostile connection...", flush=True)
    measure_latency(stack.address, stack.home, 20, 3)  # warm-up
    before = measure_latency(stack.address, stack.home, a.latency_requests, a.latency_connects)
    print(f"soak: latency with {a.latency_idle} hostile idle connections...", flush=True)
    ramp = 15.0
    hostile = Hostile(
        stack.port,
        ramp + 300.0,
        idle=a.latency_idle,
        reconnect_after=a.reconnect_after,
        nice=a.hostile_nice,
    )
    time.sleep(ramp)
    host_rss = rss_mb(stack.host.pid)
    loaded = measure_latency(stack.address, stack.home, a.latency_requests, a.latency_connects)
    hostile.proc.send_signal(signal.SIGTERM)
    h = hostile.result()
    time.sleep(3.0)
    print("soak: latency with no hostile connection, again...", flush=True)
    after = measure_latency(stack.address, stack.home, a.latency_requests, a.latency_connects)
    none = {k: (before[k] + after[k]) / 2 for k in before}
    return {
        "hostile_idle": a.latency_idle,
        "none": {k: round(v, 2) for k, v in none.items()},
        "none_before": {k: round(v, 2) for k, v in before.items()},
        "none_after": {k: round(v, 2) for k, v in after.items()},
        "loaded": {k: round(v, 2) for k, v in loaded.items()},
        "request_ratio": round(loaded["request_p50_ms"] / none["request_p50_ms"], 2),
        "connect_ratio": round(loaded["connect_p50_ms"] / none["connect_p50_ms"], 2),
        "host_rss_mb_under_load": round(host_rss, 1),
        "hostile": h,
    }


def run_soak(
    stack: Stack, a: argparse.Namespace, summary: dict[str, Any], checks: dict[str, bool]
) -> None:
    lo, hi = (int(x) for x in a.requests_per_session.split(","))
    start = time.monotonic()
    until = start + a.duration
    hostile = Hostile(
        stack.port, a.duration, idle=a.idle, drip=a.drip, garbage=a.garbage,
        oversize=a.oversize, churn_rate=a.churn_rate, reconnect_after=a.reconnect_after,
        nice=a.hostile_nice,
    )  # fmt: skip
    records = [Record() for _ in range(a.sessions)]
    threads = [
        threading.Thread(
            target=legit_client,
            args=(stack.address, stack.home, until, rec),
            kwargs={"per_session": (lo, hi)},
            daemon=True,
        )
        for rec in records
    ]
    for t in threads:
        t.start()
    warmup = a.warmup if a.warmup is not None else min(30.0, a.duration / 4)
    time.sleep(warmup)
    rss0 = {"host": rss_mb(stack.host.pid), "enclave": rss_mb(stack.enclave.pid)}
    faults: list[tuple[float, float]] = []
    if a.kill_enclave:
        time.sleep(max(0.0, start + a.duration / 2 - time.monotonic()))
        t_kill = time.monotonic()
        stack.enclave.proc.kill()
        stack.enclave.proc.wait(10)
        try:
            stack.enclave = stack.start_enclave()
            restarted = True
        except ProgramError as e:  # reported as a failed check, with why
            summary["restart_error"] = str(e)[-600:]
            restarted = False
        checks["enclave restarted after SIGKILL"] = restarted
        faults.append((t_kill, time.monotonic() + FAULT_GRACE_S))
        print(
            f"soak: enclave killed and {'restarted' if restarted else 'NOT restarted'} in "
            f"{time.monotonic() - t_kill:.1f} s",
            flush=True,
        )
        time.sleep(min(10.0, max(0.0, until - time.monotonic()) / 2))
        if restarted:
            rss0["enclave"] = rss_mb(stack.enclave.pid)  # a new process: its own baseline
    # Sample RSS until the end; the last sample is "the end".
    rss_max = dict(rss0)
    while time.monotonic() < until:
        time.sleep(min(2.0, max(0.0, until - time.monotonic())))
        for k, prog in (("host", stack.host), ("enclave", stack.enclave)):
            if prog.alive():
                rss_max[k] = max(rss_max[k], rss_mb(prog.pid))
    alive = {"host": stack.host.alive(), "enclave": stack.enclave.alive()}
    rss1 = {
        k: rss_mb(p.pid) for k, p in (("host", stack.host), ("enclave", stack.enclave)) if p.alive()
    }
    for t in threads:
        t.join(CLIENT_TIMEOUT_S * 2 + 10)
    hung = sum(t.is_alive() for t in threads)
    h = hostile.result()

    requests = sum(r.requests for r in records)
    ok = sum(r.ok for r in records)
    errors = [e for r in records for e in r.errors]
    unclear = [u for r in records for u in r.unclear]
    request_errors = sum(r.request_errors for r in records)
    in_fault = [e for e in errors if any(t0 <= e[0] <= t1 for t0, t1 in faults)]
    outside = [e for e in errors if e not in in_fault]
    seqs = [s for r in records for s in r.sequences]
    bad_seqs = [s for s in seqs if s != list(range(len(s)))]
    latency = [x for r in records for x in r.latency]
    conn_latency = [x for r in records for x in r.connect_latency]

    checks["every legitimate client finished (none hung)"] = hung == 0
    checks["every request: one verified response or one typed error"] = (
        not unclear and ok + request_errors == requests
        and all(m and "\n" not in m for _, _, m in errors)
    )  # fmt: skip
    checks["no legitimate error outside a fault window"] = not outside
    checks["some requests succeeded"] = ok > 0
    checks["receipt sequences have no gap or repeat"] = not bad_seqs
    checks["host and enclave alive at the end"] = all(alive.values())
    growth = {}
    for k in rss1:
        grown = rss1[k] - rss0[k]
        growth[k] = round(grown, 1)
        checks[f"{k} RSS flat (+{grown:.1f} MiB)"] = grown <= RSS_GROWTH_MAX_MB + (
            RSS_GROWTH_MAX_FRACTION * rss0[k]
        )
    checks["hostile process ran"] = "error" not in h

    summary.update(
        duration_s=a.duration,
        sessions=a.sessions,
        connects=sum(r.connects for r in records),
        requests=requests,
        verified=ok,
        request_errors=request_errors,
        errors=len(errors),
        errors_in_fault_windows=len(in_fault),
        errors_outside=[f"{t}: {m}" for _, t, m in outside[:10]],
        unclear=unclear[:10],
        sessions_checked=len(seqs),
        bad_sequences=len(bad_seqs),
        request_p50_ms=round(1000 * p50(latency), 2),
        request_p99_ms=round(1000 * p99(latency), 2),
        connect_p50_ms=round(1000 * p50(conn_latency), 2),
        connect_p99_ms=round(1000 * p99(conn_latency), 2),
        rss_start_mb={k: round(v, 1) for k, v in rss0.items()},
        rss_end_mb={k: round(v, 1) for k, v in rss1.items()},
        rss_max_mb={k: round(v, 1) for k, v in rss_max.items()},
        rss_growth_mb=growth,
        faults=len(faults),
        hostile=h,
    )


def print_summary(s: dict[str, Any]) -> None:
    print(
        f"soak: {s.get('requests', 0)} requests, {s.get('verified', 0)} verified, "
        f"{s.get('errors', 0)} typed errors ({s.get('errors_in_fault_windows', 0)} in fault "
        f"windows), {s.get('connects', 0)} sessions; request p50 {s.get('request_p50_ms')} ms, "
        f"connect p50 {s.get('connect_p50_ms')} ms",
        flush=True,
    )
    if "latency" in s:
        lat = s["latency"]
        print(
            f"soak: p50 request {lat['none']['request_p50_ms']} ms idle vs "
            f"{lat['loaded']['request_p50_ms']} ms with {lat['hostile_idle']} hostile idle "
            f"connections (x{lat['request_ratio']}); connect {lat['none']['connect_p50_ms']} vs "
            f"{lat['loaded']['connect_p50_ms']} ms (x{lat['connect_ratio']})",
            flush=True,
        )
    for name, passed in s["checks"].items():
        print(f"soak: [{'ok' if passed else 'FAIL'}] {name}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
