"""Property tests of the signed-object and envelope parsers: COSE_Sign1, receipts,
attestation documents, manifests, bindings, session proofs, policies, CMS.

Seeds are the committed fuzz corpus (valid objects of the fixed world in
``tests/fuzz/world``) and the real vectors in tests/vectors/real.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ephemeralml.common._attestation import verify_attestation
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._bundle import Manifest, verify_manifest
from ephemeralml.common._cose import decode_sign1, sign_eddsa, verify_eddsa
from ephemeralml.common._errors import (
    AttestationError,
    Error,
    ManifestError,
    PolicyError,
    ReceiptError,
)
from ephemeralml.common._proof import SessionProof, verify_session_proof
from ephemeralml.common._receipt import RECEIPT_PCRS, Receipt, verify_receipt
from tests.fuzz import targets
from tests.fuzz import world as w
from tests.property.strategies import apply_mutations, mutation_ops

CORPUS = w.CORPUS_DIR


def _seeds(target: str) -> list[bytes]:
    files = sorted((CORPUS / target).glob("seed-*"))
    return [f.read_bytes() for f in files] + targets.shared_vector_seeds(target)


def _seed(target: str, name: str) -> bytes:
    return (CORPUS / target / f"seed-{name}").read_bytes()


def _unchanged(data: bytes, seed: bytes) -> bool:
    """The same bytes, up to the one wrapper D3 allows: tag 18 present or absent.
    (Other spellings of one object are the subject of test_regressions.py.)"""
    return data.removeprefix(b"\xd2") == seed.removeprefix(b"\xd2")


@pytest.mark.parametrize("target", ["cose", "receipt", "attestation", "bundle", "cms"])
@given(data=st.data(), ops=mutation_ops)
def test_mutated_vectors_raise_only_our_errors(target: str, data: st.DataObject, ops) -> None:  # type: ignore[no-untyped-def]
    """Every parser and verifier of the target, on a mutated valid input (see
    tests/fuzz/targets.py for what each target runs)."""
    seed = data.draw(st.sampled_from(_seeds(target)))
    targets.TARGETS[target](apply_mutations(seed, ops))


@pytest.mark.parametrize("target", ["cose", "receipt", "attestation", "bundle", "cms"])
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_our_errors(target: str, data: bytes) -> None:
    targets.TARGETS[target](data)


def test_the_seeds_are_valid() -> None:
    """The mutation tests start from inputs that pass every check (else they test less)."""
    world = w.load()
    assert verify_receipt(_seed("receipt", "fresh"), world.fresh).receipt.seq == 3
    assert verify_manifest(_seed("bundle", "manifest"), w.OWNER_KEYS).manifest.model_id == w.MODEL
    proof = verify_session_proof(
        _seed("cose", "proof"),
        world.cached_binding,
        nonce=w.NONCE,
        attestation_sha256=world.cached.document.sha256,
    )
    assert proof.session_id == w.SESSION_ID
    assert world.fresh_binding.session_id == w.SESSION_ID


@given(ops=mutation_ops)
def test_a_changed_receipt_never_verifies(ops) -> None:  # type: ignore[no-untyped-def]
    seed = _seed("receipt", "fresh")
    data = apply_mutations(seed, ops)
    if _unchanged(data, seed):
        return
    with pytest.raises(ReceiptError):
        verify_receipt(data, w.load().fresh)


@given(ops=mutation_ops)
def test_a_changed_manifest_never_verifies(ops) -> None:  # type: ignore[no-untyped-def]
    seed = _seed("bundle", "manifest")
    data = apply_mutations(seed, ops)
    if _unchanged(data, seed):
        return
    with pytest.raises(ManifestError):
        verify_manifest(data, w.OWNER_KEYS)


@given(ops=mutation_ops)
def test_a_changed_session_proof_never_verifies(ops) -> None:  # type: ignore[no-untyped-def]
    seed, world = _seed("cose", "proof"), w.load()
    data = apply_mutations(seed, ops)
    if _unchanged(data, seed):
        return
    with pytest.raises(AttestationError):
        verify_session_proof(
            data,
            world.cached_binding,
            nonce=w.NONCE,
            attestation_sha256=world.cached.document.sha256,
        )


@given(ops=mutation_ops)
def test_a_changed_attestation_document_never_verifies(ops) -> None:  # type: ignore[no-untyped-def]
    world = w.load()
    seed = world.fresh_doc
    data = apply_mutations(seed, ops)
    if _unchanged(data, seed):
        return
    with pytest.raises(AttestationError):
        verify_attestation(data, world.policy, now=world.fresh.document.timestamp)


@given(ops=mutation_ops)
def test_a_changed_signed_policy_never_opens(ops) -> None:  # type: ignore[no-untyped-def]
    from ephemeralml.client._policy import open_policy

    seed = _seed("cose", "policy")
    data = apply_mutations(seed, ops)
    if _unchanged(data, seed) or data[:1] not in (b"\xd2", b"\x84"):
        return  # not signed-looking: an unsigned policy, refused elsewhere (P3)
    with pytest.raises(PolicyError):
        open_policy(data, where="t", trusted_signers=targets._policy_signers())


# ------------------------------------------------------------------- round trips

_h32 = st.binary(min_size=32, max_size=32)
_uint = st.integers(0, 2**64 - 1)


@given(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    _uint,
    st.text(min_size=1, max_size=20),
    st.lists(_h32, min_size=6, max_size=6),
    st.lists(st.binary(min_size=48, max_size=48), min_size=4, max_size=4),
    st.sampled_from(["nitro", "mock"]),
    _uint,
    _uint,
    _uint,
    st.binary(min_size=32, max_size=32),
)
def test_receipt_payload_round_trip(  # type: ignore[no-untyped-def]
    rid, sid, seq, model, hashes, pcrs, mode, pv, t, d, nonce
) -> None:
    r = Receipt(
        receipt_id=rid, session_id=sid, seq=seq, model_id=model, model_digest=hashes[0],
        key_release=hashes[1], request_hash=hashes[2], response_hash=hashes[3],
        attestation_hash=hashes[4], pcrs=dict(zip(RECEIPT_PCRS, pcrs, strict=True)),
        policy_version=pv, mode=mode, time_ms=t, duration_us=d, client_nonce=nonce,
        transcript_hash=hashes[5],
    )  # fmt: skip
    data = r.to_cbor()
    back = Receipt.from_cbor(data)
    assert back == r
    assert back.to_cbor() == data


@given(
    st.binary(min_size=16, max_size=16),
    st.dictionaries(st.text(max_size=8), _h32, max_size=3),
    st.integers(0, 2**32),
    st.sampled_from(["nitro", "mock"]),
)
def test_binding_round_trip(sid: bytes, models: dict[str, bytes], pv: int, mode: str) -> None:
    b = EnclaveBinding(1, sid, w.raw_public(w.RECEIPT_KEY), models, pv, mode, dict(models))
    data = b.to_cbor()
    back = EnclaveBinding.from_user_data(data)
    assert back == b
    assert back.to_cbor() == data


@given(st.binary(min_size=32, max_size=32), _h32, st.binary(min_size=16, max_size=16), _h32)
def test_session_proof_round_trip(nonce: bytes, pk: bytes, sid: bytes, att: bytes) -> None:
    if sid == bytes(16):
        return  # the cached id names no session; refused by construction
    p = SessionProof(nonce, pk, sid, att)
    binding = EnclaveBinding(1, bytes(16), w.raw_public(w.RECEIPT_KEY), {}, 0, "mock")
    got = verify_session_proof(p.sign(w.RECEIPT_KEY), binding, nonce=nonce, attestation_sha256=att)
    assert got == p


@given(st.binary(max_size=200), _h32)
def test_sign1_round_trip(payload: bytes, kid: bytes) -> None:
    data = sign_eddsa(payload, w.RECEIPT_KEY, kid=kid)
    env = decode_sign1(data, what="x", max_bytes=1024)
    assert (env.payload, env.protected_map, env.unprotected) == (payload, {1: -8, 4: kid}, {})
    assert verify_eddsa(env, w.raw_public(w.RECEIPT_KEY)) is True
    assert verify_eddsa(env, w.raw_public(w.OWNER_KEY)) is False


def test_manifest_round_trip() -> None:
    from ephemeralml.common._cose import decode_sign1 as d

    payload = d(_seed("bundle", "manifest"), what="m", max_bytes=65536).payload
    m = Manifest.from_cbor(payload)
    assert m.to_cbor() == payload
    assert m.digest == hashlib.sha256(payload).digest()


def test_the_world_is_committed() -> None:
    assert sorted(p.name for p in Path(w.WORLD_DIR).iterdir()) == [
        "attestation_cached.cbor",
        "attestation_fresh.cbor",
        "mock_root.der",
    ]


def test_errors_only_lets_foreign_exceptions_out() -> None:
    """The harness itself: our errors are swallowed, anything else escapes."""
    assert targets.errors_only(lambda: (_ for _ in ()).throw(ReceiptError("x"))) is None
    empty: dict[str, object] = {}
    with pytest.raises(KeyError):
        targets.errors_only(lambda: empty["k"])
    assert isinstance(ReceiptError("x"), Error)
