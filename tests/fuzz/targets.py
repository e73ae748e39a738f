"""Fuzz targets: one function per parser or state machine of ``ephemeralml.common``.

Each target takes arbitrary bytes. Raising an :class:`~ephemeralml.common._errors.Error`
is the expected outcome for bad input; anything else a target lets out (a foreign
exception, an ``AssertionError`` from a broken invariant) is a finding. The coverage-
guided runner (``run.py``) and the property tests (``tests/property``) both call them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from pathlib import Path
from typing import Any

from ephemeralml.common import _cbor
from ephemeralml.common._attestation import (
    AttestationPolicy,
    ChainCache,
    UnsafeAnyMeasurements,
    parse_unverified,
    verify_attestation,
)
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._bundle import Manifest, verify_manifest
from ephemeralml.common._cms import open_recipient_envelope, parse_recipient_envelope
from ephemeralml.common._cose import decode_sign1, verify_eddsa
from ephemeralml.common._errors import Error, LocalProtocolError
from ephemeralml.common._frame import FrameDecoder
from ephemeralml.common._messages import (
    EmbedRequest,
    EmbedResult,
    decode_message,
    decode_response_body,
)
from ephemeralml.common._proof import verify_session_proof
from ephemeralml.common._receipt import Receipt, receipt_attestation_hash, verify_receipt
from tests.fuzz import world as w
from tests.vectors_path import REAL_VECTORS

Target = Callable[[bytes], Any]


class Script:
    """Reads fuzzer bytes as small integers and slices; runs out into zeros/empty."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.take(len(self.data))


