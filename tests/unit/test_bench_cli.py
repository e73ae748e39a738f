"""The benchmark's command line (``ephemeralml.bench._cli``) with the run replaced:
flags, the plan they ask for, the outputs, and the programs' error policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ephemeralml.bench import _cli
from ephemeralml.bench._plan import FULL, QUICK, BenchError, Plan
from ephemeralml.bench._processes import ProgramError
from ephemeralml.bench._report import finalize, format_table
from ephemeralml.common._errors import ConfigError

from .test_bench_report import rich_result


def args(*argv: str) -> Any:
    return _cli.parser().parse_args(list(argv))


def test_plans() -> None:
    assert _cli.plan_of(args()) == FULL
    assert _cli.plan_of(args("--quick")) == QUICK
    plan = _cli.plan_of(
        args("--quick", "--enclaves", "3", "--idle-connections", "10",
             "--enclave-arg=--threads=1", "--enclave-arg=--batch-wait-ms=2")
    )  # fmt: skip
    assert plan == QUICK.replace(
        max_enclaves=3, idle_connections=10, enclave_args=("--threads=1", "--batch-wait-ms=2")
    )
    assert plan.describe()["enclave_args"] == ["--threads=1", "--batch-wait-ms=2"]
    with pytest.raises(ConfigError, match=r"^--enclaves must be 1 to 8$"):
        _cli.plan_of(args("--enclaves", "9"))
    with pytest.raises(ConfigError, match=r"^--idle-connections must be 1 to 4000$"):
        _cli.plan_of(args("--idle-connections", "4001"))


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[Plan]:
    """Replace the run with one that returns rich_result() (one target missed)."""
    plans: list[Plan] = []

    def run(plan: Plan, work_dir: Path) -> dict[str, Any]:
        plans.append(plan)
        assert work_dir.is_dir()
        return finalize(rich_result())

    monkeypatch.setattr(_cli, "run_benchmark", run)
    return plans


def test_table_on_stdout(ran: list[Plan], capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["--quick"]) == 0
    out, err = capsys.readouterr()
    assert out == format_table(finalize(rich_result())) + "\n"
    assert err == ""
    assert ran == [QUICK]


def test_json_on_stdout_table_on_stderr(
    ran: list[Plan], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "b.json"
    assert _cli.main(["--json", "--out", str(out_file)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(out_file.read_text())
    assert json.loads(out)["summary"]["missed"] == ["enclave_cpu_64", "model_transfer"]
    assert err == format_table(finalize(rich_result())) + "\n"


def test_strict_fails_on_a_missed_target(ran: list[Plan]) -> None:
    assert _cli.main(["--quick", "--strict"]) == 1


def test_a_program_that_does_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(plan: Plan, work_dir: Path) -> dict[str, Any]:
        e = ProgramError("ephemeral-enclave", "exited 2 before it was ready", ["a\n", "b\n"])
        raise e

    monkeypatch.setattr(_cli, "run_benchmark", run)
    assert _cli.main(["--quick", "--json"]) == 1
    out, err = capsys.readouterr()
    assert err == (
        "  a\n  b\n"
        "bench: bench error: ephemeral-enclave exited 2 before it was ready "
        "(its last lines are above)\n"
    )
    # Under --json the error is also one JSON object on stdout, as for every program.
    assert json.loads(out) == {
        "error": {
            "code": "bench",
            "message": "ephemeral-enclave exited 2 before it was ready (its last lines are above)",
        }
    }


def test_a_run_that_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(plan: Plan, work_dir: Path) -> dict[str, Any]:
        raise BenchError("throughput at 16 sessions did not finish within 300 s")

    monkeypatch.setattr(_cli, "run_benchmark", run)
    assert _cli.main(["--quick"]) == 1
    assert capsys.readouterr().err == (
        "bench: bench error: throughput at 16 sessions did not finish within 300 s\n"
    )


def test_interrupted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def run(plan: Plan, work_dir: Path) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "run_benchmark", run)
    assert _cli.main(["--quick"]) == 130
    assert capsys.readouterr().err == "bench: interrupted; programs stopped\n"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("bench ")
