"""The targets and their checks, with exact values (``ephemeralml.bench._targets``)."""

from __future__ import annotations

from typing import Any

import pytest

from ephemeralml.bench._targets import TARGETS, evaluate_targets, lookup


def test_lookup() -> None:
    r = {"a": {"b": {"c": 3}, "n": None, "x": 1}, "z": 0.0}
    assert lookup(r, "a.b.c") == 3
    assert lookup(r, "a.b") == {"c": 3}
    assert lookup(r, "z") == 0.0  # a zero is a value, not a missing one
    assert lookup(r, "a.n") is None
    assert lookup(r, "a.n.deeper") is None
    assert lookup(r, "a.x.deeper") is None  # through a number
    assert lookup(r, "missing.path") is None


def test_the_targets_in_order() -> None:
    assert [(t.name, t.measured, t.unit, t.higher_is_better) for t in TARGETS] == [
        ("latency_p50", "full.p50_ms", "ms", False),
        ("throughput_16", "full.throughput.16", "inferences/s", True),
        ("enclave_cpu_16", "enclave_cpu_per_inference.16.ratio", "×", False),
        ("enclave_cpu_64", "enclave_cpu_per_inference.64.ratio", "×", False),
        ("crypto", "crypto_ms", "ms", False),
        ("attestation_verify", "attestation_verify_ms", "ms", False),
        ("attestation_verify_cached", "attestation_verify_cached_ms", "ms", False),
        ("session_setup", "session_setup_ms", "ms", False),
        ("cold_start", "cold_start_s", "s", False),
        ("relay_overhead", "relay_overhead_ms", "ms", False),
        ("host_idle_1000", "host_idle_1000_rss_mb", "MB", False),
        ("model_transfer", "model_transfer_mb_s", "MB/s", True),
    ]


def test_fixed_bounds() -> None:
    got = {t.name: t.bound({}) for t in TARGETS}
    assert got == {
        "latency_p50": None,  # derived from the bare baseline: none here
        "throughput_16": None,
        "enclave_cpu_16": 1.15,
        "enclave_cpu_64": 1.15,
        "crypto": 0.3,
        "attestation_verify": 3.0,
        "attestation_verify_cached": 1.0,
        "session_setup": 15.0,
        "cold_start": 3.0,
        "relay_overhead": 0.3,
        "host_idle_1000": 200.0,
        "model_transfer": 200.0,
    }


def test_derived_bounds_exactly() -> None:
    t = evaluate_targets(
        {"bare": {"p50_ms": 2.0, "throughput": {"16": 1000.0}},
         "full": {"p50_ms": 3.6, "throughput": {"16": 700.0}}}
    )  # fmt: skip
    assert t["latency_p50"] == {
        "target": 3.6,  # 1.3 × 2 + 1
        "measured": 3.6,
        "ok": True,  # the bound is inclusive
        "rule": "≤ 1.3 × bare p50 + 1 ms",
        "unit": "ms",
    }
    assert t["throughput_16"] == {
        "target": 700.0,  # 70 % of 1000
        "measured": 700.0,
        "ok": True,
        "rule": "≥ 70 % of bare batched (batch 16)",
        "unit": "inferences/s",
    }


@pytest.mark.parametrize(
    ("result", "ok"),
    [
        ({"cold_start_s": 3.0}, True),
        ({"cold_start_s": 3.0001}, False),
        ({"cold_start_s": 0.0}, True),
        ({"cold_start_s": None}, None),
        ({}, None),
    ],
)
def test_upper_bound(result: dict[str, Any], ok: bool | None) -> None:
    assert evaluate_targets(result)["cold_start"]["ok"] is ok


@pytest.mark.parametrize(
    ("rate", "ok"), [(200.0, True), (199.9, False), (1e6, True), (0.0, False), (None, None)]
)
def test_lower_bound(rate: float | None, ok: bool | None) -> None:
    got = evaluate_targets({"model_transfer_mb_s": rate})["model_transfer"]
    assert got == {
        "target": 200.0, "measured": rate, "ok": ok, "rule": "≥ 200 MB/s", "unit": "MB/s",
    }  # fmt: skip


def test_targets_are_rounded_to_four_digits() -> None:
    t = evaluate_targets({"bare": {"p50_ms": 1.23456789}})
    assert t["latency_p50"]["target"] == 2.6049  # 1.3 × 1.23456789 + 1 = 2.604938...