def errors_only(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; our errors are a normal outcome (returns None), anything else escapes."""
    try:
        return fn()
    except Error:
        return None


# ----------------------------------------------------------------------------- cbor


def cbor(data: bytes) -> None:
    """decode_strict / decode_deterministic; a value accepted as deterministic must
    re-encode to exactly the input (round trip of bytes)."""
    errors_only(lambda: _cbor.decode_strict(data))
    value = errors_only(lambda: _cbor.decode_deterministic(data))
    if value is not None:
        assert _cbor.encode(value) == data, "deterministic value does not re-encode to its input"
    errors_only(lambda: _cbor.decode_deterministic(data, max_bytes=64))


# ---------------------------------------------------------------------------- frame


def _frames(decoder: FrameDecoder, chunks: list[bytes]) -> tuple[list[bytes], str | None]:
    out: list[bytes] = []
    try:
        for c in chunks:
            decoder.receive_data(c)
            while (f := decoder.next_frame()) is not None:
                out.append(f)
    except Error as e:
        return out, type(e).__name__
    return out, None


def frame(data: bytes) -> None:
    """FrameDecoder under arbitrary chunking gives the same frames (and the same error)
    as with the whole stream at once; each frame goes through every body parser."""
    s = Script(data)
    limit = 64 + s.u8() * 16  # small limits reach the F1 check often
    pattern = [1 + (b % 17) for b in s.take(4)] or [1]
    stream = s.rest()
    chunks, i, k = [], 0, 0
    while i < len(stream):
        n = pattern[k % len(pattern)]
        chunks.append(stream[i : i + n])
        i, k = i + n, k + 1
    whole = _frames(FrameDecoder(max_bytes=limit), [stream])
    pieces = _frames(FrameDecoder(max_bytes=limit), chunks)
    assert whole == pieces, f"chunking changed the frames: {whole} != {pieces}"
    for body in whole[0] or [stream]:
        errors_only(partial(decode_message, body))
        errors_only(partial(EmbedRequest.from_cbor, body))
        errors_only(partial(decode_response_body, body))
        errors_only(partial(EmbedResult.from_cbor, body))


# ----------------------------------------------------------------------------- cose


@cache
def _policy_signers() -> dict[bytes, bytes]:
    from ephemeralml.client._policy import policy_signer_kid

    pub = w.raw_public(w.POLICY_KEY)
    return {policy_signer_kid(pub): pub}


def cose(data: bytes) -> None:
    """decode_sign1 + verify_eddsa, session proofs (A11), bindings (A8), signed policies (P3)."""
    from ephemeralml.client._policy import PolicyDocument, open_policy

    world = w.load()
    env = errors_only(lambda: decode_sign1(data, what="fuzz", max_bytes=64 * 1024))
    if env is not None:
        errors_only(lambda: verify_eddsa(env, w.raw_public(w.RECEIPT_KEY)))
    errors_only(
        lambda: verify_session_proof(
            data,
            world.cached_binding,
            nonce=w.NONCE,
            attestation_sha256=world.cached.document.sha256,
        )
    )
    errors_only(lambda: EnclaveBinding.from_user_data(data))
    opened = errors_only(lambda: open_policy(data, where="fuzz", trusted_signers=_policy_signers()))
    if opened is not None:
        errors_only(lambda: PolicyDocument.from_json(opened[0], where="fuzz", signed=True))
    errors_only(lambda: PolicyDocument.from_json(data, where="fuzz"))


# -------------------------------------------------------------------------- receipt


def receipt(data: bytes) -> None:
    """Receipt envelope and payload (R1-R11) against both committed documents."""
    world = w.load()
    errors_only(lambda: receipt_attestation_hash(data))
    errors_only(lambda: Receipt.from_cbor(data))
    errors_only(lambda: verify_receipt(data, world.fresh))
    errors_only(lambda: verify_receipt(data, world.cached))


# ---------------------------------------------------------------------- attestation

_CHAIN_CACHE = ChainCache()


@cache
def _aws_policy() -> AttestationPolicy:
    from ephemeralml.client._policy import aws_root

    return AttestationPolicy(aws_root(), UnsafeAnyMeasurements())


def attestation(data: bytes) -> None:
    """parse_unverified (A1, A2) and verify_attestation (A1-A10) under the mock root
    and the AWS root, at the document's own time, with and without the chain cache."""
    world = w.load()
    doc = errors_only(lambda: parse_unverified(data))
    when = datetime(2026, 1, 1, tzinfo=UTC)
    if doc is not None:
        when = errors_only(lambda: doc.timestamp) or when
    for policy in (world.policy, _aws_policy()):
        errors_only(partial(verify_attestation, data, policy, now=when, nonce=w.NONCE))
    errors_only(
        lambda: verify_attestation(
            data, world.policy, now=when + timedelta(seconds=1), chain_cache=_CHAIN_CACHE
        )
    )


# --------------------------------------------------------------------------- bundle


def bundle(data: bytes) -> None:
    """Signed manifests (M1-M5) and bare manifest payloads (M4)."""
    errors_only(lambda: verify_manifest(data, w.OWNER_KEYS))
    errors_only(lambda: verify_manifest(data, w.OWNER_KEYS, model_id=w.MODEL))
    errors_only(lambda: Manifest.from_cbor(data))


# ------------------------------------------------------------------------------ cms


@cache
def _cms_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def cms_seed() -> bytes:
    """A valid envelope for this process's key (the runner adds it to the work corpus)."""
    from tests.fuzz.make_seeds import cms_envelope

    return cms_envelope(_cms_key())


def cms(data: bytes) -> None:
    """CiphertextForRecipient parsing and opening (RSA-OAEP, AES-256-CBC)."""
    errors_only(lambda: parse_recipient_envelope(data))
    errors_only(lambda: open_recipient_envelope(data, _cms_key()))


# -------------------------------------------------------------------------- session


@cache
def _session_world() -> Any:
    import tempfile

    from tests.pair import MockWorld

    return MockWorld.create(Path(tempfile.mkdtemp(prefix="ephemeralml-fuzz-world-")))


def _mutate(honest: bytes, s: Script) -> bytes:
    """What the relay delivers instead of ``honest`` (protocol.md §1, §2)."""
    how = s.u8() % 6
    payload = s.rest()
    if how == 0:  # replaced entirely
        return payload
    if how == 1:  # bytes xored in at an offset
        at = (payload[0] if payload else 0) % max(1, len(honest))
        out = bytearray(honest)
        for i, b in enumerate(payload[1:]):
            out[(at + i) % len(out)] ^= b
        return bytes(out)
    if how == 2:  # honest, then whatever follows
        return honest + payload
    if how == 3:  # replayed
        return honest + honest + payload
    if how == 4:  # truncated, then whatever follows
        cut = (payload[0] if payload else 0) % max(1, len(honest))
        return honest[:cut] + payload[1:]
    return payload + honest  # something injected before


#: How old the session target lets the cached-mode document get (A6 allows 300 s).
_CACHED_DOC_MAX_AGE_MS = 60_000
_FOREIGN = re.compile(r"frame (could not be processed|needs more resources)")
_ACCEPTING = ("Attested", "ResponseReceived", "RequestFailed", "RequestReceived")


def _drain(peer: Any, delivered: bytes, *, client: bool) -> list[Any]:
    """Feed ``delivered`` and take events until none; an Error must leave ``peer`` in its
    terminal state, where it accepts nothing more."""
    from ephemeralml.common._session import ClientState, EnclaveState

    events: list[Any] = []
    peer.receive_data(delivered)
    try:
        for _ in range(8):
            ev = peer.next_event(now=datetime.now(UTC)) if client else peer.next_event()
            if ev is None:
                break
            events.append(ev)
    except Error as e:
        # The sessions translate any foreign exception into our error as a last line
        # (foreign_error); behind that line it is still a parser bug: a finding here.
        assert not _FOREIGN.search(str(e)), f"a foreign exception reached the session: {e}"
        terminal = ClientState.ERROR if client else EnclaveState.ERROR
        assert peer.state is terminal, f"error left the session in {peer.state}"
        try:
            peer.next_event(now=datetime.now(UTC)) if client else peer.next_event()
        except LocalProtocolError:
            pass
        else:
            raise AssertionError("a failed session processed another frame") from None
        events.append("error")
    return events


def session(data: bytes) -> list[Any]:
    """Both session machines, driven honestly up to a stage, then fed what a hostile
    relay makes of the next frame. Properties: only our errors; an error is terminal;
    a frame that is not byte-for-byte the honest one is never accepted at an
    authenticated stage (attest, request, response); a replay is never accepted; of a
    streamed answer (§2.8) only the honest chunks are accepted, in order, and its end
    only after all of them."""
    from ephemeralml.common._attestation import parse_unverified as parse
    from ephemeralml.common._session import (
        ClientSession,
        EnclaveSession,
        HelloReceived,
        RequestReceived,
    )
    from tests.pair import MODEL, fake_result, now_ms

    world = _session_world()
    s = Script(data)
    stage, mode = s.u8() % 6, ("fresh", "cached")[s.u8() % 2]
    client = ClientSession(world.policy, mode=mode, chain_cache=_CHAIN_CACHE)
    enclave = EnclaveSession(world.identity)
    honest = client.hello()
    if stage == 0:
        return _drain(enclave, _mutate(honest, s), client=False)
    enclave.receive_data(honest)
    hello = enclave.next_event()
    assert isinstance(hello, HelloReceived)
    if mode == "cached":
        doc = world.cached_doc()
        if now_ms() - parse(doc).timestamp_ms > _CACHED_DOC_MAX_AGE_MS:
            # A long run outlives the cached document's 300 s (A6): make a new one, as
            # the enclave does, so the honest drive stays honest.
            world._cached = None
            doc = world.cached_doc()
        honest = enclave.attest_cached(doc, timestamp_ms=parse(doc).timestamp_ms)
    else:
        doc = world.nsm.get_attestation_doc(
            public_key=enclave.public_key, user_data=enclave.binding.to_cbor(), nonce=hello.nonce
        )
        honest = enclave.attest(doc, timestamp_ms=parse(doc).timestamp_ms)
    if stage == 1:
        delivered = _mutate(honest, s)
        events = _drain(client, delivered, client=True)
        accepted = [e for e in events if type(e).__name__ in _ACCEPTING]
        if accepted and not delivered.startswith(honest):
            # A re-encoded document can pass A1-A10 (it is still signed), but the
            # session it opens is bound to other bytes: the enclave must refuse it.
            enclave.receive_data(client.data_to_send())
            assert errors_only(enclave.next_event) is None
            _, req = client.send_request(EmbedRequest(MODEL, ("x",)))
            enclave.receive_data(req)
            got = errors_only(enclave.next_event)
            assert got is None, f"enclave served a session opened on a changed document: {got}"
        return events
    client.receive_data(honest)
    assert client.next_event(now=datetime.now(UTC)) is not None
    honest = client.data_to_send()
    if stage == 2:
        delivered = _mutate(honest, s)
        events = _drain(enclave, delivered, client=False)
        if "error" not in events and not delivered.startswith(honest):
            _, req = client.send_request(EmbedRequest(MODEL, ("x",)))
            enclave.receive_data(req)
            got = errors_only(enclave.next_event)
            assert got is None, f"enclave opened a request under a changed key: {got}"
        return events
    enclave.receive_data(honest)
    assert enclave.next_event() is None
    if stage == 5:
        return _stream(world, client, enclave, s)
    _, honest = client.send_request(EmbedRequest(MODEL, ("hello",)))
    if stage == 3:
        delivered = _mutate(honest, s)
        events = _drain(enclave, delivered, client=False)
        accepted = [e for e in events if type(e).__name__ in _ACCEPTING]
        assert len(accepted) <= int(delivered.startswith(honest)), (
            f"enclave accepted a changed or replayed request: {accepted}"
        )
        return events
    enclave.receive_data(honest)
    ev = enclave.next_event()
    assert isinstance(ev, RequestReceived) and ev.request is not None
    honest = enclave.respond(
        ev, fake_result(ev.request), model_digest=world.identity.models[MODEL],
        time_ms=now_ms(), duration_us=1,
    )  # fmt: skip
    delivered = _mutate(honest, s)
    events = _drain(client, delivered, client=True)
    accepted = [e for e in events if type(e).__name__ in _ACCEPTING]
    assert len(accepted) <= int(delivered.startswith(honest)), (
        f"client accepted a changed or replayed response: {accepted}"
    )
    return events


#: The honest streamed answer of the session target's stage 5.
_PIECES = ("The", " answer", " is", " 42.")


def _stream(world: Any, client: Any, enclave: Any, s: Script) -> list[Any]:
    """Stage 5: a generate request answered by chunks and an end, the enclave→client
    bytes as a hostile relay delivers them."""
    from ephemeralml.common._messages import ChatMessage, GenerateRequest
    from ephemeralml.common._session import ChunkReceived, RequestReceived, StreamEnded
    from tests.pair import MODEL, now_ms

    _, req = client.send_request(GenerateRequest(MODEL, 8, messages=(ChatMessage("user", "q"),)))
    enclave.receive_data(req)
    ev = enclave.next_event()
    assert isinstance(ev, RequestReceived) and ev.request is not None
    honest = b"".join(enclave.chunk(ev, t) for t in _PIECES) + enclave.end_stream(
        ev, model_digest=world.identity.models[MODEL], finish="stop", prompt_tokens=3,
        completion_tokens=len(_PIECES), device="CPUExecutionProvider", time_ms=now_ms(),
        duration_us=1,
    )  # fmt: skip
    events = _drain(client, _mutate(honest, s), client=True)
    chunks = [e for e in events if isinstance(e, ChunkReceived)]
    assert [(c.k, c.text) for c in chunks] == list(enumerate(_PIECES))[: len(chunks)], (
        f"client accepted a chunk that is not the honest one in its place: {chunks}"
    )
    if any(isinstance(e, StreamEnded) for e in events):
        assert len(chunks) == len(_PIECES), "client accepted an end without every chunk"
    return events


TARGETS: dict[str, Target] = {
    "cbor": cbor,
    "frame": frame,
    "cose": cose,
    "receipt": receipt,
    "attestation": attestation,
    "bundle": bundle,
    "cms": cms,
    "session": session,
}


def _selftest(data: bytes) -> None:
    """A target with a planted bug, to check that the runner reports findings."""
    if data[:1] == b"F":
        raise KeyError("planted")


#: Only the harness's own test sets this.
if os.environ.get("EPHEMERALML_FUZZ_SELFTEST") == "1":
    TARGETS["selftest"] = _selftest


def shared_vector_seeds(target: str) -> list[bytes]:
    """Real-world inputs from tests/vectors/real, seeded at run time (the committed
    corpus holds no copies of them)."""
    root = REAL_VECTORS
    names = {
        "attestation": [f"nitro_attestation_{i}.cbor" for i in range(1, 6)],
        "cms": ["kms_cfr_1.ber", "kms_cfr_2.ber", "kms_cfr_3.ber", "kms_cfr_sdkc_1.ber"],
    }.get(target, [])
    out = [(root / n).read_bytes() for n in names if (root / n).is_file()]
    if target == "cms":
        out.append(cms_seed())
    return out


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()  # libFuzzer names corpus files by SHA-1


def seed_work_corpus(target: str, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for data in shared_vector_seeds(target):
        (work / _digest(data)).write_bytes(data)


__all__ = ["TARGETS", "Script", "errors_only", "seed_work_corpus"]
