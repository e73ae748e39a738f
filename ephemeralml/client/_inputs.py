"""Texts to embed: the enclave's per-text checks run first, and the CLI's input formats.

:func:`check_texts` is what :meth:`Session.embed` runs before it sends anything, so
that a bad text in a long list fails at once, named by its index in the whole list,
rather than after the requests before it were answered. It runs the checks the
enclave runs without a tokenizer, with the enclave's own messages; the token limit
(``MAX_SEQ_TOKENS``) needs the model's tokenizer and stays the enclave's.

:func:`read_texts` is ``ephemeral embed``'s ``-`` / ``--file PATH``: one text a line
(UTF-8; ``\\n`` or ``\\r\\n`` ends a line; every line is a text, so text *i* is line
*i + 1*), or with ``--jsonl`` one JSON value a line: a string, or an object whose
``"text"`` is a string (its other fields are ignored, so records from other tools
can be fed as they are; a text may hold newlines). Limits come before any work: the
input is read up to ``max_bytes`` and refused beyond it, and refused past
``max_texts`` lines before a line is decoded. Every error is one line naming the
input and the line number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ephemeralml.common._errors import ConfigError, InferenceError
from ephemeralml.common._texts import MAX_TEXT_BYTES, text_problem
from ephemeralml.common._texts import check_texts as common_check_texts
from ephemeralml.runtime._strict import loads_json

__all__ = [
    "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_MAX_TEXTS",
    "MAX_TEXT_BYTES",
    "InputLimits",
    "check_texts",
    "read_texts",
    "text_problem",
    "texts_from_args",
]

#: ``ephemeral embed``: the most texts one run reads (``--max-texts``).
DEFAULT_MAX_TEXTS = 10_000
#: ``ephemeral embed``: the most bytes one run reads from a file or stdin (``--max-bytes``).
DEFAULT_MAX_INPUT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class InputLimits:
    max_texts: int = DEFAULT_MAX_TEXTS
    max_bytes: int = DEFAULT_MAX_INPUT_BYTES


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or the error for the first bad one (``input N`` is its
    index in the whole list), as the enclave would say (:mod:`ephemeralml.common._texts`);
    any number of texts (the library sends them in requests of 64)."""
    if isinstance(texts, str | bytes):
        raise InferenceError("embed() takes a list of texts, not one string")
    return common_check_texts(list(texts), max_inputs=None)


def texts_from_args(texts: Sequence[str], limits: InputLimits) -> list[str]:
    """``ephemeral embed TEXT...``: the same limits and checks as a file."""
    if len(texts) > limits.max_texts:
        raise ConfigError(f"{len(texts)} texts; the limit is {limits.max_texts} (--max-texts)")
    size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    if size > limits.max_bytes:
        raise ConfigError(
            f"the texts are {size} bytes; the limit is {limits.max_bytes} (--max-bytes)"
        )
    for i, text in enumerate(texts):
        problem = text_problem(text)
        if problem is not None:
            raise ConfigError(f"text argument {i + 1} {problem[1]}")
    return list(texts)


def read_texts(source: BinaryIO, where: str, *, jsonl: bool, limits: InputLimits) -> list[str]:
    """Texts from ``source`` (a file or stdin, named ``where`` in errors): module docstring."""
    data = source.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ConfigError(f"{where} is over {limits.max_bytes} bytes (--max-bytes)")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line ends no further text
    if not lines:
        raise ConfigError(f"{where} has no texts")
    if len(lines) > limits.max_texts:
        raise ConfigError(
            f"{where} has {len(lines)} lines; the limit is {limits.max_texts} texts (--max-texts)"
        )
    return [
        _text(raw.removesuffix(b"\r"), f"{where} line {n}", jsonl)
        for n, raw in enumerate(lines, 1)
    ]


def _text(raw: bytes, where: str, jsonl: bool) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 (byte {e.start + 1})") from e
    if jsonl:
        if not text.strip():
            raise ConfigError(f"{where}: empty line (--jsonl: one JSON text a line)")
        try:
            value = loads_json(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not JSON: {e.msg} (column {e.colno})") from e
        except ValueError as e:  # duplicate keys, NaN
            raise ConfigError(f"{where}: not JSON: {e}") from e
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str):
            raise ConfigError(f'{where}: not a JSON string nor an object with a "text" string')
        text = value
    problem = text_problem(text)
    if problem is not None:
        raise ConfigError(f"{where}: the text {problem[1]}")
    return text
