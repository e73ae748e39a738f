"""Pure statistics of the benchmark: percentiles, latency summaries, drift per round.

No I/O, no clock: every function here is a function of its arguments
(``tests/unit/test_bench_stats.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "StreamTiming",
    "median",
    "median_of",
    "percentile",
    "round_p50s",
    "stream_timing",
    "summarize_ms",
    "summarize_streams",
]


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


@dataclass(frozen=True)
class StreamTiming:
    """One streamed answer: time to its first piece of text and the gaps between
    consecutive pieces, in seconds."""

    ttft_s: float
    gaps_s: tuple[float, ...]

    @property
    def pieces(self) -> int:
        return len(self.gaps_s) + 1


def stream_timing(start: float, piece_times: Sequence[float]) -> StreamTiming:
    """The timing of an answer whose request was sent (or whose generation began) at
    ``start`` and whose non-empty pieces of text arrived at ``piece_times`` (one
    clock, seconds). Time to first token is ``piece_times[0] - start``; the
    inter-token gaps are the differences of consecutive pieces. ValueError for no
    pieces, or times that go backwards."""
    if not piece_times:
        raise ValueError("an answer with no piece of text has no time to first token")
    times = [start, *piece_times]
    if any(b < a for a, b in itertools.pairwise(times)):
        raise ValueError("piece times must not go backwards (nor precede the start)")
    gaps = tuple(b - a for a, b in itertools.pairwise(piece_times))
    return StreamTiming(piece_times[0] - start, gaps)


def summarize_streams(timings: Sequence[StreamTiming]) -> dict[str, Any]:
    """TTFT p50/mean and inter-token latency mean/p50/p90 in ms over some answers.

    The inter-token figures pool the gaps of every answer (so a long answer weighs
    more than a short one, as its tokens do); they are None when no answer had two
    pieces. ValueError for no answers."""
    if not timings:
        raise ValueError("no answers to summarize")
    ttft = [t.ttft_s * 1000.0 for t in timings]
    gaps = [g * 1000.0 for t in timings for g in t.gaps_s]
    out: dict[str, Any] = {
        "ttft_p50_ms": round(percentile(ttft, 50), 3),
        "ttft_mean_ms": round(sum(ttft) / len(ttft), 3),
        "itl_mean_ms": None,
        "itl_p50_ms": None,
        "itl_p90_ms": None,
        "answers": len(timings),
        "gaps": len(gaps),
    }
    if gaps:
        out["itl_mean_ms"] = round(sum(gaps) / len(gaps), 3)
        out["itl_p50_ms"] = round(percentile(gaps, 50), 3)
        out["itl_p90_ms"] = round(percentile(gaps, 90), 3)
    return out


def median_of(runs: Sequence[Mapping[str, Any]], digits: int = 3) -> dict[str, Any]:
    """Key by key, the median of the numeric values the ``runs`` (dicts with the same
    keys) hold (a whole median of integers stays an integer); None for a key that is
    None in every run. How repetitions of
    :func:`summarize_streams` are reported."""
    if not runs:
        raise ValueError("no runs")
    out: dict[str, Any] = {}
    for k in runs[0]:
        raw = [r[k] for r in runs if r.get(k) is not None]
        m = median([float(v) for v in raw], digits) if raw else None
        counts = all(isinstance(v, int) for v in raw)
        out[k] = int(m) if m is not None and counts and m.is_integer() else m
    return out
