"""Dynamic batching across sessions, with a stand-in model (the real one is tested alone)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest

from ephemeralml.common._errors import ConfigError, InferenceError
from ephemeralml.enclave._batcher import BatchConfig, Batcher

T = TypeVar("T")
Rows = npt.NDArray[np.float32]


async def rows(b: Batcher, texts: list[str]) -> Rows:
    vectors, truncated = await b.embed(texts)
    assert truncated == ()
    return vectors


class FakeEmbedder:
    """Row i of a call is [len(text), position in call]; '' is refused like the model
    does; a text over 8 characters is 'cut' where its request allowed truncation."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.flags: list[list[bool]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        self.calls.append(list(texts))
        if any(t == "" for t in texts):
            raise InferenceError(f"input {list(texts).index('')} is empty or only whitespace")
        return np.array([[len(t), i] for i, t in enumerate(texts)], dtype=np.float32)

    def run(self, texts: Sequence[str], truncate: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        self.flags.append(list(truncate))
        cut = np.array([f and len(t) > 8 for t, f in zip(texts, truncate, strict=True)])
        return self.embed(texts), cut


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _with_batcher(
    fake: FakeEmbedder, config: BatchConfig, body: Callable[[Batcher], Awaitable[T]]
) -> T:
    with ThreadPoolExecutor(1) as pool:
        b = Batcher(fake, pool, config)  # type: ignore[arg-type]
        b.start()
        try:
            return await body(b)
        finally:
            await b.close()


def test_requests_queued_during_a_batch_form_the_next_batch() -> None:
    fake = FakeEmbedder()

    async def body(b: Batcher) -> tuple[Rows, list[Rows]]:
        fake.gate.clear()  # the first batch blocks in the model...
        first = asyncio.create_task(rows(b, ["a"]))
        await asyncio.to_thread(fake.entered.wait, 10)  # the model is busy with it
        rest = [asyncio.create_task(rows(b, ["bb" * (i + 1)])) for i in range(5)]  # ...these queue
        await asyncio.sleep(0.05)
        fake.gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = run(_with_batcher(fake, BatchConfig(), body))
    assert fake.calls == [["a"], ["bb", "bbbb", "bbbbbb", "bbbbbbbb", "bbbbbbbbbb"]]
    assert first.tolist() == [[1, 0]]
    # Each request gets exactly its own rows back.
    assert [r.tolist() for r in rest] == [[[2 * (i + 1), i]] for i in range(5)]


def test_max_batch_is_respected() -> None:
    fake = FakeEmbedder()

    async def body(b: Batcher) -> tuple[int, int, int]:
        fake.gate.clear()
        first = asyncio.create_task(rows(b, ["x"]))
        await asyncio.to_thread(fake.entered.wait, 10)
        rest = [asyncio.create_task(rows(b, ["y", "z"])) for _ in range(3)]
        await asyncio.sleep(0.05)
        fake.gate.set()
        await first
        await asyncio.gather(*rest)
        return b.batches, b.requests, b.texts

    counts = run(_with_batcher(fake, BatchConfig(max_batch=4), body))
    assert [len(c) for c in fake.calls] == [1, 4, 2]
    # What the enclave's stop line reports: batches run, and the requests and texts in them.
    assert counts == (3, 4, 7)


def test_a_bad_request_fails_alone() -> None:
    fake = FakeEmbedder()

    async def body(b: Batcher) -> tuple[Rows | BaseException, Rows | BaseException]:
        fake.gate.clear()
        blocker = asyncio.create_task(rows(b, ["x"]))
        await asyncio.to_thread(fake.entered.wait, 10)
        good = asyncio.create_task(rows(b, ["good"]))
        bad = asyncio.create_task(rows(b, ["ok", ""]))
        await asyncio.sleep(0.05)
        fake.gate.set()
        await blocker
        return await asyncio.gather(good, bad, return_exceptions=True)

    good, bad = run(_with_batcher(fake, BatchConfig(), body))
    assert isinstance(good, np.ndarray)
    assert good.tolist() == [[4, 0]]
    assert isinstance(bad, InferenceError) and str(bad) == "input 1 is empty or only whitespace"


def test_wait_collects_requests_that_arrive_soon_after() -> None:
    fake = FakeEmbedder()

    async def body(b: Batcher) -> tuple[Rows, Rows]:
        a = asyncio.create_task(rows(b, ["a"]))
        await asyncio.sleep(0.02)
        c = asyncio.create_task(rows(b, ["c"]))
        return await asyncio.gather(a, c)

    run(_with_batcher(fake, BatchConfig(max_wait_ms=300), body))
    assert fake.calls == [["a", "c"]]


def test_truncation_is_per_request_and_each_gets_its_own_indices() -> None:
    fake = FakeEmbedder()

    async def body(b: Batcher) -> list[tuple[list[list[float]], tuple[int, ...]]]:
        fake.gate.clear()
        blocker = asyncio.create_task(b.embed(["x"]))
        await asyncio.to_thread(fake.entered.wait, 10)
        cut = asyncio.create_task(b.embed(["short", "a long text", "another long"], truncate=True))
        kept = asyncio.create_task(b.embed(["a long text too"]))
        await asyncio.sleep(0.05)
        fake.gate.set()
        await blocker
        return [(v.tolist(), t) for v, t in await asyncio.gather(cut, kept)]

    cut, kept = run(_with_batcher(fake, BatchConfig(), body))
    # One batch, the choice travelling per input; each request gets its own indices.
    assert fake.flags == [[False], [True, True, True, False]]
    assert cut == ([[5, 0], [11, 1], [12, 2]], (1, 2))
    assert kept == ([[15, 3]], ())


def test_config_limits() -> None:
    with pytest.raises(ConfigError, match="batch size must be 1..1024, not 0"):
        BatchConfig(max_batch=0)
    with pytest.raises(ConfigError, match="batch wait must be 0..1000 ms, not -1"):
        BatchConfig(max_wait_ms=-1)


def test_cuda_without_onnxruntime_gpu_is_a_clear_error() -> None:
    import onnxruntime as ort

    from ephemeralml.enclave._model import providers_for

    assert providers_for("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers_for("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        with pytest.raises(ConfigError, match=r"^--device cuda needs CUDAExecutionProvider, which this onnxruntime does not have \(install onnxruntime-gpu instead of onnxruntime\)$"):
            providers_for("cuda")
    with pytest.raises(ConfigError, match=r"^unknown device 'tpu'; choose one of \['cpu', 'cuda'\]$"):
        providers_for("tpu")
