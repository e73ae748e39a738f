"""The fixed world the fuzz targets and property tests check inputs against.

Only public material is committed (``tests/fuzz/world/``): a mock NSM root certificate
and two attestation documents it signed (one fresh-mode, one cached-mode). The keys
that sign receipts, manifests, session proofs and policies are derived from fixed
labels, so seeds can be re-made at any time (``python -m tests.fuzz.make_seeds``) and a
mutated seed still reaches the checks after its signature. Nothing here is secret.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.common._attestation import (
    AttestationPolicy,
    ChainCache,
    PcrAllowlist,
    TrustedRoot,
    VerifiedAttestation,
    parse_unverified,
    verify_attestation,
)
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._bundle import owner_key_id

WORLD_DIR = Path(__file__).resolve().parent / "world"
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"

MODEL = "fuzz-model"
MODEL_DIGEST = hashlib.sha256(b"fuzz-model manifest").digest()
KEY_RELEASE = hashlib.sha256(b"fuzz-model key release").digest()
#: The nonce of the fresh document, and the client nonce session proofs are made for.
NONCE = hashlib.sha256(b"fuzz nonce").digest()
SESSION_ID = hashlib.sha256(b"fuzz session").digest()[:16]


def derived_ed25519(label: str) -> Ed25519PrivateKey:
    """A test-only Ed25519 key from a fixed label (never use outside tests)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


RECEIPT_KEY = derived_ed25519("ephemeralml fuzz receipt key")
OWNER_KEY = derived_ed25519("ephemeralml fuzz model owner key")
POLICY_KEY = derived_ed25519("ephemeralml fuzz policy signer key")


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


OWNER_KEYS = {owner_key_id(raw_public(OWNER_KEY)): raw_public(OWNER_KEY)}


@dataclass(frozen=True)
class World:
    root: TrustedRoot
    fresh_doc: bytes
    cached_doc: bytes
    fresh: VerifiedAttestation
    cached: VerifiedAttestation
    fresh_binding: EnclaveBinding
    cached_binding: EnclaveBinding
    policy: AttestationPolicy


def verify_at_own_time(
    doc: bytes, policy: AttestationPolicy, cache_: ChainCache | None = None
) -> VerifiedAttestation:
    """Verify ``doc`` as of its own timestamp (the committed documents are old)."""
    when: datetime = parse_unverified(doc).timestamp
    return verify_attestation(doc, policy, now=when, nonce=None, chain_cache=cache_)


@cache
def load() -> World:
    root = TrustedRoot.unsafe_mock((WORLD_DIR / "mock_root.der").read_bytes())
    fresh_doc = (WORLD_DIR / "attestation_fresh.cbor").read_bytes()
    cached_doc = (WORLD_DIR / "attestation_cached.cbor").read_bytes()
    policy = AttestationPolicy(root, PcrAllowlist.from_document(parse_unverified(fresh_doc)))
    fresh = verify_at_own_time(fresh_doc, policy)
    cached = verify_at_own_time(cached_doc, policy)
    return World(
        root=root,
        fresh_doc=fresh_doc,
        cached_doc=cached_doc,
        fresh=fresh,
        cached=cached,
        fresh_binding=EnclaveBinding.from_user_data(fresh.document.user_data),
        cached_binding=EnclaveBinding.from_user_data(cached.document.user_data),
        policy=policy,
    )
