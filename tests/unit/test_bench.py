"""The benchmark's pure parts: statistics, log-line parsing, targets, JSON and table.

Nothing here times anything or starts a program; the benchmark itself is run by
hand (``scripts/bench.py``, docs/benchmarks.md). More exact values per module in
``test_bench_stats.py``, ``test_bench_targets.py``, ``test_bench_report.py``; the
process harness in ``test_bench_processes.py``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from ephemeralml.bench import _cli, _procfs, _report, _stats
from ephemeralml.bench._plan import CONCURRENCY, MODEL, SCHEMA_VERSION
from ephemeralml.bench._processes import HOST, endpoint_port
from ephemeralml.bench._report import finalize, format_table, parse_loaded_line
from ephemeralml.bench._stats import percentile, summarize_ms
from ephemeralml.bench._targets import TARGETS, evaluate_targets
from ephemeralml.runtime._runner import parse_ready, ready_line

# ----------------------------------------------------------------- percentile


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentile_agrees_with_numpy_linear(q: float, n: int) -> None:
    values = np.random.default_rng(n).lognormal(size=n).tolist()
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_small_cases() -> None:
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # order of the input does not matter
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


@pytest.mark.parametrize("q", [-1, 100.5, float("nan")])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_percentile_of_nothing() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_ms_converts_seconds() -> None:
    s = summarize_ms([0.001, 0.002, 0.003, 0.004])
    assert s["p50_ms"] == pytest.approx(2.5)
    assert s["min_ms"] == pytest.approx(1.0)
    assert s["max_ms"] == pytest.approx(4.0)
    assert s["mean_ms"] == pytest.approx(2.5)
    assert s["n"] == 4
    assert s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]


def test_round_p50s() -> None:
    samples = [0.001] * 10 + [0.002] * 10
    assert _stats.round_p50s(samples, 2) == [1.0, 2.0]


# ------------------------------------------------------------- log lines

LOADED = (
    "ephemeral-enclave: loaded all-MiniLM-L6-v2 (manifest 0123456789abcdef): key release "
    "114 ms, 23.4 MB fetched and decrypted in 176 ms, ONNX Runtime load 860 ms\n"
)


def test_parse_loaded_line() -> None:
    assert parse_loaded_line(LOADED) == {
        "model": "all-MiniLM-L6-v2",
        "key_release_ms": 114.0,
        "mb": 23.4,
        "fetch_decrypt_ms": 176.0,
        "onnx_load_ms": 860.0,
    }


def test_parse_loaded_line_other_lines() -> None:
    assert parse_loaded_line("ephemeral-enclave: serving all-MiniLM-L6-v2 on tcp:…\n") is None
    assert parse_loaded_line("") is None


def test_parse_loaded_line_keeps_what_it_can_read() -> None:
    line = "ephemeral-enclave: loaded m (manifest ab): key release 9 ms, ONNX Runtime load 7 ms"
    got = parse_loaded_line(line)
    assert got is not None
    assert got["key_release_ms"] == 9.0 and got["onnx_load_ms"] == 7.0
    assert got["mb"] is None and got["fetch_decrypt_ms"] is None


def test_ports_come_from_the_host_readiness_line() -> None:
    # What the harness reads instead of the human lines ("relaying tcp:…", "KMS forwarder …").
    line = ready_line(
        HOST, relay="tcp:127.0.0.1:44275", enclaves=["tcp:127.0.0.1:5005"],
        services="tcp:127.0.0.1:35935", kms="tcp:127.0.0.1:34215",
        kms_upstream="http://127.0.0.1:37315", profile="mock",
    )  # fmt: skip
    ready = parse_ready(line + "\n", HOST)
    assert ready is not None
    assert endpoint_port(ready["services"]) == 35935
    assert endpoint_port(ready["kms"]) == 34215
    assert endpoint_port(ready["relay"]) == 44275


def test_human_lines_are_not_readiness_lines() -> None:
    human = (
        "ephemeral-host: relaying tcp:127.0.0.1:44275 -> tcp:127.0.0.1:5005 "
        "(mock mode: loopback TCP instead of vsock)\n"
    )
    assert parse_ready(human, HOST) is None


def test_transfer_rate() -> None:
    assert _report.transfer_mb_s(23.4, 176.0) == pytest.approx(23.4 / 0.176, abs=0.1)
    assert _report.transfer_mb_s(1.0, 0.0) == 2000.0  # "0 ms" is under half a millisecond
    assert _report.transfer_mb_s(None, 10.0) is None
    assert _report.transfer_mb_s(1.0, None) is None


def test_cpu_usage() -> None:
    # user nice system idle iowait irq softirq steal
    before = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    after = [300, 0, 100, 500, 0, 0, 0, 100, 0, 0]
    got = _procfs.cpu_usage(before, after)
    assert got["busy_fraction"] == pytest.approx(0.4)
    assert got["steal_fraction"] == pytest.approx(0.1)
    assert _procfs.cpu_usage(None, after) == {}


# --------------------------------------------------------------- targets


def fake_result(**over: Any) -> dict[str, Any]:
    """A result with every measured field the targets read, all of them passing."""
    r: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "mode": "quick",
        "model": MODEL,
        "machine": {"cpu_count": 2, "affinity": 2, "python": "3.11.7", "onnxruntime": "1.31.1"},
        "git": {"commit": "0" * 40, "commit_short": "0" * 10, "dirty": False},
        "inputs": {"sentences": 24, "mean_tokens": 13.0},
        "bare": {
            "p50_ms": 2.5,
            "p95_ms": 3.0,
            "p99_ms": 4.0,
            "throughput": {"1": 400.0, "4": 700.0, "16": 900.0, "64": 920.0},
            "cpu_cores": {"16": 2.0, "64": 2.0},  # 2.222 and 2.174 ms per sentence
        },
        "full": {
            "p50_ms": 4.0,  # ≤ 1.3 × 2.5 + 1 = 4.25
            "p95_ms": 5.0,
            "p99_ms": 6.0,
            "throughput": {"1": 250.0, "4": 500.0, "16": 700.0, "64": 720.0},  # 700 ≥ 630
            "throughput_detail": {  # enclave CPU ≤ 1.15 × bare's per sentence
                "16": {"cpu_ms_per_request": {"enclave": 2.4}},
                "64": {"cpu_ms_per_request": {"enclave": 2.4}},
            },
        },
        "direct": {"p50_ms": 3.8, "p95_ms": 4.5, "p99_ms": 5.5},
        "crypto_ms": 0.25,
        "crypto_parts_ms": {"seal_request": 0.01, "open_request": 0.02},
        "attestation_verify_ms": 1.2,
        "attestation_verify_cached_ms": 0.4,
        "session_setup_ms": 2.5,
        "cold_start_s": 1.5,
        "cold_start": {"total_s": 1.5, "key_release_ms": 110.0},
        "model_transfer_mb_s": 360.0,
        "relay_overhead_ms": 0.2,
        "host_idle_1000_rss_mb": 123.0,
        "peak_rss_mb": {"host": 130.0, "enclave": 370.0, "bench": 320.0},
        "scaling": {"1": 500.0, "2": 400.0},
        "notes": [],
    }
    r.update(over)
    return r


def test_all_targets_met() -> None:
    t = finalize(fake_result())["targets"]  # finalize derives the CPU ratios first
    assert set(t) == {x.name for x in TARGETS}
    assert all(v["ok"] is True for v in t.values()), t
    assert t["latency_p50"]["target"] == pytest.approx(1.3 * 2.5 + 1.0)
    assert t["throughput_16"]["target"] == pytest.approx(0.7 * 900.0)
    assert t["crypto"]["target"] == 0.3
    assert t["host_idle_1000"]["measured"] == 123.0


@pytest.mark.parametrize(
    ("change", "missed"),
    [
        ({"full": {"p50_ms": 4.3, "throughput": {"16": 700.0}}}, "latency_p50"),
        ({"full": {"p50_ms": 4.0, "throughput": {"16": 629.0}}}, "throughput_16"),
        ({"crypto_ms": 0.31}, "crypto"),
        ({"attestation_verify_ms": 3.1}, "attestation_verify"),
        ({"attestation_verify_cached_ms": 1.01}, "attestation_verify_cached"),
        ({"session_setup_ms": 15.5}, "session_setup"),
        ({"cold_start_s": 3.2}, "cold_start"),
        ({"relay_overhead_ms": 0.31}, "relay_overhead"),
        ({"host_idle_1000_rss_mb": 201.0}, "host_idle_1000"),
        ({"model_transfer_mb_s": 199.0}, "model_transfer"),
    ],
)
def test_each_target_can_miss(change: dict[str, Any], missed: str) -> None:
    t = evaluate_targets(fake_result(**change))
    assert [k for k, v in t.items() if v["ok"] is False] == [missed]


def test_bounds_are_inclusive() -> None:
    t = evaluate_targets(
        fake_result(crypto_ms=0.3, full={"p50_ms": 4.25, "throughput": {"16": 630.0}})
    )
    assert t["crypto"]["ok"] is True
    assert t["latency_p50"]["ok"] is True
    assert t["throughput_16"]["ok"] is True


def test_unmeasured_target_is_neither_met_nor_missed() -> None:
    t = evaluate_targets(fake_result(attestation_verify_cached_ms=None, bare={}))
    assert t["attestation_verify_cached"]["ok"] is None
    assert t["attestation_verify_cached"]["measured"] is None
    assert t["latency_p50"]["ok"] is None and t["latency_p50"]["target"] is None
    assert t["throughput_16"]["ok"] is None


# ------------------------------------------------------------ JSON shape


def test_finalized_json_shape() -> None:
    r = json.loads(json.dumps(finalize(fake_result())))
    for path in ("bare", "full"):
        assert {"p50_ms", "p95_ms", "p99_ms", "throughput"} <= set(r[path])
        assert set(r[path]["throughput"]) == {str(c) for c in CONCURRENCY}
    for key in (
        "crypto_ms",
        "attestation_verify_ms",
        "attestation_verify_cached_ms",
        "session_setup_ms",
        "cold_start_s",
        "model_transfer_mb_s",
        "relay_overhead_ms",
        "host_idle_1000_rss_mb",
        "machine",
        "targets",
        "ratios",
        "summary",
    ):
        assert key in r, key
    for v in r["targets"].values():
        assert {"target", "measured", "ok"} <= set(v)
    assert r["ratios"]["p50"] == pytest.approx(4.0 / 2.5, abs=1e-3)
    assert r["ratios"]["throughput"]["16"] == pytest.approx(700 / 900, abs=1e-3)
    assert r["summary"] == {"missed": [], "not_measured": [], "all_met": True}


def test_finalize_lists_misses() -> None:
    r = finalize(fake_result(cold_start_s=4.0, attestation_verify_cached_ms=None))
    assert r["summary"]["missed"] == ["cold_start"]
    assert r["summary"]["not_measured"] == ["attestation_verify_cached"]
    assert r["summary"]["all_met"] is False


# ----------------------------------------------------------------- table


def test_table_marks_misses() -> None:
    text = format_table(finalize(fake_result(relay_overhead_ms=0.5)))
    miss = [line for line in text.splitlines() if line.startswith("  MISS ")]
    assert len(miss) == 1 and "relay" in miss[0]
    assert "MISSED: relay_overhead" in text
    assert sum(line.lstrip().startswith("ok") for line in text.splitlines()) == len(TARGETS) - 1


def test_table_of_a_partial_result() -> None:
    text = format_table(finalize({"mode": "quick", "notes": ["scaling did not complete: x"]}))
    assert "n/a" in text
    assert "MISS " not in text
    assert "note: scaling did not complete: x" in text


# ------------------------------------------------------------ command line


def test_help_and_bad_arguments_start_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["--help"]) == 0
    assert "--quick" in capsys.readouterr().out
    assert _cli.main(["--enclaves", "0"]) == 2
    assert capsys.readouterr().err == "bench: error: --enclaves must be 1 to 8\n"
    assert _cli.main(["--idle-connections", "0"]) == 2
    assert capsys.readouterr().err == "bench: error: --idle-connections must be 1 to 4000\n"
    assert _cli.main(["--no-such-flag"]) == 2
    assert capsys.readouterr().err == "bench: error: unrecognized arguments: --no-such-flag\n"
