"""One run of the benchmark: the programs it starts, the sections in order, the result.

:func:`run_benchmark` measures every section of a :class:`~._plan.Plan` and returns the
finalized result; the programs (started with :mod:`._processes`) are stopped before
it returns, whatever happens.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._cases import (
    Bare,
    bench_attestation,
    bench_crypto,
    client_policy,
    idle_connections,
    sequential_latency,
    session_modes,
    session_setup,
    throughput,
)
from ._plan import CONCURRENCY, MODEL, PROG, SCHEMA_VERSION, SENTENCES, BenchError, Plan
from ._processes import (
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
from ._procfs import cpu_stat, cpu_usage, machine_info, proc_cpu_s, proc_status_mb, self_cpu_s
from ._report import cold_start, finalize, transfer_mb_s
from ._stats import median, round_p50s, summarize_ms

__all__ = ["Children", "Enclave", "Host", "Load", "git_info", "run_benchmark", "say"]


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


class Children:
    """Every program this run started, by name; :meth:`stop_all` stops them, last first."""

    def __init__(self) -> None:
        self.programs: dict[str, Running] = {}
        self.exit_codes: dict[str, int | None] = {}
        #: CPU seconds each program had used when it was stopped.
        self.cpu_s: dict[str, float | None] = {}

    def start(self, name: str, prog: str, argv: Sequence[str], env: Mapping[str, str]) -> Running:
        try:
            running = start_program(prog, argv, env)
        except ProgramError as e:
            self.exit_codes[name] = e.exit_code
            raise
        self.programs[name] = running
        return running

    def stop(self, running: Running) -> int | None:
        name = next(k for k, v in self.programs.items() if v is running)
        self.cpu_s[name] = proc_cpu_s(running.pid)
        try:
            code: int | None = running.stop()
        finally:
            del self.programs[name]
        self.exit_codes[name] = code
        return code

    def stop_all(self) -> None:
        for running in reversed(list(self.programs.values())):
            with contextlib.suppress(Exception):
                self.stop(running)


@dataclass
class Host:
    """A started ``ephemeral-host``; its ports are those of its readiness line."""

    prog: Running

    @property
    def port(self) -> int:
        return self.prog.port("relay")

    @property
    def services(self) -> int:
        return self.prog.port("services")

    @property
    def kms(self) -> int:
        return self.prog.port("kms")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Enclave:
    """A started ``ephemeral-enclave`` and what its cold start took."""

    prog: Running
    cold_start: dict[str, Any]

    @property
    def port(self) -> int:
        return self.prog.port("listen")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_host(
    children: Children, name: str, home: Path, enclave_ports: Sequence[int], *extra: str
) -> Host:
    return Host(children.start(name, HOST, host_argv(enclave_ports, *extra), program_env(home)))


def single_source_limits(idle_connections: int) -> list[str]:
    """Host flags for a benchmark whose every client is 127.0.0.1: the per-source and
    pending limits (L3, L4) and the handshake deadline (L1) are set for many clients
    on the network; here one source opens ``idle_connections`` that never speak."""
    room = str(idle_connections + 256)
    return [
        "--max-per-source", room, "--max-pending-per-source", room, "--max-pending", room,
        "--handshake-timeout", "600",
    ]  # fmt: skip


def start_enclave(
    children: Children,
    name: str,
    home: Path,
    host: Host,
    port: int = 0,
    extra_args: Sequence[str] = (),
) -> Enclave:
    argv = enclave_argv(port, host.services, host.kms, *extra_args)
    prog = children.start(name, ENCLAVE, argv, program_env(home))
    return Enclave(prog, cold_start(prog.ready_s, prog.lines))


def raise_fd_limit(want: int) -> dict[str, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft2, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"before": soft, "after": soft2, "hard": hard}


def git_info(root: Path | None = None) -> dict[str, Any]:
    """The commit of the checkout this package runs from (None outside a checkout)."""
    root = root or Path(__file__).resolve().parents[2]
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


class Load:
    """What else runs on this machine: its CPU use over one second before a run, and
    during the run beyond what the run itself (this process and its programs) used.
    Each method records its figures into the result's ``machine`` object and returns
    the notes to add (a busy machine makes every number noisier)."""

    def __init__(self, before: list[int] | None, stat0: list[int] | None) -> None:
        self.background = cpu_usage(before, stat0).get("busy_fraction")
        self.stat0 = stat0
        self.self_cpu0, self.wall0 = self_cpu_s(), time.monotonic()

    @classmethod
    def start(cls) -> Load:
        before = cpu_stat()
        time.sleep(1.0)
        return cls(before, cpu_stat())

    def before(self, machine: dict[str, Any]) -> list[str]:
        machine["background_busy_fraction"] = self.background
        if self.background is not None and self.background > 0.1:
            return [
                f"{100 * self.background:.0f} % of the machine's CPU was busy before the run"
                " started (another workload): the numbers are noisier than usual"
            ]
        return []

    def during(self, machine: dict[str, Any], children: Children) -> list[str]:
        notes = []
        during = cpu_usage(self.stat0, cpu_stat())
        machine["during_run"] = during
        ours = self_cpu_s() - self.self_cpu0
        ours += sum(v for v in children.cpu_s.values() if v is not None)
        if during.get("busy_cpu_s") is not None:
            # Whatever else ran on this machine meanwhile, in cores on average.
            other = max(0.0, during["busy_cpu_s"] - ours) / (time.monotonic() - self.wall0)
            during["benchmark_cpu_s"] = round(ours, 2)
            during["other_cores"] = round(other, 2)
            if other > 0.1:
                notes.append(
                    f"other processes on this machine used {other:.2f} cores on average"
                    " during the run: the numbers are noisier than on a quiet machine"
                )
        steal = during.get("steal_fraction")
        if steal is not None and steal > 0.05:
            notes.append(
                f"the hypervisor took {100 * steal:.0f} % of the CPU time (steal) during the"
                " run: the numbers are noisier than usual"
            )
        return notes


class _Stages:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.durations: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        say(f"[{time.monotonic() - self.t0:6.1f} s] {what}")
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
    load = Load.start()
    r: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "mode": plan.mode,
        "model": MODEL,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "plan": plan.describe(),
        "fd_limit": raise_fd_limit(4 * plan.idle_connections + 1024),
    }
    notes: list[str] = []
    r["notes"] = notes
    notes.extend(load.before(r["machine"]))

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
            host = start_host(
                children, "host", home, [enclave_port],
                *single_source_limits(plan.idle_connections),
            )  # fmt: skip
            enc = start_enclave(children, "enclave", home, host, enclave_port, plan.enclave_args)
            r["cold_start"] = enc.cold_start
            r["cold_start_s"] = enc.cold_start["total_s"]
            r["model_transfer_mb_s"] = transfer_mb_s(
                enc.cold_start.get("mb"), enc.cold_start.get("fetch_decrypt_ms")
            )
            policy = client_policy(home)
        b: dict[str, Any] = {"load_s": bare.load_s, "ort_threads_started": bare.ort_threads_started}
        full: dict[str, Any] = {}
        r["bare"], r["full"] = b, full
        with st.stage("latency", "latency: bare, via host, direct to the enclave (interleaved)"):
            from ephemeralml.client._api import connect

            with contextlib.ExitStack() as stack:
                via_host = stack.enter_context(connect(host.address, policy=policy))
                direct = stack.enter_context(connect(enc.address, policy=policy))
                lat = sequential_latency(
                    {"bare": bare.embed, "host": via_host.embed, "direct": direct.embed},
                    plan.latency_n, plan.warmup, plan.rounds,
                )  # fmt: skip
            b.update(summarize_ms(lat["bare"]))
            full.update(summarize_ms(lat["host"]))
            r["direct"] = summarize_ms(lat["direct"])
            for k, d in (("bare", b), ("host", full), ("direct", r["direct"])):
                d["p50_ms_by_round"] = round_p50s(lat[k], plan.rounds)
            r["relay_overhead_ms"] = round(full["p50_ms"] - r["direct"]["p50_ms"], 4)
        with st.stage("setup", "session setup (connect + close) via host"):
            setup = summarize_ms(session_setup(host.address, policy, plan.setup_n))
            r["session_setup"] = setup
            r["session_setup_ms"] = setup["p50_ms"]
            r["session_setup_mode"] = getattr(policy, "session_mode", None) or "fresh"
            by_mode = {}
            for mode in session_modes():
                try:
                    by_mode[mode] = summarize_ms(
                        session_setup(host.address, policy, plan.setup_n, mode)
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
                    t = throughput(host.address, policy, c, plan.throughput_total, pids)
                    full_runs[str(c)].append(t["ips"])
                    full["cpu_cores"][str(c)] = t["cores"]
                    full["throughput_detail"][str(c)] = {
                        k: t[k] for k in ("wall_s", "requests", "latency", "cpu_ms_per_request")
                    }
                    say(
                        f"  {rep + 1}/{plan.reps} c={c}: bare {bt['ips']:.0f}/s, "
                        f"full {t['ips']:.0f}/s, cores {t['cores']}"
                    )
            b["throughput"] = {k: median(v) for k, v in bare_runs.items()}
            full["throughput"] = {k: median(v) for k, v in full_runs.items()}
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
            except ProgramError as e:
                notes.append(f"scaling did not complete: {e.summary}")
                r.setdefault("scaling", None)
            except (BenchError, OSError) as e:
                notes.append(f"scaling did not complete: {e}")
                r.setdefault("scaling", None)
        with st.stage("idle", f"{plan.idle_connections} idle connections to the host"):
            try:
                idle = idle_connections(
                    host.prog.pid, host.port, [enc.prog.pid], plan.idle_connections
                )
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
    notes.extend(load.during(r["machine"], children))
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
    host: Host,
    first: Enclave,
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
    relays: dict[int, Host] = {1: host}
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
                t = throughput(relay.address, policy, c, plan.throughput_total, pids)
                runs[str(n)].append(t["ips"])
                cores[str(n)] = t["cores"]
        scaling = {n: median(v) for n, v in runs.items()}
        say("  " + ", ".join(f"{n} enclave(s): {v:.0f}/s" for n, v in scaling.items()))
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
