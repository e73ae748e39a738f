"""The targets of the issue and their checks: pure functions of a result.

A result is the benchmark's JSON object (docs/benchmarks.md); each
:class:`Target` reads one measured value from it by path and compares it with a
bound that is either fixed or derived from the bare baseline in the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GENERATION_TARGETS", "TARGETS", "Target", "evaluate_targets", "lookup"]


def lookup(r: Mapping[str, Any], path: str) -> Any:
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
    bare = lookup(r, "bare.p50_ms")
    return None if bare is None else 1.3 * bare + 1.0


def _throughput_bound(r: Mapping[str, Any]) -> float | None:
    bare = lookup(r, "bare.throughput.16")
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
        "enclave_cpu_16", "enclave CPU per inference / bare, 16 sessions", "≤ 1.15 ×",
        "enclave_cpu_per_inference.16.ratio", "×", _fixed(1.15),
    ),
    Target(
        "enclave_cpu_64", "enclave CPU per inference / bare, 64 sessions", "≤ 1.15 ×",
        "enclave_cpu_per_inference.64.ratio", "×", _fixed(1.15),
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


def _itl_bound(r: Mapping[str, Any]) -> float | None:
    bare = lookup(r, "generation.bare.itl_mean_ms")
    return None if bare is None else 1.05 * bare


def _ttft_bound(r: Mapping[str, Any]) -> float | None:
    bare = lookup(r, "generation.bare.ttft_p50_ms")
    return None if bare is None else bare + 2.0


#: The generation benchmark's targets (``--generation``; issue 11).
GENERATION_TARGETS: tuple[Target, ...] = (
    Target(
        "gen_itl", "inter-token latency (mean), full path", "≤ 1.05 × bare mean",
        "generation.full.itl_mean_ms", "ms", _itl_bound,
    ),
    Target(
        "gen_ttft", "time to first token (p50), full path", "≤ bare p50 + 2 ms",
        "generation.full.ttft_p50_ms", "ms", _ttft_bound,
    ),
    Target(
        "gen_streams_8", "tokens/s at 8 streams / at 1 stream, full", "≥ 3 ×",
        "generation.full.scaling.8", "×", _fixed(3.0), higher_is_better=True,
    ),
)  # fmt: skip


def evaluate_targets(
    r: Mapping[str, Any], targets: Sequence[Target] = TARGETS
) -> dict[str, dict[str, Any]]:
    """{name: {"target", "measured", "ok", "rule", "unit"}} for each of ``targets``;
    ``ok`` is None where either side is unknown (a section that did not run or failed)."""
    out: dict[str, dict[str, Any]] = {}
    for t in targets:
        measured = lookup(r, t.measured)
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
