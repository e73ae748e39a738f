"""The client library and ``ephemeral embed`` against a real enclave server.

The real :class:`EnclaveServer` (mock NSM, a stand-in model) on loopback, in a thread
of its own, and the real blocking client: lists longer than one request, list-wide
indices, partial results, the audit log, one JSON document per run, who sent an
error frame, and what a host that hangs up means. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import socket
import sqlite3
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import cbor2
import numpy as np
import numpy.typing as npt
import pytest

from ephemeralml.client import AuditLog, EmbedIncomplete, PeerReportedError, connect
from ephemeralml.client._audit_chain import Refusal
from ephemeralml.client._audit_check import check_log
from ephemeralml.client._cli import main
from ephemeralml.client._policy import ClientPolicy
from ephemeralml.common._attestation import PcrAllowlist
from ephemeralml.common._errors import (
    ConfigError,
    InferenceError,
    LimitError,
    RemoteError,
    TransportError,
)
from ephemeralml.common._frame import encode_frame
from ephemeralml.common._messages import ErrorFrame
from ephemeralml.enclave._loader import LoadedModel
from ephemeralml.enclave._server import EnclaveServer, ServerConfig
from ephemeralml.runtime import Endpoint, Relay, RelayConfig
from tests.pair import KEY_RELEASE, MODEL, MODEL_DIGEST, MockWorld


def vector(text: str) -> list[float]:
    """The stand-in model's embedding of ``text`` (4 dims, unit length)."""
    v = np.frombuffer(hashlib.sha256(text.encode()).digest()[:16], dtype="<i4").astype(np.float32)
    out: list[float] = (v / np.linalg.norm(v)).astype(np.float32).tolist()
    return out


class StandIn:
    """A stand-in model: refuses a text starting with LONG as the real one refuses one
    over its token limit; blocks on a text starting with HANG while ``gate`` is clear."""

    model_id = MODEL

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def run(
        self, texts: Sequence[str], truncate: Sequence[bool]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        self.calls += 1
        for i, text in enumerate(texts):
            if text.startswith("LONG"):
                raise LimitError(
                    f"input {i} is 300 tokens; the limit is 256 (ask for truncation to cut it)"
                )
        if any(t.startswith("HANG") for t in texts):
            self.gate.wait(20)
        vectors = np.asarray([vector(t) for t in texts], dtype=np.float32)
        return vectors, np.zeros(len(texts), dtype=np.bool_)


class LiveEnclave:
    """The real enclave server on 127.0.0.1, its event loop in a thread."""

    def __init__(self, world: MockWorld, embedder: StandIn | None = None, **limits: Any) -> None:
        self.world = world
        self.embedder = embedder or StandIn()
        self.limits = limits
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    def __enter__(self) -> LiveEnclave:
        self.thread.start()

        async def start() -> EnclaveServer:
            server = EnclaveServer(
                ServerConfig(Endpoint.parse("127.0.0.1:0"), **self.limits),
                nsm=self.world.nsm, identity=self.world.identity, models=self.models(),
            )  # fmt: skip
            await server.start()
            return server

        self.server: EnclaveServer = self.call(start())
        assert self.server.bound is not None
        self.address = f"127.0.0.1:{self.server.bound.port}"
        return self

    def models(self) -> dict[str, LoadedModel]:
        """What the server serves: the stand-in as MODEL."""
        model = LoadedModel(
            model_id=MODEL, manifest_digest=MODEL_DIGEST, key_release_digest=KEY_RELEASE,
            embedder=cast(Any, self.embedder), timings=cast(Any, None),
        )  # fmt: skip
        return {MODEL: model}

    def __exit__(self, *exc: object) -> None:
        self.embedder.gate.set()
        with contextlib.suppress(Exception):
            self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)
        self.loop.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> MockWorld:
    return MockWorld.create(tmp_path_factory.mktemp("nsm"))


@pytest.fixture
def live(world: MockWorld) -> Iterator[LiveEnclave]:
    with LiveEnclave(world) as e:
        yield e


