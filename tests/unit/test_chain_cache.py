"""A verified chain is not verified again, but only for the same bytes and times."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ephemeralml.common._attestation import (
    AttestationPolicy,
    ChainCache,
    PcrAllowlist,
    TrustedRoot,
    parse_unverified,
    verify_attestation,
)
from ephemeralml.common._errors import AttestationError
from tests.vectors_path import REAL_VECTORS

DOC = (REAL_VECTORS / "nitro_attestation_4.cbor").read_bytes()
ROOT = TrustedRoot.aws_nitro((REAL_VECTORS / "aws_nitro_root_g1.pem").read_bytes())


def _policy() -> AttestationPolicy:
    return AttestationPolicy(ROOT, PcrAllowlist.from_document(parse_unverified(DOC)), max_age_s=24 * 3600)


def test_second_verify_is_a_hit_and_gives_the_same_result() -> None:
    cache = ChainCache()
    t = parse_unverified(DOC).timestamp
    a = verify_attestation(DOC, _policy(), now=t, chain_cache=cache)
    b = verify_attestation(DOC, _policy(), now=t, chain_cache=cache)
    assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1)
    assert a.document == b.document


def test_a_hit_still_checks_the_cose_signature() -> None:
    cache = ChainCache()
    t = parse_unverified(DOC).timestamp
    verify_attestation(DOC, _policy(), now=t, chain_cache=cache)
    bad = bytearray(DOC)
    bad[-1] ^= 1
    with pytest.raises(AttestationError, match=r"^A3 signature: COSE ES384 signature does not verify$"):
        verify_attestation(bytes(bad), _policy(), now=t, chain_cache=cache)
    assert cache.hits == 1


def test_outside_the_chain_window_takes_the_full_path() -> None:
    cache = ChainCache()
    t = parse_unverified(DOC).timestamp
    verify_attestation(DOC, _policy(), now=t, chain_cache=cache)
    with pytest.raises(AttestationError, match=r"^A5 validity: "):
        verify_attestation(DOC, _policy(), now=t + timedelta(days=365), chain_cache=cache)
    assert cache.hits == 0 and len(cache) == 0  # the expired entry is dropped


def test_another_root_is_another_key(tmp_path: Path) -> None:
    from tests.unit.test_attestation_helpers import self_signed_p384_root_pem

    cache = ChainCache()
    t = parse_unverified(DOC).timestamp
    verify_attestation(DOC, _policy(), now=t, chain_cache=cache)
    other = AttestationPolicy(
        TrustedRoot.from_pem_or_der(self_signed_p384_root_pem()), PcrAllowlist.from_document(parse_unverified(DOC))
    )
    with pytest.raises(AttestationError, match=r"^A4 chain: cabundle\[0\] is not the pinned root"):
        verify_attestation(DOC, other, now=t, chain_cache=cache)


def test_bounded() -> None:
    cache = ChainCache(max_entries=1)
    t = parse_unverified(DOC).timestamp
    verify_attestation(DOC, _policy(), now=t, chain_cache=cache)
    doc5 = (REAL_VECTORS / "nitro_attestation_5.cbor").read_bytes()
    p5 = AttestationPolicy(ROOT, PcrAllowlist.from_document(parse_unverified(doc5)))
    verify_attestation(doc5, p5, now=parse_unverified(doc5).timestamp, chain_cache=cache)
    assert len(cache) == 1
