"""The conformance vectors (tests/vectors/conformance, protocol.md §13) through the Python
verifiers: every vector in index.json reaches exactly the outcome it records.

Attestation documents go through ``verify_attestation``; receipts through
``verify_attestation`` (at the document's own time), ``verify_receipt`` and the
client policy's P1/P2, as ``ephemeral verify`` runs them; sessions through
``ClientSession`` and ``EnclaveSession``, replayed frame by frame against the stored
bytes; policies through the client's policy parser. A JavaScript implementation
runs the same index and must agree on every vector.

The sessions take the vector's key material through their test-vector seams (the
enclave's ``key_ikm``, the client's ``ephemeral_ikm``), as
``scripts/make_conformance_vectors.py`` did.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ephemeralml.client._policy import ClientPolicy, PemRoot, PolicyDocument
from ephemeralml.common._attestation import (
    AttestationPolicy,
    TrustedRoot,
    parse_unverified,
    verify_attestation,
)
from ephemeralml.common._cbor import encode
from ephemeralml.common._errors import Error, error_from_code
from ephemeralml.common._hpke import HPKE_SUITE, session_info
from ephemeralml.common._messages import (
    CancelRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    decode_request,
)
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
from tests.vectors_path import REPO_ROOT

FOLDER = REPO_ROOT / "tests" / "vectors" / "conformance"
INDEX: dict[str, Any] = json.loads((FOLDER / "index.json").read_text())
KINDS = ("attestation", "receipt", "session", "policy")

# protocol.md §4, written out here rather than imported: the vectors check the labels too.
INFO_LABEL = b"ephemeralml/1 session\x00"
RESPONSE_KEY_LABEL = b"ephemeralml/1 response key"
RESPONSE_NONCE_LABEL = b"ephemeralml/1 response nonce"
CHUNK_KEY_LABEL = b"ephemeralml/1 chunk key"
CHUNK_NONCE_LABEL = b"ephemeralml/1 chunk nonce"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _of_kind(kind: str) -> list[Any]:
    return [pytest.param(v, id=v["id"]) for v in INDEX["vectors"] if v["kind"] == kind]


def _read(path: str) -> bytes:
    return (FOLDER / path).read_bytes()


def _at(t_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=t_ms)


def _h(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _policy(name: str) -> ClientPolicy:
    """The index's policy ``name``, read by the client's policy parser (protocol.md §8)."""
    raw = json.dumps(INDEX["policies"][name]).encode()
    doc = PolicyDocument.from_json(raw, where=name)
    roots = INDEX["roots"]
    if isinstance(doc.root, PemRoot):
        # A root given as a file: trusted as an ordinary (non-mock) root.
        pem = _read(doc.root.path)
        root = TrustedRoot.from_pem_or_der(pem, name=doc.root.path)
        assert doc.root.sha256 is None or root.fingerprint == doc.root.sha256.hex()
    elif doc.root == "mock":
        root = TrustedRoot.unsafe_mock(_read(roots["mock"]["file"]))
    else:
        root = TrustedRoot.aws_nitro(_read(roots["aws-nitro"]["file"]))
    return ClientPolicy(
        AttestationPolicy(root, doc.measurements, doc.max_age_s),
        doc.models,
        name,
        doc.version,
        min_enclave_policy_version=doc.min_enclave_policy_version,
        offline_only=True,
    )


def _assert_rejected(e: Error, expect: dict[str, Any]) -> None:
    assert expect["outcome"] == "reject", f"expected accept, got {type(e).__name__}: {e}"
    assert (type(e).__name__, e.code, str(e)) == (
        expect["error"],
        expect["code"],
        expect["message"],
    )
    if re.fullmatch(r"[APRS]\d+", expect["check"]):
        # Checks of §3, §5, §8 and §2.8 lead their message with their id (H2/H3 do not).
        assert str(e).startswith(expect["check"] + " ")


def _cose_payload(raw: bytes) -> tuple[bytes, bytes]:
    obj = cbor2.loads(raw)
    if isinstance(obj, cbor2.CBORTag):
        obj = obj.value
    return obj[0], obj[2]


# ---------------------------------------------------------------------------
# Attestation documents (protocol.md §3)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _of_kind("attestation"))
def test_attestation_vector(vector: dict[str, Any]) -> None:
    raw = _read(vector["files"]["document"])
    inputs, expect = vector["inputs"], vector["expect"]
    policy = _policy(inputs["policy"])
    assert inputs["root"]["mock"] == policy.attestation.root.is_mock
    assert _read(inputs["root"]["file"]) and policy.attestation.root.certificate_der
    try:
        verified = verify_attestation(
            raw, policy.attestation, now=_at(inputs["now_ms"]), nonce=_h(inputs["nonce"])
        )
    except Error as e:
        _assert_rejected(e, expect)
        return
    assert expect["outcome"] == "accept", "it verified"
    d = verified.document
    protected, payload = _cose_payload(raw)
    assert expect["values"] == {
        "document_sha256": _sha256(raw).hex(),
        "module_id": d.module_id,
        "digest": d.digest,
        "timestamp_ms": d.timestamp_ms,
        "pcrs": {str(i): v.hex() for i, v in sorted(d.pcrs.items())},
        "public_key": None if d.public_key is None else d.public_key.hex(),
        "user_data": None if d.user_data is None else d.user_data.hex(),
        "nonce": None if d.nonce is None else d.nonce.hex(),
        "leaf_sha256": _sha256(d.certificate).hex(),
        "cabundle_sha256": [_sha256(c).hex() for c in d.cabundle],
        # RFC 9052 §4.4: what ES384 signs, rebuilt independently of the verifier.
        "sig_structure_sha384": hashlib.sha384(
            cbor2.dumps(["Signature1", protected, b"", payload])
        ).hexdigest(),
    }


# ---------------------------------------------------------------------------
# Receipts (protocol.md §5)
# ---------------------------------------------------------------------------


def _expectations(e: dict[str, Any]) -> dict[str, Any]:
    out = dict(e)
    for k in ("session_id", "client_nonce", "transcript_hash"):
        if k in out:
            out[k] = bytes.fromhex(out[k])
    return out


@pytest.mark.parametrize("vector", _of_kind("receipt"))
def test_receipt_vector(vector: dict[str, Any]) -> None:
    files, inputs, expect = vector["files"], vector["inputs"], vector["expect"]
    raw, doc = _read(files["receipt"]), _read(files["document"])
    request = _read(files["request"]) if "request" in files else None
    response = _read(files["response"]) if "response" in files else None
    policy = _policy(inputs["policy"])
    assert inputs["now_ms"] == parse_unverified(doc).timestamp_ms  # offline: its own time
    try:
        verified = verify_attestation(doc, policy.attestation, now=_at(inputs["now_ms"]))
        vr = verify_receipt(
            raw,
            verified,
            expect=ReceiptExpectations(
                request_hash=None if request is None else _sha256(request),
                response_hash=None if response is None else _sha256(response),
                **_expectations(inputs["expectations"]),
            ),
        )
        policy.check_binding(vr.binding)
        policy.check_model(vr.binding, vr.receipt.model_id)
    except Error as e:
        _assert_rejected(e, expect)
        return
    assert expect["outcome"] == "accept", "it verified"
    protected, payload = _cose_payload(raw)
    values = expect["values"]
    assert values["receipt"] == vr.receipt.to_json()
    assert values["receipt"] == Receipt.from_cbor(payload).to_json()
    assert values["protected"] == protected.hex() == encode({1: -8, 4: _sha256(doc)}).hex()
    assert values["kid"] == values["attestation_sha256"] == _sha256(doc).hex()
    assert values["sig_structure"] == encode(["Signature1", protected, b"", payload]).hex()
    assert values["receipt_public_key"] == vr.binding.receipt_key.hex()
    # The hash preimages (protocol.md §1.3): the request body as sealed, the result map.
    if request is not None:
        assert values["request_sha256"] == vr.receipt.request_hash.hex() == _sha256(request).hex()
        assert encode(cbor2.loads(request)) == request
    if response is not None:
        assert values["response_sha256"] == vr.receipt.response_hash.hex()
        assert EmbedResult.from_cbor(response).to_cbor() == response


# ---------------------------------------------------------------------------
# Sessions (protocol.md §2, §4)
# ---------------------------------------------------------------------------


def _frames(vector: dict[str, Any]) -> list[tuple[dict[str, Any], bytes]]:
    return [(f, _read(f["frame"])) for f in vector["files"]["frames"]]


def _replay_client(vector: dict[str, Any]) -> tuple[ClientSession, list[Any]] | tuple[int, Error]:
    """The client's view: it must produce every c2e frame and accept every e2c frame."""
    inputs = vector["inputs"]
    client_in = inputs["client"]
    policy = _policy(inputs["policy"])
    requests = iter(decode_request(_read(p)) for p in client_in["requests"])
    client = ClientSession(
        policy.attestation,
        nonce=bytes.fromhex(client_in["nonce"]),
        mode=inputs["mode"],
        ephemeral_ikm=bytes.fromhex(client_in["ikmE"]),
    )
    events: list[Any] = []
    for i, (f, data) in enumerate(_frames(vector)):
        try:
            if f["dir"] == "c2e":
                if f["type"] == "hello":
                    produced = client.hello()
                elif f["type"] == "open":
                    produced = client.data_to_send()
                else:
                    request = next(requests)
                    if isinstance(request, CancelRequest):
                        produced = client.cancel(request.seq)  # §2.8: sealed like a request
                    else:
                        produced = client.send_request(request)[1]
                assert produced == data, f"the client's frame {i} ({f['type']}) differs"
                continue
            client.receive_data(data)
            ev = client.next_event(now=_at(inputs["now_ms"]))
            if isinstance(ev, Attested):
                policy.check_binding(ev.binding)  # P1, P2: as connect() does before open
            events.append(ev)
        except Error as e:
            return i, e
    return client, events


