"""``ephemeral proxy``'s chat and completions with the real ``openai`` package as its
client, over the real host and an enclave serving the tiny chat model (mock mode):
the exact greedy answer, whole and streamed, its usage and its receipt (which
verifies offline), the enclave's refusals as OpenAI errors, and a client that hangs
up mid-stream leaving the pooled session sound."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from ephemeralml.client import verify_stored_receipt
from ephemeralml.client._policy import ClientPolicy
from tests.integration.chat_stack import CHAT_MODEL, chat_stack
from tests.integration.conftest import Program, Stack
from tests.integration.test_proxy import MODEL, _client, _start_proxy
from tests.models.tiny_chat import CHAT_WORDS, chat_prompt_ids, reference_answer

__all__ = ["chat_stack"]  # the fixture, imported for pytest

CHAT = [("user", "the cat sat")]


@pytest.fixture(scope="module")
def proxy(chat_stack: Stack) -> Iterator[tuple[Program, str]]:
    p, listen = _start_proxy(chat_stack, "--sessions", "2")
    yield p, listen
    assert p.stop() == 0, "".join(p.lines)


def _expected(messages: list[tuple[str, str]], max_tokens: int) -> tuple[str, str, int, int]:
    ids = chat_prompt_ids(messages)
    text, finish, completion = reference_answer(ids, max_tokens)
    return text, finish, len(ids), completion


def _verify_offline(stack: Stack, ext: dict[str, Any], tmp_path: Path) -> str:
    """The receipt of ``ext`` (an answer's ``ephemeralml`` field) verified offline
    against the attestation document that came with it; its id."""
    (receipt,) = ext["receipts"]
    (tmp_path / "r.cbor").write_bytes(base64.b64decode(receipt["cose"]))
    (tmp_path / "a.cbor").write_bytes(base64.b64decode(ext["enclave"]["attestation"]))
    # In this process and without the audit log: ``ephemeral verify`` would record
    # the receipt in the proxy's log from a second process (see the report on
    # client/_audit.py's open, which drops this process's SQLite locks).
    stored = verify_stored_receipt(
        tmp_path / "r.cbor", policy=ClientPolicy.unsafe_mock(stack.home, warn=False),
        attestation=tmp_path / "a.cbor", audit=False,
    )  # fmt: skip
    assert stored.verified.receipt.receipt_id.hex() == receipt["receipt_id"]
    return str(receipt["receipt_id"])


def test_a_streamed_chat_is_the_models_exact_answer_with_its_receipt(
    chat_stack: Stack, proxy: tuple[Program, str], tmp_path: Path
) -> None:
    program, listen = proxy
    assert program.ready["models"] == [MODEL, CHAT_MODEL]
    text, finish, prompt_tokens, completion_tokens = _expected(CHAT, 12)
    assert text  # the tiny model says something to this prompt
    stream = _client(listen).chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "the cat sat"}], max_tokens=12,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {CHAT_MODEL}
    assert chunks[0].choices[0].delta.role == "assistant"
    *answer, last, usage = chunks
    assert "".join(c.choices[0].delta.content or "" for c in answer) == text
    assert [c.choices[0].finish_reason for c in answer] == [None] * len(answer)
    assert last.choices[0].finish_reason == finish
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens, usage.usage.total_tokens) == (
        prompt_tokens, completion_tokens, prompt_tokens + completion_tokens,
    )  # fmt: skip
    ext: dict[str, Any] = (last.model_extra or {})["ephemeralml"]
    assert ext["enclave"]["mode"] == "mock"
    _verify_offline(chat_stack, ext, tmp_path)


def test_a_whole_chat_and_its_receipt(
    chat_stack: Stack, proxy: tuple[Program, str], tmp_path: Path
) -> None:
    _, listen = proxy
    text, finish, prompt_tokens, completion_tokens = _expected(CHAT, 6)
    # Text parts are joined by newlines: the same words, the same prompt.
    parts = [{"type": "text", "text": "the cat"}, {"type": "text", "text": "sat"}]
    messages: Any = [{"role": "user", "content": parts}]
    raw = _client(listen).chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=messages, max_completion_tokens=6
    )
    got = raw.parse()
    assert got.object == "chat.completion" and got.id.startswith("chatcmpl-")
    (choice,) = got.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant", text, finish,
    )  # fmt: skip
    assert got.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens, got.usage.total_tokens) == (
        prompt_tokens, completion_tokens, prompt_tokens + completion_tokens,
    )  # fmt: skip
    receipt_id = _verify_offline(chat_stack, (got.model_extra or {})["ephemeralml"], tmp_path)
    assert raw.headers["x-ephemeralml-receipt-id"] == receipt_id


@pytest.mark.parametrize("stream", [False, True])
def test_completions_continue_a_plain_prompt(proxy: tuple[Program, str], stream: bool) -> None:
    _, listen = proxy
    ids = [CHAT_WORDS.index(w) for w in "the cat sat".split()]
    text, finish, completion_tokens = reference_answer(ids, 5)
    client = _client(listen)
    if not stream:
        got = client.completions.create(model=CHAT_MODEL, prompt="the cat sat", max_tokens=5)
        assert got.object == "text_completion" and got.id.startswith("cmpl-")
        assert (got.choices[0].text, got.choices[0].finish_reason) == (text, finish)
        assert got.usage is not None
        assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (
            len(ids),
            completion_tokens,
        )
        return
    chunks = list(client.completions.create(
        model=CHAT_MODEL, prompt="the cat sat", max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    *answer, last, usage = chunks
    assert "".join(c.choices[0].text for c in answer) == text
    assert (last.choices[0].text, last.choices[0].finish_reason) == ("", finish)
    assert "ephemeralml" in (last.model_extra or {})
    assert usage.usage is not None and usage.usage.completion_tokens == completion_tokens


def test_refusals_are_openai_errors(proxy: tuple[Program, str]) -> None:
    _, listen = proxy
    client = _client(listen)
    messages: Any = [{"role": "user", "content": "the cat sat"}]
    # The enclave checks the values and refuses before any work: a 400 with its
    # line, whole or streamed (nothing was streamed yet, so it is a plain HTTP error).
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model=CHAT_MODEL, messages=messages, temperature=5, stream=stream
            )
        assert bad.value.body == {
            "message": "enclave refused the request: temperature must be a number from 0 to 2,"
            " not 5.0", "type": "invalid_request_error", "param": "temperature",
            "code": "inference",
        }  # fmt: skip
    # A model of the wrong kind, each way round.
    with pytest.raises(openai.BadRequestError) as kind:
        client.chat.completions.create(model=MODEL, messages=messages)
    assert kind.value.body == {
        "message": f"enclave refused the request: model '{MODEL}' makes embeddings; it does not"
        " generate", "type": "invalid_request_error", "param": "model", "code": "inference",
    }  # fmt: skip
    with pytest.raises(openai.BadRequestError) as embed:
        client.embeddings.create(model=CHAT_MODEL, input="the cat sat")
    assert isinstance(embed.value.body, dict)
    assert embed.value.body["message"] == (
        f"enclave refused the request: model '{CHAT_MODEL}' is a chat model; it does not embed"
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-nothing", messages=messages)
    # What the proxy cannot honour, it refuses rather than ignores.
    with pytest.raises(openai.BadRequestError) as n:
        client.chat.completions.create(model=CHAT_MODEL, messages=messages, n=2)
    assert isinstance(n.value.body, dict) and n.value.body["param"] == "n"


def test_a_client_that_hangs_up_mid_stream_leaves_the_session_sound(chat_stack: Stack) -> None:
    program, listen = _start_proxy(chat_stack, "--sessions", "1")
    try:
        host, port = listen.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "the cat sat"}],
                "max_tokens": 16, "stream": True}  # fmt: skip
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"content-type": "application/json"})  # fmt: skip
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("content-type", "").startswith("text/event-stream")
        assert r.readline().startswith(b"data: {")
        conn.close()  # gone, mid-answer
        # The one session comes back (cancelled and drained, or finished): the next
        # request gets it, and it was not retired.
        text, finish, _, _ = _expected(CHAT, 4)
        got = _client(listen).chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "the cat sat"}], max_tokens=4
        )
        assert (got.choices[0].message.content, got.choices[0].finish_reason) == (text, finish)
    finally:
        assert program.stop() == 0, "".join(program.lines)
    assert program.lines[-1].startswith(
        "ephemeral: proxy: stopped (SIGTERM); sessions opened 1,"
    ), program.lines
    assert program.lines[-1].endswith(" 0 broken\n") or program.lines[-1].endswith(" 0 broken"), (
        program.lines
    )


def test_a_stream_ends_with_done_only_after_the_receipt(proxy: tuple[Program, str]) -> None:
    _, listen = proxy
    host, port = listen.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = {"model": CHAT_MODEL, "prompt": "the cat sat", "max_tokens": 3, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    r = conn.getresponse()
    events = r.read().decode().split("\n\n")
    conn.close()
    assert events[-2:] == ["data: [DONE]", ""]
    final = json.loads(events[-3].removeprefix("data: "))
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert "usage" not in final and "ephemeralml" in final
