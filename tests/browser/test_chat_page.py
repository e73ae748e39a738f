"""The page's chat mode in Chromium: the attested binding fills the model selector,
the tiny chat model's answer streams in piece by piece and ends with a verified
receipt, the conversation's earlier turns go with the next message; and when a hostile
hop drops one chunk frame, the page shows the S1 refusal and nothing of the answer;
Stop, pressed while an answer streams, ends it with a verified receipt.

The deployment is :func:`tests.integration.chat_stack.start_chat_stack`'s (the tiny
model packaged, uploaded and served beside the embedding model); each test starts its
own host with a WebSocket door, relaying to the enclave directly or through the hop.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cbor2
import pytest

from tests.browser.conftest import Deployment, needs_browser
from tests.integration.chat_stack import CHAT_MODEL, start_chat_stack
from tests.integration.conftest import FrameEdit, TamperProxy
from tests.models.tiny_chat import chat_prompt_ids, reference_answer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = needs_browser

FIRST = "the cat sat"  # 8 tokens rendered (no system message); the context is 32
SECOND = "the dog"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # The stack's own host serves the enclave's models and KMS; the hosts with a
    # WebSocket door that the tests start relay to the same enclave.
    s = start_chat_stack(tmp_path_factory)
    yield Deployment(s.home, s.env, s.enclave, s.enclave_port)
    assert (s.enclave.stop(), s.host.stop()) == (0, 0), "".join(s.enclave.lines + s.host.lines)


def _open_chat(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector('#status[data-state="ready"]', timeout=30_000)
    page.click("#mode-chat")
    page.wait_for_selector(
        f'#chat-model option[value="{CHAT_MODEL}"]', state="attached", timeout=30_000
    )
    page.wait_for_selector('#status[data-state="ready"]', timeout=30_000)
    page.select_option("#chat-model", CHAT_MODEL)


def _say(page: Page, message: str, max_tokens: int) -> dict[str, object]:
    """Send one message; the page's state once the answer verified or was refused."""
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#message", message)
    page.click("#send")
    page.wait_for_selector(
        '#status[data-state="verified"], #status[data-state="refused"]', timeout=60_000
    )
    answers = page.locator('.turn[data-role="assistant"]')
    last = answers.last if answers.count() else None
    receipt = last.locator("dl.receipt") if last else None
    return {
        "state": page.get_attribute("#status", "data-state"),
        "status": page.inner_text("#status"),
        "refusal": page.inner_text("#refusal") if page.is_visible("#refusal") else None,
        "turns": page.locator(".turn").count(),
        # The text exactly as shown (innerText would trim it), and how many pieces
        # it arrived in: the page appends one text node per opened chunk.
        "answer": last.locator(".text").evaluate("e => e.textContent") if last else None,
        "pieces": last.locator(".text").evaluate("e => e.childNodes.length") if last else 0,
        "receipt": receipt.inner_text() if receipt is not None and receipt.count() else "",
        "receipts": page.locator("dl.receipt").count(),
        "message_box": page.input_value("#message"),
    }


def _rows(dl_text: str) -> dict[str, str]:
    lines = [x.strip() for x in dl_text.splitlines() if x.strip()]
    return dict(zip(lines[::2], lines[1::2], strict=True))


def test_the_page_streams_a_chat_answer_with_its_verified_receipt(
    deployment: Deployment, browser: Browser, tmp_path: Path
) -> None:
    host = deployment.host()
    web = deployment.web(host)
    page = browser.new_page(viewport={"width": 1000, "height": 1300})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        _open_chat(page, str(web.ready["url"]))
        options = page.locator("#chat-model option").all_inner_texts()
        first = _say(page, FIRST, 8)
        second = _say(page, SECOND, 4)
        shot = os.environ.get("EPHEMERALML_CHAT_SCREENSHOT")
        if shot:
            page.screenshot(path=shot, full_page=True)
    finally:
        page.close()
        assert (web.stop(), host.stop()) == (0, 0), "".join(web.lines + host.lines)
    assert errors == []
    assert sorted(options) == sorted(["all-MiniLM-L6-v2", CHAT_MODEL])

    text, finish, tokens = reference_answer(chat_prompt_ids([("user", FIRST)]), 8)
    assert first["state"] == "verified", first
    assert first["answer"] == text
    # Streamed: shown piece by piece as the chunks opened, not all at once.
    assert isinstance(first["pieces"], int) and first["pieces"] > 1, first
    assert first["status"] == (
        f"VERIFIED: {CHAT_MODEL} answered in the attested enclave (finish {finish}, {tokens} token(s)); "
        "the receipt verified"
    )
    r = _rows(str(first["receipt"]))
    assert (r["finish"], r["tokens"], r["device"]) == (
        finish,
        f"8 prompt + {tokens} completion",
        "CPUExecutionProvider",
    )
    assert len(r["receipt id"]) == 32 and r["seq"] == "0" and r["mode"] == "mock", r
    assert r["model"].startswith(f"{CHAT_MODEL} (digest ")

    # The second turn carries the first: its answer is the reference for the whole chat.
    chat = [("user", FIRST), ("assistant", text), ("user", SECOND)]
    text2, finish2, tokens2 = reference_answer(chat_prompt_ids(chat), 4)
    assert second["state"] == "verified", second
    assert second["answer"] == text2
    r2 = _rows(str(second["receipt"]))
    assert (r2["finish"], r2["tokens"]) == (
        finish2,
        f"{len(chat_prompt_ids(chat))} prompt + {tokens2} completion",
    )
    assert r2["seq"] == "1" and r2["session"] == r["session"]  # the same attested session
    assert second["turns"] == 4 and second["receipts"] == 2 and second["refusal"] is None


