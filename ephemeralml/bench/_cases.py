"""The measured cases: the bare baseline, in-memory crypto and attestation, and the
client-side drivers of the full path (latency, session setup, throughput, idle
connections).

Each function measures one thing and returns plain numbers; :mod:`._run` decides
the order and puts them into the result. Every loop and wait is bounded.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._plan import MODEL, SENTENCES, BenchError, Plan, sentence
from ._procfs import fd_count, proc_cpu_s, proc_status_mb, self_cpu_s, thread_count
from ._stats import percentile, summarize_ms

__all__ = [
    "SETTLE_CALLS",
    "SETTLE_S",
    "Bare",
    "bench_attestation",
    "bench_crypto",
    "client_policy",
    "idle_connections",
    "sequential_latency",
    "session_modes",
    "session_setup",
    "settle",
    "throughput",
]

#: Pause between measured blocks, and unmeasured calls at the start of each. ONNX
#: Runtime's worker threads spin for a while after each run (session option
#: ``session.intra_op.allow_spinning``, on by default), so the first tens of ms
#: after one block finishes still belong to it: without the pause, whichever side
#: ran last taxes the next (measured: ~15 slow calls of 4-11 ms after each switch).
SETTLE_S = 0.1
SETTLE_CALLS = 3


def settle() -> None:
    time.sleep(SETTLE_S)


class Bare:
    """The bare baseline: the enclave's own :class:`Embedder`, in this process."""

    def __init__(self) -> None:
        from ephemeralml.client._modeldir import default_model_files
        from ephemeralml.enclave._model import Embedder

        files = default_model_files()
        threads_before = thread_count()
        t0 = time.perf_counter()
        self.embedder: Any = Embedder(files)
        self.load_s = round(time.perf_counter() - t0, 3)
        threads_after = thread_count()
        self.ort_threads_started = (
            threads_after - threads_before
            if threads_before is not None and threads_after is not None
            else None
        )
        tokenizer = getattr(self.embedder, "_tokenizer", None)
        self.tokens = (
            [len(tokenizer.encode(s).ids) for s in SENTENCES] if tokenizer is not None else []
        )

    def embed(self, texts: list[str]) -> Any:
        return self.embedder.embed(texts)

    def throughput(self, c: int, total: int) -> dict[str, Any]:
        """Batches of ``c`` sentences, ``total`` sentences in all: sentences/s."""
        batches = max(1, total // c)
        settle()
        self.embedder.embed([sentence(i) for i in range(c)])  # warm this shape
        cpu0, t0 = self_cpu_s(), time.perf_counter()
        for b in range(batches):
            self.embedder.embed([sentence(b * c + i) for i in range(c)])
        wall = time.perf_counter() - t0
        return {
            "ips": round(batches * c / wall, 1),
            "cores": round((self_cpu_s() - cpu0) / wall, 2),
        }

    def close(self) -> None:
        self.embedder = None
        gc.collect()


def bench_crypto(plan: Plan, state_dir: Path) -> dict[str, Any]:
    """Per-request crypto through both sans-IO state machines, in memory."""
    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ephemeralml.common._attestation import (
        AttestationPolicy,
        PcrAllowlist,
        TrustedRoot,
        parse_unverified,
    )
    from ephemeralml.common._messages import EmbedRequest, EmbedResult
    from ephemeralml.common._receipt import (
        ReceiptExpectations,
        sign_receipt,
        verify_receipt,
    )
    from ephemeralml.common._session import (
        Attested,
        ClientSession,
        EnclaveIdentity,
        EnclaveSession,
        HelloReceived,
        RequestReceived,
        ResponseReceived,
    )
    from ephemeralml.mock._nsm import MockNsm, mock_measurements

    model_digest = hashlib.sha256(b"bench model manifest").digest()
    pcrs = mock_measurements(
        code_digest=hashlib.sha384(b"bench code").digest(),
        model_digest=model_digest,
        runtime_id="bench",
    )
    nsm = MockNsm.load_or_create(state_dir, pcrs)
    identity = EnclaveIdentity(
        receipt_key=Ed25519PrivateKey.generate(),
        models={MODEL: model_digest},
        key_releases={MODEL: hashlib.sha256(b"bench key release").digest()},
        policy_version=1,
        mode="mock",
        pcrs={i: nsm.describe_pcr(i) for i in range(16)},
    )
    policy = AttestationPolicy(
        TrustedRoot.unsafe_mock(nsm.root_certificate_der),
        PcrAllowlist([{i: pcrs[i] for i in (0, 1, 2)}]),
    )
    client = ClientSession(policy)
    enclave = EnclaveSession(identity)
    enclave.receive_data(client.hello())
    hello = enclave.next_event()
    assert isinstance(hello, HelloReceived)
    doc = nsm.get_attestation_doc(
        public_key=enclave.public_key, user_data=enclave.binding.to_cbor(), nonce=hello.nonce
    )
    client.receive_data(enclave.attest(doc, timestamp_ms=parse_unverified(doc).timestamp_ms))
    attested = client.next_event(now=datetime.now(UTC))
    assert isinstance(attested, Attested)
    enclave.receive_data(client.data_to_send())

    vec = np.random.default_rng(0).standard_normal((1, 384)).astype("<f4")
    vec /= np.linalg.norm(vec)
    result = EmbedResult(MODEL, 384, 1, vec.tobytes())
    parts: dict[str, list[float]] = {
        k: [] for k in ("seal_request", "open_request", "respond", "open_verify")
    }
    totals: list[float] = []
    last_receipt: Any = None
    clock = time.perf_counter
    for i in range(plan.crypto_n + 50):
        request = EmbedRequest(MODEL, (sentence(i),))
        now_ms = int(time.time() * 1000)
        now = datetime.now(UTC)
        t0 = clock()
        _, frame = client.send_request(request)
        t1 = clock()
        enclave.receive_data(frame)
        ev = enclave.next_event()
        t2 = clock()
        assert isinstance(ev, RequestReceived)
        out = enclave.respond(ev, result, model_digest=model_digest, time_ms=now_ms,
                              duration_us=2000)  # fmt: skip
        t3 = clock()
        client.receive_data(out)
        resp = client.next_event(now=now)
        t4 = clock()
        assert isinstance(resp, ResponseReceived)
        if i < 50:  # warm-up
            continue
        last_receipt = resp.receipt
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            v_ms = v * 1000
            parts[k].append(v_ms)
        totals.append((t4 - t0) * 1000)

    # Sign and verify alone, on the last receipt of the loop.
    receipt = last_receipt.receipt
    raw = last_receipt.raw
    expect = ReceiptExpectations(seq=receipt.seq, model_id=MODEL)
    sign_ms, verify_ms = [], []
    for _ in range(max(200, plan.crypto_n // 5)):
        t0 = clock()
        sign_receipt(receipt, identity.receipt_key)
        t1 = clock()
        verify_receipt(raw, attested.attestation, expect=expect)
        t2 = clock()
        sign_ms.append((t1 - t0) * 1000)
        verify_ms.append((t2 - t1) * 1000)
    med = {k: round(percentile(v, 50), 4) for k, v in parts.items()}
    med["sign_receipt"] = round(percentile(sign_ms, 50), 4)
    med["verify_receipt"] = round(percentile(verify_ms, 50), 4)
    return {
        "crypto_ms": round(percentile(totals, 50), 4),
        "crypto_p95_ms": round(percentile(totals, 95), 4),
        "crypto_enclave_ms": round(med["open_request"] + med["respond"], 4),
        "crypto_client_ms": round(med["seal_request"] + med["open_verify"], 4),
        "crypto_parts_ms": med,
        "crypto_n": len(totals),
    }


def bench_attestation(plan: Plan, state_dir: Path) -> dict[str, Any]:
    """verify_attestation of mock documents: cold, and with a chain cache if there is one."""
    from ephemeralml.common import _attestation as att
    from ephemeralml.mock._nsm import MockNsm, mock_measurements

    pcrs = mock_measurements(
        code_digest=hashlib.sha384(b"bench code").digest(),
        model_digest=hashlib.sha256(b"bench model manifest").digest(),
        runtime_id="bench",
    )
    nsm = MockNsm.load_or_create(state_dir, pcrs)
    policy = att.AttestationPolicy(
        att.TrustedRoot.unsafe_mock(nsm.root_certificate_der),
        att.PcrAllowlist([{i: pcrs[i] for i in (0, 1, 2)}]),
    )
    docs: list[tuple[bytes, bytes]] = []
    create_ms = []
    for _ in range(20):
        nonce = secrets.token_bytes(32)
        t0 = time.perf_counter()
        raw = nsm.get_attestation_doc(
            public_key=secrets.token_bytes(32), user_data=secrets.token_bytes(200), nonce=nonce
        )
        create_ms.append((time.perf_counter() - t0) * 1000)
        docs.append((raw, nonce))

    def run(n: int, **kw: Any) -> list[float]:
        samples = []
        for i in range(n):
            raw, nonce = docs[i % len(docs)]
            now = datetime.now(UTC)
            t0 = time.perf_counter()
            att.verify_attestation(raw, policy, now=now, nonce=nonce, **kw)
            samples.append((time.perf_counter() - t0) * 1000)
        return samples

    run(20)  # warm-up (imports, OpenSSL tables)
    cold = run(plan.attest_n)
    out: dict[str, Any] = {
        "attestation_verify_ms": round(percentile(cold, 50), 4),
        "attestation_verify_p95_ms": round(percentile(cold, 95), 4),
        "attestation_doc_create_ms": round(percentile(create_ms, 50), 4),
        "attestation_verify_cached_ms": None,
    }
    notes = []
    if hasattr(att, "ChainCache"):
        try:
            cache = att.ChainCache()
            run(len(docs), chain_cache=cache)  # fill it (all documents share one chain)
            cached = run(plan.attest_n, chain_cache=cache)
            out["attestation_verify_cached_ms"] = round(percentile(cached, 50), 4)
            out["attestation_verify_cached_p95_ms"] = round(percentile(cached, 95), 4)
            hits = getattr(cache, "hits", None)
            if hits is not None:
                out["attestation_cache_hits"] = hits
        except TypeError as e:
            notes.append(f"ChainCache exists but not with the API the benchmark expects: {e}")
    else:
        notes.append(
            "attestation_verify_cached_ms is null: common._attestation has no ChainCache yet"
        )
    out["_notes"] = notes
    return out


def client_policy(home: Path) -> Any:
    """The mock client policy of the programs' state folder ``home``."""
    from ephemeralml.client._policy import ClientPolicy

    return ClientPolicy.unsafe_mock(home, warn=False)


def sequential_latency(
    calls: Mapping[str, Callable[[list[str]], Any]], n: int, warmup: int, rounds: int
) -> dict[str, list[float]]:
    """``n`` sequential one-sentence calls of each of ``calls``, interleaved in
    ``rounds`` blocks (the order rotating), so that drift hits each of them alike."""
    for call in calls.values():
        for i in range(warmup):
            call([sentence(i)])
    samples: dict[str, list[float]] = {k: [] for k in calls}
    per_round = max(1, n // rounds)
    order = list(calls.items())
    clock = time.perf_counter
    for r in range(rounds):
        k0 = r % len(order)
        for k, call in order[k0:] + order[:k0]:
            lat = samples[k]
            settle()
            for i in range(SETTLE_CALLS):
                call([sentence(i)])
            for i in range(per_round):
                text = [sentence(r * per_round + i)]
                t0 = clock()
                call(text)
                lat.append(clock() - t0)
    return samples


#: Pause between measured blocks, and unmeasured calls at the start of each. ONNX
#: Runtime's worker threads spin for a while after each run (session option
#: ``session.intra_op.allow_spinning``, on by default), so the first tens of ms
#: after one block finishes still belong to it: without the pause, whichever side
def session_modes() -> list[str]:
    """The session modes this client offers (``["fresh", "cached"]``), or ``[]`` when
    :func:`connect` has no ``session_mode`` (then only its default is measured)."""
    import inspect

    from ephemeralml.client._api import connect
    from ephemeralml.common._messages import ClientHello

    if "session_mode" not in inspect.signature(connect).parameters:
        return []
    return sorted((str(m) for m in getattr(ClientHello, "MODES", ())), key=lambda m: m != "fresh")


def session_setup(address: str, policy: Any, n: int, mode: str | None = None) -> list[float]:
    """``n`` times connect + close; ``mode`` None is the client's default."""
    from ephemeralml.client._api import connect

    for _ in range(3):  # warm-up (in cached mode: the enclave's first document)
        connect(address, policy=policy, session_mode=mode).close()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        s = connect(address, policy=policy, session_mode=mode)
        s.close()
        samples.append(time.perf_counter() - t0)
    return samples


def throughput(
    address: str, policy: Any, c: int, total: int, pids: Mapping[str, Sequence[int]]
) -> dict[str, Any]:
    """``c`` sessions in ``c`` threads, ``total // c`` one-sentence requests each,
    all opened and warmed before the clock starts."""
    from ephemeralml.client._api import connect

    per = max(1, total // c)
    sessions = []
    try:
        for _ in range(c):
            sessions.append(connect(address, policy=policy))
        for i, s in enumerate(sessions):
            s.embed([sentence(i)])
        settle()
        barrier = threading.Barrier(c + 1, timeout=60)
        latencies: list[list[float]] = [[] for _ in range(c)]
        errors: list[BaseException] = []

        def work(k: int) -> None:
            s = sessions[k]
            lat = latencies[k]
            try:
                barrier.wait()
                for i in range(per):
                    text = [sentence(k * per + i)]
                    t0 = time.perf_counter()
                    s.embed(text)
                    lat.append(time.perf_counter() - t0)
            except BaseException as e:  # reported below; a thread must not die silently
                errors.append(e)

        threads = [
            threading.Thread(target=work, args=(k,), name=f"bench-{k}", daemon=True)
            for k in range(c)
        ]
        for t in threads:
            t.start()
        cpu0 = {name: [proc_cpu_s(p) for p in ps] for name, ps in pids.items()}
        self0 = self_cpu_s()
        barrier.wait()
        t0 = time.perf_counter()
        deadline = time.monotonic() + 300
        for t in threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        wall = time.perf_counter() - t0
        if any(t.is_alive() for t in threads):
            raise BenchError(f"throughput at {c} sessions did not finish within 300 s")
        if errors:
            raise BenchError(f"throughput at {c} sessions: {errors[0]!r}") from errors[0]
        cores: dict[str, float | None] = {}
        for name, ps in pids.items():
            after = [proc_cpu_s(p) for p in ps]
            spent = [
                a - b
                for a, b in zip(after, cpu0[name], strict=True)
                if a is not None and b is not None
            ]
            cores[name] = round(sum(spent) / wall, 2) if spent else None
        cores["client"] = round((self_cpu_s() - self0) / wall, 2)
        flat = [x for lat in latencies for x in lat]
        return {
            "ips": round(len(flat) / wall, 1),
            "wall_s": round(wall, 3),
            "requests": len(flat),
            "latency": summarize_ms(flat),
            "cores": cores,
            "cpu_ms_per_request": {
                k: None if v is None else round(v * wall * 1000 / len(flat), 3)
                for k, v in cores.items()
            },
        }
    finally:
        for s in sessions:
            s.close()


def idle_connections(
    host_pid: int, host_port: int, enclave_pids: Sequence[int], n: int, timeout: float = 60.0
) -> dict[str, Any]:
    """Open ``n`` idle TCP connections to the host (``host_pid``, relaying on
    ``host_port``); its RSS (and the enclaves')."""
    host_fds0 = fd_count(host_pid) or 0
    enc_fds0 = sum(fd_count(p) or 0 for p in enclave_pids)
    out: dict[str, Any] = {
        "connections": n,
        "host_before_mb": proc_status_mb(host_pid, "VmRSS"),
        "enclave_before_mb": sum(proc_status_mb(p, "VmRSS") or 0 for p in enclave_pids),
    }
    socks: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            s = socket.create_connection(("127.0.0.1", host_port), timeout=10)
            socks.append(s)
        # A client that has sent nothing is one socket in the host: the host dials the
        # enclave only once the client has sent a byte (L3), so the enclave holds none.
        while time.monotonic() < deadline:
            if (fd_count(host_pid) or 0) - host_fds0 >= len(socks):
                break
            time.sleep(0.1)
        time.sleep(0.5)  # let allocations settle
        out["opened"] = len(socks)
        out["host_fds_added"] = (fd_count(host_pid) or 0) - host_fds0
        out["enclave_fds_added"] = sum(fd_count(p) or 0 for p in enclave_pids) - enc_fds0
        out["host_after_mb"] = proc_status_mb(host_pid, "VmRSS")
        out["enclave_after_mb"] = sum(proc_status_mb(p, "VmRSS") or 0 for p in enclave_pids)
        if out["host_after_mb"] is not None and out["host_before_mb"] is not None and socks:
            out["host_kb_per_connection"] = round(
                (out["host_after_mb"] - out["host_before_mb"]) * 1024 / len(socks), 1
            )
        return out
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