@pytest.fixture
def home(tmp_path: Path, world: MockWorld, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$EPHEMERALML_HOME with what a mock enclave publishes (so --mock trusts ``world``)."""
    h = tmp_path / "home"
    (h / "published").mkdir(parents=True)
    (h / "published" / "mock-root.pem").write_bytes(world.nsm.root_certificate_der)
    m = world.policy.measurements
    assert isinstance(m, PcrAllowlist)
    pcrs = {f"PCR{i}": v.hex() for i, v in m.allowed[0].items()}
    (h / "published" / "measurements.json").write_text(json.dumps({"pcrs": pcrs}))
    monkeypatch.setenv("EPHEMERALML_HOME", str(h))
    return h


def policy(world: MockWorld) -> ClientPolicy:
    return ClientPolicy(world.policy)


def texts(n: int, **special: str) -> list[str]:
    out = [f"text number {i}" for i in range(n)]
    for k, v in special.items():
        out[int(k.removeprefix("at"))] = v
    return out


def audit_lines(path: Path) -> list[dict[str, Any]]:
    """The entries of an audit log (protocol.md §12), as dicts of their columns."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM entries ORDER BY n")]


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out)
    return code, out.getvalue()


# ---------------------------------------------------------------- lists and indices


def test_a_long_list_is_sent_in_requests_of_64_in_order(live: LiveEnclave, home: Path) -> None:
    want = texts(130)
    with connect(live.address, policy=policy(live.world), timeout=10) as s:
        done = s.embed(want, model=MODEL)
    assert [e.vectors.shape for e in done] == [(64, 4), (64, 4), (2, 4)]
    assert [e.receipt.receipt.seq for e in done] == [0, 1, 2]
    got = np.concatenate([e.vectors for e in done])
    np.testing.assert_array_equal(got, np.asarray([vector(t) for t in want], dtype=np.float32))
    # Every verified receipt is in the audit log, by the library: the receipt's bytes
    # (hashes and ids), never a text.
    lines = audit_lines(home / "audit.db")
    assert [d["receipt"] for d in lines] == [e.receipt.raw for e in done]
    assert [(d["n"], d["kind"], d["seq"]) for d in lines] == [(1, "receipt", 0), (2, "receipt", 1), (3, "receipt", 2)]
    assert [d["receipt_id"] for d in lines] == [e.receipt.receipt.receipt_id.hex() for e in done]
    assert {d["mode"] for d in lines} == {"mock"} and {d["model_id"] for d in lines} == {MODEL}
    assert b"text number" not in (home / "audit.db").read_bytes()
    assert (home / "audit.db").stat().st_mode & 0o777 == 0o600


def test_a_refusal_after_the_first_request_keeps_what_was_done(live: LiveEnclave, home: Path) -> None:
    sent = texts(130, at100="LONG text")
    with connect(live.address, policy=policy(live.world), timeout=10) as s:
        with pytest.raises(EmbedIncomplete) as info:
            s.embed(sent, model=MODEL)
    e = info.value
    # The enclave said "input 36" of its request; the caller reads its own index.
    assert str(e) == (
        "texts 0..63 of 130 embedded, then texts 64..127 failed: enclave refused the request: "
        "input 100 is 300 tokens; the limit is 256 (ask for truncation to cut it)"
    )
    assert e.code == "limit" and isinstance(e.error, LimitError) and e.__cause__ is e.error
    assert str(e.error) == (
        "enclave refused the request: input 100 is 300 tokens; the limit is 256 "
        "(ask for truncation to cut it)"
    )
    assert (e.failed, e.total) == (range(64, 128), 130)
    (first,) = e.completed
    np.testing.assert_array_equal(first.vectors, np.asarray([vector(t) for t in sent[:64]]))
    assert first.receipt.receipt.seq == 0
    # The refused request is in the audit log too: its seq, its code, no receipt.
    assert [(d["kind"], d["seq"], d["receipt_id"]) for d in audit_lines(home / "audit.db")] == [
        ("receipt", 0, first.receipt.receipt.receipt_id.hex()), ("refused", 1, "")
    ]


def test_a_refusal_in_the_first_request_is_its_own_error(live: LiveEnclave, home: Path) -> None:
    with connect(live.address, policy=policy(live.world), timeout=10) as s:
        with pytest.raises(LimitError) as info:
            s.embed(texts(130, at3="LONG"), model=MODEL)
        assert str(info.value) == (
            "enclave refused the request: input 3 is 300 tokens; the limit is 256 "
            "(ask for truncation to cut it)"
        )
        # A sealed refusal leaves the session open.
        assert s.embed(["after"], model=MODEL)[0].receipt.receipt.seq == 1
    assert [(d["kind"], d["seq"]) for d in audit_lines(home / "audit.db")] == [
        ("refused", 0), ("receipt", 1)
    ]


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ("   ", InferenceError, "input 70 is empty or only whitespace"),
        ("", InferenceError, "input 70 is empty or only whitespace"),
        ("x" * 16385, LimitError, "input 70 is 16385 bytes of UTF-8; the limit is 16384"),
        ("\ud800", InferenceError, "input 70 is not valid Unicode (lone surrogate)"),
        (7, InferenceError, "input 70 is int, not a string"),
    ],
)
def test_a_bad_text_anywhere_fails_before_any_request(
    live: LiveEnclave, home: Path, bad: Any, error: type[Exception], message: str
) -> None:
    sent: list[Any] = texts(130)
    sent[70] = bad
    with connect(live.address, policy=policy(live.world), timeout=10) as s:
        with pytest.raises(error) as info:
            s.embed(sent, model=MODEL)
    assert type(info.value) is error and str(info.value) == message
    assert live.embedder.calls == 0
    assert audit_lines(home / "audit.db") == []


