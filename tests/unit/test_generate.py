"""The generation loop against the tiny decoder's numpy reference (tests/models).

The reference recomputes the whole sequence in float64 at every step, with no KV
cache; the loop runs the ONNX graph on ONNX Runtime with the cache fed back. Exact
greedy ids and close logits at every step check the graph, the cache handling and
the positions together.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from ephemeralml.common._errors import ConfigError, InferenceError, LimitError
from ephemeralml.enclave import _generate
from ephemeralml.enclave._generate import (
    MAX_STOP_BYTES,
    DecoderModel,
    Finished,
    GenerationParams,
    Token,
    generate,
    sample_token,
)
from tests.models import tiny_decoder as tiny

PROMPTS = [[5, 9, 3], [1, 2], [40, 41, 42], [7], [10, 20, 30, 40, 50, 60, 1, 2, 3]]


class CountingSession:
    """An ORT session that counts its runs and keeps each run's last logits."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self.runs = 0
        self.logits: list[np.ndarray[Any, Any]] = []

    def get_inputs(self) -> Any:
        return self._session.get_inputs()

    def get_outputs(self) -> Any:
        return self._session.get_outputs()

    def run(self, names: list[str], feed: dict[str, Any]) -> Any:
        self.runs += 1
        out = self._session.run(names, feed)
        self.logits.append(out[0][0, -1])
        return out


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return DecoderModel.from_bytes(tiny.tiny_decoder_onnx(), context_limit=tiny.CONTEXT).session


@pytest.fixture
def counting(session: ort.InferenceSession) -> CountingSession:
    return CountingSession(session)


@pytest.fixture
def model(counting: CountingSession) -> DecoderModel:
    return DecoderModel(counting, context_limit=tiny.CONTEXT)


TOKENIZER = tiny.tiny_tokenizer()


def decode(ids: list[int]) -> str:
    return str(TOKENIZER.decode(ids))


def run(
    model: DecoderModel, prompt: Sequence[int], params: GenerationParams, **kw: Any
) -> tuple[list[int], str, Finished]:
    """The stream's token ids, its whole text and its end."""
    events = list(generate(model, prompt, params, decode=decode, **kw))
    *tokens, end = events
    assert isinstance(end, Finished) and all(isinstance(t, Token) for t in tokens)
    return [t.id for t in tokens if isinstance(t, Token)], "".join(e.text for e in events), end


def continuation(prompt: Sequence[int], ids: Sequence[int]) -> str:
    """The text ``ids`` add after the prompt (as the loop decodes it, in context)."""
    context = list(prompt[-5:])
    return decode([*context, *ids])[len(decode(context)) :]


# --- The tiny model itself --------------------------------------------------------


def test_the_tiny_model_is_the_same_bytes_every_time() -> None:
    weights = tiny.make_weights.__wrapped__(tiny.SEED)
    again = tiny._build_graph(weights).SerializeToString()
    assert again == tiny.tiny_decoder_onnx()
    assert len(tiny.WORDS) == tiny.VOCAB == TOKENIZER.get_vocab_size()


