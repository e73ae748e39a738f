"""The benchmark's statistics, with exact values (``ephemeralml.bench._stats``)."""

from __future__ import annotations

import pytest

from ephemeralml.bench._stats import median, percentile, round_p50s, summarize_ms


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0, 1.0, 4.0, 2.0, 3.0], 0, 1.0),
        ([5.0, 1.0, 4.0, 2.0, 3.0], 12.5, 1.5),  # rank 0.5: halfway from 1 to 2
        ([5.0, 1.0, 4.0, 2.0, 3.0], 50, 3.0),
        ([5.0, 1.0, 4.0, 2.0, 3.0], 62.5, 3.5),
        ([5.0, 1.0, 4.0, 2.0, 3.0], 100, 5.0),
        ([10.0, 20.0, 30.0, 40.0], 25, 17.5),  # rank 0.75
        ([10.0, 20.0, 30.0, 40.0], 90, 37.0),  # rank 2.7
        ([1.0, 1.0, 1.0, 9.0], 50, 1.0),  # ties
        ([float(i) for i in range(101)], 99, 99.0),  # an exact rank
        ([7.0], 37, 7.0),
    ],
)
def test_percentile_exactly(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_percentile_does_not_reorder_its_input() -> None:
    values = [3.0, 1.0, 2.0]
    assert percentile(values, 50) == 2.0
    assert values == [3.0, 1.0, 2.0]


def test_percentile_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"^percentile of no values$"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"^percentile 101 is not in 0\.\.100$"):
        percentile([1.0], 101)


def test_median_rounds() -> None:
    assert median([3.04, 1.0, 2.26]) == 2.3
    assert median([1.0, 2.0], 0) == 2.0  # 1.5 rounds half to even
    assert median([812.54, 812.46], 1) == 812.5


def test_summarize_ms_exactly() -> None:
    assert summarize_ms([0.004, 0.001, 0.003, 0.002]) == {
        "p50_ms": 2.5,
        "p95_ms": 3.85,
        "p99_ms": 3.97,
        "mean_ms": 2.5,
        "min_ms": 1.0,
        "max_ms": 4.0,
        "n": 4,
    }
    assert summarize_ms([0.0015]) == {
        "p50_ms": 1.5,
        "p95_ms": 1.5,
        "p99_ms": 1.5,
        "mean_ms": 1.5,
        "min_ms": 1.5,
        "max_ms": 1.5,
        "n": 1,
    }


def test_summarize_ms_rounds_to_a_tenth_of_a_microsecond() -> None:
    assert summarize_ms([0.00012345678])["p50_ms"] == 0.1235


def test_round_p50s_exactly() -> None:
    # 7 samples in 3 rounds: chunks of 2, the last sample left out.
    assert round_p50s([0.001, 0.003, 0.002, 0.002, 0.010, 0.020, 0.5], 3) == [2.0, 2.0, 15.0]
    assert round_p50s([0.001] * 10 + [0.002] * 10, 2) == [1.0, 2.0]
    # Fewer samples than rounds: one chunk per sample.
    assert round_p50s([0.001, 0.004], 5) == [1.0, 4.0]
