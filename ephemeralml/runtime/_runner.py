"""One way to run a program: parser, errors, exit codes, ``-v``, Ctrl-C, logs, readiness.

Every program's ``main`` is ``run_main(prog, parser, argv, body)``, so all of them
behave alike (STYLE.md §15):

* a bad flag is one line, ``PROG: error: MESSAGE``, exit 2 (argparse's usage dump is
  for ``--help``);
* a :class:`~ephemeralml.common._errors.ConfigError` is ``PROG: error: MESSAGE``, exit
  2; any other of our errors is ``PROG: CODE error: MESSAGE``, exit 1; under ``--json``
  the same error is also written to stdout as one JSON object,
  ``{"error": {"code": CODE, "message": MESSAGE}}``, so a pipeline never parses prose;
* ``-v`` adds the traceback before that line, never instead of it;
* Ctrl-C before a server has installed its own handlers is ``PROG: interrupted``,
  exit 130 (servers stop cleanly on SIGINT/SIGTERM and exit 0);
* log records carry a UTC timestamp;
* ``--version`` prints the program, the package and the protocol version.

A server announces that it serves with :func:`ready_line`, one machine-readable line
on stderr (``PROG: ready {JSON}``), written once; harnesses and tests find it with
:func:`parse_ready` instead of matching human log lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

from ephemeralml import __version__
from ephemeralml.common._errors import ConfigError, Error
from ephemeralml.common._messages import PROTOCOL_VERSION

__all__ = [
    "READY",
    "Parser",
    "parse_ready",
    "ready_line",
    "run_main",
    "setup_logging",
    "version_text",
]

#: The name of the one stderr handler setup_logging installs.
_HANDLER = "ephemeralml-runner"

#: The word between the program's name and the JSON of its readiness line.
READY = "ready"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors; ``version=True`` (a program's top parser) adds
    ``--version``. Subcommand parsers are made with the same class, without it."""

    def __init__(self, *args: Any, version: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if version:
            self.add_argument("--version", action="version", version=version_text(self.prog))

    def error(self, message: str) -> NoReturn:
        # argparse prints the usage and exits 2; we want one line from run_main.
        raise ConfigError(message)


def version_text(prog: str) -> str:
    return f"{prog} {__version__} (protocol {PROTOCOL_VERSION})"


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def setup_logging(prog: str, verbosity: int) -> None:
    """Records of ``ephemeralml.*`` on stderr with a UTC timestamp; ``-v`` shows INFO,
    ``-vv`` DEBUG. Never payloads: that is each logger's caller's rule."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter(f"%(asctime)s {prog}: %(levelname)s %(message)s"))
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)  # a second call (tests run main() often) replaces the first
    root.addHandler(handler)
    logging.getLogger("ephemeralml").setLevel(
        logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    )


def error_line(prog: str, e: Error) -> str:
    if isinstance(e, ConfigError):
        return f"{prog}: error: {e}"
    return f"{prog}: {e.code} error: {e}"


def run_main(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    body: Callable[[argparse.Namespace], int],
    *,
    stdout: IO[str] | None = None,
) -> int:
    """Parse ``argv``, run ``body(args)``, and turn what it raises into one line and an
    exit code (module docstring). ``args.stdout`` is where ``body`` writes results."""
    out = stdout or sys.stdout
    args: argparse.Namespace | None = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version
            return e.code if isinstance(e.code, int) else 0
        args.stdout = out
        setup_logging(prog, int(getattr(args, "verbose", 0) or 0))
        return int(body(args))
    except Error as e:
        if args is not None and getattr(args, "verbose", None):
            traceback.print_exc(file=sys.stderr)
        print(error_line(prog, e), file=sys.stderr, flush=True)
        if args is not None and getattr(args, "json", False):
            print(json.dumps({"error": {"code": e.code, "message": e.message}}), file=out)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130


def ready_line(prog: str, **fields: object) -> str:
    """``PROG: ready {JSON}``: what a server prints once, when it serves."""
    return f"{prog}: {READY} " + json.dumps(fields, sort_keys=True, separators=(",", ":"))


def parse_ready(line: str, prog: str) -> dict[str, Any] | None:
    """The fields of ``prog``'s readiness line, or None if ``line`` is not one."""
    head = f"{prog}: {READY} "
    if not line.startswith(head):
        return None
    try:
        fields = json.loads(line[len(head) :])
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None