def test_a_transport_failure_mid_list_keeps_what_was_done(live: LiveEnclave, home: Path) -> None:
    with connect(live.address, policy=policy(live.world), timeout=1) as s:
        with pytest.raises(EmbedIncomplete) as info:
            s.embed(texts(100, at64="HANG"), model=MODEL)
    e = info.value
    assert str(e) == (
        "texts 0..63 of 100 embedded, then texts 64..99 failed: request deadline of 1 s "
        f"passed (no verified answer from {live.address})"
    )
    assert e.code == "transport" and isinstance(e.error, TransportError)
    assert [c.vectors.shape for c in e.completed] == [(64, 4)]
    assert len(audit_lines(home / "audit.db")) == 1


# ---------------------------------------------------------------- the audit log


def test_the_audit_log_can_be_moved_or_turned_off(live: LiveEnclave, home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "logs" / "mine.db"
    with connect(live.address, policy=policy(live.world), timeout=10, audit=elsewhere) as s:
        (e,) = s.embed(["a"], model=MODEL)
    assert [d["receipt_id"] for d in audit_lines(elsewhere)] == [e.receipt.receipt.receipt_id.hex()]
    for off in (False, AuditLog.off()):
        with connect(live.address, policy=policy(live.world), timeout=10, audit=off) as s:
            s.embed(["b"], model=MODEL)
    assert not (home / "audit.db").exists()
    assert len(audit_lines(elsewhere)) == 1


def test_a_refused_request_is_recorded_and_the_audit_has_no_finding(
    live: LiveEnclave, home: Path
) -> None:
    # protocol.md §12.1: a sealed refusal uses its seq; the log accounts for it.
    with connect(live.address, policy=policy(live.world), timeout=10) as s:
        (e0,) = s.embed(["before"], model=MODEL)
        with pytest.raises(LimitError) as info:
            s.embed(["LONG secret text"], model=MODEL)
        (e2,) = s.embed(["after"], model=MODEL)
        doc = s.attestation.document
    assert str(info.value) == (
        "enclave refused the request: input 0 is 300 tokens; the limit is 256 "
        "(ask for truncation to cut it)"
    )
    sid = e0.receipt.receipt.session_id
    lines = audit_lines(home / "audit.db")
    assert [(d["n"], d["kind"], d["seq"], d["session_id"]) for d in lines] == [
        (1, "receipt", 0, sid.hex()), (2, "refused", 1, sid.hex()), (3, "receipt", 2, sid.hex())
    ]  # fmt: skip
    refused = lines[1]
    assert (refused["receipt_id"], refused["model_id"], refused["mode"]) == ("", "", "")
    assert (refused["receipt"], refused["legacy"]) == (None, None)
    assert refused["attestation_sha256"] == doc.sha256
    assert refused["refusal"] == Refusal(sid, 1, "limit", doc.sha256).to_cbor()
    assert cbor2.loads(refused["refusal"]) == {
        "t": "ephemeralml refusal", "v": 1, "sid": sid, "seq": 1, "code": "limit",
        "attestation": doc.sha256,
    }  # fmt: skip
    assert refused["record_sha256"] == hashlib.sha256(refused["refusal"]).digest()
    assert [d["receipt"] for d in lines if d["kind"] == "receipt"] == [
        e0.receipt.raw, e2.receipt.raw
    ]
    data = (home / "audit.db").read_bytes()
    assert b"secret" not in data and b"300 tokens" not in data  # no text, no message
    report = check_log(AuditLog(home / "audit.db"), policy(live.world))
    assert report.findings == ()
    assert (report.entries, report.verified, report.refused, report.sessions) == (3, 2, 1, 1)
    code, out = run("audit", "--mock")
    assert code == 0
    assert out.splitlines()[:3] == [
        f"audit log {home / 'audit.db'} VERIFIED",
        "  entries       3 (2 receipt(s) re-verified, 0 legacy: chain-checked only)",
        "  refusals      1 (recorded in-session, not verifiable offline)",
    ]


def test_a_refusal_with_no_audit_log_records_nothing(live: LiveEnclave, home: Path) -> None:
    with connect(live.address, policy=policy(live.world), timeout=10, audit=False) as s:
        with pytest.raises(LimitError):
            s.embed(["LONG"], model=MODEL)
    assert not (home / "audit.db").exists()


def test_an_audit_log_that_cannot_be_written_fails_before_connecting(world: MockWorld, tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(ConfigError) as info:
        connect("127.0.0.1:1", policy=policy(world), audit=folder)  # nothing listens on :1
    assert str(info.value) == f"cannot write the audit log {folder}: Is a directory"


# ---------------------------------------------------------------- the CLI


def test_cli_one_json_document_for_a_whole_file(live: LiveEnclave, home: Path, tmp_path: Path) -> None:
    sent = texts(130)
    f = tmp_path / "texts.txt"
    f.write_text("".join(t + "\n" for t in sent))
    code, out = run("embed", "--mock", "--json", "--host", live.address, "--model", MODEL, "--file", str(f))
    assert code == 0
    doc = json.loads(out)  # one document, whatever the size
    assert list(doc) == ["model", "dim", "embeddings", "receipts"]
    assert (doc["model"], doc["dim"]) == (MODEL, 4)
    np.testing.assert_allclose(doc["embeddings"], [vector(t) for t in sent], rtol=0, atol=1e-7)
    assert [r["seq"] for r in doc["receipts"]] == [0, 1, 2]
    assert [d["receipt_id"] for d in audit_lines(home / "audit.db")] == [
        r["receipt_id"] for r in doc["receipts"]
    ]


def test_cli_jsonl_from_stdin(live: LiveEnclave, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b'"first"\n{"id": 7, "text": "second\\nline"}\n'
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out = run("embed", "--mock", "--json", "--jsonl", "--host", live.address, "--model", MODEL, "-")
    assert code == 0
    np.testing.assert_allclose(
        json.loads(out)["embeddings"], [vector("first"), vector("second\nline")], rtol=0, atol=1e-7
    )


def test_cli_partial_result_under_json(
    live: LiveEnclave, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = texts(130, at100="LONG text")
    f = tmp_path / "texts.txt"
    f.write_text("".join(t + "\n" for t in sent))
    out_dir = tmp_path / "receipts"
    code, out = run("embed", "--mock", "--json", "--host", live.address, "--model", MODEL,
                    "--file", str(f), "--receipt-out", str(out_dir))  # fmt: skip
    assert code == 1
    message = (
        "texts 0..63 of 130 embedded, then texts 64..127 failed: enclave refused the request: "
        "input 100 is 300 tokens; the limit is 256 (ask for truncation to cut it)"
    )
    doc = json.loads(out)  # still one document: what was done, and the error
    assert list(doc) == ["model", "dim", "embeddings", "receipts", "error"]
    assert doc["error"] == {"code": "limit", "message": message}
    np.testing.assert_allclose(doc["embeddings"], [vector(t) for t in sent[:64]], rtol=0, atol=1e-7)
    (receipt,) = doc["receipts"]
    assert Path(receipt["files"]["receipt"]).is_file()
    assert capsys.readouterr().err.splitlines()[-1] == f"ephemeral: limit error: {message}"
    assert [(d["kind"], d["receipt_id"]) for d in audit_lines(home / "audit.db")] == [
        ("receipt", receipt["receipt_id"]), ("refused", "")
    ]


def test_cli_partial_result_as_text(live: LiveEnclave, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run("embed", "--mock", "--host", live.address, "--model", MODEL, *texts(70, at65="LONG"))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{MODEL}: 64 of 70 embedding(s) of dimension 4"
    assert len(lines) == 1 + 64 + 1 and lines[-1].startswith("receipt ")
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ephemeral: limit error: texts 0..63 of 70 embedded, then texts 64..69 failed: "
        "enclave refused the request: input 65 is 300 tokens; the limit is 256 "
        "(ask for truncation to cut it)"
    )


def test_cli_offline_verify_writes_the_audit_line(live: LiveEnclave, home: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "receipts"
    code, out = run("embed", "--mock", "--json", "--host", live.address, "--model", MODEL,
                    "--receipt-out", str(out_dir), "one")  # fmt: skip
    assert code == 0
    (rj,) = json.loads(out)["receipts"]
    code, out = run("verify", rj["files"]["receipt"], "--mock", "--json")
    assert code == 0
    assert json.loads(out)["pcr_policy"] == "checked (the measurements the mock enclave published)"
    # Recorded once: verifying a receipt the session recorded adds nothing.
    assert [d["receipt_id"] for d in audit_lines(home / "audit.db")] == [rj["receipt_id"]]


# ---------------------------------------------------------------- who hung up, who reported


class FakePeer:
    """Accepts one connection, reads the client's hello, then does ``then``."""

    def __init__(self, then: str, frame: bytes = b"") -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(10)
        self.address = f"127.0.0.1:{self.srv.getsockname()[1]}"
        self.then, self.frame = then, frame
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        with conn:
            conn.settimeout(10)
            conn.recv(65536)  # the hello
            if self.then == "frame":
                conn.sendall(self.frame)
            elif self.then == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self.thread.join(10)
        self.srv.close()


@pytest.mark.parametrize("then", ["close", "reset"])
def test_a_host_that_hangs_up_before_the_enclave_answered(world: MockWorld, then: str) -> None:
    peer = FakePeer(then)
    try:
        with pytest.raises(TransportError) as info:
            connect(peer.address, policy=policy(world), timeout=10)
    finally:
        peer.close()
    assert type(info.value) is TransportError
    assert str(info.value) == (
        f"{peer.address} closed the connection before the enclave answered "
        "(is the enclave behind the host running?)"
    )


def test_the_real_relay_with_no_enclave_behind_it(world: MockWorld, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        nowhere = Endpoint.tcp("127.0.0.1", s.getsockname()[1])

    async def scenario() -> None:
        async with Relay(RelayConfig(Endpoint.parse("127.0.0.1:0"), (nowhere,))) as relay:
            address = f"127.0.0.1:{relay.bound.port}"
            with pytest.raises(TransportError) as info:
                await asyncio.to_thread(connect, address, policy=policy(world), timeout=10)
            assert str(info.value) == (
                f"{address} closed the connection before the enclave answered "
                "(is the enclave behind the host running?)"
            )
            code, _ = await asyncio.to_thread(run, "attest", "--mock", "--host", address)
            assert code == 1
            assert capsys.readouterr().err.splitlines()[-1] == (
                f"ephemeral: transport error: {address} closed the connection before the "
                "enclave answered (is the enclave behind the host running?)"
            )

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_error_frame_reads_as_the_peers(world: MockWorld) -> None:
    frame = encode_frame(ErrorFrame("ciphertext", "request 0 failed authentication").to_cbor())
    peer = FakePeer("frame", frame)
    try:
        with pytest.raises(PeerReportedError) as info:
            connect(peer.address, policy=policy(world), timeout=10)
    finally:
        peer.close()
    e = info.value
    assert isinstance(e, RemoteError) and e.code == "remote"
    assert str(e) == "the peer reported ciphertext: request 0 failed authentication"
    assert (e.remote_code, e.sender, e.remote_message) == (
        "ciphertext", "the peer", "request 0 failed authentication"
    )


def test_the_relays_own_limit_frame_reads_as_the_relays(world: MockWorld) -> None:
    # A relay in front of an enclave that never answers: the relay's L1 deadline cuts
    # the handshake and says so in its own error frame.
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await r.read(65536):
                pass

    async def scenario() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        up = Endpoint.tcp("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            cfg = RelayConfig(Endpoint.parse("127.0.0.1:0"), (up,), handshake_timeout_s=0.3)
            async with Relay(cfg) as relay:
                address = f"127.0.0.1:{relay.bound.port}"
                with pytest.raises(PeerReportedError) as info:
                    await asyncio.to_thread(connect, address, policy=policy(world), timeout=10)
                assert str(info.value) == (
                    "the host relay reported limit: L1 handshake deadline of 0.3 s passed "
                    "(hello to open)"
                )
                assert info.value.sender == "the host relay"
        finally:
            server.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_enclave_limit_frame_reads_as_the_peers(world: MockWorld) -> None:
    # The enclave's own refusal carries no mark: it reads as the peer's.
    with LiveEnclave(world, max_sessions=1) as one:
        with connect(one.address, policy=policy(one.world), timeout=10) as s:
            s.embed(["established"], model=MODEL)
            with pytest.raises(PeerReportedError) as info:
                connect(one.address, policy=policy(one.world), timeout=10)
    assert str(info.value).startswith("the peer reported limit: L3 session limit: 1 session")


@pytest.mark.parametrize("address", ["nonsense", "vsock:16:5005", "127.0.0.1:0", "127.0.0.1:99999"])
def test_a_bad_address_is_refused_before_dialling(world: MockWorld, address: str) -> None:
    with pytest.raises(ConfigError) as info:
        connect(address, policy=policy(world), audit=False)
    assert str(info.value) == f"address {address!r} is not HOST:PORT"
