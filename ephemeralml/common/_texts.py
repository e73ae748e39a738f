"""The checks every input text meets, before any tokenizer or model (protocol.md §2.4).

One place for both sides: the enclave runs them on every request (before any
compute), and the client runs them on the whole list before it sends anything, so a
bad text fails at once and names its index in the list. The token limit needs the
model's tokenizer and stays the enclave's.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._errors import Error, InferenceError, LimitError

__all__ = ["MAX_INPUTS", "MAX_TEXT_BYTES", "check_texts", "text_problem"]

#: UTF-8 bytes per input text, checked before tokenizing so that a huge text costs
#: no tokenizer time. 256 tokens of real text are 1-3 KiB; 16 KiB leaves room for
#: long rare words and whitespace while bounding the tokenizer's work per input.
MAX_TEXT_BYTES = 16 * 1024

#: Texts per request: bounds one request's compute (64 x 256 tokens, about 1-2 s
#: on two cores) and the size of its response (64 x 384 float32 = 96 KiB).
MAX_INPUTS = 64


def text_problem(text: object) -> tuple[type[Error], str] | None:
    """What is wrong with one text (the error type and the words after ``input N``),
    or None. Cheapest checks first."""
    if not isinstance(text, str):
        return InferenceError, f"is {type(text).__name__}, not a string"
    if not text or text.isspace():
        return InferenceError, "is empty or only whitespace"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return InferenceError, "is not valid Unicode (lone surrogate)"
    if size > MAX_TEXT_BYTES:
        return LimitError, f"is {size} bytes of UTF-8; the limit is {MAX_TEXT_BYTES}"
    return None


def check_texts(texts: Sequence[str], *, max_inputs: int | None = MAX_INPUTS) -> list[str]:
    """``texts`` as a list, or the error for the first problem: not a list, empty,
    more than ``max_inputs`` (None: no count limit), or a bad text (``input N``)."""
    if not isinstance(texts, list | tuple):
        raise InferenceError(f"input texts must be a list of strings, not {type(texts).__name__}")
    if not texts:
        raise InferenceError("no input texts")
    if max_inputs is not None and len(texts) > max_inputs:
        raise LimitError(f"{len(texts)} input texts; the limit is {max_inputs}")
    for i, text in enumerate(texts):
        problem = text_problem(text)
        if problem is not None:
            cls, why = problem
            raise cls(f"input {i} {why}")
    return list(texts)
