"""Building and formatting the report: pure functions of what was measured.

* :func:`parse_loaded_line` and :func:`cold_start` read the enclave's "loaded" line
  (the key release, fetch + decrypt and ONNX Runtime load timings it prints; they
  are not in its readiness line);
* :func:`finalize` adds the derived parts to a result (ratios, targets, verdict);
* :func:`format_table` is the human-readable report of a finalized result;
* :func:`finalize_generation` and :func:`format_generation_table` do the same for a
  result of the generation benchmark (``--generation``).

No I/O (``tests/unit/test_bench_report.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ._plan import CHAT_MODEL, CONCURRENCY, MODEL
from ._targets import GENERATION_TARGETS, TARGETS, Target, evaluate_targets, lookup

__all__ = [
    "cold_start",
    "finalize",
    "finalize_generation",
    "format_generation_table",
    "format_table",
    "parse_loaded_line",
    "transfer_mb_s",
]

_NUM = r"(\d+(?:\.\d+)?)"
_KEY_RELEASE_RE = re.compile(rf"key release {_NUM} ms")
_TRANSFER_RE = re.compile(rf"{_NUM} MB fetched and decrypted in {_NUM} ms")
_ONNX_LOAD_RE = re.compile(rf"ONNX Runtime load {_NUM} ms")
_LOADED_RE = re.compile(r"ephemeral-enclave: loaded (\S+)")
_PARTS = ("key_release_ms", "fetch_decrypt_ms", "onnx_load_ms")


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


def cold_start(total_s: float, lines: Iterable[str]) -> dict[str, Any]:
    """The ``cold_start`` object: ``total_s`` (spawn to readiness), the parts of the
    first "loaded" line among ``lines``, and ``other_ms``, the rest (None unless every
    part is known)."""
    loaded = next((x for x in map(parse_loaded_line, lines) if x is not None), None)
    cold: dict[str, Any] = {"total_s": round(total_s, 3)}
    cold.update(loaded or {"key_release_ms": None, "mb": None, "fetch_decrypt_ms": None,
                           "onnx_load_ms": None})  # fmt: skip
    known = [cold.get(k) for k in _PARTS]
    parts = [float(v) for v in known if v is not None]
    cold["other_ms"] = (
        round(1000 * cold["total_s"] - sum(parts), 0) if len(parts) == len(known) else None
    )
    return cold


def transfer_mb_s(mb: float | None, ms: float | None) -> float | None:
    """MB/s of a fetch+decrypt from the enclave's loaded line (None if unknown)."""
    if mb is None or ms is None:
        return None
    # The line rounds to whole ms: 0 ms means "under half a millisecond".
    return round(mb / (max(ms, 0.5) / 1000.0), 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


#: Concurrency levels at which the enclave's CPU per inference is set beside bare ORT's.
CPU_LEVELS = ("16", "64")


def enclave_cpu_per_inference(r: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """At 16 and 64 sessions: the enclave's CPU ms per inference (its process's CPU time
    over the run, per request) beside bare ONNX Runtime's CPU ms per sentence (batches
    of as many sentences), and their ratio. Unlike throughput, this does not depend on
    the client and the bare run sharing the machine with the enclave."""
    out: dict[str, dict[str, float | None]] = {}
    for c in CPU_LEVELS:
        enclave = lookup(r, f"full.throughput_detail.{c}.cpu_ms_per_request.enclave")
        cores, ips = lookup(r, f"bare.cpu_cores.{c}"), lookup(r, f"bare.throughput.{c}")
        bare = None if cores is None or not ips else round(1000 * cores / ips, 3)
        out[c] = {"enclave_ms": enclave, "bare_ms": bare, "ratio": _ratio(enclave, bare)}
    return out


def finalize(r: dict[str, Any]) -> dict[str, Any]:
    """Add the derived parts to a result: ratios full/bare, targets and a verdict."""
    ratios: dict[str, Any] = {}
    for k in ("p50_ms", "p95_ms", "p99_ms"):
        ratios[k.removesuffix("_ms")] = _ratio(lookup(r, f"full.{k}"), lookup(r, f"bare.{k}"))
    ratios["throughput"] = {
        str(c): _ratio(lookup(r, f"full.throughput.{c}"), lookup(r, f"bare.throughput.{c}"))
        for c in CONCURRENCY
    }
    r["ratios"] = ratios
    r["enclave_cpu_per_inference"] = enclave_cpu_per_inference(r)
    r["targets"] = evaluate_targets(r)
    r["summary"] = _summary(r["targets"])
    return r


def _summary(targets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    missed = [k for k, v in targets.items() if v["ok"] is False]
    unknown = [k for k, v in targets.items() if v["ok"] is None]
    return {"missed": missed, "not_measured": unknown, "all_met": not missed and not unknown}


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def finalize_generation(r: dict[str, Any]) -> dict[str, Any]:
    """Add the derived parts to a generation result: full − bare and full / bare of
    the streaming latencies, tokens/s at each level over tokens/s at one stream (for
    both paths), full / bare tokens/s, the targets and a verdict."""
    g = r.get("generation")
    if isinstance(g, dict):
        for side in ("bare", "full"):
            d = g.get(side)
            if not isinstance(d, dict):
                continue
            tps = d.get("tokens_per_s") or {}
            d["scaling"] = {c: _ratio(v, tps.get("1")) for c, v in tps.items()}
        g["ttft_overhead_ms"] = _difference(
            lookup(g, "full.ttft_p50_ms"), lookup(g, "bare.ttft_p50_ms")
        )
        g["itl_overhead_ms"] = _difference(
            lookup(g, "full.itl_mean_ms"), lookup(g, "bare.itl_mean_ms")
        )
        g["itl_ratio"] = _ratio(lookup(g, "full.itl_mean_ms"), lookup(g, "bare.itl_mean_ms"))
        full_tps = lookup(g, "full.tokens_per_s") or {}
        g["tokens_per_s_ratio"] = {
            c: _ratio(v, lookup(g, f"bare.tokens_per_s.{c}")) for c, v in full_tps.items()
        }
    r["targets"] = evaluate_targets(r, GENERATION_TARGETS)
    r["summary"] = _summary(r["targets"])
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
    extra = lookup(r, "plan.enclave_args")
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
            f"{'  ' + k + ' ms':<38}{_f(lookup(r, f'bare.{k}_ms')):>10}"
            f"{_f(lookup(r, f'full.{k}_ms')):>12}"
            f"{_f(lookup(r, f'ratios.{k}'), 2, '×'):>11}"
            f"{_f(lookup(r, f'direct.{k}_ms')):>20}"
        )
    add("")
    add(f"{'Throughput, inferences/s':<38}{head}   cores used (full: host/enclave/client)")
    for c in CONCURRENCY:
        cpu = lookup(r, f"full.cpu_cores.{c}") or {}
        cores = (
            f"{_f(cpu.get('host'))}/{_f(cpu.get('enclave'))}/{_f(cpu.get('client'))}"
            if cpu
            else "n/a"
        )
        add(
            f"{f'  c={c} (bare: batch of {c})':<38}"
            f"{_f(lookup(r, f'bare.throughput.{c}'), 0):>10}"
            f"{_f(lookup(r, f'full.throughput.{c}'), 0):>12}"
            f"{_f(lookup(r, f'ratios.throughput.{c}'), 2, '×'):>11}   {cores}"
        )
    bare_cores = lookup(r, "bare.cpu_cores") or {}
    if bare_cores:
        add(
            "  bare ORT cores used per batch size: "
            + ", ".join(f"{k}: {_f(v)}" for k, v in bare_cores.items())
        )
    for level in CPU_LEVELS:
        per = lookup(r, f"full.throughput_detail.{level}.cpu_ms_per_request") or {}
        cpu = lookup(r, f"enclave_cpu_per_inference.{level}") or {}
        if per:
            add(
                f"  CPU ms per inference at c={level}: host {_f(per.get('host'), 3)}, enclave "
                f"{_f(per.get('enclave'), 3)}, client {_f(per.get('client'), 3)}; "
                f"bare ORT (batch of {level}) {_f(cpu.get('bare_ms'), 3)}; "
                f"enclave/bare {_f(cpu.get('ratio'), 2, '×')}"
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
        f" mode): {_f(r.get('session_setup_ms'))} ms (p95 {_f(lookup(r, 'session_setup.p95_ms'))}"
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
        f"{_f(idle.get('enclave_before_mb'), 0)}; "
        "an idle client is not relayed to it before its first byte)"
    )
    scaling = r.get("scaling") or {}
    if scaling:
        add(
            f"Scaling, {r.get('scaling_concurrency', 16)} sessions round robin: "
            + ", ".join(
                f"{n} enclave{'s' if n != '1' else ''} {_f(v, 0)}/s" for n, v in scaling.items()
            )
        )
    _add_verdict(lines, r, TARGETS)
    return "\n".join(lines)


def _add_verdict(lines: list[str], r: Mapping[str, Any], targets: Iterable[Target]) -> None:
    """The targets, what was missed, the notes and the duration: every report ends so."""
    add = lines.append
    add("")
    add("Targets")
    whats = {x.name: x.what for x in targets}
    for name, t in (r.get("targets") or {}).items():
        verdict = {True: "ok  ", False: "MISS", None: "n/a "}[t["ok"]]
        what = whats.get(name, name)
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


def format_generation_table(r: Mapping[str, Any]) -> str:
    """The human-readable report of a finalized generation result."""
    m = r.get("machine") or {}
    g = r.get("generation") or {}
    lines: list[str] = []
    add = lines.append
    model = g.get("model") or {}
    add(
        f"ephemeralml generation benchmark ({r.get('mode', '?')}): "
        f"{r.get('model', CHAT_MODEL)} ({model.get('name', '?')}, {model.get('weights', '?')}), "
        f"{m.get('cpu_count', '?')} cores ({m.get('affinity', '?')} usable), "
        f"Python {m.get('python', '?')}, ONNX Runtime {m.get('onnxruntime', '?')}, "
        f"commit {(r.get('git') or {}).get('commit_short') or 'n/a'}"
    )
    extra = lookup(r, "plan.enclave_args")
    if extra:
        add(f"enclave flags: {' '.join(extra)}")
    pt, at = g.get("prompt_tokens") or {}, g.get("answer_tokens") or {}
    add(
        f"inputs: {lookup(r, 'plan.prompts') or '?'} chat prompts of "
        f"{_f(pt.get('min'), 0)}-{_f(pt.get('max'), 0)} tokens (chat template included), "
        f"greedy, max_tokens {lookup(r, 'plan.max_tokens') or '?'}; answers of "
        f"{_f(at.get('min'), 0)}-{_f(at.get('max'), 0)} tokens "
        f"({_f(at.get('mean'), 1)} on average), the same text on both paths"
    )
    add("")
    reps = lookup(r, "plan.latency_repetitions")
    add(
        f"{f'Streaming, one answer at a time (median of {reps})':<44}"
        f"{'bare ORT':>10}{'full path':>11}{'full−bare':>11}{'full/bare':>11}"
    )
    for key, label in (
        ("ttft_p50_ms", "time to first token p50, ms"),
        ("ttft_mean_ms", "time to first token mean, ms"),
        ("itl_mean_ms", "inter-token latency mean, ms"),
        ("itl_p50_ms", "inter-token latency p50, ms"),
        ("itl_p90_ms", "inter-token latency p90, ms"),
    ):
        bare, full = lookup(g, f"bare.{key}"), lookup(g, f"full.{key}")
        add(
            f"{'  ' + label:<44}{_f(bare):>10}{_f(full):>11}"
            f"{_f(_difference(full, bare)):>11}{_f(_ratio(full, bare), 3, '×'):>11}"
        )
    add("")
    add(
        f"{'Aggregate tokens/s, N streams at once':<44}{'bare ORT':>10}{'full path':>11}"
        f"{'full/bare':>11}   full: × 1 stream, ITL mean under load"
    )
    for c, full in (lookup(g, "full.tokens_per_s") or {}).items():
        label = f"  {c} stream{'s' if c != '1' else ''}"
        add(
            f"{label:<44}{_f(lookup(g, f'bare.tokens_per_s.{c}'), 1):>10}{_f(full, 1):>11}"
            f"{_f(lookup(g, f'tokens_per_s_ratio.{c}'), 2, '×'):>11}"
            f"   {_f(lookup(g, f'full.scaling.{c}'), 2, '×')}, "
            f"{_f(lookup(g, f'full.under_load.{c}.itl_mean_ms'))} ms"
        )
    bare_scaling = lookup(g, "bare.scaling") or {}
    if bare_scaling:
        add(
            "  bare ORT × 1 stream: "
            + ", ".join(f"{c}: {_f(v, 2, '×')}" for c, v in bare_scaling.items())
        )
    for c in lookup(g, "full.throughput_detail") or {}:
        per = lookup(g, f"full.throughput_detail.{c}.cpu_ms_per_token") or {}
        if per:
            add(
                f"  CPU ms per token at {c} stream{'s' if c != '1' else ''}: bare ORT "
                f"{_f(lookup(g, f'bare.throughput_detail.{c}.cpu_ms_per_token.bare'))}; full: "
                f"enclave {_f(per.get('enclave'))}, host {_f(per.get('host'))}, "
                f"client {_f(per.get('client'))}"
            )
    load = g.get("enclave_load") or {}
    if load:
        add("")
        add(
            f"Chat model load in the enclave: key release {_f(load.get('key_release_ms'), 0)} ms, "
            f"{_f(load.get('mb'), 1)} MB fetched and decrypted in "
            f"{_f(load.get('fetch_decrypt_ms'), 0)} ms, ONNX Runtime load "
            f"{_f(load.get('onnx_load_ms'), 0)} ms; bare ORT load {_f(lookup(g, 'bare.load_s'))} s"
        )
    _add_verdict(lines, r, GENERATION_TARGETS)
    return "\n".join(lines)
