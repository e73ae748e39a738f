"""Make the conformance vectors in tests/vectors/conformance/ (issue 10).

The vectors are the files; this script is how they were made. A second
implementation (the browser client) reads ``index.json`` and the files it names and
must reach the outcome recorded for every vector: accept with the values listed, or
reject at the check named. ``tests/unit/test_conformance.py`` runs every vector
through the project's Python verifiers, and checks that this script, run again,
writes the same bytes (``--check``).

Everything is deterministic. Keys come from fixed labels: P-384 scalars are
SHA-384 of a label reduced into the group order, Ed25519 seeds and X25519 IKM
(RFC 9180 DeriveKeyPair) are SHA-256 of a label. ECDSA signatures (certificates,
attestation documents) use RFC 6979 deterministic nonces (cryptography's
``deterministic_signing``), Ed25519 is deterministic by design, and HPKE runs
with a fixed ephemeral key (RFC 9180 allows a test to supply one). The real AWS
documents are copied byte for byte from tests/vectors/real/.

The mock documents follow ``ephemeralml.mock._nsm.MockNsm`` exactly (AWS's payload
key order, null for unset optional fields, a root and one intermediate in
``cabundle``, the same certificate profile as ``mock._certs.issue``), but with keys
from the labels above and RFC 6979 signatures, because MockNsm's keys and
signatures are random and these files must be reproducible.

Negative vectors are derived by mutation, one check each, and re-signed wherever the
check under test comes after a signature, so that whichever order a verifier runs
its checks in, exactly one of them can fail. For each one the script runs the
Python verifier and records the check id and message it raises, and refuses to
write a vector that fails at any other check than the one it was made for.

Usage (from the repository root)::

    .venv/bin/python scripts/make_conformance_vectors.py            # write
    .venv/bin/python scripts/make_conformance_vectors.py --check    # compare only
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import ObjectIdentifier

from ephemeralml.client._policy import ClientPolicy, PemRoot, PolicyDocument
from ephemeralml.common import _hpke
from ephemeralml.common._attestation import (
    AttestationPolicy,
    TrustedRoot,
    parse_unverified,
    verify_attestation,
)
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._cbor import encode
from ephemeralml.common._errors import Error, InferenceError
from ephemeralml.common._frame import encode_frame
from ephemeralml.common._hpke import HPKE_SUITE, session_info
from ephemeralml.common._messages import (
    CancelRequest,
    ChatMessage,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    ServerAttest,
    SessionOpen,
    decode_message,
)
from ephemeralml.common._proof import SessionProof
from ephemeralml.common._receipt import Receipt, ReceiptExpectations, verify_receipt
from ephemeralml.common._session import (
    Attested,
    CancelReceived,
    ChunkReceived,
    ClientSession,
    EnclaveIdentity,
    EnclaveSession,
    HelloReceived,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
)
from ephemeralml.mock._certs import mock_name
from ephemeralml.mock._nsm import mock_measurements

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "vectors" / "conformance"
REAL_DIR = ROOT / "tests" / "vectors" / "real"

FORMAT = "ephemeralml-conformance/1"
#: Every key and random value of the vectors is derived from this prefix and a label.
SEED_PREFIX = b"ephemeralml conformance vectors/1 "

# P-384 group order (SEC 2 §2.5.1).
_P384_N = int(
    (
        "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973"
    ),
    16,
)
_P256_N = int("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16)

#: COSE protected header {1: -35} (ES384), the bytes AWS sends.
PROTECTED_ES384 = bytes.fromhex("a1013822")

#: The leaf's notBefore; every mock time is an offset from it.
T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MODEL = "all-MiniLM-L6-v2"
MODULE_ID = "i-mock0000000000000-enc0123456789abcdef"

#: Protocol labels (protocol.md §4), written out so the index states them.
RESPONSE_KEY_LABEL = b"ephemeralml/1 response key"
RESPONSE_NONCE_LABEL = b"ephemeralml/1 response nonce"
CHUNK_KEY_LABEL = b"ephemeralml/1 chunk key"
CHUNK_NONCE_LABEL = b"ephemeralml/1 chunk nonce"


# ---------------------------------------------------------------------------
# Deterministic material
# ---------------------------------------------------------------------------


def seed(label: str, n: int = 32) -> bytes:
    """``n`` bytes (at most 32) of SHA-256(SEED_PREFIX ‖ label)."""
    return hashlib.sha256(SEED_PREFIX + label.encode()).digest()[:n]


def p384_key(label: str) -> ec.EllipticCurvePrivateKey:
    d = int.from_bytes(hashlib.sha384(SEED_PREFIX + label.encode()).digest(), "big")
    return ec.derive_private_key(d % (_P384_N - 1) + 1, ec.SECP384R1())


def p256_key(label: str) -> ec.EllipticCurvePrivateKey:
    d = int.from_bytes(hashlib.sha256(SEED_PREFIX + label.encode()).digest(), "big")
    return ec.derive_private_key(d % (_P256_N - 1) + 1, ec.SECP256R1())


def ms(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(milliseconds=1)


def at_ms(t_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=t_ms)


def iso(t_ms: int) -> str:
    return at_ms(t_ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------------------
# Certificates (the profile of ephemeralml.mock._certs.issue, deterministic)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


#: A private OID (arc 1.3.6.1.4.1.57264 is unassigned here on purpose: no verifier
#: knows it), for the "unknown critical extension" vector.
UNKNOWN_EXTENSION = ObjectIdentifier("1.3.6.1.4.1.99999.1")


def issue(
    label: str,
    *,
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Issued | None,
    issuer_cn: str | None = None,
    not_before: datetime,
    lifetime: timedelta,
    ca: bool,
    path_length: int | None = None,
    signer: ec.EllipticCurvePrivateKey | None = None,
    key_cert_sign: bool | None = None,
    digital_signature: bool | None = None,
    unknown_critical: bool = False,
) -> Issued:
    """A certificate; ``issuer`` None makes it self-signed. ``signer`` overrides the
    key that signs (to forge an issuer); the other overrides break one rule each."""
    subject = mock_name(cn)
    issuer_name = (
        mock_name(issuer_cn) if issuer_cn else (issuer.cert.subject if issuer else subject)
    )
    sign_key = signer or (issuer.key if issuer else key)
    serial = int.from_bytes(seed("serial " + label, 16), "big") >> 1 | 1
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=(not ca) if digital_signature is None else digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca if key_cert_sign is None else key_cert_sign,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(sign_key.public_key()),
            critical=False,
        )
    if unknown_critical:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(UNKNOWN_EXTENSION, b"\x05\x00"), critical=True
        )
    cert = builder.sign(sign_key, hashes.SHA384(), ecdsa_deterministic=True)
    return Issued(key=key, cert=cert)


ROOT_CN = "ephemeralml conformance MOCK root - NOT AWS"
INTERMEDIATE_CN = "ephemeralml conformance MOCK intermediate - NOT AWS"
LEAF_CN = f"{MODULE_ID}.mock.ephemeralml"


def make_root(label: str) -> Issued:
    return issue(
        label,
        cn=ROOT_CN,
        key=p384_key(label),
        issuer=None,
        not_before=T0 - timedelta(days=1),
        lifetime=timedelta(days=30 * 365),
        ca=True,
        path_length=1,
    )


def make_intermediate(label: str, root: Issued, **kw: Any) -> Issued:
    args: dict[str, Any] = {
        "cn": INTERMEDIATE_CN,
        "not_before": T0 - timedelta(hours=1),
        "lifetime": timedelta(days=30),
        "ca": True,
        "path_length": 0,
    }
    args.update(kw)
    return issue(label, key=p384_key(label), issuer=root, **args)


def make_leaf(label: str, issuer: Issued, **kw: Any) -> Issued:
    args: dict[str, Any] = {
        "cn": LEAF_CN,
        "key": p384_key(label),
        "not_before": T0,
        "lifetime": timedelta(hours=3),
        "ca": False,
    }
    args.update(kw)
    return issue(label, issuer=issuer, **args)


# ---------------------------------------------------------------------------
# Attestation documents (the format of MockNsm.get_attestation_doc)
# ---------------------------------------------------------------------------

_DROP = object()


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """RFC 9052 §4.4 Sig_structure for COSE_Sign1, external_aad empty."""
    return encode(["Signature1", protected, b"", payload])


def es384_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(
        key.sign(data, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
    )
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def cose_sign1(
    protected: bytes, unprotected: Any, payload: Any, signature: bytes, *, tag: int | None = None
) -> bytes:
    body = [protected, unprotected, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(tag, body) if tag is not None else body)


@dataclass(frozen=True)
class Chain:
    root: Issued
    intermediates: tuple[Issued, ...]
    leaf: Issued

    @property
    def cabundle(self) -> list[bytes]:
        return [self.root.der, *(i.der for i in self.intermediates)]


def payload_map(
    chain: Chain,
    *,
    timestamp_ms: int,
    pcrs: Mapping[int, bytes],
    public_key: bytes | None = None,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """The payload in AWS's key order; ``changes`` replace (or, with _DROP, remove)
    fields and add new ones at the end."""
    m: dict[str, Any] = {
        "module_id": MODULE_ID,
        "digest": "SHA384",
        "timestamp": timestamp_ms,
        "pcrs": dict(pcrs),
        "certificate": chain.leaf.der,
        "cabundle": chain.cabundle,
        "public_key": public_key,
        "user_data": user_data,
        "nonce": nonce,
    }
    for k, v in changes.items():
        if v is _DROP:
            m.pop(k, None)
        else:
            m[k] = v
    return m


def sign_document(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    protected: bytes = PROTECTED_ES384,
    tag: int | None = None,
) -> bytes:
    return cose_sign1(
        protected, {}, payload, es384_raw(key, sig_structure(protected, payload)), tag=tag
    )


def document(chain: Chain, *, tag: int | None = None, **fields: Any) -> bytes:
    return sign_document(cbor2.dumps(payload_map(chain, **fields)), chain.leaf.key, tag=tag)


def cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise ValueError(n)


def cbor_map_pairs(pairs: list[tuple[Any, Any]]) -> bytes:
    """A CBOR map from ``pairs`` in the order given, duplicates kept."""
    return cbor_head(5, len(pairs)) + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in pairs)


# ---------------------------------------------------------------------------
# The vector set
# ---------------------------------------------------------------------------


def hexmap(pcrs: Mapping[int, bytes]) -> dict[str, str]:
    return {str(i): v.hex() for i, v in sorted(pcrs.items())}


def policy_pcrs(pcrs: Mapping[int, bytes], indices: tuple[int, ...]) -> dict[str, str]:
    return {f"PCR{i}": pcrs[i].hex() for i in indices if i in pcrs}


_CHECK_RE = re.compile(r"^([A-Z]\d+) ")


def rejection(e: Error, check: str) -> dict[str, Any]:
    message = str(e)
    m = _CHECK_RE.match(message)
    if m is not None and m.group(1) != check:
        raise AssertionError(f"expected check {check}, the verifier said: {message}")
    return {
        "outcome": "reject",
        "check": check,
        "error": type(e).__name__,
        "code": e.code,
        "message": message,
    }


class Vectors:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.vectors: list[dict[str, Any]] = []
        self.roots: dict[str, dict[str, Any]] = {}
        self._root_pem: dict[str, bytes] = {}

    # -- files, roots, policies
    def file(self, path: str, data: bytes) -> str:
        old = self.files.get(path)
        if old is not None and old != data:
            raise AssertionError(f"{path} written twice with different bytes")
        self.files[path] = data
        return path

    def root(self, name: str, path: str, pem: bytes, *, mock: bool) -> None:
        self.file(path, pem)
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        self.roots[name] = {"file": path, "sha256": sha256(der).hex(), "mock": mock}
        self._root_pem[name] = pem

    def policy(self, name: str, doc: dict[str, Any]) -> str:
        if name in self.policies and self.policies[name] != doc:
            raise AssertionError(f"policy {name} defined twice")
        self.policies[name] = doc
        return name

    def client_policy(self, name: str) -> ClientPolicy:
        """A policy as the Python client reads it (the test does the same)."""
        raw = json.dumps(self.policies[name]).encode()
        doc = PolicyDocument.from_json(raw, where=name)
        if isinstance(doc.root, PemRoot):
            pem = self.files[doc.root.path]
            root = TrustedRoot.from_pem_or_der(pem, name=doc.root.path)
        elif doc.root == "mock":
            root = TrustedRoot.unsafe_mock(self._root_pem["mock"])
        else:
            root = TrustedRoot.aws_nitro(self._root_pem["aws-nitro"])
        return ClientPolicy(
            AttestationPolicy(root, doc.measurements, doc.max_age_s),
            doc.models,
            name,
            doc.version,
            min_enclave_policy_version=doc.min_enclave_policy_version,
            offline_only=True,
        )

    def add(self, vector: dict[str, Any]) -> None:
        if any(v["id"] == vector["id"] for v in self.vectors):
            raise AssertionError(f"duplicate vector id {vector['id']}")
        self.vectors.append(vector)

    # -- attestation vectors
    def attestation(
        self,
        vid: str,
        doc_path: str,
        *,
        policy: str,
        now_ms: int,
        nonce: bytes | None = None,
        check: str | None = None,
        description: str,
    ) -> None:
        raw = self.files[doc_path]
        try:
            cp = self.client_policy(policy)
            verified = verify_attestation(raw, cp.attestation, now=at_ms(now_ms), nonce=nonce)
        except Error as e:
            if check is None:
                raise AssertionError(f"{vid}: expected accept, got {e}") from e
            expect = rejection(e, check)
        else:
            if check is not None:
                raise AssertionError(f"{vid}: expected {check}, but it verified")
            d = verified.document
            expect = {
                "outcome": "accept",
                "values": {
                    "document_sha256": d.sha256_hex,
                    "module_id": d.module_id,
                    "digest": d.digest,
                    "timestamp_ms": d.timestamp_ms,
                    "pcrs": hexmap(d.pcrs),
                    "public_key": None if d.public_key is None else d.public_key.hex(),
                    "user_data": None if d.user_data is None else d.user_data.hex(),
                    "nonce": None if d.nonce is None else d.nonce.hex(),
                    "leaf_sha256": sha256(d.certificate).hex(),
                    "cabundle_sha256": [sha256(c).hex() for c in d.cabundle],
                    "sig_structure_sha384": hashlib.sha384(
                        sig_structure(PROTECTED_ES384, _payload_of(raw))
                    ).hexdigest(),
                },
            }
        self.add(
            {
                "id": vid,
                "kind": "attestation",
                "description": description,
                "files": {"document": doc_path},
                "inputs": {
                    "root": _policy_root(self.policies[policy], self.roots),
                    "policy": policy,
                    "now_ms": now_ms,
                    "now": iso(now_ms),
                    "nonce": None if nonce is None else nonce.hex(),
                },
                "expect": expect,
            }
        )


def _payload_of(raw: bytes) -> bytes:
    obj = cbor2.loads(raw)
    if isinstance(obj, cbor2.CBORTag):
        obj = obj.value
    payload = obj[2]
    assert isinstance(payload, bytes)
    return payload


def _policy_root(policy: Mapping[str, Any], roots: Mapping[str, Any]) -> dict[str, Any]:
    """The trusted root a policy names: its file and whether it is trusted as a mock."""
    root = policy.get("root", "aws-nitro")
    if isinstance(root, str):
        return {"file": roots[root]["file"], "mock": roots[root]["mock"]}
    return {"file": root["pem"], "mock": False}


# ---------------------------------------------------------------------------
# HPKE key pairs from a seed (RFC 9180 DeriveKeyPair)
# ---------------------------------------------------------------------------


def x25519_pair(ikm: bytes) -> tuple[bytes, bytes]:
    """(private, public) raw bytes of DeriveKeyPair(ikm) for DHKEM(X25519, HKDF-SHA256)."""
    kp = HPKE_SUITE.kem.derive_key_pair(ikm)
    return kp.private_key.to_private_bytes(), kp.public_key.to_public_bytes()


# ---------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------


@dataclass
class Frame:
    direction: str  # "c2e" or "e2c"
    type: str
    data: bytes
    files: dict[str, str]


@dataclass
class SessionSpec:
    """Everything both ends need to replay one session byte for byte."""

    name: str
    mode: str  # "fresh" or "cached"
    nonce: bytes
    session_id: bytes
    ikm_r: bytes
    ikm_e: bytes
    document: bytes
    policy: str
    now_ms: int
    requests: list[EmbedRequest | GenerateRequest | CancelRequest]
    #: Per request (by seq): ("result", EmbedResult, time_ms, duration_us, receipt_id,
    #: truncated), ("error", InferenceError), ("stream", StreamAnswer) for a generate
    #: request, or ("cancel",) for a cancel (it has no answer of its own).
    answers: list[tuple[Any, ...]]


@dataclass(frozen=True)
class StreamAnswer:
    """What the enclave streams in answer to one generate request (protocol.md §2.8)."""

    chunks: tuple[str, ...]
    finish: str
    prompt_tokens: int
    completion_tokens: int
    time_ms: int
    duration_us: int
    receipt_id: bytes
    device: str = "CPUExecutionProvider"


def identity(pcrs: Mapping[int, bytes], *, mode: str = "mock") -> EnclaveIdentity:
    return EnclaveIdentity(
        receipt_key=Ed25519PrivateKey.from_private_bytes(seed("receipt key")),
        models={MODEL: MODEL_DIGEST},
        key_releases={MODEL: KEY_RELEASE},
        policy_version=POLICY_VERSION,
        mode=mode,
        pcrs=pcrs,
    )


MODEL_DIGEST = seed("manifest digest " + MODEL)
KEY_RELEASE = seed("key release evidence " + MODEL)
POLICY_VERSION = 7


def enclave_session(spec: SessionSpec, ident: EnclaveIdentity) -> EnclaveSession:
    # The vectors fix the session's X25519 key (RFC 9180 DeriveKeyPair of ikm_r), so
    # that the document can name it in advance.
    return EnclaveSession(ident, session_id=spec.session_id, key_ikm=spec.ikm_r)


def client_send(client: ClientSession, request: Any) -> bytes:
    """The frame a client sends for one of a spec's requests (a cancel is sealed too)."""
    if isinstance(request, CancelRequest):
        return client.cancel(request.seq)
    return client.send_request(request)[1]