def _replay_enclave(vector: dict[str, Any]) -> tuple[EnclaveSession, list[Any]] | tuple[int, Error]:
    """The enclave's view: it must produce every e2c frame and accept every c2e frame."""
    inputs = vector["inputs"]
    enc_in = inputs["enclave"]
    doc = _read(vector["files"]["document"])
    assert enc_in["document_timestamp_ms"] == parse_unverified(doc).timestamp_ms
    identity = EnclaveIdentity(
        receipt_key=Ed25519PrivateKey.from_private_bytes(bytes.fromhex(enc_in["receipt_key_seed"])),
        models={k: bytes.fromhex(v) for k, v in enc_in["models"].items()},
        key_releases={k: bytes.fromhex(v) for k, v in enc_in["key_releases"].items()},
        policy_version=enc_in["policy_version"],
        mode=enc_in["mode"],
        pcrs=parse_unverified(doc).pcrs,
    )
    enclave = EnclaveSession(
        identity,
        session_id=bytes.fromhex(enc_in["session_id"]),
        key_ikm=bytes.fromhex(enc_in["ikmR"]),
    )
    assert enclave.public_key == (parse_unverified(doc).public_key or enclave.public_key)
    out: list[bytes] = []
    events: list[Any] = []
    # Streams in progress (§2.8): the enclave's chunks and end are made when the
    # vector's next frame is one of them, in the order the session ran.
    streams: dict[int, tuple[RequestReceived, dict[str, Any]]] = {}
    for i, (f, data) in enumerate(_frames(vector)):
        if f["dir"] == "e2c":
            seq = cbor2.loads(data[4:]).get("seq")
            if not out and seq in streams:
                started, answer = streams[seq]
                out.append(_stream_step(enclave, f["type"], started, answer))
                if f["type"] == "resp":
                    del streams[seq]
            assert out and out.pop(0) == data, f"the enclave's frame {i} ({f['type']}) differs"
            continue
        try:
            enclave.receive_data(data)
            ev = enclave.next_event()
        except Error as e:
            return i, e
        events.append(ev)
        if isinstance(ev, HelloReceived):
            assert ev.mode == inputs["mode"]
            ts = enc_in["document_timestamp_ms"]
            attest = enclave.attest_cached if ev.mode == "cached" else enclave.attest
            out.append(attest(doc, timestamp_ms=ts))
        elif isinstance(ev, CancelReceived):
            assert CancelRequest(ev.target).to_cbor() == _read(f["body"])
            assert enc_in["answers"][ev.seq] is None  # a cancel has no answer of its own
        elif isinstance(ev, RequestReceived):
            assert ev.request is not None
            assert ev.request.to_cbor() == _read(f["body"])
            assert ev.request_hash == _sha256(_read(f["body"]))  # the request_hash preimage
            answer = enc_in["answers"][ev.seq]
            if "stream" in answer:
                assert isinstance(ev.request, GenerateRequest)
                streams[ev.seq] = (ev, answer)
            elif "error" in answer:
                err = error_from_code(answer["error"]["code"])(answer["error"]["message"])
                out.append(enclave.respond_error(ev, err))
            else:
                out.append(
                    enclave.respond(
                        ev,
                        EmbedResult.from_cbor(_read(answer["result"])),
                        model_digest=bytes.fromhex(answer["model_digest"]),
                        time_ms=answer["time_ms"],
                        duration_us=answer["duration_us"],
                        receipt_id=bytes.fromhex(answer["receipt_id"]),
                        truncated=tuple(answer["truncated"]),
                    )
                )
        else:
            assert ev is None and f["type"] == "open"
    assert not out, "the enclave produced frames the vector does not hold"
    return enclave, events


