"""``ephemeral embed``'s input: arguments, ``-`` / ``--file``, ``--jsonl``, limits first.

Every error here is one line, exit 2, before anything is dialled: the tests point
``--host`` at a port where nothing listens and give ``--mock`` with no mock root,
so an error that came later would read otherwise.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ephemeralml.client._cli import main
from ephemeralml.client._inputs import (
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_TEXTS,
    InputLimits,
    check_texts,
    read_texts,
    texts_from_args,
)
from ephemeralml.common._errors import ConfigError, InferenceError, LimitError

LIMITS = InputLimits()


def read(data: bytes, *, jsonl: bool = False, limits: InputLimits = LIMITS) -> list[str]:
    return read_texts(io.BytesIO(data), "in.txt", jsonl=jsonl, limits=limits)


def refused(data: bytes, *, jsonl: bool = False, limits: InputLimits = LIMITS) -> str:
    with pytest.raises(ConfigError) as info:
        read(data, jsonl=jsonl, limits=limits)
    return str(info.value)


def test_defaults() -> None:
    assert (DEFAULT_MAX_TEXTS, DEFAULT_MAX_INPUT_BYTES) == (10_000, 16 * 1024 * 1024)


def test_one_text_a_line() -> None:
    assert read(b"a\nb b\r\n  c\n") == ["a", "b b", "  c"]
    assert read(b"no final newline") == ["no final newline"]
    assert read("é ü 中\n".encode()) == ["é ü 中"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "in.txt has no texts"),
        (b"\n", "in.txt line 1: the text is empty or only whitespace"),
        (b"a\n\nb\n", "in.txt line 2: the text is empty or only whitespace"),
        (b"a\n \t\n", "in.txt line 2: the text is empty or only whitespace"),
        (b"a\nb\xffc\n", "in.txt line 2: not UTF-8 (byte 2)"),
        (b"a\n" + b"x" * 16385 + b"\n", "in.txt line 2: the text is 16385 bytes of UTF-8; the limit is 16384"),
        (b"a\n\xed\xa0\x80\n", "in.txt line 2: not UTF-8 (byte 1)"),  # an encoded surrogate
    ],
)
def test_a_bad_line_names_its_number(data: bytes, message: str) -> None:
    assert refused(data) == message


def test_jsonl() -> None:
    data = b'"plain"\n{"text": "two\\nlines", "id": 3}\n{"text": "\\u00e9"}\n'
    assert read(data, jsonl=True) == ["plain", "two\nlines", "é"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'"a"\n\n', "in.txt line 2: empty line (--jsonl: one JSON text a line)"),
        (b'"a"\nplain text\n', "in.txt line 2: not JSON: Expecting value (column 1)"),
        (b'"a"\n"open\n', "in.txt line 2: not JSON: Unterminated string starting at (column 1)"),
        (b'"a"\n{"text": "x", "text": "y"}\n', "in.txt line 2: not JSON: duplicate key 'text'"),
        (b'"a"\nNaN\n', "in.txt line 2: not JSON: NaN is not a number"),
        (b'"a"\n7\n', 'in.txt line 2: not a JSON string nor an object with a "text" string'),
        (b'"a"\n{"id": 1}\n', 'in.txt line 2: not a JSON string nor an object with a "text" string'),
        (b'"a"\n{"text": 1}\n', 'in.txt line 2: not a JSON string nor an object with a "text" string'),
        (b'"a"\n" "\n', "in.txt line 2: the text is empty or only whitespace"),
        (b'"a"\n"\\ud800"\n', "in.txt line 2: the text is not valid Unicode (lone surrogate)"),
    ],
)
def test_a_bad_jsonl_line_names_its_number(data: bytes, message: str) -> None:
    assert refused(data, jsonl=True) == message


def test_limits_come_before_any_line_is_read() -> None:
    small = InputLimits(max_texts=2, max_bytes=10)
    assert refused(b"a\nb\nc\n", limits=small) == (
        "in.txt has 3 lines; the limit is 2 texts (--max-texts)"
    )
    # Over the byte limit: refused whatever the lines hold (this one is not even UTF-8).
    assert refused(b"\xff" * 11, limits=small) == "in.txt is over 10 bytes (--max-bytes)"
    assert read(b"a\nb\n", limits=small) == ["a", "b"]


def test_arguments_get_the_same_limits_and_checks() -> None:
    small = InputLimits(max_texts=2, max_bytes=5)
    with pytest.raises(ConfigError, match=r"^3 texts; the limit is 2 \(--max-texts\)$"):
        texts_from_args(["a", "b", "c"], small)
    with pytest.raises(ConfigError, match=r"^the texts are 6 bytes; the limit is 5 \(--max-bytes\)$"):
        texts_from_args(["abc", "def"], small)
    with pytest.raises(ConfigError, match=r"^text argument 2 is empty or only whitespace$"):
        texts_from_args(["a", " "], small)


def test_the_library_check_names_list_wide_indices() -> None:
    with pytest.raises(InferenceError, match=r"^embed\(\) takes a list of texts, not one string$"):
        check_texts("one string")
    with pytest.raises(InferenceError, match=r"^no input texts$"):
        check_texts([])
    ok = [f"t{i}" for i in range(200)]
    assert check_texts(tuple(ok)) == ok
    with pytest.raises(LimitError, match=r"^input 199 is 16385 bytes of UTF-8; the limit is 16384$"):
        check_texts([*ok[:199], "é" * 8192 + "x"])


# ---------------------------------------------------------------- the CLI


def cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    out = io.StringIO()
    code = main(["embed", "--mock", "--host", "127.0.0.1:1", *argv], stdout=out)
    return code, out.getvalue(), capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "nothing to embed: give TEXT arguments, or - / --file PATH (one a line)"),
        (("a", "--file", "f.txt"), "give texts as arguments or with --file PATH, not both"),
        (("a", "-"), "- reads the texts from stdin: give no other TEXT and no --file"),
        (("-", "--file", "f.txt"), "- reads the texts from stdin: give no other TEXT and no --file"),
        (("--jsonl", "a"), "--jsonl reads - (stdin) or --file PATH"),
        (("--file", "/nonexistent/f.txt"), "--file /nonexistent/f.txt does not exist"),
        (("--file", "/"), "cannot read --file /: Is a directory"),
        (("--max-texts", "0", "a"), "--max-texts must be an integer of at least 1, got 0"),
        (("--max-bytes", "-5", "a"), "--max-bytes must be an integer of at least 1, got -5"),
        (("--max-texts", "1", "a", "b"), "2 texts; the limit is 1 (--max-texts)"),
        (("a", "\t"), "text argument 2 is empty or only whitespace"),
    ],
)
def test_cli_input_errors_are_one_line_before_any_work(
    argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(*argv, capsys=capsys)
    assert (code, out, err) == (2, "", [f"ephemeral: error: {message}"])


def test_cli_file_errors_name_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "in.jsonl"
    f.write_bytes(b'"a"\n{"text": ""}\n')
    code, out, err = cli("--json", "--jsonl", "--file", str(f), capsys=capsys)
    assert code == 2
    assert err == [f"ephemeral: error: {f} line 2: the text is empty or only whitespace"]
    # Under --json the same error is the one JSON document.
    assert json.loads(out) == {
        "error": {"code": "config", "message": f"{f} line 2: the text is empty or only whitespace"}
    }
    big = tmp_path / "big.txt"
    big.write_bytes(b"x\n" * 6)
    code, _, err = cli("--max-texts", "5", "--file", str(big), capsys=capsys)
    assert (code, err) == (2, [f"ephemeral: error: {big} has 6 lines; the limit is 5 texts (--max-texts)"])


def test_cli_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (("-",), ("--file", "-")):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ok\n\xfe\n")))
        code, _, err = cli(*argv, capsys=capsys)
        assert (code, err) == (2, ["ephemeral: error: stdin line 2: not UTF-8 (byte 1)"])
    # Good input gets as far as the trust choice (no mock root in this home).
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ok\n")))
    code, _, err = cli("-", capsys=capsys)
    assert code == 2 and err[-1].startswith("ephemeral: error: no mock root at ")
