"""The generation benchmark (``--generation``): streamed chat answers, bare ONNX Runtime
beside the full confidential path, in one run.

* **bare**: the enclave's own :class:`~ephemeralml.enclave._chat.ChatModel` (its chat
  template, tokenizer and :func:`~ephemeralml.enclave._generate.generate` loop over
  an ONNX Runtime session made from the same bytes, with the enclave's thread count)
  in this process: no encryption, no sockets, no event loop.
* **full**: ``ephemeral-host --mock`` and ``ephemeral-enclave --mock`` serving the
  chat model, packaged and uploaded with ``ephemeral model package/upload --mock`` as
  a model owner does; the client's :meth:`Session.generate` through the host relay.

The same prompts, greedy, the same ``max_tokens``: both paths do the same work, and
the run stops with :class:`BenchError` if any answer's text differs between them
(one answer at a time; under concurrency a difference is counted and noted, since a
server that batches streams may round differently).
Time to first token runs from just before the request is made (full: before
``Session.generate`` builds, seals and sends it; bare: before the chat is rendered
and tokenized and the loop is started, the work the enclave does on receipt) to the
first non-empty piece of text; inter-token latency is the gaps between consecutive
pieces (:func:`~._stats.stream_timing`).

Every loop is bounded (the plan's counts, ``max_tokens``); the programs are stopped
before :func:`run_generation_benchmark` returns, whatever happens.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._cases import client_policy, settle
from ._plan import CHAT_MODEL, CHAT_PROMPTS, MODEL, SCHEMA_VERSION, BenchError
from ._plan import GenerationPlan as Plan
from ._processes import free_port, program_env
from ._procfs import machine_info, proc_cpu_s, proc_status_mb, self_cpu_s
from ._report import _f, finalize_generation, parse_loaded_line
from ._run import Children, Host, Load, _Stages, git_info, say, start_enclave, start_host
from ._stats import StreamTiming, median, median_of, stream_timing, summarize_streams
from ._targets import lookup

__all__ = [
    "Answer",
    "BareChat",
    "default_chat_model_dir",
    "missing_chat_model",
    "run_generation_benchmark",
]

#: The files of a chat model directory (``scripts/models.sh smollm2``).
_MODEL_FILES = ("model.onnx", "tokenizer.json", "model.json")
#: How long ``ephemeral model package`` / ``upload`` may take (200 MB: ~2 s here).
_CLI_TIMEOUT_S = 300.0
_CLI_FALLBACK = "import sys; from ephemeralml.client._cli import main; sys.exit(main())"
#: The enclave's default ``--max-streams`` (``enclave._streams.MAX_ACTIVE_STREAMS``),
#: named in the report's note; not imported, so that the note does not load the enclave.
MAX_ACTIVE_STREAMS_DEFAULT = 8
#: Per-request deadline of the benchmark's sessions: at 16 streams of 64 tokens half
#: of them wait for a place in the decoding batch, so a stream may wait long.
_SESSION_TIMEOUT_S = 300.0


def default_chat_model_dir() -> Path:
    """Where ``scripts/models.sh smollm2`` puts the model: ``$EPHEMERALML_HOME/models/smollm2``."""
    from ephemeralml.runtime._home import default_home

    return default_home() / "models" / CHAT_MODEL


def missing_chat_model(model_dir: Path) -> str | None:
    """Why the generation benchmark cannot run with ``model_dir``, in one line; None if
    its files are there."""
    missing = [f for f in _MODEL_FILES if not (model_dir / f).is_file()]
    if not missing:
        return None
    return (
        f"no chat model at {model_dir} ({', '.join(missing)} missing);"
        " build it with scripts/models.sh smollm2"
    )


@dataclass(frozen=True)
class Answer:
    """One streamed answer: its text, when it was asked for and when each non-empty
    piece of text arrived (:func:`time.perf_counter`), and its token count."""

    prompt: int  # index into CHAT_PROMPTS
    text: str
    start: float
    piece_times: tuple[float, ...]
    completion_tokens: int
    prompt_tokens: int
    finish: str

    def timing(self) -> StreamTiming:
        return stream_timing(self.start, self.piece_times)


def _messages(i: int) -> list[tuple[str, str]]:
    return [("user", CHAT_PROMPTS[i % len(CHAT_PROMPTS)])]


class BareChat:
    """The bare baseline: the enclave's :class:`ChatModel` over the model's bytes."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        from ephemeralml.common._modelfiles import ChatModelFiles, model_files_from_bundle
        from ephemeralml.enclave._chat import ChatModel

        raw = {name: (model_dir / name).read_bytes() for name in _MODEL_FILES}
        files = model_files_from_bundle(raw, model_id=CHAT_MODEL, where=str(model_dir))
        if not isinstance(files, ChatModelFiles):
            raise BenchError(f"{model_dir} holds an embedding model, not a chat model")
        self.meta: dict[str, Any] = {
            "onnx_mb": round(len(raw["model.onnx"]) / 1e6, 1),
            "context_length": files.context_length,
        }
        del raw
        t0 = time.perf_counter()
        self.chat: Any = ChatModel(files, intra_op_threads=threads)
        self.load_s = round(time.perf_counter() - t0, 3)

    def answer(self, i: int, max_tokens: int) -> Answer:
        """Answer prompt ``i``, greedy, timing each piece as the loop releases it."""
        from ephemeralml.common._messages import ChatMessage, GenerateRequest
        from ephemeralml.enclave._generate import Finished, Token

        chat = tuple(ChatMessage(role, text) for role, text in _messages(i))
        request = GenerateRequest(model=CHAT_MODEL, max_tokens=max_tokens, messages=chat)
        clock = time.perf_counter
        pieces: list[str] = []
        times: list[float] = []
        start = clock()
        prompt = self.chat.prompt_ids(request)
        end: Any = None
        for ev in self.chat.stream(prompt, self.chat.params(request)):
            if isinstance(ev, Token | Finished) and ev.text:
                times.append(clock())
                pieces.append(ev.text)
            if isinstance(ev, Finished):
                end = ev
        if end is None:
            raise BenchError(f"bare generation of prompt {i} ended without its Finished event")
        return Answer(i, "".join(pieces), start, tuple(times), end.completion_tokens,
                      end.prompt_tokens, end.reason)  # fmt: skip

    def close(self) -> None:
        self.chat = None
        gc.collect()