def _stream_step(
    enclave: EnclaveSession, kind: str, ev: RequestReceived, answer: dict[str, Any]
) -> bytes:
    """The enclave's next chunk of ``ev``'s stream, or its end (§2.8)."""
    st = answer["stream"]
    if kind == "chunk":
        return enclave.chunk(ev, st["chunks"][enclave._streams[ev.seq].next_k])
    assert kind == "resp" and enclave._streams[ev.seq].next_k == len(st["chunks"])
    return enclave.end_stream(
        ev,
        model_digest=bytes.fromhex(answer["model_digest"]),
        finish=st["finish"],
        prompt_tokens=st["prompt_tokens"],
        completion_tokens=st["completion_tokens"],
        device=st["device"],
        time_ms=answer["time_ms"],
        duration_us=answer["duration_us"],
        receipt_id=bytes.fromhex(answer["receipt_id"]),
    )


def _check_transcript_values(vector: dict[str, Any]) -> None:
    """The derived values of protocol.md §2.6 and §4, recomputed with pyhpke and
    ChaCha20-Poly1305 directly (not the project's channel classes): the frames open."""
    values = vector["expect"]["values"]
    hpke = values["hpke"]
    doc = _read(vector["files"]["document"])
    sid = bytes.fromhex(values["session_id"])
    frames = _frames(vector)
    assert values["attestation_sha256"] == _sha256(doc).hex()
    info = INFO_LABEL + _sha256(doc)
    assert hpke["info"] == info.hex() == session_info(_sha256(doc)).hex()
    recipient = HPKE_SUITE.kem.derive_key_pair(bytes.fromhex(vector["inputs"]["enclave"]["ikmR"]))
    ephemeral = HPKE_SUITE.kem.derive_key_pair(bytes.fromhex(vector["inputs"]["client"]["ikmE"]))
    assert hpke["pkR"] == recipient.public_key.to_public_bytes().hex()
    assert hpke["skR"] == recipient.private_key.to_private_bytes().hex()
    assert hpke["pkE"] == ephemeral.public_key.to_public_bytes().hex()
    assert hpke["skE"] == ephemeral.private_key.to_private_bytes().hex()
    open_body = cbor2.loads(frames[2][1][4:])
    assert open_body == {"t": "open", "enc": bytes.fromhex(hpke["enc"])}
    assert hpke["enc"] == hpke["pkE"]  # DHKEM(X25519): enc is the ephemeral public key
    sender_enc, sender = HPKE_SUITE.create_sender_context(
        recipient.public_key, info=info, eks=ephemeral
    )
    assert sender_enc.hex() == hpke["enc"]
    receiver = HPKE_SUITE.create_recipient_context(sender_enc, recipient.private_key, info=info)
    key = receiver.export(RESPONSE_KEY_LABEL, 32)
    base = receiver.export(RESPONSE_NONCE_LABEL, 12)
    assert (hpke["response_key"], hpke["response_base_nonce"]) == (key.hex(), base.hex())
    chunk_key = receiver.export(CHUNK_KEY_LABEL, 32)
    chunk_base = receiver.export(CHUNK_NONCE_LABEL, 12)
    assert (hpke["chunk_key"], hpke["chunk_base_nonce"]) == (chunk_key.hex(), chunk_base.hex())
    # §2.6: SHA-256 over the first three frames, length prefixes included.
    assert values["transcript_hash"] == _sha256(b"".join(d for _, d in frames[:3])).hex()
    messages = iter(values["messages"])
    for f, data in frames[3:]:
        body = cbor2.loads(data[4:])
        assert int.from_bytes(data[:4], "big") == len(data) - 4
        m = next(messages)
        seq = body["seq"]
        if f["type"] == "chunk":
            # §2.8: the chunk's number is in its aad and its nonce.
            k = body["k"]
            aad = encode({"k": k, "t": "chunk", "sid": sid, "seq": seq})
            assert (m["type"], m["seq"], m["k"], m["aad"]) == ("chunk", seq, k, aad.hex())
            where = seq.to_bytes(8, "big") + k.to_bytes(4, "big")
            nonce = bytes(a ^ b for a, b in zip(chunk_base, where, strict=True))
            assert m["nonce"] == nonce.hex()
            plain = ChaCha20Poly1305(chunk_key).decrypt(nonce, body["ct"], aad)
            assert plain == _read(f["body"]) == encode(cbor2.loads(plain))
            continue
        aad = encode({"t": f["type"], "sid": sid, "seq": seq})
        assert (m["type"], m["seq"], m["aad"]) == (f["type"], seq, aad.hex())
        if f["type"] == "req":
            # HPKE's own sequence: the context's seq-th Seal is request seq (H2).
            assert sender.seal(_read(f["body"]), aad=aad) == body["ct"]
            assert receiver.open(body["ct"], aad=aad) == _read(f["body"])
            continue
        nonce = bytes(a ^ b for a, b in zip(base, seq.to_bytes(12, "big"), strict=True))
        assert m["nonce"] == nonce.hex()
        plain = ChaCha20Poly1305(key).decrypt(nonce, body["ct"], aad)
        assert plain == _read(f["body"])
        opened = cbor2.loads(plain)
        if "result" in f:
            # §5: response_hash covers the deterministic CBOR of the result map.
            assert encode(opened["result"]) == _read(f["result"])
            assert opened["receipt"] == _read(f["receipt"])
            assert plain == encode({"result": opened["result"], "receipt": opened["receipt"]})


