"""``ephemeral proxy`` with the real ``openai`` package as its client, over the real
host and enclave (mock mode): the OpenAI embeddings API, attested and sealed underneath,
receipts in the response that verify offline, OpenAI's errors, concurrency, and a
proxy that refuses to start when the enclave does not verify."""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from ephemeralml.bench._processes import free_port, start_program
from ephemeralml.client import connect
from ephemeralml.client._policy import ClientPolicy
from tests.integration.conftest import BIN, Program, Stack

MODEL = "all-MiniLM-L6-v2"
PROXY = "ephemeral"


def _start_proxy(stack: Stack, *extra: str) -> tuple[Program, str]:
    proxy = start_program(PROXY, [
        str(BIN / "ephemeral"), "proxy", "--mock", "--host", stack.address,
        "--listen", "127.0.0.1:0", *extra,
    ], stack.env)  # fmt: skip
    return proxy, str(proxy.ready["listen"]).removeprefix("tcp:")


@pytest.fixture(scope="module")
def proxy(stack: Stack) -> Iterator[tuple[Program, str]]:
    p, listen = _start_proxy(stack, "--sessions", "2")
    yield p, listen
    assert p.stop() == 0, "".join(p.lines)


def _client(listen: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{listen}/v1", api_key="not-used", max_retries=0)


def _direct(stack: Stack, texts: list[str]) -> np.ndarray:
    policy = ClientPolicy.unsafe_mock(stack.home, warn=False)
    with connect(stack.address, policy=policy, audit=stack.home / "direct-audit.db") as s:
        return np.concatenate([r.vectors for r in s.embed(texts, model=MODEL)])


def test_the_openai_sdk_gets_embeddings_and_verifiable_receipts(
    stack: Stack, proxy: tuple[Program, str], tmp_path: Path
) -> None:
    program, listen = proxy
    assert program.ready["models"] == [MODEL] and program.ready["sessions"] == 2
    texts = ["confidential text one", "and another"]
    client = _client(listen)
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=texts, encoding_format="float")
    got = raw.parse()
    assert [d.index for d in got.data] == [0, 1] and got.model == MODEL
    vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(vectors, _direct(stack, texts), atol=1e-6)
    # The SDK's default asks for base64 and decodes it: the same numbers.
    default = client.embeddings.create(model=MODEL, input="confidential text one")
    np.testing.assert_allclose(np.array(default.data[0].embedding, dtype=np.float32), vectors[0], atol=1e-6)

    # The receipt: its id in the header, the receipt itself in the body, and it verifies
    # offline against the attestation document that came with it.
    ext: dict[str, Any] = (got.model_extra or {})["ephemeralml"]
    (receipt,) = ext["receipts"]
    assert raw.headers["x-ephemeralml-receipt-id"] == receipt["receipt_id"]
    doc = base64.b64decode(ext["enclave"]["attestation"])
    assert ext["enclave"]["mode"] == "mock"
    (tmp_path / "r.cbor").write_bytes(base64.b64decode(receipt["cose"]))
    (tmp_path / "a.cbor").write_bytes(doc)
    v = stack.cli("verify", str(tmp_path / "r.cbor"), "--attestation", str(tmp_path / "a.cbor"), "--mock", "--json")
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["receipt"]["receipt_id"] == receipt["receipt_id"]
    # Every receipt the proxy verified is in the audit log, which re-verifies offline.
    audit = stack.cli("audit", "--mock", "--json")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    assert report["findings"] == [] and report["entries"] >= 2


def test_models_and_openai_errors(proxy: tuple[Program, str]) -> None:
    _, listen = proxy
    client = _client(listen)
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as nf:
        client.embeddings.create(model="gpt-nothing", input="x")
    assert nf.value.status_code == 404
    assert nf.value.body == {
        "message": "The model `gpt-nothing` does not exist or is not served by this enclave",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found",
    }  # fmt: skip
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=MODEL, input=[[1, 2, 3]])
    assert bad.value.body == {
        "message": "'input' must be text: token arrays are not supported (the enclave tokenizes)",
        "type": "invalid_request_error", "param": "input", "code": None,
    }  # fmt: skip
    with pytest.raises(openai.BadRequestError) as dims:
        client.embeddings.create(model=MODEL, input="x", dimensions=64)
    assert isinstance(dims.value.body, dict) and dims.value.body["param"] == "dimensions"
    # Not JSON: 400. A body declared over the limit: 413 before a byte of it is read.
    req = urllib.request.Request(f"http://{listen}/v1/embeddings", data=b"{nope", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400
    assert json.loads(e.value.read())["error"]["message"].startswith("the request body is not JSON (")
    host, port = listen.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/embeddings")
    conn.putheader("Content-Length", str(8 * 1024 * 1024 + 1))
    conn.endheaders()
    big = conn.getresponse()
    assert big.status == 413
    assert json.loads(big.read())["error"]["message"] == "the request body is over 8388608 bytes"
    conn.close()


def test_concurrent_sdk_clients_share_the_pool(stack: Stack, tmp_path: Path) -> None:
    program, listen = _start_proxy(stack, "--sessions", "2")
    try:
        failures: list[BaseException] = []
        ids: list[str] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            client = _client(listen)
            try:
                for i in range(4):
                    r = client.embeddings.with_raw_response.create(model=MODEL, input=f"worker {n} text {i}")
                    assert len(r.parse().data[0].embedding) == 384
                    with lock:
                        ids.append(r.headers["x-ephemeralml-receipt-id"])
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures
        assert len(set(ids)) == 24
    finally:
        assert program.stop() == 0, "".join(program.lines)
    # Six clients, two sessions: each opened once (attested once), then reused.
    assert program.lines[-1].startswith("ephemeral: proxy: stopped (SIGTERM); sessions opened 2, reused "), program.lines


def test_a_proxy_refuses_to_start_when_the_enclave_does_not_verify(stack: Stack, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    r = stack.cli("policy", "from-measurements", "-o", str(policy))
    assert r.returncode == 0, r.stderr
    doc = json.loads(policy.read_text())
    text = json.dumps(doc)
    pcr0 = doc["measurements"][0]["PCR0"]
    policy.write_text(text.replace(pcr0, "ab" * 48))
    listen = free_port()
    done = subprocess.run(
        [str(BIN / "ephemeral"), "proxy", "--policy", str(policy), "--host", stack.address,
         "--listen", f"127.0.0.1:{listen}"],
        env=stack.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ephemeral: policy error: "), done.stderr
    assert "ready" not in done.stderr
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{listen}/v1/models", timeout=2)


def test_the_proxy_listens_on_loopback_only(stack: Stack) -> None:
    done = stack.cli("proxy", "--mock", "--host", stack.address, "--listen", "0.0.0.0:8080")
    assert (done.returncode, done.stderr.strip().splitlines()[-1]) == (
        2,
        "ephemeral: error: --listen 0.0.0.0:8080: this serves plaintext to the SDK, so it "
        "listens on loopback only (127.0.0.1, ::1 or localhost)",
    )
