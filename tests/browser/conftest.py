"""What the browser tests share: Chromium and Playwright (or the reason to skip), the
page's build, and a deployment's ``ephemeral-host --ws-listen`` and ``ephemeral web``.

Skipped, with the reason, where Chromium or Playwright is missing (scripts/test.sh
installs both when it can).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ephemeralml.bench._processes import host_argv, start_program
from tests.integration.conftest import BIN, Program

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["CHROMIUM", "MISSING", "PAGE", "Deployment", "needs_browser"]

CHROMIUM = os.environ.get("EPHEMERALML_CHROMIUM", "/usr/bin/chromium")
PAGE = Path(__file__).resolve().parents[2] / "web" / "dist" / "app.js"


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return (
            f"no Chromium at {CHROMIUM} (apt-get install chromium; scripts/test.sh does it as root)"
        )
    if shutil.which("node") is None or not PAGE.exists():
        return "the page is not built (scripts/_web.sh needs node >= 20 and npm)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


#: Why the browser tests cannot run here, or None.
MISSING = _missing()
needs_browser = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


@dataclass
class Deployment:
    """A running mock enclave (and the host that serves its models and KMS); each test
    starts its own host with a WebSocket door, and the page server."""

    home: Path
    env: dict[str, str]
    enclave: Program
    enclave_port: int

    def host(self, *, enclave_port: int | None = None) -> Program:
        """A host with a WebSocket door, relaying to the enclave (or to ``enclave_port``)."""
        port = self.enclave_port if enclave_port is None else enclave_port
        return start_program(
            "ephemeral-host", host_argv([port], "--ws-listen", "127.0.0.1:0"), self.env
        )

    def web(self, host: Program) -> Program:
        ws = str(host.ready["ws"]).removeprefix("tcp:")
        return start_program("ephemeral", [
            str(BIN / "ephemeral"), "web", "--mock", "--ws", f"ws://{ws}", "--listen", "127.0.0.1:0",
        ], self.env)  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()