@pytest.mark.parametrize("vector", _of_kind("session"))
def test_session_vector(vector: dict[str, Any]) -> None:
    expect = vector["expect"]
    if expect["outcome"] == "reject":
        run = (
            _replay_client(vector)
            if expect["side"] == "client"
            else _replay_enclave(vector)
        )
        assert isinstance(run[1], Error), f"the {expect['side']} accepted every frame"
        at, error = run
        assert at == expect["at_frame"], f"failed at frame {at}: {error}"
        _assert_rejected(error, expect)
        if expect["side"] == "client":
            # The document the vector names is the one the client was handed.
            attest = next(d for f, d in _frames(vector) if f["type"] == "attest")
            assert cbor2.loads(attest[4:])["doc"] == _read(vector["files"]["document"])
        return

    values = expect["values"]
    client_run = _replay_client(vector)
    assert isinstance(client_run[0], ClientSession), f"client: {client_run[1]}"
    client, client_events = client_run
    enclave_run = _replay_enclave(vector)
    assert isinstance(enclave_run[0], EnclaveSession), f"enclave: {enclave_run[1]}"
    enclave, _ = enclave_run
    assert client.transcript_hash is not None
    assert client.transcript_hash.hex() == values["transcript_hash"]
    assert enclave.transcript_hash == client.transcript_hash
    assert client.session_id is not None and client.session_id.hex() == values["session_id"]
    assert isinstance(client_events[0], Attested)
    # One client event per e2c frame after the attest: a chunk, a response, an end.
    e2c = [f for f, _ in _frames(vector) if f["dir"] == "e2c" and f["type"] != "attest"]
    seen: list[dict[str, Any]] = []
    bodies: dict[int, list[bytes]] = {}  # the chunks' plaintexts, per stream
    for ev, f in zip(client_events[1:], e2c, strict=True):
        if isinstance(ev, ResponseReceived):
            assert ev.result.to_cbor() == _read(f["result"])
            assert ev.receipt.raw == _read(f["receipt"])
            seen.append(
                {
                    "seq": ev.seq,
                    "event": "result",
                    "receipt_id": ev.receipt.receipt.receipt_id.hex(),
                }
            )
        elif isinstance(ev, ChunkReceived):
            assert f["type"] == "chunk"
            bodies.setdefault(ev.seq, []).append(_read(f["body"]))
            seen.append({"seq": ev.seq, "event": "chunk", "k": ev.k, "text": ev.text})
        elif isinstance(ev, StreamEnded):
            # §2.8: the end is a GenerateResult, whose CBOR the receipt's response_hash
            # covers; the stream hash covers every chunk's plaintext, in order.
            assert ev.result.to_cbor() == _read(f["result"])
            assert GenerateResult.from_map(cbor2.loads(_read(f["result"]))) == ev.result
            links = [len(b).to_bytes(4, "big") + b for b in bodies.pop(ev.seq)]
            assert ev.result.stream == _sha256(b"".join(links))
            assert ev.receipt.raw == _read(f["receipt"])
            r = ev.receipt.receipt
            assert r.response_hash == _sha256(ev.result.to_cbor())
            assert (r.truncate, r.truncated) == (False, ())
            seen.append(
                {
                    "seq": ev.seq,
                    "event": "end",
                    "result": {**ev.result.to_map(), "stream": ev.result.stream.hex()},
                    "receipt": r.to_json(),
                }
            )
        else:
            assert isinstance(ev, RequestFailed)
            seen.append({"seq": ev.seq, "event": "error", "code": ev.code, "message": ev.message})
    assert seen == values["events"]
    _check_transcript_values(vector)


