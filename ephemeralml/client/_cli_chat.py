"""``ephemeral chat``: a chat model's answer streamed to the terminal, verified.

One-shot with a PROMPT (``ephemeral chat --mock "What is the capital of France?"``),
or interactive without one: each line read is the next user message, the chat's
history kept for the session, until end of input. Each piece of text is printed as
its sealed chunk opens (protocol.md §2.8, S1/S2); when the answer ends, its receipt
(which covers every chunk, S3) is verified and recorded in the audit log, and one
``receipt … VERIFIED`` line goes to stderr. Ctrl-C during an answer cancels it in
the enclave: the answer ends ``cancelled``, with a receipt for what was sent. A
stream cut short is an error (S4), never a shorter answer. ``--json``: one JSON
object a line, ``{"event": "chunk", "text": …}`` then ``{"event": "end", …}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import TextIO

from ephemeralml.common._errors import ConfigError
from ephemeralml.common._messages import ChatMessage
from ephemeralml.runtime._home import default_home

from ._api import Generation, Session, TextStream, connect
from ._audit import AuditLog
from ._cli_common import echo, trust_from_args
from ._cli_session import _receipt_dir, _store, _timeout

__all__ = ["DEFAULT_CHAT_MODEL", "cmd_chat"]

#: The chat model ``scripts/models.sh smollm2`` builds and ``scripts/chat_demo.sh`` serves.
DEFAULT_CHAT_MODEL = "smollm2"


def _prompts(args: argparse.Namespace, stdin: TextIO) -> Iterator[str]:
    if args.prompt:
        yield " ".join(args.prompt)
        return
    interactive = stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.rstrip("\n")


def _answer(args: argparse.Namespace, s: Session, history: list[ChatMessage]) -> Generation:
    stream: TextStream = s.generate(
        history,
        model=args.model,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop or (),
    )
    try:
        for piece in stream:
            if args.json:
                echo(args, json.dumps({"event": "chunk", "text": piece}))
            else:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:
        # Ctrl-C: the enclave stops within a step; the end and receipt still come.
        stream.cancel()
        stream.finish()
    assert stream.result is not None
    return stream.result


def cmd_chat(args: argparse.Namespace, *, stdin: TextIO | None = None) -> int:
    timeout = _timeout(args)
    if args.receipt_out:
        _receipt_dir(args.receipt_out)
    if args.max_tokens < 1:
        raise ConfigError(f"--max-tokens must be at least 1, not {args.max_tokens}")
    home = args.home or default_home()
    policy = trust_from_args(args, offline=False)
    history: list[ChatMessage] = []
    if args.system:
        history.append(ChatMessage("system", args.system))
    with connect(
        args.host,
        policy=policy,
        timeout=timeout,
        session_mode=args.session_mode,
        audit=AuditLog.in_home(home),
    ) as s:
        for prompt in _prompts(args, stdin or sys.stdin):
            history.append(ChatMessage("user", prompt))
            g = _answer(args, s, history)
            history.append(ChatMessage("assistant", g.text))
            _report(args, g)
    return 0


def _report(args: argparse.Namespace, g: Generation) -> None:
    rj = g.receipt.receipt.to_json()
    if args.receipt_out:
        rj["files"] = _store(args.receipt_out, g, payloads=args.save_payloads)
    usage = {
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    }
    if args.json:
        end = {"event": "end", "model": g.model, "finish": g.finish, "usage": usage,
               "device": g.device, "receipt": rj}  # fmt: skip
        echo(args, json.dumps(end))
        return
    cancelled = " [cancelled]" if g.finish == "cancelled" else ""
    print(cancelled, flush=True)
    where = f" -> {rj['files']['receipt']}" if "files" in rj else ""
    print(
        f"receipt {rj['receipt_id']} VERIFIED ({g.model}, finish {g.finish}, "
        f"{g.prompt_tokens}+{g.completion_tokens} tokens, {g.device}, seq {rj['seq']}){where}",
        file=sys.stderr,
        flush=True,
    )
