"""The browser client in Debian's Chromium, driven by Playwright: the page that
``ephemeral web`` serves verifies the mock enclave's attestation, seals texts to it
through the host's WebSocket door, and verifies the receipt; and when the host flips
one bit of what it relays, the page shows the refusal and no answer.

Skipped, with the reason, where Chromium or Playwright is missing (conftest.py).
The chat mode is in test_chat_page.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeralml.bench._processes import (
    ENCLAVE,
    enclave_argv,
    free_port,
    host_argv,
    program_env,
    start_program,
)
from ephemeralml.runtime._home import MOCK_MEASUREMENTS
from tests.browser.conftest import Deployment, needs_browser
from tests.integration.conftest import TamperProxy, kms_port, services_port

pytestmark = needs_browser


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("web-home")
    env = program_env(home)
    enclave_port = free_port()
    first = start_program("ephemeral-host", host_argv([enclave_port]), env)
    try:
        enclave = start_program(
            ENCLAVE, enclave_argv(enclave_port, services_port(first), kms_port(first)), env
        )
    except BaseException:
        first.stop()
        raise
    yield Deployment(home, env, enclave, enclave_port)
    assert (enclave.stop(), first.stop()) == (0, 0), "".join(enclave.lines + first.lines)


def _run_page(browser: object, url: str, screenshot: Path | None = None) -> dict[str, object]:
    page = browser.new_page(viewport={"width": 1000, "height": 1100})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(url)
        page.wait_for_selector('#status[data-state="ready"]', timeout=30_000)
        page.fill("#texts", "The host never sees this sentence.\nNor this one.")
        page.click("#embed")
        page.wait_for_selector('#status[data-state="verified"], #status[data-state="refused"]', timeout=60_000)
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
        return {
            "state": page.get_attribute("#status", "data-state"),
            "status": page.inner_text("#status"),
            "refusal": page.inner_text("#refusal") if page.is_visible("#refusal") else None,
            "vectors": page.locator("#vectors li").all_inner_texts() if page.is_visible("#results") else [],
            "enclave": page.inner_text("#measurements") if page.is_visible("#enclave") else "",
            "receipt": page.inner_text("#receipt") if page.is_visible("#results") else "",
            "mock_warning": page.is_visible("#mock-warning"),
            "errors": errors,
        }
    finally:
        page.close()


def test_the_page_verifies_the_enclave_and_its_receipt(deployment: Deployment, browser: object, tmp_path: Path) -> None:
    host = deployment.host()
    web = deployment.web(host)
    try:
        shot = Path(os.environ.get("EPHEMERALML_PAGE_SCREENSHOT", tmp_path / "page.png"))
        got = _run_page(browser, str(web.ready["url"]), screenshot=shot)
    finally:
        assert (web.stop(), host.stop()) == (0, 0), "".join(web.lines + host.lines)
    assert got["state"] == "verified", got
    assert got["status"] == "VERIFIED: 2 text(s) embedded by the attested enclave; the receipt verified"
    vectors = got["vectors"]
    assert isinstance(vectors, list) and len(vectors) == 2
    assert all(v.endswith("(dimension 384)") for v in vectors)
    assert got["mock_warning"] is True and got["refusal"] is None and got["errors"] == []
    published = json.loads((deployment.home / MOCK_MEASUREMENTS).read_text())["pcrs"]
    assert re.search(rf"(^|\s)PCR0\s+{published['0']}(\s|$)", str(got["enclave"])), got["enclave"]
    assert "receipt id" in str(got["receipt"]) and "mock" in str(got["receipt"])


def _flip_last_byte_of_first_frame() -> object:
    state: dict[str, int] = {}

    def tamper(direction: str, offset: int, chunk: bytes) -> bytes:
        if direction != "down":
            return chunk
        if offset == 0 and "target" not in state:
            state["target"] = 4 + int.from_bytes(chunk[:4], "big") - 1
        t = state.get("target", -1) - offset
        if 0 <= t < len(chunk):
            chunk = chunk[:t] + bytes([chunk[t] ^ 0x01]) + chunk[t + 1 :]
        return chunk

    return tamper


def test_a_flipped_bit_from_the_host_is_refused_in_the_page(deployment: Deployment, browser: object) -> None:
    # The host's relay to the enclave goes through a hostile hop that flips the last
    # bit of the first frame the enclave sends (its attestation document's signature).
    proxy = TamperProxy(deployment.enclave_port, _flip_last_byte_of_first_frame())  # type: ignore[arg-type]
    host = deployment.host(enclave_port=proxy.port)
    web = deployment.web(host)
    try:
        got = _run_page(browser, str(web.ready["url"]))
    finally:
        assert (web.stop(), host.stop()) == (0, 0), "".join(web.lines + host.lines)
        proxy.close()
    assert got["state"] == "refused", got
    assert str(got["refusal"]).startswith("REFUSED: AttestationError: A3 "), got
    assert got["vectors"] == [] and got["enclave"] == "" and got["receipt"] == ""
    assert got["status"] == "refused: no text left this page unsealed, and no answer is shown"