def full_answer(session: Any, i: int, max_tokens: int) -> Answer:
    """Answer prompt ``i`` through ``session`` (a client :class:`Session`), greedy."""
    clock = time.perf_counter
    times: list[float] = []
    start = clock()
    stream = session.generate(_messages(i), model=CHAT_MODEL, max_tokens=max_tokens)
    for piece in stream:
        if piece:
            times.append(clock())
    g = stream.result
    if g is None:
        raise BenchError(f"the stream of prompt {i} ended without its result")
    return Answer(i, g.text, start, tuple(times), g.completion_tokens, g.prompt_tokens,
                  g.finish)  # fmt: skip


def _same_text(reference: dict[int, str], a: Answer, where: str) -> None:
    want = reference.get(a.prompt)
    if want is not None and a.text != want:
        raise BenchError(
            f"{where}: prompt {a.prompt} was answered differently from bare ONNX Runtime "
            f"({a.text[:60]!r}... vs {want[:60]!r}...): the two paths did not do the same work"
        )


def concurrent(
    c: int,
    answers_each: int,
    one: Callable[[int, int], Answer],
    reference: dict[int, str],
    pids: Mapping[str, int] | None = None,
    self_name: str = "bare",
) -> dict[str, Any]:
    """``c`` threads, thread ``t`` answering prompts ``t, t + c, ...`` in turn with
    ``one(t, prompt)``, ``answers_each`` each, all started at once: completion tokens
    per second of wall time, the streaming latencies under that load, and the CPU
    time per token of this process (as ``self_name``) and of each of ``pids``."""
    barrier = threading.Barrier(c + 1)
    results: list[list[Answer]] = [[] for _ in range(c)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait(timeout=60)
            for k in range(answers_each):
                results[t].append(one(t, (t + k * c) % len(CHAT_PROMPTS)))
        except BaseException as e:  # reported by the caller, not lost in a thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(c)]
    for th in threads:
        th.start()
    pids = pids or {}
    cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    self0 = self_cpu_s()
    barrier.wait(timeout=60)
    t0 = time.perf_counter()
    for th in threads:
        th.join(timeout=_SESSION_TIMEOUT_S * answers_each)
    wall = time.perf_counter() - t0
    spent: dict[str, float | None] = {self_name: self_cpu_s() - self0}
    for name, pid in pids.items():
        before, after = cpu0[name], proc_cpu_s(pid)
        spent[name] = None if before is None or after is None else after - before
    if errors:
        raise BenchError(f"{c} streams at once: {errors[0]}") from errors[0]
    if any(th.is_alive() for th in threads):
        raise BenchError(f"{c} streams at once did not finish in time")
    answers = [a for rs in results for a in rs]
    # Not an error here, unlike one answer at a time: a server that decodes streams
    # in one batch may round differently from batch 1 and so, rarely, pick another
    # greedy token. Counted, so that the report says so; tokens/s counts what was made.
    differ = sum(1 for a in answers if reference.get(a.prompt, a.text) != a.text)
    tokens = sum(a.completion_tokens for a in answers)
    return {
        "tokens_per_s": round(tokens / wall, 2),
        "tokens": tokens,
        "answers": len(answers),
        "texts_differ": differ,
        "wall_s": round(wall, 3),
        "cores": {k: None if v is None else round(v / wall, 2) for k, v in spent.items()},
        "cpu_ms_per_token": {
            k: None if v is None or not tokens else round(1000 * v / tokens, 3)
            for k, v in spent.items()
        },
        "under_load": summarize_streams([a.timing() for a in answers]),
    }


def _ephemeral(env: dict[str, str], *args: str) -> None:
    """``ephemeral ARGS`` (the console script beside this interpreter, else on PATH,
    else the module); BenchError with its last lines if it fails."""
    exe = Path(sys.executable).parent / "ephemeral"
    found = shutil.which("ephemeral")
    if exe.exists():
        cmd = [str(exe)]
    elif found:
        cmd = [found]
    else:
        cmd = [sys.executable, "-c", _CLI_FALLBACK]
    try:
        done = subprocess.run(
            [*cmd, *args], env=env, capture_output=True, text=True, timeout=_CLI_TIMEOUT_S,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"ephemeral {' '.join(args[:2])} took over {_CLI_TIMEOUT_S:g} s") from e
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise BenchError(f"ephemeral {' '.join(args[:2])} exited {done.returncode}: {tail}")


def _serve_chat_model(
    children: Children, plan: Plan, work_dir: Path, model_dir: Path
) -> tuple[Host, Any, dict[str, Any]]:
    """Host, then the model packaged and uploaded as its owner would, then the
    enclave serving both models; the enclave's load line for the chat model."""
    home = work_dir / "home"
    home.mkdir(mode=0o700)
    env = program_env(home)
    enclave_port = free_port()
    host = start_host(children, "host", home, [enclave_port])
    kms = "http://" + str(host.prog.ready["mock_kms"]).removeprefix("tcp:")
    bundle = work_dir / "chat-bundle"
    _ephemeral(env, "model", "package", "--mock", "--kms-endpoint", kms, "--model-dir",
               str(model_dir), "--model-id", CHAT_MODEL, "--out", str(bundle))  # fmt: skip
    _ephemeral(env, "model", "upload", "--mock", str(bundle), "--model-id", CHAT_MODEL)
    shutil.rmtree(bundle, ignore_errors=True)
    # No prefix cache: the prompts share their system message, which the cache would
    # serve to every request after a session's first, and bare ONNX Runtime has no such
    # cache; TTFT is compared for the same work (--enclave-arg can turn it back on).
    args = ("--model", MODEL, "--model", CHAT_MODEL, "--prefix-cache-tokens", "0",
            *plan.enclave_args)  # fmt: skip
    enc = start_enclave(children, "enclave", home, host, enclave_port, args)
    loaded = [x for x in map(parse_loaded_line, enc.prog.lines) if x is not None]
    load = next((x for x in loaded if x["model"] == CHAT_MODEL), {})
    load["ready_s"] = enc.cold_start["total_s"]
    return host, client_policy(home), load


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {
        "min": min(values),
        "max": max(values),
        "mean": round(sum(values) / len(values), 1),
    }


def run_generation_benchmark(plan: Plan, work_dir: Path, model_dir: Path) -> dict[str, Any]:
    """The generation benchmark (see the module docstring); the finalized result.

    Latency: ``plan.warmup`` unmeasured answers on each path, then ``plan.reps``
    passes over every prompt, bare and full alternating which goes first, one answer
    at a time on one session; each pass is summarized and the median of the passes
    reported. Throughput: at each level c, c threads (full: one session each, opened
    and used once before the clock starts; bare: one shared ONNX Runtime session,
    one generation loop per thread) answer prompts in turn, bare then full.
    """
    from ephemeralml.client._api import connect

    st = _Stages()
    load = Load.start()
    notes: list[str] = []
    threads = len(os.sched_getaffinity(0))
    r: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kind": "generation",
        "mode": plan.mode,
        "model": CHAT_MODEL,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "plan": plan.describe(),
        "notes": notes,
    }
    notes.extend(load.before(r["machine"]))
    meta = json.loads((model_dir / "model.json").read_bytes())
    quant = lookup(meta, "onnx.quantization") or {}
    g: dict[str, Any] = {
        "model": {
            "name": meta.get("name"),
            "weights": f"{quant['bits']}-bit" if "bits" in quant else "fp32",
            "dir": str(model_dir),
        }
    }
    r["generation"] = g
    children = Children()
    bare: BareChat | None = None
    n = len(CHAT_PROMPTS)
    try:
        with st.stage("bare_load", f"loading {CHAT_MODEL} into bare ONNX Runtime in this process"):
            bare = BareChat(model_dir, threads)
            g["model"].update(bare.meta)
        chat = bare
        b: dict[str, Any] = {"load_s": bare.load_s, "intra_op_threads": threads}
        full: dict[str, Any] = {}
        g["bare"], g["full"] = b, full
        with st.stage("start", "starting the host, packaging and uploading the model, the enclave"):
            host, policy, g["enclave_load"] = _serve_chat_model(children, plan, work_dir, model_dir)
        with contextlib.ExitStack() as stack:

            def session() -> Any:
                s = connect(host.address, policy=policy, audit=False, timeout=_SESSION_TIMEOUT_S)
                return stack.enter_context(s)

            main = session()
            with st.stage("latency", f"streaming latency: {n} prompts, bare and full interleaved"):
                for i in range(plan.warmup):
                    chat.answer(i, plan.max_tokens)
                    full_answer(main, i, plan.max_tokens)
                runs: dict[str, list[dict[str, Any]]] = {"bare": [], "full": []}
                answers: dict[str, list[Answer]] = {"bare": [], "full": []}
                for rep in range(plan.reps):
                    timings: dict[str, list[StreamTiming]] = {"bare": [], "full": []}
                    for i in range(n):
                        # Alternate which side goes first, so that drift hits both alike.
                        for side in ("bare", "full") if (rep + i) % 2 == 0 else ("full", "bare"):
                            settle()
                            a = (
                                chat.answer(i, plan.max_tokens)
                                if side == "bare"
                                else full_answer(main, i, plan.max_tokens)
                            )
                            answers[side].append(a)
                            timings[side].append(a.timing())
                    for side in ("bare", "full"):
                        runs[side].append(summarize_streams(timings[side]))
                    rb, rf = runs["bare"][-1], runs["full"][-1]
                    say(
                        f"  {rep + 1}/{plan.reps}: TTFT p50 bare {_f(rb['ttft_p50_ms'])} ms,"
                        f" full {_f(rf['ttft_p50_ms'])} ms; ITL mean bare"
                        f" {_f(rb['itl_mean_ms'])} ms, full {_f(rf['itl_mean_ms'])} ms"
                    )
                first = {a.prompt: a for a in reversed(answers["bare"])}
                reference = {i: a.text for i, a in first.items()}
                for side in ("bare", "full"):
                    for a in answers[side]:
                        _same_text(reference, a, f"{side}, one at a time")
                for side, d in (("bare", b), ("full", full)):
                    d.update(median_of(runs[side]))
                    d["runs"] = runs[side]
                g["prompt_tokens"] = _stats([first[i].prompt_tokens for i in sorted(first)])
                g["answer_tokens"] = _stats([first[i].completion_tokens for i in sorted(first)])
                g["finish"] = {str(i): first[i].finish for i in sorted(first)}
                g["texts_identical"] = True
            levels = plan.concurrency
            with st.stage("throughput", f"aggregate tokens/s at {levels} streams, bare and full"):
                pool = [main, *(session() for _ in range(max(levels) - 1))]
                pids = {"host": host.prog.pid, "enclave": children.programs["enclave"].pid}
                for s in pool:  # each session's first request outside the clock
                    full_answer(s, 0, 2)
                tps: dict[str, dict[str, list[float]]] = {"bare": {}, "full": {}}
                under_load: dict[str, dict[str, Any]] = {"bare": {}, "full": {}}
                detail: dict[str, dict[str, Any]] = {"bare": {}, "full": {}}
                for _ in range(plan.throughput_reps):
                    for c in levels:
                        each = math.ceil(plan.answers_per_level / c)
                        settle()
                        bt = concurrent(
                            c, each, lambda t, i: chat.answer(i, plan.max_tokens), reference
                        )
                        settle()
                        ft = concurrent(
                            c, each, lambda t, i: full_answer(pool[t], i, plan.max_tokens),
                            reference, pids, "client",
                        )  # fmt: skip
                        for side, res in (("bare", bt), ("full", ft)):
                            if res["texts_differ"]:
                                notes.append(
                                    f"{side}, {c} streams at once: {res['texts_differ']} of"
                                    f" {res['answers']} answers differ from bare ONNX Runtime's"
                                    " one-at-a-time text (batched decoding rounds differently)"
                                )
                            tps[side].setdefault(str(c), []).append(res["tokens_per_s"])
                            under_load[side][str(c)] = res.pop("under_load")
                            detail[side][str(c)] = res
                        say(
                            f"  {c} stream(s): bare {bt['tokens_per_s']:.1f} tokens/s,"
                            f" full {ft['tokens_per_s']:.1f} tokens/s"
                        )
                for side, d in (("bare", b), ("full", full)):
                    d["tokens_per_s"] = {c: median(v, 2) for c, v in tps[side].items()}
                    d["tokens_per_s_runs"] = tps[side]
                    d["under_load"] = under_load[side]
                    d["throughput_detail"] = detail[side]
        g["peak_rss_mb"] = {
            "host": proc_status_mb(host.prog.pid, "VmHWM"),
            "enclave": proc_status_mb(children.programs["enclave"].pid, "VmHWM"),
            "bench": proc_status_mb("self", "VmHWM"),
        }
    finally:
        with st.stage("stop", "stopping the programs"):
            children.stop_all()
            if bare is not None:
                bare.close()
        r["exit_codes"] = children.exit_codes
    bad = {k: v for k, v in children.exit_codes.items() if v not in (0, None)}
    if bad:
        notes.append(f"programs exited with non-zero codes: {bad}")
    notes.append(
        f"the enclave decodes at most {MAX_ACTIVE_STREAMS_DEFAULT} streams at once by"
        " default (--max-streams): at 16 streams the others wait for a place, and their"
        " time to first token includes the wait"
    )
    notes.append(
        "client, host, enclave and ONNX Runtime share this machine's "
        f"{r['machine'].get('affinity')} cores: the full path competes with itself,"
        " the bare baseline does not"
    )
    r["stages_s"] = st.durations
    r["duration_s"] = round(time.monotonic() - st.t0, 1)
    notes.extend(load.during(r["machine"], children))
    return finalize_generation(r)