def event_json(ev: Any) -> dict[str, Any]:
    """What the client saw, as a vector's ``events`` records it."""
    if isinstance(ev, ResponseReceived):
        return {"seq": ev.seq, "event": "result", "receipt_id": ev.receipt.receipt.receipt_id.hex()}
    if isinstance(ev, ChunkReceived):
        return {"seq": ev.seq, "event": "chunk", "k": ev.k, "text": ev.text}
    if isinstance(ev, StreamEnded):
        r = ev.result
        return {
            "seq": ev.seq,
            "event": "end",
            "result": {**r.to_map(), "stream": r.stream.hex()},
            "receipt": ev.receipt.receipt.to_json(),
        }
    assert isinstance(ev, RequestFailed)
    return {"seq": ev.seq, "event": "error", "code": ev.code, "message": ev.message}


def _handshake(
    spec: SessionSpec, enclave: EnclaveSession, client_policy: ClientPolicy, frames: list[Frame]
) -> ClientSession:
    """hello, attest, open between the two machines; call with the fixed ephemeral key."""
    doc_ts = parse_unverified(spec.document).timestamp_ms
    client = ClientSession(
        client_policy.attestation, nonce=spec.nonce, mode=spec.mode, ephemeral_ikm=spec.ikm_e
    )
    hello = client.hello()
    frames.append(Frame("c2e", "hello", hello, {}))
    enclave.receive_data(hello)
    ev = enclave.next_event()
    assert isinstance(ev, HelloReceived) and ev.nonce == spec.nonce and ev.mode == spec.mode
    if spec.mode == "cached":
        attest = enclave.attest_cached(spec.document, timestamp_ms=doc_ts)
    else:
        attest = enclave.attest(spec.document, timestamp_ms=doc_ts)
    frames.append(Frame("e2c", "attest", attest, {}))
    client.receive_data(attest)
    att = client.next_event(now=at_ms(spec.now_ms))
    assert isinstance(att, Attested)
    client_policy.check_binding(att.binding)
    open_frame = client.data_to_send()
    frames.append(Frame("c2e", "open", open_frame, {}))
    enclave.receive_data(open_frame)
    assert enclave.next_event() is None
    assert client.transcript_hash == enclave.transcript_hash
    return client


def run_session(
    spec: SessionSpec, ident: EnclaveIdentity, client_policy: ClientPolicy
) -> tuple[list[Frame], dict[str, Any]]:
    """Both machines, honestly, in memory: the frames and what each side saw."""
    enclave = enclave_session(spec, ident)
    frames: list[Frame] = []
    events: list[dict[str, Any]] = []
    client = _handshake(spec, enclave, client_policy, frames)
    for request, answer in zip(spec.requests, spec.answers, strict=True):
        assert not isinstance(request, CancelRequest)  # streams: run_stream_session
        seq, req = client.send_request(request)
        frames.append(Frame("c2e", "req", req, {}))
        enclave.receive_data(req)
        rev = enclave.next_event()
        assert isinstance(rev, RequestReceived) and rev.seq == seq
        if answer[0] == "result":
            _, result, time_ms, duration_us, receipt_id, truncated = answer
            resp = enclave.respond(
                rev,
                result,
                model_digest=MODEL_DIGEST,
                time_ms=time_ms,
                duration_us=duration_us,
                receipt_id=receipt_id,
                truncated=truncated,
            )
        else:
            resp = enclave.respond_error(rev, answer[1])
        frames.append(Frame("e2c", "resp", resp, {}))
        client.receive_data(resp)
        events.append(event_json(client.next_event(now=at_ms(spec.now_ms))))
    assert client.transcript_hash is not None
    return frames, {"transcript_hash": client.transcript_hash.hex(), "events": events}


def run_stream_session(
    spec: SessionSpec,
    ident: EnclaveIdentity,
    client_policy: ClientPolicy,
    steps: list[tuple[str, int]],
    *,
    forge_end_of: int | None = None,
) -> tuple[list[Frame], dict[str, Any]]:
    """Both machines in memory, in the order ``steps`` gives: ("req", seq) the client
    sends its next request; ("chunk", seq) the enclave seals the next chunk of that
    stream; ("end", seq) the enclave answers seq (the end of a stream, a result or a
    refusal). ``forge_end_of``: that stream's end is signed over a hash the enclave
    altered (not delivered to the client here)."""
    enclave = enclave_session(spec, ident)
    frames: list[Frame] = []
    events: list[dict[str, Any]] = []
    received: dict[int, RequestReceived] = {}
    client = _handshake(spec, enclave, client_policy, frames)
    requests = iter(spec.requests)
    for step, seq in steps:
        if step == "req":
            frame = client_send(client, next(requests))
            frames.append(Frame("c2e", "req", frame, {}))
            enclave.receive_data(frame)
            ev = enclave.next_event()
            assert isinstance(ev, RequestReceived | CancelReceived) and ev.seq == seq
            if isinstance(ev, RequestReceived):
                received[seq] = ev
            continue
        answer = spec.answers[seq]
        if step == "chunk":
            k = enclave._streams[seq].next_k
            out, kind = enclave.chunk(received[seq], answer[1].chunks[k]), "chunk"
        elif answer[0] == "error":
            out, kind = enclave.respond_error(received[seq], answer[1]), "resp"
        else:
            s: StreamAnswer = answer[1]
            assert answer[0] == "stream" and enclave._streams[seq].next_k == len(s.chunks)
            if forge_end_of == seq:
                enclave._streams[seq].hash.update(b"forged")
            out = enclave.end_stream(
                received[seq],
                model_digest=MODEL_DIGEST,
                finish=s.finish,
                prompt_tokens=s.prompt_tokens,
                completion_tokens=s.completion_tokens,
                device=s.device,
                time_ms=s.time_ms,
                duration_us=s.duration_us,
                receipt_id=s.receipt_id,
            )
            kind = "resp"
        frames.append(Frame("e2c", kind, out, {}))
        if forge_end_of == seq and kind == "resp":
            continue
        client.receive_data(out)
        events.append(event_json(client.next_event(now=at_ms(spec.now_ms))))
    assert client.transcript_hash is not None
    return frames, {"transcript_hash": client.transcript_hash.hex(), "events": events}


def client_reject(
    spec: SessionSpec, client_policy: ClientPolicy, frames: list[Frame], check: str
) -> dict[str, Any]:
    """Replay ``frames`` to a client; it must fail at an e2c frame. Returns the expectation."""
    client = ClientSession(
        client_policy.attestation, nonce=spec.nonce, mode=spec.mode, ephemeral_ikm=spec.ikm_e
    )
    requests = iter(spec.requests)
    for i, f in enumerate(frames):
        try:
            if f.direction == "c2e":
                if f.type == "hello":
                    produced = client.hello()
                elif f.type == "open":
                    produced = client.data_to_send()
                else:
                    produced = client_send(client, next(requests))
                assert produced == f.data, f"{spec.name}: client frame {i} differs"
                continue
            client.receive_data(f.data)
            ev = client.next_event(now=at_ms(spec.now_ms))
            if isinstance(ev, Attested):
                client_policy.check_binding(ev.binding)
        except Error as e:
            return {"side": "client", "at_frame": i, **rejection(e, check)}
    raise AssertionError(f"{spec.name}: the client accepted every frame")