def test_the_graph_matches_the_reference_with_padding_and_a_cache(
    session: ort.InferenceSession,
) -> None:
    """A batch with a left-padded row, run as prefill then one cached step, against
    the reference on each row alone: masks, positions and cache concatenation."""
    empty = np.zeros((2, tiny.KV_HEADS, 0, tiny.HEAD_DIM), np.float32)
    ids = np.array([[0, 0, 12, 13, 14], [21, 22, 23, 24, 25]])
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = np.array([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    names = ["logits"] + [f"present.{i}.{k}" for i in range(tiny.LAYERS) for k in ("key", "value")]
    past_names = [f"past_key_values.{i}.{k}" for i in range(tiny.LAYERS) for k in ("key", "value")]
    first = session.run(
        names,
        {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        | dict.fromkeys(past_names, empty),
    )
    nxt = np.array([[30], [31]])
    second = session.run(
        names,
        {
            "input_ids": nxt,
            "attention_mask": np.concatenate([mask, [[1], [1]]], axis=1),
            "position_ids": np.array([[3], [5]]),
        }
        | dict(zip(past_names, first[1:], strict=True)),
    )
    for row, real in ((0, slice(2, None)), (1, slice(None))):
        seq = [*ids[row, real].tolist(), int(nxt[row, 0])]
        expected = tiny.reference_logits([seq])[0]
        np.testing.assert_allclose(first[0][row, real], expected[:-1], atol=1e-4)
        np.testing.assert_allclose(second[0][row, 0], expected[-1], atol=1e-4)


# --- Greedy against the reference -------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("max_tokens", [1, 5, 16])
def test_greedy_equals_the_reference_token_for_token(
    model: DecoderModel, counting: CountingSession, prompt: list[int], max_tokens: int
) -> None:
    expected, ref_logits = tiny.reference_greedy(prompt, max_tokens)
    ids, text, end = run(model, prompt, GenerationParams(max_tokens=max_tokens))
    assert ids == expected
    assert text == continuation(prompt, expected)
    assert end == Finished("length", "", len(prompt), max_tokens)
    assert counting.runs == max_tokens  # one prefill, then one step per token
    for got, want in zip(counting.logits, ref_logits, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
        # The exact comparison means something only if no step is a near tie.
        top2 = np.sort(want)[-2:]
        assert top2[1] - top2[0] > 1e-3


# --- Sampling ----------------------------------------------------------------------


SAMPLED = GenerationParams(max_tokens=16, temperature=1.5, top_k=20, top_p=0.95, seed=7)


def test_the_same_seed_gives_the_same_stream_and_another_seed_another(
    model: DecoderModel,
) -> None:
    prompt = PROMPTS[0]
    first = run(model, prompt, SAMPLED)
    assert run(model, prompt, SAMPLED) == first
    others = {
        tuple(run(model, prompt, GenerationParams(**{**vars(SAMPLED), "seed": s}))[0])
        for s in range(8, 12)
    }
    assert tuple(first[0]) not in others and len(others) > 1
    assert first[0] != tiny.reference_greedy(prompt, 16)[0]


def _documented_rule(
    logits: np.ndarray[Any, Any], p: GenerationParams, rng: np.random.Generator
) -> int:
    """The module docstring's rule, written again from the text, in plain Python."""
    z = [float(x) / p.temperature for x in logits]
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    if p.top_k:
        order = order[: p.top_k]
    w = [np.exp(z[i] - z[order[0]]) for i in order]
    if p.top_p < 1:
        total, acc = sum(w), 0.0
        for n, x in enumerate(w, 1):
            acc += x
            if acc / total >= p.top_p:
                order, w = order[:n], w[:n]
                break
    u = rng.random() * sum(w)
    acc = 0.0
    for i, x in zip(order, w, strict=True):
        acc += x
        if acc > u:
            return i
    return order[-1]


def test_a_client_reproduces_a_sampled_stream_from_the_logits_and_the_seed(
    model: DecoderModel, counting: CountingSession
) -> None:
    ids, _, _ = run(model, PROMPTS[1], SAMPLED)
    assert SAMPLED.seed is not None
    rng = np.random.Generator(np.random.PCG64(SAMPLED.seed))
    assert [_documented_rule(lg, SAMPLED, rng) for lg in counting.logits] == ids


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_top_k_1_and_a_tiny_top_p_are_greedy(model: DecoderModel, prompt: list[int]) -> None:
    greedy = tiny.reference_greedy(prompt, 12)[0]
    for params in (
        GenerationParams(max_tokens=12, temperature=2, top_k=1, seed=3),
        GenerationParams(max_tokens=12, temperature=2, top_p=1e-9, seed=3),
    ):
        assert run(model, prompt, params)[0] == greedy


def test_sampling_follows_the_distribution() -> None:
    rng = np.random.Generator(np.random.PCG64(0))
    logits = np.log(np.array([1, 3, 6, 0.0001], dtype=np.float32))
    draws = np.bincount(
        [sample_token(logits, GenerationParams(temperature=1), rng) for _ in range(20000)],
        minlength=4,
    )
    np.testing.assert_allclose(draws / 20000, [0.1, 0.3, 0.6, 0.0], atol=0.015)
    top2 = {sample_token(logits, GenerationParams(temperature=1, top_k=2), rng) for _ in range(500)}
    assert top2 == {1, 2}
    # top_p 0.85: 0.6 alone is short of it, 0.6 + 0.3 reaches it.
    nucleus = {
        sample_token(logits, GenerationParams(temperature=1, top_p=0.85), rng) for _ in range(500)
    }
    assert nucleus == {1, 2}


# --- Stops, limits, cancellation ---------------------------------------------------


def test_a_stop_token_id_ends_the_stream_and_is_not_emitted(model: DecoderModel) -> None:
    prompt = PROMPTS[0]
    greedy = tiny.reference_greedy(prompt, 16)[0]
    stop = greedy[5]  # 39: its first occurrence is at index 4
    first = greedy.index(stop)
    for params, eos in (
        (GenerationParams(stop_token_ids=(63, stop)), ()),
        (GenerationParams(), (stop,)),
    ):
        ids, text, end = run(model, prompt, params, eos_token_ids=eos)
        assert ids == greedy[:first]
        assert text == continuation(prompt, greedy[:first])
        assert end == Finished("stop", "", len(prompt), first + 1, stop)


@pytest.mark.parametrize(
    ("start", "length"),
    [(3, 3), (1, 7), (0, 1), (10, 4)],
    ids=["across-tokens", "longer", "first-char", "later"],
)
def test_a_stop_sequence_ends_the_text_exactly(
    model: DecoderModel, counting: CountingSession, start: int, length: int
) -> None:
    prompt = PROMPTS[1]
    full = continuation(prompt, tiny.reference_greedy(prompt, 16)[0])  # " be 1 not a1 v mat ..."
    stop = full[start : start + length]
    ids, text, end = run(model, prompt, GenerationParams(max_tokens=16, stop=(stop,)))
    assert text == full[: full.index(stop)]
    assert end.reason == "stop" and end.stop == stop and end.text == ""
    # The stream ended at the token that completed the stop sequence.
    assert continuation(prompt, ids).find(stop) >= 0 and stop not in continuation(prompt, ids[:-1])
    assert counting.runs == len(ids)


def test_text_that_might_start_a_stop_sequence_is_held_then_released(
    model: DecoderModel,
) -> None:
    prompt = PROMPTS[1]
    full = continuation(prompt, tiny.reference_greedy(prompt, 16)[0])
    # " not" occurs; " notX" never does: " not" is held, then released when it fails.
    events = list(
        generate(
            model, prompt, GenerationParams(max_tokens=16, stop=(" notX", "zz")), decode=decode
        )
    )
    assert "".join(e.text for e in events) == full
    released = ""
    for e in events:
        released += e.text
        assert not released.endswith((" n", " no", " not"))  # held while it could match
    # A stop sequence that ends at the very end: the last text is held, then flushed.
    tail = full[-3:]
    _, text, end = run(model, prompt, GenerationParams(max_tokens=16, stop=(tail + "!",)))
    assert text == full and end.reason == "length" and end.text == tail


def test_the_earliest_of_several_stop_sequences_wins(model: DecoderModel) -> None:
    prompt = PROMPTS[1]
    full = continuation(prompt, tiny.reference_greedy(prompt, 16)[0])
    early, late = full[8:11], full[20:24]
    _, text, end = run(model, prompt, GenerationParams(max_tokens=16, stop=(late, early)))
    assert text == full[: full.index(early)] and end.stop == early


def test_a_character_split_across_tokens_is_released_whole() -> None:
    pieces = {1: b"a", 2: b"\xe2\x82", 3: b"\xac", 4: b"b"}  # "€" is e2 82 ac

    def by_bytes(ids: list[int]) -> str:
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    text = _generate._Detokenizer(by_bytes, [1])
    assert [text.push(2), text.push(3), text.push(4)] == ["", "€", "b"]
    text = _generate._Detokenizer(by_bytes, [1])
    assert (text.push(2), text.flush()) == ("", "\ufffd")  # cut short: what there is


def test_max_tokens_bounds_the_stream(model: DecoderModel, counting: CountingSession) -> None:
    ids, _, end = run(model, PROMPTS[0], GenerationParams(max_tokens=3))
    assert len(ids) == 3 == counting.runs and end.reason == "length"


def test_the_context_bounds_prompt_and_answer(
    model: DecoderModel, counting: CountingSession
) -> None:
    prompt = list(range(1, 29))  # 28 tokens; the context is 32
    ids, _, end = run(model, prompt, GenerationParams(max_tokens=100))
    assert len(ids) == 4 and end == Finished("length", end.text, 28, 4)
    assert ids == tiny.reference_greedy(prompt, 4)[0]
    assert len(run(model, [*prompt, 1, 2, 3], GenerationParams())[0]) == 1  # 31 + 1
    counting.runs = 0
    with pytest.raises(LimitError) as e:
        generate(model, [1] * 32, GenerationParams(), decode=decode)
    assert str(e.value) == (
        "the prompt is 32 tokens; the model's context is 32 tokens, prompt and answer together"
    )
    assert counting.runs == 0


def test_cancellation_stops_within_one_step(model: DecoderModel, counting: CountingSession) -> None:
    gone = threading.Event()
    stream = generate(
        model, PROMPTS[0], GenerationParams(max_tokens=16), decode=decode, cancelled=gone.is_set
    )
    events = []
    for event in stream:
        events.append(event)
        if len(events) == 3:
            gone.set()  # the client went away after its third token
    assert counting.runs == 3
    assert events[-1] == Finished("cancelled", "", 3, 3)
    assert len(events) == 4
    counting.runs = 0
    assert list(
        generate(model, [1], GenerationParams(), decode=decode, cancelled=lambda: True)
    ) == [Finished("cancelled", "", 1, 0)]
    assert counting.runs == 0


# --- Bad parameters, prompts and models --------------------------------------------


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        (
            {"temperature": -0.1},
            InferenceError,
            "temperature must be a number from 0 to 2, not -0.1",
        ),
        ({"temperature": 2.5}, InferenceError, "temperature must be a number from 0 to 2, not 2.5"),
        (
            {"temperature": float("nan")},
            InferenceError,
            "temperature must be a number from 0 to 2, not nan",
        ),
        (
            {"temperature": True},
            InferenceError,
            "temperature must be a number from 0 to 2, not True",
        ),
        ({"top_p": 0}, InferenceError, "top_p must be a number in (0, 1], not 0"),
        ({"top_p": 1.5}, InferenceError, "top_p must be a number in (0, 1], not 1.5"),
        (
            {"top_k": -1},
            InferenceError,
            "top_k must be an integer of at least 0 (0: no limit), not -1",
        ),
        (
            {"top_k": 2.0},
            InferenceError,
            "top_k must be an integer of at least 0 (0: no limit), not 2.0",
        ),
        ({"max_tokens": 0}, InferenceError, "max_tokens must be an integer of at least 1, not 0"),
        (
            {"max_tokens": "9"},
            InferenceError,
            "max_tokens must be an integer of at least 1, not '9'",
        ),
        ({"seed": -1}, InferenceError, "seed must be an integer from 0 to 2**64 - 1, not -1"),
        (
            {"seed": 2**64},
            InferenceError,
            f"seed must be an integer from 0 to 2**64 - 1, not {2**64}",
        ),
        (
            {"stop_token_ids": (-1,)},
            InferenceError,
            "stop_token_ids must be a list of non-negative integers",
        ),
        ({"stop_token_ids": tuple(range(17))}, LimitError, "17 stop token ids; the limit is 16"),
        ({"stop": ("",)}, InferenceError, "stop must be a non-empty string or a list of them"),
        ({"stop": (1,)}, InferenceError, "stop must be a non-empty string or a list of them"),
        ({"stop": ("a",) * 5}, LimitError, "5 stop sequences; the limit is 4"),
        ({"stop": ("é" * 65,)}, LimitError, f"stop sequence 0 is over {MAX_STOP_BYTES} bytes"),
    ],
)
def test_bad_parameters_are_one_line_errors(
    kw: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as e:
        GenerationParams(**kw)
    assert type(e.value) is error and str(e.value) == message


def test_a_single_stop_string_and_lists_are_accepted() -> None:
    params = GenerationParams(stop="x", stop_token_ids=[1, 2])  # type: ignore[arg-type]
    assert params.stop == ("x",) and params.stop_token_ids == (1, 2)


@pytest.mark.parametrize(
    ("prompt", "stop_ids", "message"),
    [
        ([], (), "the prompt has no tokens"),
        ([1, 64], (), "prompt token 1 is 64; the vocabulary has 64 tokens"),
        ([1, -1], (), "prompt token 1 is -1; the vocabulary has 64 tokens"),
        ([1, True], (), "the prompt must be a list of token ids"),
        ("abc", (), "the prompt must be a list of token ids"),
        ([1], (3, 99), "stop_token_ids token 1 is 99; the vocabulary has 64 tokens"),
    ],
)
def test_bad_prompts_are_refused_before_any_run(
    model: DecoderModel,
    counting: CountingSession,
    prompt: Any,
    stop_ids: tuple[int, ...],
    message: str,
) -> None:
    with pytest.raises(InferenceError) as e:
        generate(model, prompt, GenerationParams(stop_token_ids=stop_ids), decode=decode)
    assert str(e.value) == message and counting.runs == 0


def test_a_model_without_the_decoder_interface_is_a_config_error(
    session: ort.InferenceSession,
) -> None:
    class Without(CountingSession):
        def get_inputs(self) -> Any:
            return [i for i in super().get_inputs() if i.name != "past_key_values.1.value"]

    with pytest.raises(ConfigError, match="^a decoder model must take input_ids"):
        DecoderModel(Without(session), context_limit=32)
    with pytest.raises(ConfigError) as e:
        DecoderModel(session, context_limit=1)
    assert str(e.value) == "the context limit must be an integer of at least 2, not 1"
    with pytest.raises(ConfigError, match="^model.onnx cannot be loaded"):
        DecoderModel.from_bytes(b"not onnx", context_limit=32)
