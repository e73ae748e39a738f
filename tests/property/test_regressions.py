"""Failing-first regressions for what the fuzzing and property runs found in code this
folder does not own (issue 7). Each test names its finding; see docs/security.md.

Finding F-ENC (protocol.md §1.2 D3, "one signed object, one encoding"): the COSE_Sign1
envelope is decoded with decode_strict, which accepts non-preferred heads (an argument
longer than needed, RFC 8949 §4.2.1). The signature covers the protected header and
payload *values*, not the envelope's spelling, so every signed object has many valid
encodings with different SHA-256s. Minimal reproducer (decode_sign1 accepts it):
``d2 98 04 40 a0 40 40`` = 18([h'', {}, h'', h'']) with the array count in a 1-byte
argument. Fixed: each verifier refuses every respelling with its envelope check.
"""

from __future__ import annotations

import cbor2
import pytest

from ephemeralml.common._attestation import verify_attestation
from ephemeralml.common._bundle import verify_manifest
from ephemeralml.common._cose import decode_sign1
from ephemeralml.common._errors import (
    AttestationError,
    DecodeError,
    Error,
    ManifestError,
    PolicyError,
    ReceiptError,
)
from ephemeralml.common._proof import verify_session_proof
from ephemeralml.common._receipt import verify_receipt
from tests.fuzz import targets
from tests.fuzz import world as w
from tests.property.strategies import head

MINIMAL = bytes.fromhex("d2980440a04040")


def respellings(data: bytes) -> dict[str, bytes]:
    """The same COSE_Sign1, each time with one head one size longer than preferred."""
    obj = cbor2.loads(data)
    tagged = isinstance(obj, cbor2.CBORTag)
    protected, _, payload, signature = obj.value if tagged else obj

    def build(widen: str) -> bytes:
        def h(name: str, major: int, arg: int) -> bytes:
            return head(major, arg, wide=1 if name == widen else 0)

        out: bytes = h("tag", 6, 18) if tagged else b""
        out += h("array", 4, 4)
        out += h("protected", 2, len(protected)) + protected
        out += h("unprotected", 5, 0)
        out += h("payload", 2, len(payload)) + payload
        out += h("signature", 2, len(signature)) + signature
        return out

    assert build("") == data  # the input is the preferred encoding
    names = ["array", "protected", "unprotected", "payload", "signature"]
    return {n: build(n) for n in ([*names, "tag"] if tagged else names)}


ONE_ENCODING = "is not in its one encoding (RFC 8949 §4.2.1 shortest heads)"


def test_minimal_reproducer_is_refused_by_decode_sign1() -> None:
    with pytest.raises(DecodeError) as e:
        decode_sign1(MINIMAL, what="x", max_bytes=100)
    assert str(e.value) == f"x {ONE_ENCODING}"


def _refused(check: object, error: type[Error], message: str) -> None:
    with pytest.raises(error) as e:
        check()  # type: ignore[operator]
    assert type(e.value) is error
    assert str(e.value) == message


@pytest.mark.parametrize(
    "where", ["array", "protected", "unprotected", "payload", "signature", "tag"]
)
def test_receipt_has_one_encoding(where: str) -> None:
    seed = (w.CORPUS_DIR / "receipt" / "seed-fresh").read_bytes()
    variant = respellings(seed)[where]
    _refused(
        lambda: verify_receipt(variant, w.load().fresh),
        ReceiptError,
        f"R1 envelope: receipt {ONE_ENCODING}",
    )


@pytest.mark.parametrize("where", ["array", "protected", "payload", "signature"])
def test_manifest_has_one_encoding(where: str) -> None:
    seed = (w.CORPUS_DIR / "bundle" / "seed-manifest").read_bytes()
    variant = respellings(seed)[where]
    _refused(
        lambda: verify_manifest(variant, w.OWNER_KEYS),
        ManifestError,
        f"M1 envelope: manifest {ONE_ENCODING}",
    )


@pytest.mark.parametrize("where", ["array", "payload", "signature"])
def test_session_proof_has_one_encoding(where: str) -> None:
    world = w.load()
    variant = respellings((w.CORPUS_DIR / "cose" / "seed-proof").read_bytes())[where]
    _refused(
        lambda: verify_session_proof(
            variant,
            world.cached_binding,
            nonce=w.NONCE,
            attestation_sha256=world.cached.document.sha256,
        ),
        AttestationError,
        f"A11 proof: session proof {ONE_ENCODING}",
    )


@pytest.mark.parametrize("where", ["array", "payload", "signature"])
def test_attestation_document_has_one_encoding(where: str) -> None:
    world = w.load()
    variant = respellings(world.fresh_doc)[where]
    _refused(
        lambda: verify_attestation(variant, world.policy, now=world.fresh.document.timestamp),
        AttestationError,
        f"A1 envelope: attestation document {ONE_ENCODING}",
    )


@pytest.mark.parametrize("where", ["array", "payload", "signature"])
def test_signed_policy_has_one_encoding(where: str) -> None:
    from ephemeralml.client._policy import open_policy

    variant = respellings((w.CORPUS_DIR / "cose" / "seed-policy").read_bytes())[where]
    _refused(
        lambda: open_policy(variant, where="t", trusted_signers=targets._policy_signers()),
        PolicyError,
        f"P3 policy signature: policy t {ONE_ENCODING}",
    )
