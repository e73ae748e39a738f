"""Pure statistics of the benchmark: percentiles, latency summaries, drift per round.

No I/O, no clock: every function here is a function of its arguments
(``tests/unit/test_bench_stats.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["median", "percentile", "round_p50s", "summarize_ms"]


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


def median(values: Sequence[float], digits: int = 1) -> float:
    """The 50th percentile, rounded to ``digits`` (how repeated runs are reported)."""
    return round(percentile(values, 50), digits)


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


def round_p50s(samples_s: Sequence[float], rounds: int) -> list[float]:
    """p50 in ms of each of ``rounds`` consecutive equal chunks (drift shows here)."""
    per = max(1, len(samples_s) // rounds)
    chunks = [samples_s[i : i + per] for i in range(0, per * rounds, per)]
    return [round(percentile(c, 50) * 1000, 3) for c in chunks if c]
