"""Probes of running processes and of the machine, from ``/proc`` (Linux).

Each reading is ``None`` (or ``{}``) where ``/proc`` cannot be read, so the benchmark
reports "n/a" on another system instead of failing. :func:`cpu_usage` is pure (a
function of two readings) and unit-tested.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import re
from pathlib import Path
from typing import Any

__all__ = [
    "CLK_TCK",
    "cpu_stat",
    "cpu_usage",
    "fd_count",
    "machine_info",
    "proc_cpu_s",
    "proc_status_mb",
    "self_cpu_s",
    "thread_count",
]

#: Clock ticks per second, the unit of /proc/PID/stat and /proc/stat.
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_status_mb(pid: int | str, key: str) -> float | None:
    """A "VmRSS"/"VmHWM" line of /proc/PID/status in MB (None where unreadable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return round(int(m.group(1)) / 1024, 1) if m else None


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_s() -> float:
    """User + system CPU seconds of this process."""
    t = os.times()
    return t.user + t.system


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def thread_count() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def cpu_stat() -> list[int] | None:
    """The machine's "cpu" line of /proc/stat: jiffies per state."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return [int(x) for x in line.split()[1:]]


def cpu_usage(
    before: list[int] | None, after: list[int] | None, clk_tck: int = CLK_TCK
) -> dict[str, Any]:
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
        "busy_cpu_s": round(busy / clk_tck, 2),
    }


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, Python and the versions of what is measured."""
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
