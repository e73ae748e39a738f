"""``scripts/bench.py`` and ``python -m ephemeralml.bench``: the command line.

The same error policy as the programs (:func:`ephemeralml.runtime._runner.run_main`):
a bad flag or value is ``bench: error: MESSAGE``, exit 2; a benchmark that cannot run
is ``bench: bench error: MESSAGE``, exit 1 (a program that did not start shows its
own last lines first); Ctrl-C or SIGTERM stops every program and exits 130. A missed
target is not an error unless ``--strict`` (exit 1).

``--generation`` runs the generation benchmark instead (:mod:`._generation`); without
the chat model it says why in one line and exits 0 (1 with ``--strict``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from ephemeralml.common._errors import ConfigError
from ephemeralml.runtime._runner import Parser, run_main

from ._generation import default_chat_model_dir, missing_chat_model, run_generation_benchmark
from ._plan import FULL, GEN_FULL, GEN_QUICK, PROG, QUICK, BenchError, GenerationPlan, Plan
from ._processes import ProgramError
from ._report import format_generation_table, format_table
from ._run import run_benchmark

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description="Bare ONNX Runtime vs the full confidential path (mock mode), side by side.",
        version=True,
    )
    p.add_argument("--quick", action="store_true", help="less work per section (about a minute)")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON to FILE")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    p.add_argument(
        "--enclaves", type=int, metavar="N", help="scale up to N enclaves (default 2 quick, 3 full)"
    )
    p.add_argument(
        "--idle-connections", type=int, metavar="N", help="idle connections to open (default 1000)"
    )
    p.add_argument(
        "--enclave-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to every enclave, e.g. --enclave-arg=--batch-wait-ms=2 (repeatable)",
    )
    p.add_argument(
        "--generation",
        action="store_true",
        help="the generation benchmark instead: streamed chat answers, TTFT, inter-token"
        " latency and tokens/s at 1-16 streams (needs scripts/models.sh smollm2)",
    )
    p.add_argument(
        "--chat-model-dir",
        type=Path,
        metavar="DIR",
        help="with --generation: the chat model (default $EPHEMERALML_HOME/models/smollm2)",
    )
    return p


def plan_of(args: argparse.Namespace) -> Plan:
    """The plan the flags ask for; :class:`ConfigError` for a value out of range."""
    plan = QUICK if args.quick else FULL
    if args.enclaves is not None:
        if not 1 <= args.enclaves <= 8:
            raise ConfigError("--enclaves must be 1 to 8")
        plan = plan.replace(max_enclaves=args.enclaves)
    if args.enclave_arg:
        plan = plan.replace(enclave_args=tuple(args.enclave_arg))
    if args.idle_connections is not None:
        if not 1 <= args.idle_connections <= 4000:
            raise ConfigError("--idle-connections must be 1 to 4000")
        plan = plan.replace(idle_connections=args.idle_connections)
    return plan


def generation_plan_of(args: argparse.Namespace) -> GenerationPlan:
    """The generation plan the flags ask for; :class:`ConfigError` for a flag of the
    other benchmark."""
    if args.enclaves is not None or args.idle_connections is not None:
        raise ConfigError("--enclaves and --idle-connections do not apply to --generation")
    plan = GEN_QUICK if args.quick else GEN_FULL
    if args.enclave_arg:
        plan = plan.replace(enclave_args=tuple(args.enclave_arg))
    return plan


class _Interrupted(BaseException):
    pass


def _body(args: argparse.Namespace) -> int:
    if args.chat_model_dir is not None and not args.generation:
        raise ConfigError("--chat-model-dir applies only to --generation")
    plan: Plan | GenerationPlan
    if args.generation:
        plan = generation_plan_of(args)
        model_dir = args.chat_model_dir or default_chat_model_dir()
        why = missing_chat_model(model_dir)
        if why is not None:
            print(f"{PROG}: generation skipped: {why}", file=sys.stderr)
            return 1 if args.strict else 0
    else:
        plan = plan_of(args)

    # SIGTERM to the benchmark stops its children too (as Ctrl-C does).
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted()

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, on_term)
    try:
        with tempfile.TemporaryDirectory(prefix="ephemeralml-bench-") as tmp:
            if isinstance(plan, GenerationPlan):
                result = run_generation_benchmark(plan, Path(tmp), model_dir)
            else:
                result = run_benchmark(plan, Path(tmp))
    except (KeyboardInterrupt, _Interrupted):
        print(f"{PROG}: interrupted; programs stopped", file=sys.stderr)
        return 130
    except ProgramError as e:
        for line in e.tail:  # the program's own words first, then the one line
            print(f"  {line}", file=sys.stderr)
        raise BenchError(e.summary + (" (its last lines are above)" if e.tail else "")) from e
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)

    out = args.stdout
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n")
    table = format_generation_table(result) if args.generation else format_table(result)
    if args.json:
        print(table, file=sys.stderr)
        print(text, file=out)
    else:
        print(table, file=out)
    if args.strict and result["summary"]["missed"]:
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/bench.py``. Returns the exit code."""
    return run_main(PROG, parser(), argv, _body)
