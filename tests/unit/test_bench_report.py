"""The report, exactly: the enclave's "loaded" line, the cold start, the derived
parts of a result (ratios, targets, verdict) and the table, character for character.

The table below is the benchmark's output format (docs/benchmarks.md shows it); a
change to it is a change to this file.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ephemeralml.bench._report import (
    cold_start,
    finalize,
    format_table,
    parse_loaded_line,
    transfer_mb_s,
)

LOADED = (
    "ephemeral-enclave: loaded all-MiniLM-L6-v2 (manifest 0123456789abcdef): key release "
    "114 ms, 23.4 MB fetched and decrypted in 176 ms, ONNX Runtime load 860 ms\n"
)


def rich_result() -> dict[str, Any]:
    """A result with every part the table prints (before finalize)."""
    return {
        "schema": 1,
        "mode": "quick",
        "model": "all-MiniLM-L6-v2",
        "machine": {"cpu_count": 4, "affinity": 2, "python": "3.11.9", "onnxruntime": "1.20.1"},
        "git": {"commit": "abcdef0123" + "0" * 30, "commit_short": "abcdef0123", "dirty": True},
        "plan": {"enclave_args": ["--threads=1", "--batch-wait-ms=2"]},
        "inputs": {"sentences": 24, "mean_tokens": 13.25},
        "bare": {
            "p50_ms": 2.5,
            "p95_ms": 3.0,
            "p99_ms": 4.0,
            "throughput": {"1": 400.0, "4": 700.0, "16": 900.0, "64": 920.0},
            "cpu_cores": {"1": 1.0, "4": 1.9, "16": 2.0, "64": 2.0},
        },
        "full": {
            "p50_ms": 4.0,
            "p95_ms": 5.0,
            "p99_ms": 6.0,
            "throughput": {"1": 250.0, "4": 500.0, "16": 700.0, "64": 720.0},
            "cpu_cores": {
                "1": {"host": 0.1, "enclave": 0.9, "client": 0.3},
                "16": {"host": 0.25, "enclave": 1.5, "client": 0.5},
            },
            "throughput_detail": {
                "16": {"cpu_ms_per_request": {"host": 0.357, "enclave": 2.143, "client": 0.714}},
                "64": {"cpu_ms_per_request": {"host": 0.3, "enclave": 2.6, "client": 0.7}},
            },
        },
        "direct": {"p50_ms": 3.8, "p95_ms": 4.5, "p99_ms": 5.5},
        "crypto_ms": 0.2512,
        "crypto_parts_ms": {
            "seal_request": 0.031,
            "open_request": 0.029,
            "respond": 0.101,
            "open_verify": 0.09,
            "sign_receipt": 0.05,
            "verify_receipt": 0.07,
        },
        "attestation_verify_ms": 1.2345,
        "attestation_verify_cached_ms": 0.4,
        "attestation_doc_create_ms": 0.9,
        "session_setup": {"p50_ms": 2.5, "p95_ms": 3.75},
        "session_setup_ms": 2.5,
        "session_setup_mode": "fresh",
        "session_setup_by_mode_ms": {"fresh": 2.5, "cached": 1.25},
        "relay_overhead_ms": 0.2,
        "cold_start_s": 1.457,
        "cold_start": {
            "total_s": 1.457,
            "key_release_ms": 114.0,
            "mb": 23.4,
            "fetch_decrypt_ms": 176.0,
            "onnx_load_ms": 860.0,
            "other_ms": 307.0,
        },
        "model_transfer_mb_s": 133.0,
        "peak_rss_mb": {"host": 130.2, "enclave": 370.6, "bench": 320.0},
        "idle": {
            "connections": 1000,
            "host_before_mb": 60.0,
            "enclave_before_mb": 350.0,
            "enclave_after_mb": 410.5,
        },
        "host_idle_1000_rss_mb": 71.3,
        "scaling": {"1": 500.0, "2": 812.5},
        "scaling_concurrency": 16,
        "notes": ["one note", "another note"],
        "duration_s": 44.75,
    }


#: format_table(finalize(rich_result())), line by line.
TABLE = (
    "ephemeralml benchmark (quick): all-MiniLM-L6-v2, 4 cores (2 usable), Python 3.11.9, ONNX Runtime 1.20.1, commit abcdef0123",
    "enclave flags: --threads=1 --batch-wait-ms=2",
    "inputs: 24 sentences, 13.2 tokens on average ([CLS]/[SEP] included)",
    "",
    "Latency, one request of one sentence    bare ORT   full path  full/bare   direct to enclave",
    "  p50 ms                                    2.50        4.00      1.60×                3.80",
    "  p95 ms                                    3.00        5.00      1.67×                4.50",
    "  p99 ms                                    4.00        6.00      1.50×                5.50",
    "",
    "Throughput, inferences/s                bare ORT   full path  full/bare   cores used (full: host/enclave/client)",
    "  c=1 (bare: batch of 1)                     400         250      0.62×   0.10/0.90/0.30",
    "  c=4 (bare: batch of 4)                     700         500      0.71×   n/a",
    "  c=16 (bare: batch of 16)                   900         700      0.78×   0.25/1.50/0.50",
    "  c=64 (bare: batch of 64)                   920         720      0.78×   n/a",
    "  bare ORT cores used per batch size: 1: 1.00, 4: 1.90, 16: 2.00, 64: 2.00",
    "  CPU ms per inference at c=16: host 0.357, enclave 2.143, client 0.714; bare ORT (batch of 16) 2.222; enclave/bare 0.96×",
    "  CPU ms per inference at c=64: host 0.300, enclave 2.600, client 0.700; bare ORT (batch of 64) 2.174; enclave/bare 1.20×",
    "",
    "Crypto per request (in memory, 1×384 float32): 0.251 ms (seal request 0.031, open request 0.029, sign receipt + seal response 0.101, open response + verify receipt 0.090; alone: sign 0.050, verify 0.070)",
    "Attestation verification: cold 1.234 ms, cached chain 0.400 ms (mock NSM makes a document in 0.900 ms)",
    "Session setup (connect + close via host, p50, fresh mode): 2.50 ms (p95 3.75 ms); by mode: fresh 2.50 ms, cached 1.25 ms",
    "Relay overhead (p50 via host − p50 direct): 0.200 ms",
    "Cold start (spawn → serving): 1.46 s: key release 114 ms, 23.4 MB fetched and decrypted in 176 ms (133 MB/s), ONNX Runtime load 860 ms, the rest (interpreter, imports, NSM, credentials) 307 ms",
    "Peak RSS: host 130 MB, enclave 371 MB, bench process (client + bare ORT) 320 MB",
    "1000 idle connections: host 71 MB RSS (from 60), enclave 410 MB (from 350; an idle client is not relayed to it before its first byte)",
    "Scaling, 16 sessions round robin: 1 enclave 500/s, 2 enclaves 812/s",
    "",
    "Targets",
    "  ok    single-request p50, full path                       4.000 ms            target ≤ 1.3 × bare p50 + 1 ms (= 4.250)",
    "  ok    throughput at 16 sessions                         700.000 inferences/s  target ≥ 70 % of bare batched (batch 16) (= 630.000)",
    "  ok    enclave CPU per inference / bare, 16 sessions       0.964 ×             target ≤ 1.15 × (= 1.150)",
    "  MISS  enclave CPU per inference / bare, 64 sessions       1.196 ×             target ≤ 1.15 × (= 1.150)",
    "  ok    crypto per request (seal+open+sign+verify)          0.251 ms            target ≤ 0.3 ms (= 0.300)",
    "  ok    attestation verification, cold                      1.234 ms            target ≤ 3 ms (= 3.000)",
    "  ok    attestation verification, cached chain              0.400 ms            target ≤ 1 ms (= 1.000)",
    "  ok    session setup (connect + close)                     2.500 ms            target ≤ 15 ms (= 15.000)",
    "  ok    cold start, spawn → serving                         1.457 s             target ≤ 3 s (= 3.000)",
    "  ok    host relay overhead (p50 via host − direct)         0.200 ms            target ≤ 0.3 ms (= 0.300)",
    "  ok    host RSS with 1000 idle connections                71.300 MB            target ≤ 200 MB (= 200.000)",
    "  MISS  model transfer store → host → enclave, decrypted    133.000 MB/s          target ≥ 200 MB/s (= 200.000)",
    "MISSED: enclave_cpu_64, model_transfer (see docs/benchmarks.md for why)",
    "note: one note",
    "note: another note",
    "run took 44.8 s",
)


def test_table_exactly() -> None:
    assert format_table(finalize(rich_result())).splitlines() == list(TABLE)


def test_table_of_nothing_measured() -> None:
    text = format_table(finalize({"mode": "full", "notes": []}))
    lines = text.splitlines()
    assert lines[0] == (
        "ephemeralml benchmark (full): all-MiniLM-L6-v2, ? cores (? usable), Python ?, "
        "ONNX Runtime ?, commit n/a"
    )
    assert lines[1] == "inputs: ? sentences, n/a tokens on average ([CLS]/[SEP] included)"
    assert "  p50 ms                                     n/a         n/a        n/a" in text
    assert lines[-1] == (
        "  n/a   model transfer store → host → enclave, decrypted        n/a MB/s          "
        "target ≥ 200 MB/s (= 200.000)"
    )
    assert not any(line.startswith(("MISSED", "note:", "run took", "Scaling")) for line in lines)


def test_finalize_exactly() -> None:
    r = finalize(rich_result())
    assert r["ratios"] == {
        "p50": 1.6,
        "p95": 1.667,
        "p99": 1.5,
        "throughput": {"1": 0.625, "4": 0.714, "16": 0.778, "64": 0.783},
    }
    # The enclave's CPU per inference beside bare ORT's per sentence: 1000 × cores / ips.
    assert r["enclave_cpu_per_inference"] == {
        "16": {"enclave_ms": 2.143, "bare_ms": 2.222, "ratio": 0.964},
        "64": {"enclave_ms": 2.6, "bare_ms": 2.174, "ratio": 1.196},
    }
    assert r["summary"] == {
        "missed": ["enclave_cpu_64", "model_transfer"], "not_measured": [], "all_met": False,
    }  # fmt: skip
    assert r["targets"]["model_transfer"] == {
        "target": 200.0, "measured": 133.0, "ok": False, "rule": "≥ 200 MB/s", "unit": "MB/s",
    }  # fmt: skip
    assert json.loads(json.dumps(r)) == r  # plain JSON, nothing lost


def test_finalize_ratio_of_zero_or_missing_is_none() -> None:
    r = finalize({"bare": {"p50_ms": 0.0, "throughput": {"1": 10.0}}, "full": {"p50_ms": 1.0}})
    assert r["ratios"]["p50"] is None
    assert r["ratios"]["p95"] is None
    assert r["ratios"]["throughput"] == {"1": None, "4": None, "16": None, "64": None}
    assert r["summary"]["all_met"] is False


def test_parse_loaded_line_exactly() -> None:
    assert parse_loaded_line(LOADED) == {
        "model": "all-MiniLM-L6-v2",
        "key_release_ms": 114.0,
        "mb": 23.4,
        "fetch_decrypt_ms": 176.0,
        "onnx_load_ms": 860.0,
    }
    assert parse_loaded_line('ephemeral-enclave: ready {"listen":"tcp:127.0.0.1:1"}') is None


def test_cold_start_from_the_loaded_line() -> None:
    lines = ["ephemeral-enclave: something else\n", LOADED, LOADED.replace("114", "999")]
    assert cold_start(1.4567, lines) == {
        "total_s": 1.457,
        "model": "all-MiniLM-L6-v2",
        "key_release_ms": 114.0,  # the first loaded line
        "mb": 23.4,
        "fetch_decrypt_ms": 176.0,
        "onnx_load_ms": 860.0,
        "other_ms": 307.0,  # 1457 - 114 - 176 - 860
    }


def test_cold_start_without_a_loaded_line() -> None:
    assert cold_start(2.0, ["ephemeral-enclave: serving m on tcp:127.0.0.1:1\n"]) == {
        "total_s": 2.0,
        "key_release_ms": None,
        "mb": None,
        "fetch_decrypt_ms": None,
        "onnx_load_ms": None,
        "other_ms": None,
    }


def test_cold_start_with_a_part_missing_has_no_rest() -> None:
    line = "ephemeral-enclave: loaded m (manifest ab): key release 9 ms, ONNX Runtime load 7 ms"
    got = cold_start(0.5, [line])
    assert got["other_ms"] is None
    assert (got["key_release_ms"], got["onnx_load_ms"], got["mb"]) == (9.0, 7.0, None)


@pytest.mark.parametrize(
    ("mb", "ms", "rate"),
    [(23.4, 176.0, 133.0), (100.0, 500.0, 200.0), (1.0, 0.0, 2000.0), (1.0, 0.4, 2000.0),
     (None, 1.0, None), (1.0, None, None)],
)  # fmt: skip
def test_transfer_rate_exactly(mb: Any, ms: Any, rate: Any) -> None:
    assert transfer_mb_s(mb, ms) == rate
