"""``ephemeral web`` serves the page and its trust policy from this machine: the policy
the user chose, as §8.1 JSON the page parses to the same checks; its own files only
(Content-Security-Policy); loopback only; a clear error when the page is not built."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from ephemeralml.bench._processes import start_program
from ephemeralml.client._policy import ClientPolicy
from ephemeralml.client._policy_document import PolicyDocument
from ephemeralml.runtime._home import MOCK_ROOT
from tests.integration.conftest import BIN, Stack

PAGE = Path(__file__).resolve().parents[2] / "web" / "dist" / "app.js"


@pytest.mark.skipif(not PAGE.exists(), reason="the page is not built (scripts/_web.sh needs node and npm)")
def test_the_page_and_its_policy_come_from_this_machine(stack: Stack) -> None:
    web = start_program("ephemeral", [
        str(BIN / "ephemeral"), "web", "--mock", "--ws", "ws://127.0.0.1:5001", "--listen", "127.0.0.1:0",
    ], stack.env)  # fmt: skip
    try:
        url = str(web.ready["url"])
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["Content-Security-Policy"] == (
                "default-src 'none'; script-src 'self'; style-src 'self'; "
                "connect-src 'self' ws://127.0.0.1:5001; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'"
            )
            assert r.headers["Cache-Control"] == "no-store"
            assert b'<script type="module" src="app.js"></script>' in r.read()
        with urllib.request.urlopen(url + "config.json", timeout=10) as r:
            config = json.loads(r.read())
        assert config["ws"] == "ws://127.0.0.1:5001"
        # The page gets the same policy the CLI would use, in the policy file format.
        doc = PolicyDocument.from_json(config["policy"].encode(), where="page")
        mine = ClientPolicy.unsafe_mock(stack.home, warn=False)
        assert doc.root == "mock"
        assert doc.measurements.allowed == mine.attestation.measurements.allowed  # type: ignore[attr-defined]
        published = x509.load_pem_x509_certificate((stack.home / MOCK_ROOT).read_bytes())
        assert x509.load_pem_x509_certificate(config["mock_root"].encode()) == published
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "../../etc/passwd", timeout=10)
        assert e.value.code == 404
    finally:
        assert web.stop() == 0, "".join(web.lines)


def test_an_unbuilt_page_or_a_public_address_is_one_line(stack: Stack, tmp_path: Path) -> None:
    done = stack.cli("web", "--mock", "--page-dir", str(tmp_path), "--listen", "127.0.0.1:0")
    assert (done.returncode, done.stderr.strip().splitlines()[-1]) == (
        2,
        f"ephemeral: error: the page is not built in {tmp_path} (no index.html, app.js, "
        "style.css): run scripts/_web.sh (it needs node >= 20 and npm)",
    )
    done = stack.cli("web", "--mock", "--listen", "0.0.0.0:8081")
    assert done.stderr.strip().splitlines()[-1] == (
        "ephemeral: error: --listen 0.0.0.0:8081: this serves plaintext to the page, so it "
        "listens on loopback only (127.0.0.1, ::1 or localhost)"
    )
    done = stack.cli("web", "--mock", "--ws", "http://127.0.0.1:5001")
    assert done.stderr.strip().splitlines()[-1] == (
        "ephemeral: error: --ws http://127.0.0.1:5001: not a ws:// or wss:// URL of the host's --ws-listen"
    )
