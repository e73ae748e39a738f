"""An in-memory client/enclave pair, driven frame by frame through a relay that can tamper.

Like h11's ConnectionPair: both sans-IO state machines, the mock NSM, and nothing
else. The "relay" is a function from (direction, frame bytes) to bytes, so a test
can flip, drop, replay or swap what the host would carry.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.common._attestation import (
    AttestationPolicy,
    PcrAllowlist,
    TrustedRoot,
    parse_unverified,
)
from ephemeralml.common._errors import TransportError
from ephemeralml.common._messages import EmbedRequest, EmbedResult, GenerateRequest
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

MODEL = "test-model"
MODEL_DIGEST = hashlib.sha256(b"test-model manifest").digest()
KEY_RELEASE = hashlib.sha256(b"test-model key release evidence").digest()

T = TypeVar("T")
Tamper = Callable[[str, bytes], bytes]


def no_tamper(direction: str, data: bytes) -> bytes:
    return data


def now() -> datetime:
    return datetime.now(UTC)


def now_ms() -> int:
    return int(time.time() * 1000)


def fake_result(request: EmbedRequest | GenerateRequest, dim: int = 4) -> EmbedResult:
    """A deterministic stand-in result (the model is tested on its own)."""
    assert isinstance(request, EmbedRequest)
    n = len(request.inputs)
    v = np.arange(n * dim, dtype="<f4").reshape(n, dim)
    return EmbedResult(request.model, dim, n, v.tobytes())


def _stalled_if_none(event: T | None) -> T:
    """A frame that never completes (e.g. a length prefix made larger) stalls the
    peer; over a socket that ends as the client's timeout, a TransportError."""
    if event is None:
        raise TransportError("stalled: the peer is waiting for bytes that never come")
    return event


@dataclass
class MockWorld:
    nsm: MockNsm
    identity: EnclaveIdentity
    policy: AttestationPolicy
    _cached: bytes | None = None

    def cached_doc(self) -> bytes:
        """One document for many sessions (cached mode): no key, no nonce."""
        if self._cached is None:
            self._cached = self.nsm.get_attestation_doc(
                public_key=None,
                user_data=EnclaveSession.cached_binding(self.identity).to_cbor(),
                nonce=None,
            )
        return self._cached

    @classmethod
    def create(cls, state_dir: Path, *, mode: str = "mock") -> MockWorld:
        pcrs = mock_measurements(
            code_digest=hashlib.sha384(b"code").digest(),
            model_digest=MODEL_DIGEST,
            runtime_id="test",
        )
        nsm = MockNsm.load_or_create(state_dir, pcrs)
        identity = EnclaveIdentity(
            receipt_key=Ed25519PrivateKey.generate(),
            models={MODEL: MODEL_DIGEST},
            key_releases={MODEL: KEY_RELEASE},
            policy_version=7,
            mode=mode,
            pcrs={i: nsm.describe_pcr(i) for i in range(16)},
        )
        policy = AttestationPolicy(
            TrustedRoot.unsafe_mock(nsm.root_certificate_der),
            PcrAllowlist([{i: pcrs[i] for i in (0, 1, 2)}]),
        )
        return cls(nsm, identity, policy)


@dataclass
class SessionPair:
    world: MockWorld
    tamper: Tamper = no_tamper
    client: ClientSession = field(init=False)
    enclave: EnclaveSession = field(init=False)
    attested: Attested | None = None

    mode: str = "fresh"

    def __post_init__(self) -> None:
        self.client = ClientSession(self.world.policy, mode=self.mode)
        self.enclave = EnclaveSession(self.world.identity)

    def to_enclave(self, data: bytes) -> None:
        self.enclave.receive_data(self.tamper("up", data))

    def to_client(self, data: bytes) -> None:
        self.client.receive_data(self.tamper("down", data))

    def handshake(self) -> Attested:
        self.to_enclave(self.client.hello())
        hello = _stalled_if_none(self.enclave.next_event())
        assert isinstance(hello, HelloReceived)
        if hello.mode == "cached":
            doc = self.world.cached_doc()
            ts = parse_unverified(doc).timestamp_ms
            self.to_client(self.enclave.attest_cached(doc, timestamp_ms=ts))
        else:
            doc = self.world.nsm.get_attestation_doc(
                public_key=self.enclave.public_key,
                user_data=self.enclave.binding.to_cbor(),
                nonce=hello.nonce,
            )
            ts = parse_unverified(doc).timestamp_ms
            self.to_client(self.enclave.attest(doc, timestamp_ms=ts))
        ev = _stalled_if_none(self.client.next_event(now=now()))
        assert isinstance(ev, Attested)
        self.attested = ev
        self.to_enclave(self.client.data_to_send())
        return ev

    def request(
        self,
        texts: tuple[str, ...] = ("hello",),
        model: str = MODEL,
        *,
        truncate: bool = False,
        truncated: tuple[int, ...] = (),
    ) -> ResponseReceived:
        """One request through both machines; returns the client's event. The enclave
        reports ``truncated`` as the inputs it cut."""
        _, frame = self.client.send_request(EmbedRequest(model, texts, truncate))
        self.to_enclave(frame)
        ev = _stalled_if_none(self.enclave.next_event())
        assert isinstance(ev, RequestReceived)
        assert ev.request is not None
        self.to_client(self.answer(ev, truncated=truncated))
        out = _stalled_if_none(self.client.next_event(now=now()))
        assert isinstance(out, ResponseReceived), out
        return out

    def answer(self, ev: RequestReceived, *, truncated: tuple[int, ...] = ()) -> bytes:
        assert ev.request is not None
        return self.enclave.respond(
            ev,
            fake_result(ev.request),
            model_digest=MODEL_DIGEST,
            time_ms=now_ms(),
            duration_us=123,
            truncated=truncated,
        )