def enclave_reject(
    spec: SessionSpec, ident: EnclaveIdentity, frames: list[Frame], check: str
) -> dict[str, Any]:
    """Replay ``frames`` to an enclave; it must fail at a c2e frame."""
    enclave = enclave_session(spec, ident)
    doc_ts = parse_unverified(spec.document).timestamp_ms
    for i, f in enumerate(frames):
        if f.direction == "e2c":
            continue
        try:
            enclave.receive_data(f.data)
            ev = enclave.next_event()
        except Error as e:
            return {"side": "enclave", "at_frame": i, **rejection(e, check)}
        if isinstance(ev, HelloReceived):
            enclave.attest(spec.document, timestamp_ms=doc_ts)
        elif isinstance(ev, RequestReceived):
            result = spec.answers[ev.seq]
            assert result[0] == "result"
            enclave.respond(
                ev,
                result[1],
                model_digest=MODEL_DIGEST,
                time_ms=result[2],
                duration_us=result[3],
                receipt_id=result[4],
                truncated=result[5],
            )
    raise AssertionError(f"{spec.name}: the enclave accepted every frame")


def f32le(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


# ---------------------------------------------------------------------------
# Building everything
# ---------------------------------------------------------------------------


def build() -> dict[str, bytes]:
    """Every file of the vector folder, index.json and PROVENANCE.md included."""
    v = Vectors()
    aws_pem = (REAL_DIR / "aws_nitro_root_g1.pem").read_bytes()

    # -- the mock CA
    root = make_root("mock root")
    inter = make_intermediate("mock intermediate", root)
    leaf = make_leaf("mock leaf", inter)
    chain = Chain(root, (inter,), leaf)
    v.root("aws-nitro", "roots/aws_nitro_root_g1.pem", aws_pem, mock=False)
    v.root(
        "mock", "roots/mock_root.pem", root.cert.public_bytes(serialization.Encoding.PEM), mock=True
    )

    pcrs = dict.fromkeys(range(16), bytes(48))
    pcrs.update(
        mock_measurements(
            code_digest=hashlib.sha384(SEED_PREFIX + b"enclave code").digest(),
            model_digest=MODEL_DIGEST,
            runtime_id="conformance",
        )
    )
    ident = identity(pcrs)
    mock_set = policy_pcrs(pcrs, (0, 1, 2))
    v.policy("mock", {"root": "mock", "measurements": [mock_set]})

    # -- the fresh session's document: the base every mock mutation starts from
    nonce = seed("client nonce fresh")
    sid = seed("session id fresh", 16)
    ikm_r, ikm_e = seed("enclave session ikm fresh"), seed("client ephemeral ikm fresh")
    _, pk_r = x25519_pair(ikm_r)
    binding = EnclaveBinding(
        protocol_version=1,
        session_id=sid,
        receipt_key=ident.receipt_key.public_key().public_bytes_raw(),
        models=ident.models,
        key_releases=ident.key_releases,
        policy_version=POLICY_VERSION,
        mode="mock",
    )
    base_ts = ms(T0 + timedelta(minutes=10)) + 250
    base_fields: dict[str, Any] = {
        "timestamp_ms": base_ts,
        "pcrs": pcrs,
        "public_key": pk_r,
        "user_data": binding.to_cbor(),
        "nonce": nonce,
    }

    def mock_doc(name: str, c: Chain = chain, *, tag: int | None = None, **changes: Any) -> str:
        fields = {**base_fields}
        for k in ("timestamp_ms", "pcrs", "public_key", "user_data", "nonce"):
            if k in changes:
                fields[k] = changes.pop(k)
        return v.file(f"attestation/{name}.cbor", document(c, tag=tag, **fields, **changes))

    base = mock_doc("mock_fresh")
    base_raw = v.files[base]
    base_payload = _payload_of(base_raw)

    def raw_doc(name: str, data: bytes) -> str:
        return v.file(f"attestation/{name}.cbor", data)

    def resigned(
        name: str,
        payload: bytes,
        *,
        protected: bytes = PROTECTED_ES384,
        key: ec.EllipticCurvePrivateKey = leaf.key,
        unprotected: Any = None,
        tag: int | None = None,
    ) -> str:
        sig = es384_raw(key, sig_structure(protected, payload))
        return raw_doc(
            name,
            cose_sign1(
                protected, {} if unprotected is None else unprotected, payload, sig, tag=tag
            ),
        )

    def payload_with(**changes: Any) -> bytes:
        fields = {**base_fields}
        for k in ("timestamp_ms", "pcrs", "public_key", "user_data", "nonce"):
            if k in changes:
                fields[k] = changes.pop(k)
        return cbor2.dumps(payload_map(chain, **fields, **changes))

    att = v.attestation

    # ======================= attestation: accept =======================
    real_docs: dict[int, str] = {}
    for n in range(1, 6):
        data = (REAL_DIR / f"nitro_attestation_{n}.cbor").read_bytes()
        real_docs[n] = v.file(f"attestation/aws_{n}.cbor", data)
        d = parse_unverified(data)
        v.policy(
            f"aws_{n}",
            {
                "root": "aws-nitro",
                "measurements": [policy_pcrs(d.pcrs, (0, 1, 2, 3, 4, 8))],
                **({"allow_debug": True} if d.is_debug else {}),
            },
        )
        att(
            f"attestation_aws_{n}_at_own_time",
            real_docs[n],
            policy=f"aws_{n}",
            now_ms=d.timestamp_ms,
            nonce=d.nonce,
            description=(
                f"Real AWS Nitro document #{n} (tests/vectors/real), verified at its own timestamp"
            )
            + (" (debug mode: all-zero PCR0, the policy sets allow_debug)" if d.is_debug else "")
            + (" with its nonce as the challenge" if d.nonce else ""),
        )
    aws2 = parse_unverified(v.files[real_docs[2]])
    aws4 = parse_unverified(v.files[real_docs[4]])
    aws5 = parse_unverified(v.files[real_docs[5]])
    att(
        "attestation_aws_2_tag18",
        raw_doc("aws_2_tag18", b"\xd2" + v.files[real_docs[2]]),
        policy="aws_2",
        now_ms=aws2.timestamp_ms,
        nonce=aws2.nonce,
        description=(
            "Real document #2 wrapped in COSE tag 18: RFC 9052 allows tagged or untagged (A1)"
        ),
    )
    att(
        "attestation_mock_fresh",
        base,
        policy="mock",
        now_ms=base_ts + 1500,
        nonce=nonce,
        description=(
            "Mock document as a fresh session gets it: X25519 public_key, binding in user_data, "
            "the client's nonce"
        ),
    )
    att(
        "attestation_mock_no_challenge",
        base,
        policy="mock",
        now_ms=base_ts + 1500,
        description="The same document with no nonce to compare (offline): A7 does not apply",
    )
    att(
        "attestation_mock_tag18",
        mock_doc("mock_fresh_tag18", tag=18),
        policy="mock",
        now_ms=base_ts + 1500,
        nonce=nonce,
        description="Mock document tagged 18 (A1 accepts untagged and tag 18)",
    )
    edge_ts = ms(T0) + 100
    att(
        "attestation_mock_100ms_after_leaf_not_before",
        mock_doc("mock_100ms_after_leaf", timestamp_ms=edge_ts),
        policy="mock",
        now_ms=edge_ts,
        nonce=nonce,
        description=(
            "Document timestamp 100 ms after the leaf's notBefore (as real document #1): times "
            "compare to the millisecond (A5)"
        ),
    )
    att(
        "attestation_mock_age_at_limit",
        base,
        policy="mock",
        now_ms=base_ts + 300_000,
        nonce=nonce,
        description="now = timestamp + 300 s exactly: the age limit is inclusive (A6)",
    )
    att(
        "attestation_mock_skew_at_limit",
        base,
        policy="mock",
        now_ms=base_ts - 60_000,
        nonce=nonce,
        description="now = timestamp - 60 s exactly: the clock-skew allowance is inclusive (A6)",
    )
    leaf_end = ms(leaf.cert.not_valid_after_utc)
    v.policy("mock_max_age_4h", {"root": "mock", "max_age_s": 14400, "measurements": [mock_set]})
    att(
        "attestation_mock_now_at_leaf_not_after",
        base,
        policy="mock_max_age_4h",
        now_ms=leaf_end,
        nonce=nonce,
        description=(
            "now = the leaf's notAfter exactly (validity is inclusive, A5), under a policy with "
            "max_age_s 14400"
        ),
    )
    other = bytes.fromhex("ab" * 48)
    v.policy(
        "mock_two_entries",
        {"root": "mock", "measurements": [{"PCR0": other.hex()}, mock_set]},
    )
    att(
        "attestation_mock_second_allowlist_entry",
        base,
        policy="mock_two_entries",
        now_ms=base_ts + 1500,
        nonce=nonce,
        description=(
            "The first allowed set does not match, the second does: any one set suffices (A9)"
        ),
    )
    zero_pcrs = dict.fromkeys(range(16), bytes(48))
    debug = mock_doc("mock_debug", pcrs=zero_pcrs)
    v.policy(
        "mock_debug_allowed",
        {"root": "mock", "allow_debug": True, "measurements": [{"PCR0": bytes(48).hex()}]},
    )
    att(
        "attestation_mock_debug_allowed",
        debug,
        policy="mock_debug_allowed",
        now_ms=base_ts + 1500,
        nonce=nonce,
        description="Debug-mode document (all PCRs zero) under a policy that sets allow_debug (A9)",
    )
    sig = _signature_of(base_raw)
    r, s = int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big")
    high_s = r.to_bytes(48, "big") + (_P384_N - s).to_bytes(48, "big")
    att(
        "attestation_mock_high_s_signature",
        raw_doc("mock_high_s", cose_sign1(PROTECTED_ES384, {}, base_payload, high_s)),
        policy="mock",
        now_ms=base_ts + 1500,
        nonce=nonce,
        description=(
            "The base document with s replaced by n - s: ECDSA accepts both (no low-s rule in "
            "ES384), so this is a second valid spelling"
        ),
    )

    # ======================= attestation: reject =======================
    now_ok = base_ts + 1500

    def rej(
        vid: str,
        doc: str,
        check: str,
        description: str,
        *,
        policy: str = "mock",
        now_ms: int = now_ok,
        with_nonce: bool = True,
    ) -> None:
        att(
            vid,
            doc,
            policy=policy,
            now_ms=now_ms,
            nonce=nonce if with_nonce else None,
            check=check,
            description=description,
        )

    # A1 envelope
    rej(
        "attestation_oversize",
        mock_doc("oversize", module_id="i-" + "0" * 16_400),
        "A1",
        "A validly signed document over 16 KiB (module_id of 16 KiB)",
    )
    rej("attestation_truncated", raw_doc("truncated", base_raw[:-1]), "A1", "The last byte cut off")
    rej(
        "attestation_trailing_byte",
        raw_doc("trailing_byte", base_raw + b"\x00"),
        "A1",
        "One byte after the COSE_Sign1",
    )
    rej(
        "attestation_cbor_tag_55799",
        raw_doc("tag_55799", b"\xd9\xd9\xf7" + base_raw),
        "A1",
        "Wrapped in the self-described CBOR tag 55799 (D2: no tag but 18)",
    )
    rej(
        "attestation_cose_sign_tag_98",
        raw_doc("tag_98", b"\xd8\x62" + base_raw),
        "A1",
        "Tagged 98 (COSE_Sign), not 18",
    )
    rej(
        "attestation_indefinite_array",
        raw_doc("indefinite_array", b"\x9f" + base_raw[1:] + b"\xff"),
        "A1",
        "The envelope array with an indefinite length (D2)",
    )
    rej(
        "attestation_three_elements",
        raw_doc("three_elements", cbor2.dumps([PROTECTED_ES384, {}, base_payload])),
        "A1",
        "A COSE array of 3 elements (no signature)",
    )
    es256 = encode({1: -7})
    rej(
        "attestation_alg_es256",
        resigned("alg_es256", base_payload, protected=es256),
        "A1",
        "Protected header {1: -7} (ES256), signed over it with the leaf key",
    )
    with_kid = encode({1: -35, 4: b"kid"})
    rej(
        "attestation_protected_extra_kid",
        resigned("protected_extra_kid", base_payload, protected=with_kid),
        "A1",
        "Protected header {1: -35, 4: 'kid'}: exactly {1: -35} is required",
    )
    rej(
        "attestation_unprotected_not_empty",
        resigned("unprotected_not_empty", base_payload, unprotected={4: b"kid"}),
        "A1",
        "Unprotected header {4: 'kid'}: it must be empty",
    )
    rej(
        "attestation_payload_not_bstr",
        raw_doc(
            "payload_not_bstr", cose_sign1(PROTECTED_ES384, {}, cbor2.loads(base_payload), sig)
        ),
        "A1",
        "The payload as a CBOR map instead of a byte string",
    )
    der_sig = encode_dss_signature(r, s)
    rej(
        "attestation_signature_der",
        raw_doc("signature_der", cose_sign1(PROTECTED_ES384, {}, base_payload, der_sig)),
        "A1",
        "The same signature DER-encoded: COSE wants 96 raw bytes r||s",
    )
    long_head = base_raw[:7] + b"\x5a" + len(base_payload).to_bytes(4, "big") + base_raw[7 + 3 :]
    assert base_raw[7] == 0x59
    rej(
        "attestation_payload_long_length_head",
        raw_doc("payload_long_length_head", long_head),
        "A1",
        "The payload's length in a 4-byte head where 2 bytes suffice (D3: one encoding)",
    )

    # A2 payload (each re-signed: only the payload rule can fail)
    def a2(vid: str, check_desc: str, payload: bytes) -> None:
        rej(vid, resigned(vid.removeprefix("attestation_"), payload), "A2", check_desc)

    a2("attestation_missing_module_id", "No module_id", payload_with(module_id=_DROP))
    a2("attestation_missing_timestamp", "No timestamp", payload_with(timestamp=_DROP))
    a2("attestation_extra_field", "An extra field 'debug': true", payload_with(debug=True))
    a2("attestation_digest_sha256", "digest 'SHA256'", payload_with(digest="SHA256"))
    a2("attestation_timestamp_zero", "timestamp 0", payload_with(timestamp_ms=0))
    a2("attestation_pcr_short", "PCR2 of 32 bytes", payload_with(pcrs={**pcrs, 2: pcrs[2][:32]}))
    a2(
        "attestation_pcr0_missing",
        "No PCR0",
        payload_with(pcrs={i: p for i, p in pcrs.items() if i}),
    )
    a2("attestation_pcr_index_32", "A PCR at index 32", payload_with(pcrs={**pcrs, 32: bytes(48)}))
    a2("attestation_cabundle_empty", "An empty cabundle", payload_with(cabundle=[]))
    a2(
        "attestation_user_data_513_bytes",
        "user_data of 513 bytes (the limit is 512)",
        payload_with(user_data=bytes(513)),
    )
    a2("attestation_nonce_text", "nonce as a text string", payload_with(nonce=nonce.hex()))
    dup = cbor2.loads(payload_with())
    pairs = [*dup.items(), ("nonce", nonce)]
    a2("attestation_payload_duplicate_key", "nonce twice in the payload map", cbor_map_pairs(pairs))
    shared = cbor2.dumps(payload_map(chain, **base_fields))
    tagged_ud = shared.replace(
        cbor2.dumps("user_data") + cbor2.dumps(base_fields["user_data"]),
        cbor2.dumps("user_data") + b"\xd8\x18" + cbor2.dumps(base_fields["user_data"]),
    )
    assert tagged_ud != shared
    a2(
        "attestation_payload_cbor_tag_24",
        "user_data wrapped in CBOR tag 24 inside the payload (D2: no tags)",
        tagged_ud,
    )
    deep: Any = []
    for _ in range(17):
        deep = [deep]
    a2(
        "attestation_payload_too_deep",
        "An extra field of 17 nested arrays: the payload nests 18 deep (D2: depth limit 16)",
        payload_with(extra=deep),
    )

    # A3 signature
    rej(
        "attestation_signature_flipped",
        raw_doc("signature_flipped", base_raw[:-1] + bytes([base_raw[-1] ^ 1])),
        "A3",
        "The signature's last byte changed",
    )
    i0 = base_payload.index(pcrs[0])
    edited = bytearray(base_payload)
    edited[i0] ^= 1
    rej(
        "attestation_payload_pcr0_edited",
        raw_doc("payload_pcr0_edited", cose_sign1(PROTECTED_ES384, {}, bytes(edited), sig)),
        "A3",
        "One bit of PCR0 changed in the payload, signature kept",
    )
    rej(
        "attestation_signature_r_zero",
        raw_doc(
            "signature_r_zero", cose_sign1(PROTECTED_ES384, {}, base_payload, bytes(48) + sig[48:])
        ),
        "A3",
        "r = 0 (out of range)",
    )
    rej(
        "attestation_signed_by_intermediate",
        resigned("signed_by_intermediate", base_payload, key=inter.key),
        "A3",
        "Signed by the intermediate's key, not the leaf's",
    )
    p256_leaf = make_leaf("mock leaf p256", inter, key=p256_key("mock leaf p256"))
    rej(
        "attestation_leaf_p256",
        mock_doc("leaf_p256", Chain(root, (inter,), p256_leaf)),
        "A3",
        "Leaf certificate with a P-256 key (ES384 needs P-384); the document signed with that key",
    )
    rej(
        "attestation_leaf_not_der",
        resigned("leaf_not_der", payload_with(certificate=b"not a certificate")),
        "A3",
        "certificate is not DER X.509",
    )
    rej(
        "attestation_aws_2_bad_sig",
        v.file(
            "attestation/aws_2_bad_sig.cbor",
            (REAL_DIR / "nitro_attestation_bad_sig.cbor").read_bytes(),
        ),
        "A3",
        "Real document #2 with its last signature byte changed (upstream negative vector)",
        policy="aws_2",
        now_ms=aws2.timestamp_ms,
        with_nonce=False,
    )
    raw4 = v.files[real_docs[4]]
    j = raw4.index(aws4.pcrs[0])
    rej(
        "attestation_aws_4_pcr0_edited",
        raw_doc("aws_4_pcr0_edited", raw4[:j] + bytes([raw4[j] ^ 1]) + raw4[j + 1 :]),
        "A3",
        "Real document #4 with one bit of PCR0 changed",
        policy="aws_4",
        now_ms=aws4.timestamp_ms,
        with_nonce=False,
    )

    # A4 chain
    v.policy("mock_pcrs_aws_root", {"root": "aws-nitro", "measurements": [mock_set]})
    rej(
        "attestation_mock_under_aws_root",
        base,
        "A4",
        "A mock document checked against the AWS root",
        policy="mock_pcrs_aws_root",
    )
    v.policy(
        "aws_4_mock_root", {"root": "mock", "measurements": v.policies["aws_4"]["measurements"]}
    )
    rej(
        "attestation_aws_4_under_mock_root",
        real_docs[4],
        "A4",
        "Real document #4 checked against the mock root",
        policy="aws_4_mock_root",
        now_ms=aws4.timestamp_ms,
        with_nonce=False,
    )
    impostor = make_root("impostor root")
    imp_inter = make_intermediate("impostor intermediate", impostor)
    imp_leaf = make_leaf("impostor leaf", imp_inter)
    rej(
        "attestation_impostor_root",
        mock_doc("impostor_root", Chain(impostor, (imp_inter,), imp_leaf)),
        "A4",
        "A chain to another root with the same name as the mock root (its key differs)",
    )
    rev_bundle = payload_with(cabundle=[inter.der, root.der])
    rej(
        "attestation_cabundle_reversed",
        resigned("cabundle_reversed", rev_bundle),
        "A4",
        "cabundle in the wrong order (intermediate first): cabundle[0] must be the root",
    )
    rej(
        "attestation_cabundle_missing_intermediate",
        resigned("cabundle_missing_intermediate", payload_with(cabundle=[root.der])),
        "A4",
        "cabundle holds only the root: the leaf is not issued by it",
    )
    forged_inter = make_intermediate("forged intermediate", root, signer=impostor.key)
    forged_leaf = make_leaf("forged intermediate leaf", forged_inter)
    rej(
        "attestation_intermediate_not_issued_by_root",
        mock_doc("intermediate_not_issued_by_root", Chain(root, (forged_inter,), forged_leaf)),
        "A4",
        "The intermediate names the mock root as issuer but is signed by another key",
    )
    stray = make_intermediate("stray intermediate", root)
    stray_leaf = make_leaf("stray leaf", stray)
    rej(
        "attestation_leaf_not_issued_by_intermediate",
        mock_doc("leaf_not_issued_by_intermediate", Chain(root, (inter,), stray_leaf)),
        "A4",
        "The leaf is issued by another intermediate of the same root (same name, other key)",
    )
    nonca = make_intermediate(
        "intermediate not ca", root, ca=False, path_length=None, key_cert_sign=True
    )
    nonca_leaf = make_leaf("intermediate not ca leaf", nonca)
    rej(
        "attestation_intermediate_not_ca",
        mock_doc("intermediate_not_ca", Chain(root, (nonca,), nonca_leaf)),
        "A4",
        "The intermediate's basicConstraints say CA=false",
    )
    int1 = make_intermediate("path length intermediate 1", root)
    int2 = make_intermediate(
        "path length intermediate 2", int1, cn=INTERMEDIATE_CN + " 2", path_length=None
    )
    pl_leaf = make_leaf("path length leaf", int2)
    rej(
        "attestation_path_length_exceeded",
        mock_doc("path_length_exceeded", Chain(root, (int1, int2), pl_leaf)),
        "A4",
        "root (pathLen 1) -> intermediate -> second intermediate -> leaf: two CAs below the root",
    )
    nokcs = make_intermediate("intermediate no keycertsign", root, key_cert_sign=False)
    nokcs_leaf = make_leaf("intermediate no keycertsign leaf", nokcs)
    rej(
        "attestation_intermediate_without_key_cert_sign",
        mock_doc("intermediate_without_key_cert_sign", Chain(root, (nokcs,), nokcs_leaf)),
        "A4",
        "The intermediate's keyUsage lacks keyCertSign",
    )
    ca_leaf = make_leaf("leaf is ca", inter, ca=True, path_length=None, digital_signature=True)
    rej(
        "attestation_leaf_is_ca",
        mock_doc("leaf_is_ca", Chain(root, (inter,), ca_leaf)),
        "A4",
        "The leaf's basicConstraints say CA=true",
    )
    nods_leaf = make_leaf("leaf no digitalsignature", inter, digital_signature=False)
    rej(
        "attestation_leaf_without_digital_signature",
        mock_doc("leaf_without_digital_signature", Chain(root, (inter,), nods_leaf)),
        "A4",
        "The leaf's keyUsage lacks digitalSignature",
    )
    crit = make_intermediate("intermediate unknown critical", root, unknown_critical=True)
    crit_leaf = make_leaf("intermediate unknown critical leaf", crit)
    rej(
        "attestation_unknown_critical_extension",
        mock_doc("unknown_critical_extension", Chain(root, (crit,), crit_leaf)),
        "A4",
        (
            f"The intermediate carries a critical extension no verifier knows "
            f"({UNKNOWN_EXTENSION.dotted_string}; RFC 5280 §4.2)"
        ),
    )

    # A5 validity
    rej(
        "attestation_leaf_expired_at_now",
        base,
        "A5",
        "now = the leaf's notAfter + 1 s",
        policy="mock_max_age_4h",
        now_ms=leaf_end + 1000,
    )
    early_ts = ms(T0) - 1
    rej(
        "attestation_before_leaf_not_before",
        mock_doc("before_leaf_not_before", timestamp_ms=early_ts),
        "A5",
        "Document timestamp 1 ms before the leaf's notBefore",
        now_ms=early_ts + 1500,
    )
    old_inter = make_intermediate("expired intermediate", root, not_before=T0 - timedelta(days=40))
    old_leaf = make_leaf("expired intermediate leaf", old_inter)
    rej(
        "attestation_intermediate_expired",
        mock_doc("intermediate_expired", Chain(root, (old_inter,), old_leaf)),
        "A5",
        "The intermediate expired 10 days before the document",
    )
    at_2026 = ms(datetime(2026, 6, 1, tzinfo=UTC))
    v.policy("aws_5_max_age_2y", {**v.policies["aws_5"], "max_age_s": 2 * 365 * 86400})
    rej(
        "attestation_aws_5_at_2026",
        real_docs[5],
        "A5",
        (
            "Real document #5 checked at now = 2026-06-01: its intermediates expired long before "
            "(archived documents verify at their own time)"
        ),
        policy="aws_5_max_age_2y",
        now_ms=at_2026,
        with_nonce=False,
    )
    aws5_leaf = x509.load_der_x509_certificate(aws5.certificate)
    rej(
        "attestation_aws_5_after_leaf_not_after",
        real_docs[5],
        "A5",
        "Real document #5 at now = its leaf's notAfter + 1 s",
        policy="aws_5_max_age_2y",
        now_ms=ms(aws5_leaf.not_valid_after_utc) + 1000,
        with_nonce=False,
    )

    # A6 freshness
    rej(
        "attestation_too_old",
        base,
        "A6",
        "now = timestamp + 300.001 s (default max_age_s 300)",
        now_ms=base_ts + 300_001,
    )
    rej(
        "attestation_from_the_future",
        base,
        "A6",
        "now = timestamp - 60.001 s (clock skew allowance 60 s)",
        now_ms=base_ts - 60_001,
    )
    v.policy("mock_max_age_30", {"root": "mock", "max_age_s": 30, "measurements": [mock_set]})
    rej(
        "attestation_older_than_policy_max_age",
        base,
        "A6",
        "now = timestamp + 30.001 s under a policy with max_age_s 30",
        policy="mock_max_age_30",
        now_ms=base_ts + 30_001,
    )

    # A7 nonce
    att(
        "attestation_nonce_mismatch",
        base,
        policy="mock",
        now_ms=now_ok,
        nonce=seed("another nonce"),
        check="A7",
        description=(
            "The verifier's challenge differs from the document's nonce (a replayed document)"
        ),
    )
    rej(
        "attestation_nonce_absent",
        mock_doc("no_nonce", nonce=None),
        "A7",
        "The document carries no nonce (null) but the verifier has a challenge",
    )

    # A9 measurements
    v.policy(
        "mock_pcr0_other", {"root": "mock", "measurements": [{**mock_set, "PCR0": other.hex()}]}
    )
    rej(
        "attestation_pcr0_mismatch",
        base,
        "A9",
        "The policy allows another PCR0",
        policy="mock_pcr0_other",
    )
    v.policy("mock_pcr20", {"root": "mock", "measurements": [{**mock_set, "PCR20": other.hex()}]})
    rej(
        "attestation_pcr_not_reported",
        base,
        "A9",
        "The policy pins PCR20, which the document does not report",
        policy="mock_pcr20",
    )
    v.policy(
        "mock_debug_not_allowed", {"root": "mock", "measurements": [{"PCR0": bytes(48).hex()}]}
    )
    rej(
        "attestation_debug_mode_refused",
        debug,
        "A9",
        (
            "A debug-mode document (PCR0 all zero) under a policy without allow_debug, even "
            "though the policy names that PCR0"
        ),
        policy="mock_debug_not_allowed",
    )
    v.policy(
        "aws_1_strict", {k: val for k, val in v.policies["aws_1"].items() if k != "allow_debug"}
    )
    aws1 = parse_unverified(v.files[real_docs[1]])
    rej(
        "attestation_aws_1_debug_refused",
        real_docs[1],
        "A9",
        "Real document #1 (debug mode) without allow_debug",
        policy="aws_1_strict",
        now_ms=aws1.timestamp_ms,
        with_nonce=False,
    )
    rej(
        "attestation_aws_4_wrong_measurements",
        real_docs[4],
        "A9",
        "Real document #4 against document #2's measurements",
        policy="aws_2",
        now_ms=aws4.timestamp_ms,
        with_nonce=False,
    )

    # ======================= policies that do not parse =======================
    for vid, pol, desc in (
        (
            "policy_empty_measurements",
            {"root": "mock", "measurements": []},
            "An empty measurements list: never allow-all",
        ),
        (
            "policy_empty_measurement_set",
            {"root": "mock", "measurements": [{}]},
            "A measurement set that names no PCR: never allow-all",
        ),
        (
            "policy_unknown_field",
            {"root": "mock", "measurements": [mock_set], "pcrs": {}},
            "An unknown field",
        ),
    ):
        name = v.policy(vid.removeprefix("policy_"), pol)
        try:
            v.client_policy(name)
        except Error as e:
            expect = rejection(e, "config")
        else:
            raise AssertionError(f"{vid}: the policy parsed")
        v.add(
            {
                "id": vid,
                "kind": "policy",
                "description": desc,
                "files": {},
                "inputs": {"policy": name},
                "expect": expect,
            }
        )

    # ======================= sessions =======================
    pin = v.policy(
        "mock_models_pinned",
        {"root": "mock", "measurements": [mock_set], "models": {MODEL: MODEL_DIGEST.hex()}},
    )
    fresh_now = base_ts + 1500
    results = [
        EmbedResult(MODEL, 4, 2, f32le(0.5, -0.5, 0.5, -0.5, 1.0, 0.0, 0.0, 0.0)),
        EmbedResult(MODEL, 4, 2, f32le(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0)),
    ]
    fresh = SessionSpec(
        name="fresh",
        mode="fresh",
        nonce=nonce,
        session_id=sid,
        ikm_r=ikm_r,
        ikm_e=ikm_e,
        document=base_raw,
        policy=pin,
        now_ms=fresh_now,
        requests=[
            EmbedRequest(MODEL, ("hello", "world")),
            EmbedRequest(MODEL, ("a text the client allows to be cut", "short"), truncate=True),
            EmbedRequest("no-such-model", ("hi",)),
        ],
        answers=[
            ("result", results[0], base_ts + 2000, 1234, seed("receipt id fresh 0", 16), ()),
            ("result", results[1], base_ts + 2100, 2345, seed("receipt id fresh 1", 16), (0,)),
            (
                "error",
                InferenceError(f"unknown model 'no-such-model'; this enclave serves ['{MODEL}']"),
            ),
        ],
    )
    fresh_frames = session_vector(
        v,
        fresh,
        ident,
        "session_fresh",
        (
            "A fresh-mode session: hello, attest, open, two embeddings (the second with truncate: "
            "input 0 cut) and a request for an unknown model answered with a sealed error"
        ),
    )

    # cached mode: a document with no key, no nonce and the all-zero session id
    cached_ts = ms(T0 + timedelta(minutes=30)) + 500
    cached_binding = EnclaveSession.cached_binding(ident)
    cached_doc = v.file(
        "session/cached/attestation.cbor",
        document(chain, timestamp_ms=cached_ts, pcrs=pcrs, user_data=cached_binding.to_cbor()),
    )
    cached = SessionSpec(
        name="cached",
        mode="cached",
        nonce=seed("client nonce cached"),
        session_id=seed("session id cached", 16),
        ikm_r=seed("enclave session ikm cached"),
        ikm_e=seed("client ephemeral ikm cached"),
        document=v.files[cached_doc],
        policy="mock",
        now_ms=cached_ts + 30_000,
        requests=[EmbedRequest(MODEL, ("cached mode",))],
        answers=[
            (
                "result",
                EmbedResult(MODEL, 4, 1, f32le(0.0, 0.0, 0.0, 1.0)),
                cached_ts + 31_000,
                999,
                seed("receipt id cached 0", 16),
                (),
            )
        ],
    )
    cached_frames = session_vector(
        v,
        cached,
        ident,
        "session_cached",
        (
            "A cached-mode session: the document names no session; the attest frame carries a "
            "proof signed by the attested receipt key over the nonce, the session's X25519 key "
            "and id (A11)"
        ),
    )

    # -- client-side rejects: the relay (or a forged enclave) hands the client these
    def attest_frame(doc: bytes, proof: bytes | None = None) -> bytes:
        return encode_frame(ServerAttest(1, doc, proof).to_cbor())

    def client_vector(
        vid: str,
        spec: SessionSpec,
        frames: list[Frame],
        check: str,
        desc: str,
        *,
        policy: str | None = None,
        document: str | None = None,
    ) -> None:
        cp = v.client_policy(policy or spec.policy)
        expect = client_reject(spec, cp, frames, check)
        write_session(v, vid, spec, frames, expect, desc, policy=policy, document=document)

    hello_f = fresh_frames[0]
    replayed = v.file(
        "attestation/mock_other_nonce.cbor",
        document(chain, **{**base_fields, "nonce": seed("another nonce")}),
    )
    client_vector(
        "session_attestation_replayed",
        fresh,
        [hello_f, Frame("e2c", "attest", attest_frame(v.files[replayed]), {})],
        "A7",
        "The attest frame carries a document made for another nonce (a replay)",
        document=replayed,
    )

    def doc_with(name: str, **changes: Any) -> str:
        return mock_doc(name, **changes)

    def bad_binding(vid: str, doc: str, check: str, desc: str) -> None:
        client_vector(
            vid,
            fresh,
            [hello_f, Frame("e2c", "attest", attest_frame(v.files[doc]), {})],
            check,
            desc,
            document=doc,
        )

    bad_binding(
        "session_no_public_key",
        doc_with("session_no_public_key", public_key=None),
        "A8",
        "The document has no public_key",
    )
    bad_binding(
        "session_user_data_not_binding",
        doc_with("session_user_data_not_binding", user_data=b"hello"),
        "A8",
        "user_data is not a binding",
    )
    v2 = EnclaveBinding(
        2,
        sid,
        binding.receipt_key,
        binding.models,
        binding.policy_version,
        "mock",
        binding.key_releases,
    )
    bad_binding(
        "session_binding_protocol_2",
        doc_with("session_binding_protocol_2", user_data=v2.to_cbor()),
        "A8",
        "The binding says protocol version 2 (a downgrade or upgrade the client does not speak)",
    )
    nitro_b = EnclaveBinding(
        1,
        sid,
        binding.receipt_key,
        binding.models,
        binding.policy_version,
        "nitro",
        binding.key_releases,
    )
    bad_binding(
        "session_nitro_binding_under_mock_root",
        doc_with("session_nitro_binding", user_data=nitro_b.to_cbor()),
        "A8",
        "The binding claims mode nitro, the document chains to the mock root",
    )
    bad_binding(
        "session_cached_document_in_fresh_session",
        doc_with("session_cached_binding_fresh", user_data=cached_binding.to_cbor()),
        "A8",
        "A fresh-mode client gets a document whose binding names no session (the cached one)",
    )
    other_proof = SessionProof(
        seed("another nonce"),
        x25519_pair(cached.ikm_r)[1],
        cached.session_id,
        sha256(cached.document),
    ).sign(ident.receipt_key)
    client_vector(
        "session_cached_proof_for_other_nonce",
        cached,
        [cached_frames[0], Frame("e2c", "attest", attest_frame(cached.document, other_proof), {})],
        "A11",
        "Cached mode: a proof signed by the right key over another client's nonce",
    )
    pin_other = v.policy(
        "mock_models_pinned_other",
        {"root": "mock", "measurements": [mock_set], "models": {MODEL: other[:32].hex()}},
    )
    client_vector(
        "session_model_digest_not_pinned",
        fresh,
        fresh_frames[:2],
        "P1",
        (
            "The policy pins another manifest digest for the model the enclave attests (checked "
            "before open is sent)"
        ),
        policy=pin_other,
    )
    minpv = v.policy(
        "mock_min_policy_version_8",
        {"root": "mock", "measurements": [mock_set], "min_enclave_policy_version": 8},
    )
    client_vector(
        "session_enclave_policy_version_too_low",
        fresh,
        fresh_frames[:2],
        "P2",
        "The enclave enforces policy version 7, the client's policy requires 8",
        policy=minpv,
    )

    def tamper_ct(f: Frame) -> Frame:
        # The frame's map is {"t", "ct", "seq"} in that (deterministic) order, so the
        # last byte is seq's: flip the ciphertext's last byte (the Poly1305 tag) instead.
        m = decode_message(f.data[4:]).to_map()
        m["ct"] = m["ct"][:-1] + bytes([m["ct"][-1] ^ 1])
        return Frame(f.direction, f.type, encode_frame(encode(m)), {})

    def relabel(f: Frame, seq: int) -> Frame:
        msg = decode_message(f.data[4:])
        body = {**msg.to_map(), "seq": seq}
        return Frame(f.direction, f.type, encode_frame(encode(body)), {})

    first4 = fresh_frames[:4]
    client_vector(
        "session_response_tampered",
        fresh,
        [*first4, tamper_ct(fresh_frames[4])],
        "H3",
        "One bit of the first response's ciphertext changed",
    )
    client_vector(
        "session_response_unsolicited",
        fresh,
        [*first4, relabel(fresh_frames[4], 5)],
        "H3",
        "A response for seq 5, which was never asked",
    )
    client_vector(
        "session_response_for_other_seq",
        fresh,
        [*first4, fresh_frames[5], relabel(fresh_frames[4], 1)],
        "H3",
        (
            "With requests 0 and 1 in flight, response 0's ciphertext arrives labelled seq 1: the "
            "nonce and aad (H1) differ, so it does not open"
        ),
    )

    # -- enclave-side rejects: the relay hands the enclave these
    def enclave_vector(vid: str, frames: list[Frame], check: str, desc: str) -> None:
        expect = enclave_reject(fresh, ident, frames, check)
        write_session(v, vid, fresh, frames, expect, desc)

    first3 = fresh_frames[:3]
    enclave_vector(
        "session_request_replayed",
        [*first3, fresh_frames[3], fresh_frames[4], fresh_frames[3]],
        "H2",
        "Request 0 delivered twice",
    )
    enclave_vector(
        "session_request_reordered",
        [*first3, fresh_frames[5]],
        "H2",
        "Request 1 delivered before request 0",
    )
    enclave_vector(
        "session_request_tampered",
        [*first3, tamper_ct(fresh_frames[3])],
        "H2",
        "One bit of request 0's ciphertext changed",
    )

    # ======================= streamed answers (§2.8) =======================
    # A fresh session of its own: its document binds its own nonce, session id and key.
    stream_ts = ms(T0 + timedelta(minutes=40)) + 750
    stream_sid = seed("session id stream", 16)
    stream_nonce = seed("client nonce stream")
    stream_ikm_r = seed("enclave session ikm stream")
    stream_doc = v.file(
        "session/stream/attestation.cbor",
        document(
            chain,
            **{
                **base_fields,
                "timestamp_ms": stream_ts,
                "public_key": x25519_pair(stream_ikm_r)[1],
                "user_data": dataclasses.replace(binding, session_id=stream_sid).to_cbor(),
                "nonce": stream_nonce,
            },
        ),
    )
    pieces = ("The", " capital", " of France", " is Paris", " \u2014 caf\u00e9 au lait.")
    stream = SessionSpec(
        name="stream",
        mode="fresh",
        nonce=stream_nonce,
        session_id=stream_sid,
        ikm_r=stream_ikm_r,
        ikm_e=seed("client ephemeral ikm stream"),
        document=v.files[stream_doc],
        policy=pin,
        now_ms=stream_ts + 1500,
        requests=[
            GenerateRequest(
                MODEL,
                32,
                messages=(
                    ChatMessage("system", "Answer in one sentence."),
                    ChatMessage("user", "What is the capital of France?"),
                ),
                temperature=0.5,
                top_p=0.9,
                top_k=40,
                seed=7,
                stop=("\n\n",),
            ),
            GenerateRequest(MODEL, 8, prompt="Once upon a time", temperature=1.0),
            CancelRequest(1),
            GenerateRequest("no-such-model", 4, prompt="hi"),
        ],
        answers=[
            (
                "stream",
                StreamAnswer(
                    pieces, "stop", 21, 9, stream_ts + 2000, 31_000, seed("receipt id stream 0", 16)
                ),
            ),
            (
                "stream",
                StreamAnswer(
                    (" there", " was"),
                    "cancelled",
                    4,
                    2,
                    stream_ts + 2500,
                    4_000,
                    seed("receipt id stream 1", 16),
                ),
            ),
            ("cancel",),
            (
                "error",
                InferenceError(f"unknown model 'no-such-model'; this enclave serves ['{MODEL}']"),
            ),
        ],
    )
    stream_steps = [
        ("req", 0),
        *[("chunk", 0)] * len(pieces),
        ("end", 0),
        ("req", 1),
        ("chunk", 1),
        ("req", 2),
        ("chunk", 1),
        ("end", 1),
        ("req", 3),
        ("end", 3),
    ]
    sf = stream_session_vector(
        v,
        stream,
        ident,
        stream_steps,
        "session_stream",
        (
            "Streamed answers (§2.8): a chat with every sampling key (temperature 0.5 as a "
            "half float, top_p 0.9 as a double), answered by five chunks and its end with a "
            "receipt; a prompt (temperature 1.0: a float, never the integer 1) cancelled "
            "after its first chunk (the cancel takes seq 2, has no answer, and one more "
            "chunk was on its way); a generate request for an unknown model refused with a "
            "sealed error. The vectors' one model name is used for generation too: the "
            "protocol does not care what kind of model it is"
        ),
    )
    assert [f.type for f in sf[3:10]] == ["req", *["chunk"] * 5, "resp"]

    def rechunk(f: Frame, **changes: int) -> Frame:
        m = {**cbor2.loads(f.data[4:]), **changes}
        return Frame(f.direction, f.type, encode_frame(encode(m)), {})

    s_open = sf[:4]  # hello, attest, open, the chat request
    c0, c1, c2 = sf[4], sf[5], sf[6]
    client_vector(
        "session_stream_chunk_dropped",
        stream,
        [*s_open, c0, c2],
        "S1",
        "The relay drops chunk 1 of the streamed answer; chunk 2 arrives in its place",
    )
    client_vector(
        "session_stream_chunk_repeated",
        stream,
        [*s_open, c0, c1, c1],
        "S1",
        "The relay delivers chunk 1 twice",
    )
    client_vector(
        "session_stream_chunk_reordered",
        stream,
        [*s_open, c1, c0],
        "S1",
        "The relay swaps chunks 0 and 1",
    )
    client_vector(
        "session_stream_chunk_renumbered",
        stream,
        [*s_open, c0, rechunk(c2, k=1)],
        "S2",
        (
            "The relay drops chunk 1 and renumbers chunk 2 as 1: S1 passes, but the number is "
            "in the nonce and the aad, so the chunk does not open"
        ),
    )
    client_vector(
        "session_stream_chunk_tampered",
        stream,
        [*s_open, c0, tamper_ct(c1)],
        "S2",
        "One bit of chunk 1's ciphertext changed",
    )
    client_vector(
        "session_stream_last_chunk_dropped",
        stream,
        [*sf[:8], sf[9]],
        "S3",
        (
            "The relay drops the last chunk and delivers the end: every chunk that arrived "
            "was in order, and only the end's count and hash show the loss"
        ),
    )
    forged, _ = run_stream_session(
        stream, ident, v.client_policy(pin), stream_steps[:7], forge_end_of=0
    )
    assert [f.data for f in forged[:9]] == [f.data for f in sf[:9]]
    client_vector(
        "session_stream_end_hash_forged",
        stream,
        forged[:10],
        "S3",
        (
            "Every chunk arrives, but the end (signed, in a receipt that would verify) covers "
            "a stream hash other than that of the chunks sealed: the count agrees, the hash "
            "does not"
        ),
    )
    client_vector(
        "session_stream_chunk_after_end",
        stream,
        [*sf[:10], c0],
        "S1",
        "Chunk 0 of answer 0 delivered again after its stream ended",
    )

    # ======================= receipts =======================
    # The base document without user_data: it verifies, but binds no receipt key.
    mock_doc("mock_no_user_data", user_data=None)
    receipts(v, fresh, cached, ident, base_ts, other)

    # ======================= index =======================
    v.file("PROVENANCE.md", provenance(v).encode())
    index = {
        "format": FORMAT,
        "description": (
            "Conformance vectors of the ephemeralml protocol (docs/protocol.md §13). Every "
            "path is relative to this file's folder; every byte string is lowercase hex."
        ),
        "generated_by": "scripts/make_conformance_vectors.py",
        "seed_prefix": SEED_PREFIX.decode(),
        "constants": {
            "hpke_suite": {"mode": 0, "kem_id": 32, "kdf_id": 1, "aead_id": 3},
            "hpke_info_prefix": _hpke.session_info(bytes(32))[:-32].hex(),
            "response_key_label": RESPONSE_KEY_LABEL.hex(),
            "response_nonce_label": RESPONSE_NONCE_LABEL.hex(),
            "chunk_key_label": CHUNK_KEY_LABEL.hex(),
            "chunk_nonce_label": CHUNK_NONCE_LABEL.hex(),
            "cose_protected_es384": PROTECTED_ES384.hex(),
            "max_attestation_age_s": 300,
            "max_clock_skew_s": 60,
            "max_session_s": 3600,
        },
        "roots": v.roots,
        "policies": v.policies,
        "files": {p: sha256(d).hex() for p, d in sorted(v.files.items())},
        "vectors": v.vectors,
    }
    out = dict(v.files)
    out["index.json"] = (json.dumps(index, indent=1, ensure_ascii=True) + "\n").encode()
    return out


def _signature_of(raw: bytes) -> bytes:
    sig = cbor2.loads(raw)[3]
    assert isinstance(sig, bytes)
    return sig


def session_vector(
    v: Vectors, spec: SessionSpec, ident: EnclaveIdentity, vid: str, desc: str
) -> list[Frame]:
    frames, seen = run_session(spec, ident, v.client_policy(spec.policy))
    base = f"session/{spec.name}"
    v.file(f"{base}/attestation.cbor", spec.document)
    req_i = resp_i = 0
    for i, f in enumerate(frames):
        label = (
            f.type
            if f.type in ("hello", "attest", "open")
            else f"{f.type}{req_i if f.type == 'req' else resp_i}"
        )
        f.files["frame"] = v.file(f"{base}/{i:02d}_{label}.frame", f.data)
        if f.type == "req":
            f.files["body"] = v.file(f"{base}/req{req_i}.body.cbor", spec.requests[req_i].to_cbor())
            req_i += 1
        elif f.type == "resp":
            answer = spec.answers[resp_i]
            body = _open_response(spec, frames, resp_i, f)
            f.files["body"] = v.file(f"{base}/resp{resp_i}.body.cbor", body)
            if answer[0] == "result":
                f.files["result"] = v.file(f"{base}/resp{resp_i}.result.cbor", answer[1].to_cbor())
                receipt = cbor2.loads(body)["receipt"]
                f.files["receipt"] = v.file(f"{base}/resp{resp_i}.receipt.cbor", receipt)
            resp_i += 1
    expect = {"outcome": "accept", "values": _session_values(spec, frames, seen)}
    write_session(v, vid, spec, frames, expect, desc)
    return frames


def stream_session_vector(
    v: Vectors,
    spec: SessionSpec,
    ident: EnclaveIdentity,
    steps: list[tuple[str, int]],
    vid: str,
    desc: str,
) -> list[Frame]:
    """A session with streamed answers (§2.8), run in the order of ``steps``."""
    frames, seen = run_stream_session(spec, ident, v.client_policy(spec.policy), steps)
    base = f"session/{spec.name}"
    v.file(f"{base}/attestation.cbor", spec.document)
    for i, f in enumerate(frames):
        m = cbor2.loads(f.data[4:])
        label = {"req": "req{seq}", "resp": "resp{seq}", "chunk": "chunk{seq}_{k}"}.get(
            f.type, f.type
        )
        name = label.format(**{k: m.get(k) for k in ("seq", "k")})
        f.files["frame"] = v.file(f"{base}/{i:02d}_{name}.frame", f.data)
        if f.type == "req":
            body = spec.requests[m["seq"]].to_cbor()
            f.files["body"] = v.file(f"{base}/{name}.body.cbor", body)
        elif f.type in ("chunk", "resp"):
            body = _open_e2c(spec, frames, f)
            f.files["body"] = v.file(f"{base}/{name}.body.cbor", body)
            opened = cbor2.loads(body)
            if "result" in opened:
                f.files["result"] = v.file(f"{base}/{name}.result.cbor", encode(opened["result"]))
                f.files["receipt"] = v.file(f"{base}/{name}.receipt.cbor", opened["receipt"])
    expect = {"outcome": "accept", "values": _session_values(spec, frames, seen)}
    write_session(v, vid, spec, frames, expect, desc)
    return frames


def _session_keys(spec: SessionSpec, frames: list[Frame]) -> dict[str, bytes]:
    """The secrets exported from the session's HPKE context (§4, §2.8), derived with
    pyhpke directly (not our code): response and chunk key and base nonce."""
    open_msg = decode_message(frames[2].data[4:])
    assert isinstance(open_msg, SessionOpen)
    sk_r, _ = x25519_pair(spec.ikm_r)
    ctx = HPKE_SUITE.create_recipient_context(
        open_msg.enc,
        HPKE_SUITE.kem.deserialize_private_key(sk_r),
        info=session_info(sha256(spec.document)),
    )
    return {
        "response_key": ctx.export(RESPONSE_KEY_LABEL, 32),
        "response_base_nonce": ctx.export(RESPONSE_NONCE_LABEL, 12),
        "chunk_key": ctx.export(CHUNK_KEY_LABEL, 32),
        "chunk_base_nonce": ctx.export(CHUNK_NONCE_LABEL, 12),
    }


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _e2c_nonce_aad(
    spec: SessionSpec, keys: dict[str, bytes], m: Mapping[str, Any]
) -> tuple[bytes, bytes, bytes]:
    """(key, nonce, aad) of an e2c frame's ciphertext: a resp (§4) or a chunk (§2.8)."""
    seq = m["seq"]
    if m["t"] == "chunk":
        k = m["k"]
        where = seq.to_bytes(8, "big") + k.to_bytes(4, "big")
        aad = encode({"k": k, "t": "chunk", "sid": spec.session_id, "seq": seq})
        return keys["chunk_key"], _xor(keys["chunk_base_nonce"], where), aad
    aad = encode({"t": "resp", "sid": spec.session_id, "seq": seq})
    return keys["response_key"], _xor(keys["response_base_nonce"], seq.to_bytes(12, "big")), aad


def _open_e2c(spec: SessionSpec, frames: list[Frame], f: Frame) -> bytes:
    """The plaintext of a resp or chunk frame, opened with ChaCha20-Poly1305 directly."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    msg = cbor2.loads(f.data[4:])
    key, nonce, aad = _e2c_nonce_aad(spec, _session_keys(spec, frames), msg)
    pt = ChaCha20Poly1305(key).decrypt(nonce, msg["ct"], aad)
    assert isinstance(pt, bytes)
    return pt


def _open_response(spec: SessionSpec, frames: list[Frame], seq: int, f: Frame) -> bytes:
    """The plaintext of response ``seq``, opened with pyhpke directly (not our code)."""
    assert cbor2.loads(f.data[4:])["seq"] == seq
    return _open_e2c(spec, frames, f)


def _session_values(spec: SessionSpec, frames: list[Frame], seen: dict[str, Any]) -> dict[str, Any]:
    open_msg = decode_message(frames[2].data[4:])
    assert isinstance(open_msg, SessionOpen)
    sk_r, pk_r = x25519_pair(spec.ikm_r)
    sk_e, pk_e = x25519_pair(spec.ikm_e)
    assert open_msg.enc == pk_e
    att_hash = sha256(spec.document)
    info = session_info(att_hash)
    keys = _session_keys(spec, frames)
    transcript = hashlib.sha256(b"".join(f.data for f in frames[:3])).hexdigest()
    assert transcript == seen["transcript_hash"]
    messages = []
    for f in frames[3:]:
        msg = cbor2.loads(f.data[4:])
        seq = msg["seq"]
        entry: dict[str, Any] = {"type": f.type, "seq": seq}
        if f.type == "req":
            entry["aad"] = encode({"t": "req", "sid": spec.session_id, "seq": seq}).hex()
        else:
            _, nonce, aad = _e2c_nonce_aad(spec, keys, msg)
            if f.type == "chunk":
                entry["k"] = msg["k"]
            entry["aad"], entry["nonce"] = aad.hex(), nonce.hex()
        messages.append(entry)
    return {
        "attestation_sha256": att_hash.hex(),
        "session_id": spec.session_id.hex(),
        "hpke": {
            "pkR": pk_r.hex(),
            "skR": sk_r.hex(),
            "pkE": pk_e.hex(),
            "skE": sk_e.hex(),
            "enc": open_msg.enc.hex(),
            "info": info.hex(),
            **{name: value.hex() for name, value in keys.items()},
        },
        "transcript_hash": seen["transcript_hash"],
        "messages": messages,
        "events": seen["events"],
    }


def write_session(
    v: Vectors,
    vid: str,
    spec: SessionSpec,
    frames: list[Frame],
    expect: dict[str, Any],
    desc: str,
    *,
    policy: str | None = None,
    document: str | None = None,
) -> None:
    """``document``: the document in the attest frame the client gets, when it is not
    the one the (honest) enclave attests."""
    entries = []
    for i, f in enumerate(frames):
        if "frame" not in f.files:
            f.files["frame"] = v.file(
                f"session/{vid.removeprefix('session_')}/{i:02d}_{f.type}.frame", f.data
            )
        entries.append({"dir": f.direction, "type": f.type, **f.files})
    receipt_key = Ed25519PrivateKey.from_private_bytes(seed("receipt key"))
    answers: list[dict[str, Any] | None] = []
    for a in spec.answers:
        if a[0] == "result":
            answers.append(
                {
                    "result": f"session/{spec.name}/resp{len(answers)}.result.cbor",
                    "model_digest": MODEL_DIGEST.hex(),
                    "time_ms": a[2],
                    "duration_us": a[3],
                    "receipt_id": a[4].hex(),
                    "truncated": list(a[5]),
                }
            )
        elif a[0] == "error":
            answers.append({"error": {"code": a[1].code, "message": a[1].message}})
        elif a[0] == "stream":
            st: StreamAnswer = a[1]
            answers.append(
                {
                    "stream": {
                        "chunks": list(st.chunks),
                        "finish": st.finish,
                        "prompt_tokens": st.prompt_tokens,
                        "completion_tokens": st.completion_tokens,
                        "device": st.device,
                    },
                    "model_digest": MODEL_DIGEST.hex(),
                    "time_ms": st.time_ms,
                    "duration_us": st.duration_us,
                    "receipt_id": st.receipt_id.hex(),
                }
            )
        else:
            answers.append(None)  # a cancel has no answer of its own
    v.add(
        {
            "id": vid,
            "kind": "session",
            "description": desc,
            "files": {
                "document": document or f"session/{spec.name}/attestation.cbor",
                "frames": entries,
            },
            "inputs": {
                "root": _policy_root(v.policies[policy or spec.policy], v.roots),
                "policy": policy or spec.policy,
                "now_ms": spec.now_ms,
                "now": iso(spec.now_ms),
                "mode": spec.mode,
                "client": {
                    "nonce": spec.nonce.hex(),
                    "ikmE": spec.ikm_e.hex(),
                    "requests": [
                        f"session/{spec.name}/req{i}.body.cbor" for i in range(len(spec.requests))
                    ],
                },
                "enclave": {
                    "ikmR": spec.ikm_r.hex(),
                    "session_id": spec.session_id.hex(),
                    "receipt_key_seed": receipt_key.private_bytes_raw().hex(),
                    "receipt_public_key": receipt_key.public_key().public_bytes_raw().hex(),
                    "models": {MODEL: MODEL_DIGEST.hex()},
                    "key_releases": {MODEL: KEY_RELEASE.hex()},
                    "policy_version": POLICY_VERSION,
                    "mode": "mock",
                    "document_timestamp_ms": parse_unverified(spec.document).timestamp_ms,
                    "answers": answers,
                },
            },
            "expect": expect,
        }
    )


# ---------------------------------------------------------------------------
# Receipts
# ---------------------------------------------------------------------------


def receipts(
    v: Vectors,
    fresh: SessionSpec,
    cached: SessionSpec,
    ident: EnclaveIdentity,
    base_ts: int,
    other: bytes,
) -> None:
    key = ident.receipt_key
    doc0 = "session/fresh/attestation.cbor"
    raw0 = v.files["session/fresh/resp0.receipt.cbor"]
    env = cbor2.loads(raw0).value
    r0 = Receipt.from_cbor(env[2])
    att_hash = sha256(v.files[doc0])
    transcript = bytes.fromhex(
        next(x for x in v.vectors if x["id"] == "session_fresh")["expect"]["values"][
            "transcript_hash"
        ]
    )

    def full_expect(seq: int, req: object) -> dict[str, Any]:
        assert isinstance(req, EmbedRequest)
        return {
            "seq": seq,
            "session_id": fresh.session_id.hex(),
            "client_nonce": fresh.nonce.hex(),
            "transcript_hash": transcript.hex(),
            "model_id": req.model,
            "truncate": req.truncate,
            "inputs": len(req.inputs),
        }

    def vector(
        vid: str,
        receipt_path: str,
        desc: str,
        *,
        check: str | None = None,
        doc: str = doc0,
        request: str | None = "session/fresh/req0.body.cbor",
        response: str | None = "session/fresh/resp0.result.cbor",
        expectations: dict[str, Any] | None = None,
        policy: str = "mock",
    ) -> None:
        raw = v.files[receipt_path]
        doc_raw = v.files[doc]
        cp = v.client_policy(policy)
        exp = dict(expectations or {})
        try:
            verified = verify_attestation(
                doc_raw, cp.attestation, now=parse_unverified(doc_raw).timestamp
            )
            vr = verify_receipt(
                raw,
                verified,
                expect=ReceiptExpectations(
                    request_hash=sha256(v.files[request]) if request else None,
                    response_hash=sha256(v.files[response]) if response else None,
                    **_expectations(exp),
                ),
            )
            cp.check_binding(vr.binding)
            cp.check_model(vr.binding, vr.receipt.model_id)
        except Error as e:
            if check is None:
                raise AssertionError(f"{vid}: expected accept, got {e}") from e
            expect = rejection(e, check)
        else:
            if check is not None:
                raise AssertionError(f"{vid}: expected {check}, but it verified")
            envelope = cbor2.loads(raw).value
            expect = {
                "outcome": "accept",
                "values": {
                    "receipt": vr.receipt.to_json(),
                    "kid": cbor2.loads(envelope[0])[4].hex(),
                    "protected": envelope[0].hex(),
                    "sig_structure": sig_structure(envelope[0], envelope[2]).hex(),
                    "receipt_public_key": vr.binding.receipt_key.hex(),
                    "attestation_sha256": sha256(doc_raw).hex(),
                    **({"request_sha256": sha256(v.files[request]).hex()} if request else {}),
                    **({"response_sha256": sha256(v.files[response]).hex()} if response else {}),
                },
            }
        files: dict[str, str] = {"receipt": receipt_path, "document": doc}
        if request:
            files["request"] = request
        if response:
            files["response"] = response
        v.add(
            {
                "id": vid,
                "kind": "receipt",
                "description": desc,
                "files": files,
                "inputs": {
                    "root": _policy_root(v.policies[policy], v.roots),
                    "policy": policy,
                    "now_ms": parse_unverified(doc_raw).timestamp_ms,
                    "now": iso(parse_unverified(doc_raw).timestamp_ms),
                    "expectations": exp,
                },
                "expect": expect,
            }
        )

    req0 = fresh.requests[0]
    vector(
        "receipt_fresh_0",
        "session/fresh/resp0.receipt.cbor",
        (
            "Receipt of the fresh session's request 0, checked as the live client does (every "
            "expectation) and offline (document at its own time, request and response hashes)"
        ),
        expectations=full_expect(0, req0),
    )
    vector(
        "receipt_fresh_1_truncated",
        "session/fresh/resp1.receipt.cbor",
        "Receipt of request 1 (truncate: true, input 0 cut)",
        request="session/fresh/req1.body.cbor",
        response="session/fresh/resp1.result.cbor",
        expectations=full_expect(1, fresh.requests[1]),
    )
    vector(
        "receipt_offline_without_payloads",
        "session/fresh/resp0.receipt.cbor",
        (
            "Offline, without the request and response: only the signature and the attestation "
            "are checked"
        ),
        request=None,
        response=None,
    )
    vector(
        "receipt_cached_0",
        "session/cached/resp0.receipt.cbor",
        (
            "Receipt of the cached session: R6 defers the session id and nonce to the proof (the "
            "document names no session)"
        ),
        doc="session/cached/attestation.cbor",
        request="session/cached/req0.body.cbor",
        response="session/cached/resp0.result.cbor",
    )

    def signed(
        name: str,
        payload: bytes,
        *,
        protected: bytes | None = None,
        signer: Ed25519PrivateKey = key,
        tagged: bool = True,
        unprotected: Any = None,
    ) -> str:
        prot = protected if protected is not None else encode({1: -8, 4: att_hash})
        sig = signer.sign(sig_structure(prot, payload))
        body = [prot, {} if unprotected is None else unprotected, payload, sig]
        return v.file(
            f"receipt/{name}.cbor", cbor2.dumps(cbor2.CBORTag(18, body) if tagged else body)
        )

    def with_fields(**changes: Any) -> bytes:
        m = r0.to_map()
        for k, val in changes.items():
            if val is _DROP:
                m.pop(k)
            else:
                m[k] = val
        return encode(m)

    def rej(vid: str, path: str, check: str, desc: str, **kw: Any) -> None:
        vector(vid, path, desc, check=check, **kw)

    v1 = dataclasses.replace(r0, version=1, truncate=False, truncated=())
    vector(
        "receipt_version_1",
        signed("version_1", v1.to_cbor()),
        "A version 1 receipt (no truncate/truncated fields) still verifies",
    )

    # R1 envelope
    rej(
        "receipt_untagged",
        signed("untagged", env[2], tagged=False),
        "R1",
        "The receipt without tag 18 (D3: our objects are always tagged)",
    )
    rej(
        "receipt_alg_es256",
        signed("alg_es256", env[2], protected=encode({1: -7, 4: att_hash})),
        "R1",
        "Protected header says alg -7 (ES256)",
    )
    rej(
        "receipt_kid_16_bytes",
        signed("kid_16_bytes", env[2], protected=encode({1: -8, 4: att_hash[:16]})),
        "R1",
        "kid of 16 bytes",
    )
    rej(
        "receipt_unprotected_not_empty",
        signed("unprotected_not_empty", env[2], unprotected={4: att_hash}),
        "R1",
        "kid repeated in the unprotected header",
    )
    rej(
        "receipt_signature_63_bytes",
        v.file(
            "receipt/signature_63_bytes.cbor",
            cbor2.dumps(cbor2.CBORTag(18, [env[0], {}, env[2], env[3][:63]])),
        ),
        "R1",
        "Signature cut to 63 bytes",
    )
    big = with_fields(model_id="m" * 8200)
    rej("receipt_oversize", signed("oversize", big), "R1", "A signed receipt over 8 KiB")
    long_head = bytearray(raw0)
    # 0xd2 0x84 0x58 0x26 <protected 38 B> 0xa0 0x59 <payload length>: lengthen the payload's head.
    p = 1 + 1 + 2 + len(env[0]) + 1
    assert raw0[p] == 0x59
    long_head[p : p + 3] = b"\x5a" + len(env[2]).to_bytes(4, "big")
    rej(
        "receipt_payload_long_length_head",
        v.file("receipt/payload_long_length_head.cbor", bytes(long_head)),
        "R1",
        "The payload's length in a longer head than needed (D3)",
    )

    # R2 / R3 attestation and binding
    wrong_kid = sha256(v.files["session/cached/attestation.cbor"])
    rej(
        "receipt_wrong_kid",
        signed("wrong_kid", env[2], protected=encode({1: -8, 4: wrong_kid})),
        "R2",
        (
            "kid names another attestation document (the cached one); checked against the fresh "
            "session's document"
        ),
    )
    nobind = "attestation/mock_no_user_data.cbor"
    nb_raw = v.files[nobind]
    rej(
        "receipt_document_without_binding",
        signed(
            "document_without_binding",
            with_fields(attestation_hash=sha256(nb_raw)),
            protected=encode({1: -8, 4: sha256(nb_raw)}),
        ),
        "R3",
        "The receipt names a document that verifies but carries no binding (user_data null)",
        doc=nobind,
    )

    # R4 signature
    rej(
        "receipt_signature_flipped",
        v.file("receipt/signature_flipped.cbor", raw0[:-1] + bytes([raw0[-1] ^ 1])),
        "R4",
        "The signature's last byte changed",
    )
    seq_at = env[2].index(b"\x63seq\x00")
    edited = env[2][:seq_at] + b"\x63seq\x01" + env[2][seq_at + 5 :]
    rej(
        "receipt_field_edited",
        v.file(
            "receipt/field_edited.cbor",
            cbor2.dumps(cbor2.CBORTag(18, [env[0], {}, edited, env[3]])),
        ),
        "R4",
        "seq changed from 0 to 1 in the payload, signature kept",
    )
    rej(
        "receipt_signed_by_other_key",
        signed(
            "signed_by_other_key",
            env[2],
            signer=Ed25519PrivateKey.from_private_bytes(seed("another receipt key")),
        ),
        "R4",
        "Signed by a key the attestation does not bind",
    )

    # R5 payload (re-signed)
    rej(
        "receipt_extra_field",
        signed("extra_field", with_fields(note="hi")),
        "R5",
        "An extra field 'note'",
    )
    rej(
        "receipt_version_2_without_truncation",
        signed("version_2_without_truncation", with_fields(truncate=_DROP, truncated=_DROP)),
        "R5",
        "v 2 without truncate and truncated",
    )
    rej(
        "receipt_truncated_without_truncate",
        signed("truncated_without_truncate", with_fields(truncated=[0])),
        "R5",
        "truncated [0] while truncate is false",
    )
    unsorted = cbor_map_pairs(sorted(r0.to_map().items(), key=lambda kv: kv[0]))
    assert unsorted != env[2]
    rej(
        "receipt_not_deterministic",
        signed("not_deterministic", unsorted),
        "R5",
        "The payload map's keys in alphabetical, not deterministic (bytewise encoded), order",
    )

    # R6-R10 (re-signed)
    rej(
        "receipt_attestation_hash_mismatch",
        signed("attestation_hash_mismatch", with_fields(attestation_hash=wrong_kid)),
        "R6",
        "kid right, attestation_hash in the payload names another document",
    )
    rej(
        "receipt_session_id_mismatch",
        signed("session_id_mismatch", with_fields(session_id=seed("another session", 16))),
        "R6",
        "session_id differs from the binding's",
    )
    rej(
        "receipt_client_nonce_mismatch",
        signed("client_nonce_mismatch", with_fields(client_nonce=seed("another nonce"))),
        "R6",
        "client_nonce differs from the document's nonce",
    )
    rej(
        "receipt_pcr2_mismatch",
        signed("pcr2_mismatch", with_fields(pcrs={**r0.pcrs, 2: other})),
        "R7",
        "PCR2 differs from the document's",
    )
    rej(
        "receipt_mode_nitro",
        signed("mode_nitro", with_fields(mode="nitro")),
        "R8",
        "mode nitro; the binding says mock",
    )
    v.policy(
        "mock_root_not_mock",
        {
            "root": {"pem": "roots/mock_root.pem", "sha256": v.roots["mock"]["sha256"]},
            "measurements": v.policies["mock"]["measurements"],
        },
    )
    rej(
        "receipt_mock_under_non_mock_root",
        "session/fresh/resp0.receipt.cbor",
        "R8",
        (
            "A mock receipt checked under the same root trusted as an ordinary (non-mock) root: a "
            "policy root given as a file"
        ),
        policy="mock_root_not_mock",
    )
    rej(
        "receipt_model_digest_mismatch",
        signed("model_digest_mismatch", with_fields(model_digest=other[:32])),
        "R9",
        "model_digest differs from the binding's",
    )
    rej(
        "receipt_key_release_mismatch",
        signed("key_release_mismatch", with_fields(key_release=other[:32])),
        "R9",
        "key_release differs from the binding's",
    )
    rej(
        "receipt_policy_version_mismatch",
        signed("policy_version_mismatch", with_fields(policy_version=8)),
        "R9",
        "policy_version 8; the binding says 7",
    )
    rej(
        "receipt_time_before_attestation",
        signed("time_before_attestation", with_fields(time_ms=base_ts - 1)),
        "R10",
        "time_ms 1 ms before the document's timestamp",
    )
    rej(
        "receipt_time_after_session",
        signed("time_after_session", with_fields(time_ms=base_ts + 3_600_001)),
        "R10",
        "time_ms 3600.001 s after the document's timestamp",
    )
    vector(
        "receipt_time_at_session_end",
        signed("time_at_session_end", with_fields(time_ms=base_ts + 3_600_000)),
        "time_ms exactly 3600 s after the document's timestamp: R10 is inclusive",
    )

    # R11 expectations, P1, P2
    rej(
        "receipt_wrong_request",
        "session/fresh/resp0.receipt.cbor",
        "R11",
        "Checked against request 1's body",
        request="session/fresh/req1.body.cbor",
    )
    rej(
        "receipt_wrong_response",
        "session/fresh/resp0.receipt.cbor",
        "R11",
        "Checked against response 1's result",
        response="session/fresh/resp1.result.cbor",
    )
    rej(
        "receipt_wrong_seq",
        "session/fresh/resp0.receipt.cbor",
        "R11",
        "The client expects seq 1",
        expectations={**full_expect(0, req0), "seq": 1},
    )
    rej(
        "receipt_wrong_transcript",
        "session/fresh/resp0.receipt.cbor",
        "R11",
        "The client's transcript hash differs",
        expectations={
            **full_expect(0, req0),
            "transcript_hash": sha256(b"another transcript").hex(),
        },
    )
    rej(
        "receipt_truncation_not_recorded",
        "session/fresh/resp0.receipt.cbor",
        "R11",
        "The client asked truncate: true; the receipt says false",
        expectations={**full_expect(0, req0), "truncate": True},
    )
    rej(
        "receipt_model_digest_not_pinned",
        "session/fresh/resp0.receipt.cbor",
        "P1",
        "The policy pins another manifest digest for the model",
        policy="mock_models_pinned_other",
    )
    rej(
        "receipt_enclave_policy_version_too_low",
        "session/fresh/resp0.receipt.cbor",
        "P2",
        "The policy requires enclave policy version 8",
        policy="mock_min_policy_version_8",
    )


def _expectations(e: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, val in e.items():
        out[k] = (
            bytes.fromhex(val) if k in ("session_id", "client_nonce", "transcript_hash") else val
        )
    return out


# ---------------------------------------------------------------------------
# PROVENANCE.md
# ---------------------------------------------------------------------------


def provenance(v: Vectors) -> str:
    kinds: dict[str, list[int]] = {}
    for x in v.vectors:
        acc = kinds.setdefault(x["kind"], [0, 0])
        acc[0 if x["expect"]["outcome"] == "accept" else 1] += 1
    counts = "\n".join(f"| {k} | {a} | {r} |" for k, (a, r) in sorted(kinds.items()))
    return PROVENANCE_TEMPLATE.format(
        counts=counts, total=len(v.vectors), t0=T0.isoformat().replace("+00:00", "Z")
    )


PROVENANCE_TEMPLATE = """\
# Conformance vectors: provenance

Made by `scripts/make_conformance_vectors.py` (issue 10), which writes every file here,
`index.json` and this file included; `tests/unit/test_conformance.py` runs every vector
through the Python verifiers and checks that the script, run again, writes the same
bytes. The index format is docs/protocol.md §13; what each hash and signature
covers, byte for byte, is §1.3.

| kind | accept | reject |
|---|---|---|
{counts}

{total} vectors in all.

## Where each file comes from

* `roots/aws_nitro_root_g1.pem` and `attestation/aws_1.cbor` … `aws_5.cbor`,
  `attestation/aws_2_bad_sig.cbor`: copied byte for byte from `tests/vectors/real/`
  (`nitro_attestation_N.cbor`, `nitro_attestation_bad_sig.cbor`), real AWS Nitro
  documents from public repositories; their sources, commits and the independent check
  of each are in `tests/vectors/real/PROVENANCE.md`. `aws_2_tag18.cbor` is #2 with
  the byte `d2` (tag 18) in front; `aws_4_pcr0_edited.cbor` is #4 with one bit of PCR0
  flipped.
* `roots/mock_root.pem` and every other `attestation/*.cbor`, `session/**` and
  `receipt/**`: made by the script. Nothing in them is secret: every key is derived
  from a public label (`seed_prefix` in the index, then a label such as `mock leaf` or
  `receipt key`): P-384 scalars as SHA-384(prefix ‖ label) mod (n − 1) + 1, Ed25519
  seeds, X25519 IKM (RFC 9180 DeriveKeyPair), nonces, session and receipt ids as
  SHA-256(prefix ‖ label). ECDSA (certificates and documents) uses RFC 6979
  deterministic nonces, so the files are reproducible byte for byte.
* The mock chain is root (30 years, pathLen 1) → intermediate (30 days, pathLen 0) →
  leaf (3 hours from {t0}), the profile of `ephemeralml/mock/_certs.py`; documents have
  the layout `ephemeralml/mock/_nsm.py` `MockNsm` writes (AWS's payload key order, null
  for unset optional fields, 16 PCRs, PCR0/1/2/8 from `mock_measurements`). MockNsm
  itself was not used to sign: its keys and ECDSA nonces are random.
* Negative vectors are mutations of an accepted one, each aimed at one check and
  re-signed wherever that check comes after the signature (so a verifier that orders
  its checks differently still fails at that check). The script refuses to write a
  vector that fails at another check than the one it was made for, and records the
  exact message the Python verifier raises.
* Sessions: `session/fresh` and `session/cached` were run with the project's own
  `ClientSession` and `EnclaveSession` in memory, with the enclave's X25519 key and the
  client's HPKE ephemeral key fixed (neither class takes key material, so the script
  sets the enclave's key and lets the client's HPKE setup use a fixed ephemeral pair).
  The responses' plaintexts were opened again with pyhpke and ChaCha20-Poly1305 directly.
  `session/stream` (streamed answers, §2.8) was run the same way, with the enclave's
  chunks and ends interleaved with the client's requests in the order the vector lists;
  its chunks' and responses' plaintexts were opened again the same way, under the chunk
  and response keys exported from the HPKE context. `session/stream_end_hash_forged`
  is that session with the enclave's running hash of answer 0 altered before it signed
  the end (so the end verifies as a receipt, but covers other chunks).
  Other `session/*` folders hold the frames of the session vectors that deliver a
  tampered or forged frame.
"""


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help="folder to write (default: %(default)s)"
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the folder instead of writing"
    )
    args = parser.parse_args(argv)
    files = build()
    out: Path = args.out
    if args.check:
        problems = compare(out, files)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    stale = [
        p for p in out.rglob("*") if p.is_file() and p.relative_to(out).as_posix() not in files
    ]
    for p in stale:
        p.unlink()
    total = sum(len(d) for d in files.values())
    print(f"wrote {len(files)} files, {total} bytes, to {out} (removed {len(stale)} stale)")
    return 0


def compare(folder: Path, files: Mapping[str, bytes]) -> list[str]:
    """How ``folder`` differs from ``files`` (empty: identical)."""
    problems = []
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    for rel in sorted(present - set(files)):
        problems.append(f"{rel}: in the folder, not made by the script")
    for rel, data in sorted(files.items()):
        if rel not in present:
            problems.append(f"{rel}: made by the script, missing from the folder")
        elif (folder / rel).read_bytes() != data:
            problems.append(f"{rel}: differs from what the script makes")
    return problems


if __name__ == "__main__":
    raise SystemExit(main())
