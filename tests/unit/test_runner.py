"""One runner for every program: the same one-line errors, exit codes, ``-v``, Ctrl-C,
``--version``, JSON errors under ``--json``, timestamped logs and readiness line."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from ephemeralml import __version__
from ephemeralml._edge import enclave_main, host_main
from ephemeralml.client._cli import main as client_main
from ephemeralml.common._errors import ConfigError, ReceiptError
from ephemeralml.common._messages import PROTOCOL_VERSION
from ephemeralml.runtime._runner import Parser, parse_ready, ready_line, run_main, setup_logging

PROGRAMS: list[tuple[str, Callable[[Sequence[str]], int]]] = [
    ("ephemeral", client_main),
    ("ephemeral-host", host_main),
    ("ephemeral-enclave", enclave_main),
]


@pytest.mark.parametrize(("prog", "main"), PROGRAMS)
def test_version(prog: str, main: Callable[[Sequence[str]], int], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"{prog} {__version__} (protocol {PROTOCOL_VERSION})\n"


@pytest.mark.parametrize(("prog", "main"), PROGRAMS)
def test_a_bad_flag_is_one_line_and_exit_2(
    prog: str, main: Callable[[Sequence[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["attest", "--no-such-flag"] if prog == "ephemeral" else ["--no-such-flag"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"{prog}: error: unrecognized arguments: --no-such-flag\n"
    assert captured.out == ""


def test_json_errors_go_to_stdout_as_one_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.receipt.cbor"
    assert client_main(["verify", str(missing), "--mock", "--json", "--home", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"ephemeral: error: receipt {missing} does not exist\n"
    assert json.loads(captured.out) == {
        "error": {"code": "config", "message": f"receipt {missing} does not exist"}
    }


def _run(body: Callable[[argparse.Namespace], int], argv: list[str]) -> int:
    p = Parser(prog="prog", version=True)
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--json", action="store_true")
    return run_main("prog", p, argv, body, stdout=io.StringIO())


def test_error_codes_verbose_and_interrupt(capsys: pytest.CaptureFixture[str]) -> None:
    def config(_: argparse.Namespace) -> int:
        raise ConfigError("bad setting")

    def receipt(_: argparse.Namespace) -> int:
        raise ReceiptError("R3 signature: does not verify")

    def interrupted(_: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    assert _run(config, []) == 2
    assert capsys.readouterr().err == "prog: error: bad setting\n"
    assert _run(receipt, []) == 1
    assert capsys.readouterr().err == "prog: receipt error: R3 signature: does not verify\n"
    # -v: the traceback first, then the same one line, last.
    assert _run(receipt, ["-v"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.endswith("\nprog: receipt error: R3 signature: does not verify\n")
    assert _run(interrupted, []) == 130
    assert capsys.readouterr().err == "prog: interrupted\n"


def test_log_records_carry_a_utc_timestamp(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("prog", 1)
    logging.getLogger("ephemeralml.test").info("served m/model.enc (12 bytes)")
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z prog: INFO served m/model\.enc \(12 bytes\)\n", err
    ), err
    setup_logging("prog", 0)  # back to warnings only, one handler
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "ephemeralml-runner"]
    assert len(ours) == 1


def test_the_readiness_line_round_trips() -> None:
    line = ready_line("ephemeral-host", relay="tcp:127.0.0.1:5000", enclaves=["tcp:127.0.0.1:5005"])
    assert line == 'ephemeral-host: ready {"enclaves":["tcp:127.0.0.1:5005"],"relay":"tcp:127.0.0.1:5000"}'
    assert parse_ready(line, "ephemeral-host") == {
        "enclaves": ["tcp:127.0.0.1:5005"], "relay": "tcp:127.0.0.1:5000"
    }  # fmt: skip
    assert parse_ready(line, "ephemeral-enclave") is None
    assert parse_ready("ephemeral-host: ready {not json", "ephemeral-host") is None
    assert parse_ready("ephemeral-host: relaying tcp:… -> tcp:…", "ephemeral-host") is None