# ---------------------------------------------------------------------------
# Policies that do not parse (protocol.md §8.1)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _of_kind("policy"))
def test_policy_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(Error) as caught:
        _policy(vector["inputs"]["policy"])
    _assert_rejected(caught.value, vector["expect"])


# ---------------------------------------------------------------------------
# The index itself
# ---------------------------------------------------------------------------


def _named_paths(value: Any) -> set[str]:
    """Every string in ``value`` that names a file of the folder."""
    if isinstance(value, dict):
        return set().union(*(_named_paths(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_named_paths(v) for v in value)) if value else set()
    if isinstance(value, str) and "/" in value and (FOLDER / value).suffix:
        return {value}
    return set()


def test_index_lists_every_file_of_the_folder_and_names_only_files_that_exist() -> None:
    assert INDEX["format"] == "ephemeralml-conformance/1"
    present = {p.relative_to(FOLDER).as_posix() for p in FOLDER.rglob("*") if p.is_file()} - {
        "index.json"
    }
    listed: dict[str, str] = INDEX["files"]
    assert set(listed) == present
    for path, digest in listed.items():
        assert _sha256(_read(path)).hex() == digest, path
    named = _named_paths({k: INDEX[k] for k in ("roots", "policies", "vectors")})
    assert named <= present, f"named but missing: {sorted(named - present)}"
    # Every file serves a vector or a root (PROVENANCE.md describes them).
    assert present - named == {"PROVENANCE.md"}


def test_every_vector_has_a_known_kind_a_unique_id_and_an_outcome() -> None:
    ids = [v["id"] for v in INDEX["vectors"]]
    assert len(ids) == len(set(ids))
    for v in INDEX["vectors"]:
        assert v["kind"] in KINDS, v["id"]
        assert v["expect"]["outcome"] in ("accept", "reject"), v["id"]
        if v["expect"]["outcome"] == "reject":
            assert {"check", "error", "code", "message"} <= set(v["expect"]), v["id"]
        assert v["inputs"].get("policy") in INDEX["policies"], v["id"]
    total = sum(len(_of_kind(k)) for k in KINDS)
    assert total == len(INDEX["vectors"])


def test_the_script_makes_exactly_these_files() -> None:
    """The vectors are the files; the script, run again, reproduces them byte for byte."""
    path = REPO_ROOT / "scripts" / "make_conformance_vectors.py"
    spec = importlib.util.spec_from_file_location("make_conformance_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        problems = module.compare(FOLDER, module.build())
    finally:
        del sys.modules[spec.name]
    assert problems == []


def test_the_vector_folder_stays_small() -> None:
    total = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    assert total < 1024 * 1024