def test_a_dropped_chunk_is_refused_in_the_page(deployment: Deployment, browser: Browser) -> None:
    # The host's relay to the enclave goes through a hostile hop that drops the second
    # chunk of the answer; the first has already been shown when the third arrives.
    dropped: list[dict[str, object]] = []

    def drop_second(i: int, m: dict[str, object]) -> list[dict[str, object]]:
        if i == 1:
            dropped.append(m)
            return []
        return [m]

    proxy = TamperProxy(deployment.enclave_port, FrameEdit(drop_second))
    host = deployment.host(enclave_port=proxy.port)
    web = deployment.web(host)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        _open_chat(page, str(web.ready["url"]))
        got = _say(page, FIRST, 8)
        enclave_shown = page.is_visible("#enclave")
    finally:
        page.close()
        assert (web.stop(), host.stop()) == (0, 0), "".join(web.lines + host.lines)
        proxy.close()
    assert [(c["seq"], c["k"]) for c in dropped] == [(0, 1)]
    assert got["state"] == "refused", got
    assert got["refusal"] == (
        "REFUSED: CiphertextError: S1 chunk 2 of answer 0 out of order: expected chunk 1 "
        "(dropped, repeated or reordered)"
    )
    assert got["status"] == "refused: no text left this page unsealed, and no answer is shown"
    # Nothing that looks like an answer: no turn, no receipt; the message is back in its box.
    assert (got["turns"], got["receipts"], got["answer"]) == (0, 0, None)
    assert got["message_box"] == FIRST and not enclave_shown and errors == []


def _frames(sock: socket.socket) -> Iterator[bytes]:
    """Whole frames (u32be length ‖ CBOR body) as they arrive, until the socket ends."""
    buf = bytearray()
    while True:
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            end = 4 + int.from_bytes(buf[:4], "big")
            yield bytes(buf[:end])
            del buf[:end]
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        buf += data


class HoldAfterFirstChunk:
    """A loopback hop between the host and the enclave that passes frames on one at a
    time and holds everything after chunk 0 of the first answer until the page's next
    sealed request (its cancel) has gone up: so Stop is pressed while the answer is
    still streaming, whatever the model's speed. It learns no plaintext."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.cancel_sent = threading.Event()
        self.held = False
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(30)
        self.port = int(self._srv.getsockname()[1])
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        try:
            client, _ = self._srv.accept()
        except OSError:
            return
        enclave = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
        for args in ((client, enclave, "up"), (enclave, client, "down")):
            t = threading.Thread(target=self._pump, args=args, daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        src.settimeout(30)
        try:
            for frame in _frames(src):
                dst.sendall(frame)
                body = cbor2.loads(frame[4:])
                if direction == "up" and body.get("t") == "req" and body.get("seq") == 1:
                    self.cancel_sent.set()
                if (
                    direction == "down"
                    and body.get("t") == "chunk"
                    and (body.get("seq"), body.get("k")) == (0, 0)
                ):
                    self.held = self.cancel_sent.wait(timeout=30)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._srv.close()
        for t in self._threads:
            t.join(timeout=10)


def test_stop_ends_the_answer_with_a_verified_receipt(
    deployment: Deployment, browser: Browser
) -> None:
    hop = HoldAfterFirstChunk(deployment.enclave_port)
    host = deployment.host(enclave_port=hop.port)
    web = deployment.web(host)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        _open_chat(page, str(web.ready["url"]))
        page.fill("#max-tokens", "24")  # all the context leaves
        page.fill("#message", FIRST)
        page.click("#send")
        page.wait_for_selector('#status[data-state="streaming"]', timeout=30_000)
        page.wait_for_selector('.turn[data-role="assistant"] .text:not(:empty)', timeout=30_000)
        page.click("#stop")
        page.wait_for_selector(
            '#status[data-state="verified"], #status[data-state="refused"]', timeout=60_000
        )
        status = page.inner_text("#status")
        answer = page.locator('.turn[data-role="assistant"] .text').evaluate("e => e.textContent")
        receipt = _rows(page.locator("dl.receipt").inner_text())
    finally:
        page.close()
        assert (web.stop(), host.stop()) == (0, 0), "".join(web.lines + host.lines)
        hop.close()
    assert hop.held and errors == [], status
    # The enclave stops before its next step; a model this small may have finished
    # first ("length"). Either way the page shows exactly what the receipt covers.
    finish = receipt["finish"]
    assert finish in ("cancelled", "length"), receipt
    tokens = int(receipt["tokens"].split(" + ")[1].removesuffix(" completion"))
    assert answer == reference_answer(chat_prompt_ids([("user", FIRST)]), tokens)[0]
    assert status == (
        f"VERIFIED: {CHAT_MODEL} answered in the attested enclave (finish {finish}, {tokens} token(s)); "
        "the receipt verified"
    )
