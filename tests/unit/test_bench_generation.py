"""The generation benchmark's pure parts: streaming latencies from timestamps, the
median of repetitions, the targets, the derived figures and the report, the
concurrency driver with stand-in answers, and the command line with the run replaced.
No model, no program, no timed assertion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ephemeralml.bench import _cli
from ephemeralml.bench._generation import Answer, _same_text, concurrent, missing_chat_model
from ephemeralml.bench._plan import (
    CHAT_PROMPTS,
    GEN_FULL,
    GEN_QUICK,
    BenchError,
    GenerationPlan,
)
from ephemeralml.bench._report import finalize_generation, format_generation_table
from ephemeralml.bench._stats import (
    StreamTiming,
    median_of,
    stream_timing,
    summarize_streams,
)
from ephemeralml.bench._targets import GENERATION_TARGETS, evaluate_targets

# ---------------------------------------------------------------- timestamps


def test_stream_timing_from_timestamps() -> None:
    t = stream_timing(10.0, [10.25, 10.5, 11.0, 11.125])
    assert t == StreamTiming(0.25, (0.25, 0.5, 0.125))
    assert t.pieces == 4


def test_one_piece_has_no_gap() -> None:
    t = stream_timing(1.0, [1.5])
    assert t == StreamTiming(0.5, ())
    assert t.pieces == 1


def test_equal_times_are_allowed() -> None:
    # Two pieces read from one network read can carry the same clock reading.
    assert stream_timing(2.0, [2.0, 2.0]) == StreamTiming(0.0, (0.0,))


@pytest.mark.parametrize(
    ("start", "times", "message"),
    [
        (0.0, [], r"^an answer with no piece of text has no time to first token$"),
        (5.0, [4.0], r"^piece times must not go backwards \(nor precede the start\)$"),
        (0.0, [1.0, 3.0, 2.0], r"^piece times must not go backwards"),
    ],
)
def test_bad_timestamps(start: float, times: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stream_timing(start, times)


def test_summarize_streams_pools_the_gaps() -> None:
    timings = [
        StreamTiming(0.010, (0.001, 0.003)),  # ms: ttft 10, gaps 1, 3
        StreamTiming(0.030, (0.002,)),  # ttft 30, gap 2
        StreamTiming(0.020, ()),  # ttft 20, no gap
    ]
    assert summarize_streams(timings) == {
        "ttft_p50_ms": 20.0,
        "ttft_mean_ms": 20.0,
        "itl_mean_ms": 2.0,  # (1 + 3 + 2) / 3: every gap weighs the same
        "itl_p50_ms": 2.0,
        "itl_p90_ms": 2.8,  # linear between 2 and 3
        "answers": 3,
        "gaps": 3,
    }


def test_summarize_streams_without_gaps() -> None:
    s = summarize_streams([StreamTiming(0.004, ())])
    assert (s["ttft_p50_ms"], s["itl_mean_ms"], s["itl_p50_ms"], s["itl_p90_ms"]) == (
        4.0, None, None, None,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"^no answers to summarize$"):
        summarize_streams([])


def test_median_of_repetitions() -> None:
    runs: list[dict[str, Any]] = [
        {"ttft_p50_ms": 10.0, "itl_mean_ms": None, "answers": 8, "gaps": 100},
        {"ttft_p50_ms": 30.0, "itl_mean_ms": 2.5, "answers": 8, "gaps": 101},
        {"ttft_p50_ms": 20.0, "itl_mean_ms": 3.5, "answers": 8, "gaps": 103},
    ]
    assert median_of(runs) == {
        "ttft_p50_ms": 20.0,
        "itl_mean_ms": 3.0,  # the runs that have one
        "answers": 8,  # a whole median of counts stays a count
        "gaps": 101,
    }
    assert median_of([{"x": None}]) == {"x": None}
    with pytest.raises(ValueError, match=r"^no runs$"):
        median_of([])


def test_answer_timing() -> None:
    a = Answer(0, "Paris.", 1.0, (1.5, 1.75), 3, 37, "stop")
    assert a.timing() == StreamTiming(0.5, (0.25,))


# ---------------------------------------------------------------- targets


def test_the_generation_targets() -> None:
    assert [(t.name, t.measured, t.unit, t.higher_is_better) for t in GENERATION_TARGETS] == [
        ("gen_itl", "generation.full.itl_mean_ms", "ms", False),
        ("gen_ttft", "generation.full.ttft_p50_ms", "ms", False),
        ("gen_streams_8", "generation.full.scaling.8", "×", True),
    ]
    assert {t.name: t.bound({}) for t in GENERATION_TARGETS} == {
        "gen_itl": None,  # derived from bare: none here
        "gen_ttft": None,
        "gen_streams_8": 3.0,
    }


def _result(**full: Any) -> dict[str, Any]:
    bare = {"ttft_p50_ms": 40.0, "itl_mean_ms": 20.0, "tokens_per_s": {"1": 50.0, "8": 60.0}}
    f = {"ttft_p50_ms": 41.0, "itl_mean_ms": 20.5, "tokens_per_s": {"1": 40.0, "8": 130.0}}
    f.update(full)
    return {"generation": {"bare": bare, "full": f}}


def test_targets_exactly() -> None:
    t = finalize_generation(_result())["targets"]
    assert t["gen_itl"] == {
        "target": 21.0, "measured": 20.5, "ok": True, "rule": "≤ 1.05 × bare mean", "unit": "ms",
    }  # fmt: skip
    assert t["gen_ttft"]["target"] == 42.0
    assert t["gen_ttft"]["ok"] is True
    assert t["gen_streams_8"]["measured"] == 3.25  # 130 / 40
    assert t["gen_streams_8"]["ok"] is True


def test_targets_missed_at_the_bound_and_past_it() -> None:
    r = finalize_generation(
        _result(ttft_p50_ms=42.001, itl_mean_ms=21.0, tokens_per_s={"1": 40.0, "8": 119.0})
    )
    ok = {k: v["ok"] for k, v in r["targets"].items()}
    assert ok == {"gen_itl": True, "gen_ttft": False, "gen_streams_8": False}  # 21.0 ≤ 21.0
    assert r["summary"] == {
        "missed": ["gen_ttft", "gen_streams_8"], "not_measured": [], "all_met": False,
    }  # fmt: skip


def test_targets_not_measured() -> None:
    r = finalize_generation({"generation": None})
    assert all(v["ok"] is None for v in r["targets"].values())
    assert r["summary"]["not_measured"] == ["gen_itl", "gen_ttft", "gen_streams_8"]
    # The embedding benchmark's targets are not judged on a generation result.
    assert set(evaluate_targets(r, GENERATION_TARGETS)) == set(r["targets"])


def test_derived_figures() -> None:
    g = finalize_generation(_result())["generation"]
    assert g["ttft_overhead_ms"] == 1.0
    assert g["itl_overhead_ms"] == 0.5
    assert g["itl_ratio"] == 1.025
    assert g["bare"]["scaling"] == {"1": 1.0, "8": 1.2}
    assert g["full"]["scaling"] == {"1": 1.0, "8": 3.25}
    assert g["tokens_per_s_ratio"] == {"1": 0.8, "8": 2.167}


def test_report_of_a_result() -> None:
    r = _result()
    r.update(
        mode="quick",
        model="smollm2",
        machine={"cpu_count": 2, "affinity": 2, "python": "3.11", "onnxruntime": "1.32.0"},
        plan=GEN_QUICK.describe(),
        notes=["a note"],
        duration_s=61.0,
    )
    text = format_generation_table(finalize_generation(r))
    assert text.startswith("ephemeralml generation benchmark (quick): smollm2")
    assert "  time to first token p50, ms                    40.00      41.00       1.00" in text
    row = "  8 streams                                       60.0      130.0      2.17×   3.25×"
    assert row in text
    assert "  ok    tokens/s at 8 streams / at 1 stream, full" in text
    assert text.endswith("note: a note\nrun took 61.0 s")
    # An empty result still reports, with n/a where nothing was measured.
    assert "n/a" in format_generation_table(finalize_generation({}))


# ---------------------------------------------------------------- driver


def _stand_in(texts: dict[int, str]) -> Any:
    def one(thread: int, prompt: int) -> Answer:
        return Answer(prompt, texts[prompt], 0.0, (0.5, 1.0), 10, 30, "length")

    return one


def test_concurrent_counts_every_answer() -> None:
    texts = {i: f"answer {i}" for i in range(len(CHAT_PROMPTS))}
    got = concurrent(4, 3, _stand_in(texts), texts)
    assert (got["answers"], got["tokens"]) == (12, 120)
    assert got["under_load"]["ttft_p50_ms"] == 500.0
    assert got["under_load"]["itl_mean_ms"] == 500.0


def test_concurrent_counts_different_texts() -> None:
    texts = {i: f"answer {i}" for i in range(len(CHAT_PROMPTS))}
    reference = {**texts, 2: "another answer"}
    got = concurrent(4, 1, _stand_in(texts), reference)  # prompts 0-3, once each
    assert got["texts_differ"] == 1


def test_one_at_a_time_refuses_different_work() -> None:
    a = Answer(2, "another answer", 0.0, (1.0,), 2, 30, "stop")
    with pytest.raises(BenchError, match=r"^full: prompt 2 was answered differently"):
        _same_text({2: "answer 2"}, a, "full")


def test_concurrent_reports_a_failed_thread() -> None:
    def one(thread: int, prompt: int) -> Answer:
        raise BenchError("the stream was cut short")

    with pytest.raises(BenchError, match=r"^2 streams at once: the stream was cut short$"):
        concurrent(2, 1, one, {})


# ---------------------------------------------------------------- command line


def args(*argv: str) -> Any:
    return _cli.parser().parse_args(list(argv))


def test_generation_plans() -> None:
    assert _cli.generation_plan_of(args("--generation")) == GEN_FULL
    assert _cli.generation_plan_of(args("--generation", "--quick")) == GEN_QUICK
    plan = _cli.generation_plan_of(args("--generation", "--enclave-arg=--max-streams=16"))
    assert plan.enclave_args == ("--max-streams=16",)
    assert GEN_FULL.max_tokens == 64
    assert GEN_FULL.concurrency == (1, 4, 8, 16)


def test_missing_chat_model(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")
    assert missing_chat_model(tmp_path) == (
        f"no chat model at {tmp_path} (model.onnx, tokenizer.json missing);"
        " build it with scripts/models.sh smollm2"
    )
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert missing_chat_model(tmp_path) is None


def test_generation_skipped_without_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = tmp_path / "none"
    assert _cli.main(["--generation", "--chat-model-dir", str(where)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"bench: generation skipped: no chat model at {where} (model.onnx, tokenizer.json,"
        " model.json missing); build it with scripts/models.sh smollm2\n"
    )
    assert _cli.main(["--generation", "--strict", "--chat-model-dir", str(where)]) == 1


def test_flags_of_the_other_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["--generation", "--enclaves", "2"]) == 2
    assert "--enclaves and --idle-connections do not apply to --generation" in (
        capsys.readouterr().err
    )
    assert _cli.main(["--chat-model-dir", "x"]) == 2
    assert "--chat-model-dir applies only to --generation" in capsys.readouterr().err


def test_generation_run_on_stdout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("model.onnx", "tokenizer.json", "model.json"):
        (tmp_path / name).write_bytes(b"")
    seen: list[tuple[GenerationPlan, Path]] = []

    def run(plan: GenerationPlan, work_dir: Path, model_dir: Path) -> dict[str, Any]:
        assert work_dir.is_dir()
        seen.append((plan, model_dir))
        return finalize_generation(_result(itl_mean_ms=30.0))

    monkeypatch.setattr(_cli, "run_generation_benchmark", run)
    out_file = tmp_path / "g.json"
    argv = ["--generation", "--quick", "--chat-model-dir", str(tmp_path), "--out", str(out_file)]
    assert _cli.main(argv) == 0
    out, _ = capsys.readouterr()
    assert seen == [(GEN_QUICK, tmp_path)]
    assert out == format_generation_table(finalize_generation(_result(itl_mean_ms=30.0))) + "\n"
    assert json.loads(out_file.read_text())["summary"]["missed"] == ["gen_itl"]
    assert _cli.main([*argv, "--strict"]) == 1


def test_the_reports_stream_bound_is_the_enclaves() -> None:
    from ephemeralml.bench._generation import MAX_ACTIVE_STREAMS_DEFAULT
    from ephemeralml.enclave._streams import MAX_ACTIVE_STREAMS

    assert MAX_ACTIVE_STREAMS_DEFAULT == MAX_ACTIVE_STREAMS
