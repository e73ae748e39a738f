"""The three real programs on loopback, driven through the client library and CLI."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from ephemeralml.client._api import connect
from ephemeralml.client._policy import ClientPolicy
from ephemeralml.common._errors import (
    Error,
    InferenceError,
    LimitError,
    TransportError,
)
from ephemeralml.common._frame import MAX_FRAME_BYTES
from tests.integration.conftest import Stack, TamperProxy, free_port, start_host

pytestmark = pytest.mark.integration

REFERENCE = Path(__file__).resolve().parents[1] / "vectors" / "embeddings" / "minilm_reference.json"


def _policy(stack: Stack) -> ClientPolicy:
    return ClientPolicy.unsafe_mock(stack.home, warn=False)


def test_embeddings_match_sentence_transformers_reference(stack: Stack) -> None:
    ref = json.loads(REFERENCE.read_text())
    texts = [c["text"] for c in ref["cases"]]
    r = stack.cli("embed", "--mock", "--json", "--host", stack.address, *texts)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == "all-MiniLM-L6-v2" and out["dim"] == 384
    got = np.asarray(out["embeddings"], dtype=np.float64)
    want = np.asarray([c["embedding"] for c in ref["cases"]], dtype=np.float64)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert got.shape == (len(texts), 384)
    assert cos.min() >= 0.99, cos
    assert len(out["receipts"]) == 1 and out["receipts"][0]["mode"] == "mock"
    # The CLI warns, loudly, that this is a mock.
    assert "NOT a real enclave" in r.stderr


def test_receipt_verifies_offline_and_only_with_mock_trust(stack: Stack, tmp_path: Path) -> None:
    out_dir = tmp_path / "receipts"
    r = stack.cli("embed", "--mock", "--host", stack.address, "--receipt-out", str(out_dir),
                  "--save-payloads", "store this receipt")  # fmt: skip
    assert r.returncode == 0, r.stderr
    (receipt,) = out_dir.glob("*.receipt.cbor")
    rid = receipt.name.removesuffix(".receipt.cbor")
    (att,) = out_dir.glob("*.attestation.cbor")
    req, resp = out_dir / f"{rid}.request.cbor", out_dir / f"{rid}.response.cbor"

    ok = stack.cli("verify", str(receipt), "--mock", "--request", str(req), "--response", str(resp))
    assert ok.returncode == 0, ok.stderr
    assert f"receipt {rid} VERIFIED" in ok.stdout and "(matches --request)" in ok.stdout

    # Without --mock: refused (no trust in the mock root unless told).
    no = stack.cli("verify", str(receipt))
    assert no.returncode == 2
    assert no.stderr.strip().splitlines()[-1].startswith("ephemeral: error: verify needs --policy")
    # Trusting the same root as if it were real: a mock receipt is still refused.
    root = stack.home / "published" / "mock-root.pem"
    fake = stack.cli("verify", str(receipt), "--root", str(root))
    assert fake.returncode == 1
    assert "R8 mode: a mock receipt verified under a non-mock root" in fake.stderr
    # A response that is not the one the receipt covers.
    other = tmp_path / "other.cbor"
    data = resp.read_bytes()
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    bad = stack.cli("verify", str(receipt), "--mock", "--response", str(other))
    assert bad.returncode == 1 and "R11 response" in bad.stderr
    # The attestation stored beside the receipt checks offline too.
    a = stack.cli("attestation", str(att), "--mock", "--json")
    assert a.returncode == 0, a.stderr
    assert json.loads(a.stdout)["root"]["mock"] is True


def test_second_session_gets_new_nonce_key_and_session(stack: Stack) -> None:
    with (
        connect(stack.address, policy=_policy(stack)) as a,
        connect(stack.address, policy=_policy(stack)) as b,
    ):
        da, db = a.attestation.document, b.attestation.document
        assert da.nonce != db.nonce
        assert da.public_key != db.public_key
        assert a.binding.session_id != b.binding.session_id
        assert a.binding.receipt_key == b.binding.receipt_key  # one enclave identity
        ea, eb = a.embed(["same text"])[0], b.embed(["same text"])[0]
        np.testing.assert_allclose(ea.vectors, eb.vectors, rtol=0, atol=1e-6)


def test_host_only_ever_sees_ciphertext(stack: Stack) -> None:
    secret = "the launch code is 0000-SECRET-4242"
    proxy = TamperProxy(stack.host_port)
    try:
        with connect(proxy.address, policy=_policy(stack)) as s:
            e = s.embed([secret])[0]
    finally:
        proxy.close()
    carried = bytes(proxy.seen["up"] + proxy.seen["down"])
    assert secret.encode() not in carried
    assert b"SECRET" not in carried
    assert e.vectors.tobytes() not in carried
    assert e.vectors[0, :4].tobytes() not in carried


def _one_session(address: str, stack: Stack) -> None:
    with connect(address, policy=_policy(stack), timeout=5) as s:
        s.embed(["tamper with me"])


@pytest.mark.parametrize("direction", ["up", "down"])
def test_flipped_bit_anywhere_in_the_relayed_stream_is_detected(
    stack: Stack, direction: str
) -> None:
    # Learn the stream's length in this direction from one clean session.
    clean = TamperProxy(stack.host_port)
    _one_session(clean.address, stack)
    clean.close()
    total = len(clean.seen[direction])
    assert total > 200
    offsets = sorted({0, 3, 4, 5, total - 1, *range(7, total, max(1, total // 24))})
    for offset in offsets:

        def flip(d: str, start: int, chunk: bytes, offset: int = offset) -> bytes:
            if d == direction and start <= offset < start + len(chunk):
                b = bytearray(chunk)
                b[offset - start] ^= 1 << (offset % 8)
                return bytes(b)
            return chunk

        proxy = TamperProxy(stack.host_port, flip)
        try:
            with pytest.raises(Error):
                _one_session(proxy.address, stack)
        finally:
            proxy.close()
    # The enclave and host still serve a clean session afterwards.
    _one_session(stack.address, stack)


def test_peer_that_disappears_mid_session(stack: Stack) -> None:
    clean = TamperProxy(stack.host_port)
    _one_session(clean.address, stack)
    clean.close()
    attest_end = len(clean.seen["down"]) - 1  # everything but the last response byte
    proxy = TamperProxy(stack.host_port, close_after=attest_end)
    try:
        with pytest.raises(TransportError, match="closed the connection mid-session"):
            _one_session(proxy.address, stack)
    finally:
        proxy.close()


def test_bad_inputs_are_refused_and_the_session_goes_on(stack: Stack) -> None:
    with connect(stack.address, policy=_policy(stack)) as s:
        # Refused by the client before it sends anything, as the enclave would.
        with pytest.raises(InferenceError, match=r"^input 1 is empty or only whitespace$"):
            s.embed(["fine", "  "])
        with pytest.raises(
            LimitError,
            match=r"enclave refused the request: input 0 is \d+ tokens; the limit is 256 \(ask for truncation to cut it\)",
        ):
            s.embed(["word " * 400])
        with pytest.raises(
            InferenceError,
            match=r"enclave refused the request: unknown model 'gpt-9'; this enclave serves \['all-MiniLM-L6-v2'\]",
        ):
            s.embed(["x"], model="gpt-9")
        with pytest.raises(InferenceError, match="no input texts"):
            s.embed([])
        assert s.embed(["still serving"])[0].vectors.shape == (1, 384)


def test_truncation_is_the_clients_choice_and_is_in_the_receipt(stack: Stack) -> None:
    long = "confidential inference " * 200  # ~400 tokens
    with connect(stack.address, policy=_policy(stack)) as s:
        kept = s.embed(["short", long, "also short"], truncate=True)[0]
        assert kept.truncated == (1,)
        r = kept.receipt.receipt
        assert (r.version, r.truncate, r.truncated) == (2, True, (1,))
        # The same text cut again embeds to the same vector, wherever it sits in a request.
        again = s.embed([long], truncate=True)[0]
        assert again.truncated == (0,)
        np.testing.assert_array_equal(again.vectors[0], kept.vectors[1])
        plain = s.embed(["short"])[0]
        assert (plain.receipt.receipt.truncate, plain.truncated) == (False, ())
    # The CLI: one JSON document naming the texts cut (list-wide), receipts verified.
    out = stack.cli("embed", "--mock", "--host", stack.address, "--truncate", "--json", "a", long)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["truncated"] == [1]
    assert [(x["truncate"], x["truncated"]) for x in doc["receipts"]] == [(True, [1])]


def test_cli_reports_bad_input_in_one_line(stack: Stack) -> None:
    r = stack.cli("embed", "--mock", "--host", stack.address, "")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "ephemeral: error: text argument 1 is empty or only whitespace"
    )
    assert "Traceback" not in r.stderr


def test_frame_over_the_limit_gets_an_error_frame(stack: Stack) -> None:
    from ephemeralml.common._session import MAX_HANDSHAKE_FRAME_BYTES

    with socket.create_connection(("127.0.0.1", stack.host_port), timeout=10) as s:
        s.sendall((MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    from ephemeralml.common._messages import ErrorFrame, decode_message

    msg = decode_message(data[4:])
    assert isinstance(msg, ErrorFrame) and msg.code == "limit"
    # Before the session is open the enclave's limit is the handshake's (F3).
    assert msg.message == (
        f"frame of {MAX_FRAME_BYTES + 1} bytes is over the limit of {MAX_HANDSHAKE_FRAME_BYTES}"
    )
    _one_session(stack.address, stack)


def test_garbage_gets_an_error_and_others_are_served(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.host_port), timeout=10) as s:
        s.sendall(b"\x00\x00\x00\x05GET /")
        data = s.recv(4096)
    from ephemeralml.common._messages import ErrorFrame, decode_message

    msg = decode_message(data[4:])
    assert isinstance(msg, ErrorFrame) and msg.code == "decode"
    assert msg.message.startswith("frame is not well-formed CBOR")
    _one_session(stack.address, stack)


def test_nothing_listening(stack: Stack) -> None:
    port = free_port()
    with pytest.raises(
        TransportError, match=rf"cannot reach 127.0.0.1:{port}: .*is ephemeral-host running"
    ):
        connect(f"127.0.0.1:{port}", policy=_policy(stack), timeout=5)
    r = stack.cli("attest", "--mock", "--host", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .startswith(f"ephemeral: transport error: cannot reach 127.0.0.1:{port}")
    )


def test_enclave_not_running_behind_the_host(stack: Stack, tmp_path: Path) -> None:
    from tests.integration.conftest import program_env

    # A host of its own (own state), relaying to a port where nothing listens.
    host, port = start_host(program_env(tmp_path), free_port())
    try:
        with pytest.raises(TransportError, match="closed the connection before the enclave answered"):
            connect(f"127.0.0.1:{port}", policy=_policy(stack), timeout=10)
    finally:
        assert host.stop() == 0, "".join(host.lines)


def test_attest_command_prints_what_it_verified(stack: Stack) -> None:
    r = stack.cli("attest", "--mock", "--host", stack.address)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"attestation VERIFIED (mock enclave via {stack.address}")
    for field in (
        "module id",
        "PCR0",
        "PCR2",
        "public key",
        "receipt key",
        "model         all-MiniLM-L6-v2",
    ):
        assert field in r.stdout
    j = stack.cli("attest", "--mock", "--json", "--host", stack.address)
    doc = json.loads(j.stdout)
    measurements = json.loads((stack.home / "published" / "measurements.json").read_text())
    assert doc["pcrs"]["0"] == measurements["pcrs"]["0"]
    assert doc["binding"]["mode"] == "mock"


def test_client_without_trust_refuses_to_connect(stack: Stack) -> None:
    r = stack.cli("embed", "--host", stack.address, "hello")
    assert r.returncode == 2
    assert "no trust policy" in r.stderr


def test_a_model_that_fails_to_load_is_reported_and_the_others_serve(stack: Stack) -> None:
    from ephemeralml.bench._processes import ENCLAVE, enclave_argv, start_program
    from tests.integration.conftest import kms_port, services_port

    port = free_port()
    argv = enclave_argv(
        port, services_port(stack.host), kms_port(stack.host),
        "--model", "all-MiniLM-L6-v2", "--model", "no-such-model", host_wait_s=30,
    )  # fmt: skip
    enclave = start_program(ENCLAVE, argv, stack.env)
    try:
        assert (enclave.ready["models"], enclave.ready["failed"]) == (
            ["all-MiniLM-L6-v2"], ["no-such-model"]
        )
        log = "".join(enclave.lines)
        assert (
            "ephemeral-enclave: error: could not load no-such-model: "
            "host model store: model store has no no-such-model/manifest.cose"
        ) in log
        with connect(f"127.0.0.1:{port}", policy=_policy(stack)) as s:
            assert list(s.binding.models) == ["all-MiniLM-L6-v2"]
            assert s.embed(["still serving"])[0].vectors.shape == (1, 384)
            with pytest.raises(InferenceError, match=(
                r"^enclave refused the request: model 'no-such-model' failed to load: "
                r"host model store: model store has no no-such-model/manifest.cose$"
            )):  # fmt: skip
                s.embed(["x"], model="no-such-model")
    finally:
        assert enclave.stop() == 0


def test_the_enclave_says_how_full_its_batches_were_when_it_stops(stack: Stack) -> None:
    from ephemeralml.bench._processes import ENCLAVE, enclave_argv, start_program
    from tests.integration.conftest import kms_port, services_port

    port = free_port()
    argv = enclave_argv(port, services_port(stack.host), kms_port(stack.host), host_wait_s=30)
    enclave = start_program(ENCLAVE, argv, stack.env)
    try:
        with connect(f"127.0.0.1:{port}", policy=_policy(stack)) as s:
            s.embed(["one", "two", "three"])
            s.embed(["four"])
    finally:
        assert enclave.stop() == 0
    assert enclave.lines[-1].rstrip("\n") == (
        "ephemeral-enclave: stopped (all-MiniLM-L6-v2: 2 request(s), 4 text(s) in 2 batch(es), "
        "2.0 texts a batch)"
    )


def test_cached_session_mode_end_to_end(stack: Stack, tmp_path: Path) -> None:
    with connect(stack.address, policy=_policy(stack), session_mode="cached") as a, connect(
        stack.address, policy=_policy(stack), session_mode="cached"
    ) as b:
        # One cached document serves both; each has its own session and key.
        assert a.attestation.document.raw == b.attestation.document.raw
        assert a.attestation.document.nonce is None
        ea = a.embed(["cached mode"])[0]
        assert ea.receipt.receipt.session_id != b.embed(["cached mode"])[0].receipt.receipt.session_id
    out = tmp_path / "r"
    r = stack.cli("embed", "--mock", "--session-mode", "cached", "--host", stack.address,
                  "--receipt-out", str(out), "offline too")  # fmt: skip
    assert r.returncode == 0, r.stderr
    (receipt,) = out.glob("*.receipt.cbor")
    v = stack.cli("verify", str(receipt), "--mock")
    assert v.returncode == 0, v.stderr


def test_the_hosts_health_endpoint_sees_the_enclave(stack: Stack) -> None:
    import urllib.request

    health = str(stack.host.ready["health"]).removeprefix("tcp:")
    with urllib.request.urlopen(f"http://{health}/readyz", timeout=10) as r:
        assert (r.status, r.read()) == (200, b"ready\n")
    with connect(stack.address, policy=_policy(stack)) as s:
        s.embed(["counted, never read"])
    with urllib.request.urlopen(f"http://{health}/metrics", timeout=10) as r:
        metrics = dict(
            line.rsplit(" ", 1) for line in r.read().decode().splitlines() if not line.startswith("#")
        )
    assert float(metrics["ephemeralml_relay_connections_total"]) >= 1
    assert float(metrics["ephemeralml_relay_bytes_up_total"]) > 0
    assert float(metrics["ephemeralml_relay_bytes_down_total"]) > 0
    # The enclave reached KMS the Nitro way: CONNECT to the one allowed name, then TLS.
    assert stack.host.ready["kms_upstream"] == "kms.us-east-1.amazonaws.com:443"
    assert float(metrics["ephemeralml_egress_tunnels_total"]) >= 1
    assert float(metrics["ephemeralml_egress_refused_total"]) == 0
