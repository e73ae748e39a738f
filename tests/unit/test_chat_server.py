"""The enclave server with a chat model beside an embedding model, on loopback.

The real :class:`EnclaveServer` (mock NSM) serves the tiny chat model, its ONNX
Runtime session gated so that a test holds a generation in the middle of a step,
and a stand-in embedding model; the real blocking client talks to it. Fairness: a
generation that does not move holds up neither embeddings nor another session's
stream; a client that goes away stops its generation. Every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from ephemeralml.client import connect
from ephemeralml.client._policy import ClientPolicy
from ephemeralml.enclave._chat import ChatModel
from ephemeralml.enclave._loader import LoadedModel
from tests.models.tiny_chat import MODEL_ID as CHAT
from tests.models.tiny_chat import chat_prompt_ids, reference_answer, write_tiny_chat
from tests.pair import KEY_RELEASE, MODEL, MODEL_DIGEST, MockWorld
from tests.unit.test_client_session import LiveEnclave
from tests.unit.test_streams import Gate, _chat_files

ASK = [("user", "the cat sat")]


class ChatEnclave(LiveEnclave):
    """The server in a thread of its own, serving MODEL (stand-in) and the tiny chat
    model with its ORT session behind a :class:`Gate`."""

    def __init__(self, world: MockWorld, chat: ChatModel) -> None:
        super().__init__(
            dataclasses.replace(
                world,
                identity=dataclasses.replace(
                    world.identity,
                    models={MODEL: MODEL_DIGEST, CHAT: MODEL_DIGEST},
                    key_releases={MODEL: KEY_RELEASE, CHAT: KEY_RELEASE},
                ),
            )
        )
        self.gate = Gate(chat.decoder.session)
        chat.decoder.session = self.gate
        self.chat = chat

    def models(self) -> dict[str, LoadedModel]:
        chat = LoadedModel(CHAT, MODEL_DIGEST, KEY_RELEASE, None, cast(Any, None), chat=self.chat)
        return {**super().models(), CHAT: chat}

    def __enter__(self) -> ChatEnclave:
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.permits.release(1000)
        super().__exit__(*exc)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> MockWorld:
    return MockWorld.create(tmp_path_factory.mktemp("nsm"))


@pytest.fixture
def enclave(world: MockWorld, tmp_path: Path) -> Iterator[ChatEnclave]:
    d = write_tiny_chat(tmp_path / "tiny-chat")
    files = {n: (d / n).read_bytes() for n in ("model.json", "tokenizer.json", "model.onnx")}
    with ChatEnclave(world, ChatModel(_chat_files(files))) as e:
        yield e


def _policy(e: ChatEnclave) -> ClientPolicy:
    return ClientPolicy(e.world.policy)


def test_a_held_generation_holds_up_neither_embeddings_nor_its_session(
    enclave: ChatEnclave,
) -> None:
    with (
        connect(enclave.address, policy=_policy(enclave), timeout=10, audit=False) as a,
        connect(enclave.address, policy=_policy(enclave), timeout=10, audit=False) as b,
    ):
        stream = a.generate(ASK, model=CHAT, max_tokens=8)
        assert enclave.gate.arrivals.acquire(timeout=10)  # inside its prefill, held there
        # Another session embeds while the generation does not move.
        assert b.embed(["while it thinks"], model=MODEL)[0].vectors.shape == (1, 4)
        assert enclave.gate.runs == 0
        enclave.gate.permits.release(100)
        answer = stream.finish()
    assert answer.text == reference_answer(chat_prompt_ids(ASK), 8)[0]


def test_a_client_that_goes_away_stops_its_generation(enclave: ChatEnclave) -> None:
    s = connect(enclave.address, policy=_policy(enclave), timeout=10, audit=False)
    stream = s.generate(ASK, model=CHAT, max_tokens=8)
    assert enclave.gate.arrivals.acquire(timeout=10)  # its prefill is under way
    streams = enclave.server._streams[CHAT]
    (handle,) = streams._active
    s.close()
    assert handle.cancelled.wait(10)  # the enclave saw the connection close
    enclave.gate.permits.release(100)
    deadline = time.monotonic() + 10
    while streams.streams < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    # The prefill under way when it went finished; no step ran after it.
    assert (streams.streams, enclave.gate.runs, streams.tokens) == (1, 1, 1)
    assert stream.result is None


def test_the_prefix_cache_serves_a_session_its_own_and_no_other(enclave: ChatEnclave) -> None:
    enclave.gate.permits.release(10_000)
    streams = enclave.server._streams[CHAT]
    first = reference_answer(chat_prompt_ids(ASK), 4)[0]
    history = [*ASK, ("assistant", first), ("user", "the dog")]
    expected = reference_answer(chat_prompt_ids(history), 4)[0]
    with connect(enclave.address, policy=_policy(enclave), timeout=10, audit=False) as a:
        assert a.generate(ASK, model=CHAT, max_tokens=4).finish().text == first
        assert a.generate(history, model=CHAT, max_tokens=4).finish().text == expected
        assert streams.prefixes.hits == 1  # the second turn ran from the first's cache
        with connect(enclave.address, policy=_policy(enclave), timeout=10, audit=False) as b:
            # The same chat from another session: nothing of a's is used for it.
            assert b.generate(history, model=CHAT, max_tokens=4).finish().text == expected
            assert streams.prefixes.hits == 1
        held = streams.prefixes.tokens
    deadline = time.monotonic() + 10
    while streams.prefixes.tokens and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held > 0 and streams.prefixes.tokens == 0  # each went with its session


def test_the_stop_line_says_how_full_the_batches_and_the_prefix_caches_were() -> None:
    from ephemeralml.enclave._cli import _describe_batches

    assert _describe_batches({MODEL: (2, 3, 6)}, {CHAT: (4, 40, 10, 36, 24)}) == (
        f"{MODEL}: 3 request(s), 6 text(s) in 2 batch(es), 3.0 texts a batch; "
        f"{CHAT}: 4 stream(s), 40 token(s) in 10 round(s), 3.6 streams a step,"
        " 24 prompt token(s) from the sessions' prefix caches"
    )
    assert _describe_batches({}, {}) == "nothing served"
