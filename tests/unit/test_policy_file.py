"""Trust policy files (protocol.md §8): the format, signed policies (P3), rollback (P4),
the enclave's policy version (P2) and ``ephemeral policy keygen|sign|show``.

Longer than 600 lines on purpose: one test per check or attack, each asserting its exact
error, reads better in one file than spread over several.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import stat
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from ephemeralml.client._cli import main
from ephemeralml.client._policy import (
    POLICY_SIGNERS_FILE,
    POLICY_VERSIONS_FILE,
    ClientPolicy,
    PolicyDocument,
    PolicyVersionStore,
    open_policy,
    parse_signer_keys,
    sign_policy,
)
from ephemeralml.common._attestation import PcrAllowlist, parse_unverified
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._cose import sign_eddsa
from ephemeralml.common._errors import ConfigError, Error, PolicyError
from tests.pair import MockWorld, SessionPair
from tests.vectors_path import REAL_VECTORS

PCR = "11" * 48
DIGEST = "ab" * 32


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own state directory; nothing touches ~/.ephemeralml."""
    h = tmp_path / "home"
    monkeypatch.setenv("EPHEMERALML_HOME", str(h))
    return h


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _kid(key: Ed25519PrivateKey) -> bytes:
    return hashlib.sha256(_pub(key)).digest()


def _signers(key: Ed25519PrivateKey) -> dict[bytes, bytes]:
    return {_kid(key): _pub(key)}


def _body(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {"version": 5, "root": "aws-nitro", "measurements": [{"PCR0": PCR}]}
    body.update(extra)
    return body


def _json(path: Path, **extra: object) -> Path:
    path.write_text(json.dumps(_body(**extra)))
    return path


def _cose(path: Path, key: Ed25519PrivateKey, **extra: object) -> Path:
    signed, _ = sign_policy(json.dumps(_body(**extra)).encode(), key, where="test")
    path.write_bytes(signed)
    return path


def _binding(pv: int, models: dict[str, bytes] | None = None) -> EnclaveBinding:
    return EnclaveBinding(
        protocol_version=1,
        session_id=bytes(16),
        receipt_key=bytes(range(32)),
        models=models if models is not None else {"m": bytes.fromhex(DIGEST)},
        policy_version=pv,
        mode="nitro",
    )


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out)
    return code, out.getvalue()


# ---------------------------------------------------------------- the format


def test_unsigned_policy_parses_as_before(tmp_path: Path, home: Path) -> None:
    p = _json(tmp_path / "policy.json", models={"m": DIGEST}, max_age_s=60, allow_debug=True)
    pol = ClientPolicy.from_file(p)
    assert pol.version == 5 and pol.source == str(p) and not pol.is_mock
    assert pol.signer is None
    assert pol.attestation.max_age_s == 60
    m = pol.attestation.measurements
    assert isinstance(m, PcrAllowlist) and m.allow_debug
    assert dict(m.allowed[0]) == {0: bytes.fromhex(PCR)}
    assert dict(pol.models or {}) == {"m": frozenset({bytes.fromhex(DIGEST)})}
    assert pol.owner_keys is None and pol.min_enclave_policy_version == 0
    # The default home is $EPHEMERALML_HOME: the version went there.
    assert PolicyVersionStore.in_home(home).accepted() == {str(p.resolve()): 5}


def test_new_fields(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    owner = _pub(key).hex()
    p = _json(tmp_path / "policy.json", owner_keys=[owner], min_enclave_policy_version=4)
    pol = ClientPolicy.from_file(p)
    assert dict(pol.owner_keys or {}) == {_kid(key): _pub(key)}  # as verify_manifest takes them
    assert pol.min_enclave_policy_version == 4
    d = pol.to_json()
    assert d["owner_keys"] == [owner] and d["min_enclave_policy_version"] == 4
    assert d["measurements"] == [{"PCR0": PCR}] and d["signer"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"owner_keys": "ab"}, "owner_keys must be a list of 64-hex keys"),
        ({"owner_keys": ["ab" * 31]}, "owner_keys[0] must be 64 hex digits"),
        ({"min_enclave_policy_version": -1}, "min_enclave_policy_version must be a non-negative integer"),
        ({"min_enclave_policy_version": "3"}, "min_enclave_policy_version must be a non-negative integer"),
        ({"version": True}, "version must be a non-negative integer"),
        ({"allow_debug": "yes"}, "allow_debug must be true or false"),
        ({"max_age_s": 0}, "max_age_s must be a positive number of seconds"),
        ({"max_age_s": "300"}, "max_age_s must be a positive number of seconds"),
        ({"root": {"pem": "r.pem", "sha256": "00"}}, "root.sha256 must be 64 hex digits"),
        ({"root": {"pem": "r.pem", "extra": 1}}, "root must be"),
        ({"measurements": [{"PCR0": PCR, "pcr0": PCR}]}, "PCR0 is named twice"),
    ],
)
def test_bad_new_fields(tmp_path: Path, extra: dict[str, object], message: str) -> None:
    p = _json(tmp_path / "p.json", **extra)
    with pytest.raises(ConfigError) as info:
        ClientPolicy.from_file(p)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f'{{"version": 1, "version": 9, "measurements": [{{"PCR0": "{PCR}"}}]}}', "duplicate key 'version'"),
        (f'{{"max_age_s": NaN, "measurements": [{{"PCR0": "{PCR}"}}]}}', "NaN is not a number"),
        ("[1, 2]", "not a JSON object"),
        ("", "is not JSON"),
    ],
)
def test_ambiguous_json_is_refused(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "p.json"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        ClientPolicy.from_file(p)
    assert message in str(info.value)


def test_oversized_policy(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_bytes(b" " * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match="is over 65536 bytes"):
        ClientPolicy.from_file(p)


# ---------------------------------------------------------------- P3: signed policies


def test_signed_policy_verifies_with_the_right_signer(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    p = _cose(tmp_path / "policy.cose", key, models={"m": DIGEST})
    assert p.read_bytes()[0] == 0xD2  # tag 18: COSE_Sign1
    pol = ClientPolicy.from_file(p, trusted_signers=_signers(key))
    assert pol.signer == _kid(key) and pol.version == 5
    assert dict(pol.models or {}) == {"m": frozenset({bytes.fromhex(DIGEST)})}
    assert pol.to_json()["signer"] == _kid(key).hex()


def test_the_payload_is_the_signed_json_bytes_unchanged(key: Ed25519PrivateKey) -> None:
    payload = json.dumps(_body(), indent=3).encode()
    signed, doc = sign_policy(payload, key, where="t")
    assert doc.version == 5
    assert open_policy(signed, where="t", trusted_signers=_signers(key)) == (payload, _kid(key))
    env = cbor2.loads(signed)
    assert cbor2.loads(env.value[0]) == {1: -8, 4: _kid(key)} and env.value[1] == {}


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize("where", ["signature", "payload_version", "payload_pcr"])
def test_one_flipped_byte_is_p3(tmp_path: Path, key: Ed25519PrivateKey, where: str) -> None:
    p = _cose(tmp_path / "policy.cose", key)
    raw = p.read_bytes()
    at = {
        "signature": len(raw) - 1,
        "payload_version": raw.index(b'"version": 5') + len(b'"version": '),  # 5 -> 4
        "payload_pcr": raw.index(PCR.encode()) + 10,
    }[where]
    p.write_bytes(_flip(raw, at))
    with pytest.raises(PolicyError) as info:
        ClientPolicy.from_file(p, trusted_signers=_signers(key))
    assert str(info.value) == (
        f"P3 policy signature: the signature on {p} does not verify with signer {_kid(key).hex()[:16]}…"
    )


def test_unknown_signer_is_p3(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    p = _cose(tmp_path / "policy.cose", key)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(PolicyError) as info:
        ClientPolicy.from_file(p, trusted_signers=_signers(other))
    assert str(info.value) == f"P3 policy signature: signed by an unknown key {_kid(key).hex()[:16]}… ({p})"
    with pytest.raises(PolicyError) as info:
        ClientPolicy.from_file(p)  # no signer configured at all
    assert str(info.value).startswith("P3 policy signature: signed by an unknown key")
    assert str(info.value).endswith("; no policy signers are configured (--policy-signer)")


def test_unsigned_policy_with_signers_configured_is_p3(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    p = _json(tmp_path / "policy.json")
    with pytest.raises(PolicyError) as info:
        ClientPolicy.from_file(p, trusted_signers=_signers(key))
    assert str(info.value) == (
        f"P3 policy signature: policy is not signed but signers are configured ({p})"
    )


def test_signer_key_swapped_under_a_known_kid_is_p3(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    """The attacker signs with their own key but names a trusted kid."""
    attacker = Ed25519PrivateKey.generate()
    p = tmp_path / "policy.cose"
    p.write_bytes(sign_eddsa(json.dumps(_body()).encode(), attacker, kid=_kid(key)))
    with pytest.raises(PolicyError, match="^P3 policy signature: the signature on .* does not verify"):
        ClientPolicy.from_file(p, trusted_signers=_signers(key))


@pytest.mark.parametrize(
    ("protected", "unprotected", "message"),
    [
        ({1: -8, 4: "kid", 3: 0}, {}, "protected header must be exactly {alg: EdDSA, kid}"),
        ({1: -7, 4: "kid"}, {}, "protected header must be exactly {alg: EdDSA, kid}"),
        ({1: -8, 4: "kid"}, {5: b"x"}, "policy x: unprotected header must be an empty map"),
        ({1: -8, 4: b"short"}, {}, "kid must be 32 bytes"),
    ],
)
def test_bad_envelopes_are_p3(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    protected: dict[int, object],
    unprotected: dict[int, object],
    message: str,
) -> None:
    phdr = {k: (_kid(key) if v == "kid" else v) for k, v in protected.items()}
    raw = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps(phdr), unprotected, b"{}", bytes(64)]))
    with pytest.raises(PolicyError) as info:
        open_policy(raw, where="x", trusted_signers=_signers(key))
    assert str(info.value).startswith("P3 policy signature:") and message in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [b"\xd2", b"\xd2\x84", b"\x84\x40\xa0\x40", b"\xd2\x84\x40\xa0\x40\x40\x00", random.Random(7).randbytes(200)],
)
def test_garbage_raises_only_our_errors(raw: bytes, key: Ed25519PrivateKey) -> None:
    with pytest.raises(Error):
        open_policy(raw, where="x", trusted_signers=_signers(key))
    if raw[0] in (0xD2, 0x84):
        with pytest.raises(PolicyError, match="^P3 policy signature"):
            open_policy(raw, where="x", trusted_signers=_signers(key))


def test_a_validly_signed_but_invalid_policy_is_config_error(tmp_path: Path, key: Ed25519PrivateKey, home: Path) -> None:
    p = tmp_path / "policy.cose"
    p.write_bytes(sign_eddsa(b'{"version": 7}', key, kid=_kid(key)))  # sign_policy would refuse
    with pytest.raises(ConfigError, match="measurements must be a non-empty list"):
        ClientPolicy.from_file(p, trusted_signers=_signers(key))
    assert not (home / POLICY_VERSIONS_FILE).exists()


def test_sign_refuses_an_invalid_policy(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ConfigError, match="unknown fields"):
        sign_policy(json.dumps(_body(extra=1)).encode(), key, where="t")
    with pytest.raises(ConfigError, match="is not JSON"):
        sign_policy(b"\xd2\x84", key, where="t")


def test_signed_policy_must_pin_its_pem_root(tmp_path: Path, key: Ed25519PrivateKey, att_other_root_pem: bytes) -> None:
    with pytest.raises(ConfigError, match=r'a signed policy must pin its root: \{"pem": PATH, "sha256": HEX\}'):
        sign_policy(json.dumps(_body(root={"pem": "root.pem"})).encode(), key, where="t")
    (tmp_path / "root.pem").write_bytes(att_other_root_pem)
    der = x509.load_pem_x509_certificate(att_other_root_pem).public_bytes(Encoding.DER)
    pin = hashlib.sha256(der).hexdigest()
    p = _cose(tmp_path / "policy.cose", key, root={"pem": "root.pem", "sha256": pin})
    pol = ClientPolicy.from_file(p, trusted_signers=_signers(key))
    assert pol.attestation.root.fingerprint == pin
    # Someone swaps the root file beside the signed policy: the pin catches it.
    p = _cose(tmp_path / "policy.cose", key, root={"pem": "root.pem", "sha256": "00" * 32})
    with pytest.raises(PolicyError, match=r"^P3 policy signature: root .*root.pem has SHA-256"):
        ClientPolicy.from_file(p, trusted_signers=_signers(key))


# ---------------------------------------------------------------- P4: rollback


def test_rollback_of_an_unsigned_policy(tmp_path: Path) -> None:
    p = tmp_path / "policy.json"
    ClientPolicy.from_file(_json(p, version=5))
    with pytest.raises(PolicyError) as info:
        ClientPolicy.from_file(_json(p, version=3))
    assert str(info.value) == (
        f"P4 policy version: version 3 is older than version 5 already accepted from {p.resolve()}"
    )
    assert ClientPolicy.from_file(_json(p, version=5)).version == 5  # the same version again
    assert ClientPolicy.from_file(_json(p, version=6)).version == 6
    with pytest.raises(PolicyError, match="version 5 is older than version 6"):
        ClientPolicy.from_file(_json(p, version=5))
    # Another file is another identity.
    assert ClientPolicy.from_file(_json(tmp_path / "other.json", version=1)).version == 1


def test_rollback_of_a_signed_policy_follows_the_signer(tmp_path: Path, key: Ed25519PrivateKey, home: Path) -> None:
    s = _signers(key)
    ClientPolicy.from_file(_cose(tmp_path / "v5.cose", key, version=5), trusted_signers=s)
    old = _cose(tmp_path / "v3.cose", key, version=3)  # an old signed file, under a new name
    with pytest.raises(PolicyError) as info:
        ClientPolicy.from_file(old, trusted_signers=s)
    assert str(info.value) == (
        f"P4 policy version: version 3 is older than version 5 already accepted from {_kid(key).hex()}"
    )
    ClientPolicy.from_file(_cose(tmp_path / "v5b.cose", key, version=5), trusted_signers=s)
    ClientPolicy.from_file(_cose(tmp_path / "v6.cose", key, version=6), trusted_signers=s)
    assert PolicyVersionStore.in_home(home).accepted() == {_kid(key).hex(): 6}


def test_the_store_is_not_written_when_verification_fails(tmp_path: Path, key: Ed25519PrivateKey, home: Path) -> None:
    store = home / POLICY_VERSIONS_FILE
    p = _cose(tmp_path / "policy.cose", key, version=9)
    raw = p.read_bytes()
    p.write_bytes(_flip(raw, len(raw) - 1))
    with pytest.raises(PolicyError, match="^P3"):
        ClientPolicy.from_file(p, trusted_signers=_signers(key))
    with pytest.raises(PolicyError, match="^P3"):
        ClientPolicy.from_file(_json(tmp_path / "u.json", version=9), trusted_signers=_signers(key))
    with pytest.raises(ConfigError):  # parses, but its root cannot be read
        ClientPolicy.from_file(_json(tmp_path / "r.json", version=9, root={"pem": "missing.pem"}))
    assert not store.exists()
    # A refused rollback leaves the record as it was.
    ClientPolicy.from_file(_json(tmp_path / "u.json", version=4))
    before = store.read_bytes()
    with pytest.raises(PolicyError, match="^P4"):
        ClientPolicy.from_file(_json(tmp_path / "u.json", version=2))
    assert store.read_bytes() == before


def test_record_false_checks_but_writes_nothing(tmp_path: Path, home: Path) -> None:
    p = _json(tmp_path / "policy.json", version=5)
    ClientPolicy.from_file(p, record=False)
    assert not (home / POLICY_VERSIONS_FILE).exists()
    ClientPolicy.from_file(p)
    with pytest.raises(PolicyError, match="^P4"):
        ClientPolicy.from_file(_json(p, version=1), record=False)


def test_version_store(tmp_path: Path) -> None:
    store = PolicyVersionStore(tmp_path / "deep" / "v.json")
    assert store.accepted() == {}
    store.check_and_record("a", 2)
    store.check_and_record("b", 7)
    store.check_and_record("a", 2)
    assert store.accepted() == {"a": 2, "b": 7}
    with pytest.raises(PolicyError, match="^P4 policy version: version 1 is older than version 2 already accepted from a$"):
        store.check_and_record("a", 1)
    assert json.loads(store.path.read_text())["format"] == "ephemeralml-policy-versions/1"


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"format": "x", "accepted": {}}', b'{"format": "ephemeralml-policy-versions/1", "accepted": {"a": -1}}'])
def test_a_broken_store_fails_closed(tmp_path: Path, content: bytes) -> None:
    store = PolicyVersionStore(tmp_path / "v.json")
    store.path.write_bytes(content)
    with pytest.raises(ConfigError, match="refusing to reset rollback protection"):
        store.check_and_record("a", 1)
    assert store.path.read_bytes() == content


# ---------------------------------------------------------------- P1, P2: the binding


def test_min_enclave_policy_version_p2(tmp_path: Path) -> None:
    p = _json(tmp_path / "policy.json", min_enclave_policy_version=3)
    pol = ClientPolicy.from_file(p)
    with pytest.raises(PolicyError) as info:
        pol.check_binding(_binding(pv=2))
    assert str(info.value) == (
        f"P2 enclave policy version: the enclave enforces policy version 2, the policy ({p}) "
        "requires at least 3"
    )
    pol.check_binding(_binding(pv=3))
    pol.check_binding(_binding(pv=4))


def test_check_binding_runs_p1_too(tmp_path: Path) -> None:
    pol = ClientPolicy.from_file(_json(tmp_path / "policy.json", models={"m": "cd" * 32}))
    with pytest.raises(PolicyError, match="^P1 model: enclave serves 'm' with digest abab"):
        pol.check_binding(_binding(pv=1))


# ---------------------------------------------------------------- P1 pins (anti-rollback, M11)

OLD, NEW, NEWER = "0a" * 32, "0b" * 32, "0c" * 32  # manifest digests of releases 1, 2, 3


def test_a_model_pins_one_digest_or_a_list(tmp_path: Path) -> None:
    pol = ClientPolicy.from_file(_json(tmp_path / "policy.json", models={"m": [NEW, NEWER], "n": OLD}))
    assert dict(pol.models or {}) == {
        "m": frozenset({bytes.fromhex(NEW), bytes.fromhex(NEWER)}),
        "n": frozenset({bytes.fromhex(OLD)}),
    }
    assert pol.to_json()["models"] == {"m": [NEW, NEWER], "n": [OLD]}
    for digest in (NEW, NEWER):  # a rolling upgrade: either release passes P1
        pol.check_binding(_binding(pv=1, models={"m": bytes.fromhex(digest)}))
        pol.check_model(_binding(pv=1, models={"m": bytes.fromhex(digest)}), "m")


def test_p1_refuses_an_older_release_of_a_pinned_model(tmp_path: Path) -> None:
    p = _json(tmp_path / "policy.json", models={"m": [NEWER, NEW]})
    pol = ClientPolicy.from_file(p)
    with pytest.raises(PolicyError) as info:
        pol.check_binding(_binding(pv=1, models={"m": bytes.fromhex(OLD)}))
    assert str(info.value) == (
        "P1 model: enclave serves 'm' with digest 0a0a0a0a0a0a0a0a…, "
        "the policy allows 0b0b0b0b0b0b0b0b…, 0c0c0c0c0c0c0c0c…"
    )


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"m": []}, "models.m must be a manifest digest (64 hex) or a list of 1..16"),
        ({"m": [NEW] * 17}, "models.m must be a manifest digest (64 hex) or a list of 1..16"),
        ({"m": {"d": NEW}}, "models.m must be a manifest digest (64 hex) or a list of 1..16"),
        ({"m": 7}, "models.m must be a manifest digest (64 hex) or a list of 1..16"),
        ({"m": [NEW, "ab"]}, "models.m[1] must be 64 hex digits"),
        ({"m": [NEW, 5]}, "models.m[1] must be 64 hex digits"),
        ({"m": "zz" * 32}, "models.m must be 64 hex digits"),
    ],
)
def test_bad_model_pins(tmp_path: Path, models: dict[str, object], message: str) -> None:
    p = _json(tmp_path / "p.json", models=models)
    with pytest.raises(ConfigError) as info:
        ClientPolicy.from_file(p)
    assert str(info.value) == f"policy {p}: {message}"


def test_policy_show_lists_every_pin(tmp_path: Path, home: Path) -> None:
    p = _json(tmp_path / "policy.json", models={"m": [NEWER, NEW]})
    code, out = run("policy", "show", str(p))
    assert code == 0
    assert [line for line in out.splitlines() if line.startswith("  model ")] == [
        f"  model         m manifest {NEW}",
        f"  model         m manifest {NEWER}",
    ]


def test_pins_given_in_code() -> None:
    old, new = bytes.fromhex(OLD), bytes.fromhex(NEW)
    pol = ClientPolicy.production(PcrAllowlist([{0: bytes(48)}]), models={"m": new, "n": [old, new]})
    assert dict(pol.models or {}) == {"m": frozenset({new}), "n": frozenset({old, new})}
    with pytest.raises(PolicyError, match=r"^P1 model: enclave serves 'm' with digest 0a0a"):
        pol.check_binding(_binding(pv=1, models={"m": old}))
    for bad, message in (
        ({"m": []}, "models: 'm' needs 1..16 digests"),
        ({"m": [new] + [bytes([i]) * 32 for i in range(100, 116)]}, "models: 'm' needs 1..16 digests"),
        ({"m": [b"short"]}, "models: 'm': a manifest digest is 32 bytes (SHA-256)"),
        ({"m": "ab" * 32}, "models: 'm': a manifest digest is 32 bytes (SHA-256)"),  # text, not bytes
        ({"m": 5}, "models: 'm': give a digest or a list of digests"),
        ({"m": [[b"x"]]}, "models: 'm': give a digest or a list of digests"),
    ):
        with pytest.raises(ConfigError) as info:
            ClientPolicy.production(PcrAllowlist([{0: bytes(48)}]), models=bad)  # type: ignore[arg-type]
        assert str(info.value) == message


def test_built_in_policies_have_no_minimum() -> None:
    pol = ClientPolicy.production(PcrAllowlist([{0: bytes(48)}]))
    assert pol.min_enclave_policy_version == 0
    pol.check_binding(_binding(pv=0))
    with pytest.raises(ConfigError):
        ClientPolicy(pol.attestation, min_enclave_policy_version=-1)


# ---------------------------------------------------------------- signer configuration


def test_signer_keys() -> None:
    k = Ed25519PrivateKey.generate()
    assert parse_signer_keys([_pub(k).hex()]) == _signers(k)
    with pytest.raises(ConfigError, match="--policy-signer 'abc' must be 64 hex digits"):
        parse_signer_keys(["abc"])
    with pytest.raises(ConfigError, match="kid = SHA-256 of the raw public key"):
        ClientPolicy.from_file(Path("/nonexistent"), trusted_signers={bytes(32): _pub(k)})


# ---------------------------------------------------------------- CLI


def test_cli_keygen_sign_show(tmp_path: Path, home: Path) -> None:
    pem = tmp_path / "signer.pem"
    code, out = run("policy", "keygen", "--out", str(pem))
    assert code == 0
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    pub = out.split("public key", 1)[1].split()[0]
    kid = out.split("key id", 1)[1].split()[0]
    assert hashlib.sha256(bytes.fromhex(pub)).hexdigest() == kid

    src = _json(tmp_path / "policy.json", version=7, min_enclave_policy_version=2)
    cose = tmp_path / "policy.cose"
    code, out = run("policy", "sign", str(src), "--key", str(pem), "--out", str(cose))
    assert code == 0
    assert out.strip() == f"signed policy version 7 -> {cose} (signer {kid})"

    code, out = run("policy", "show", str(cose), "--policy-signer", pub)
    assert code == 0
    assert out.splitlines()[0] == f"policy {cose} VERIFIED: signed by {kid}"
    assert "  version       7" in out and f"PCR0  {PCR}" in out
    code, out = run("policy", "show", str(cose), "--policy-signer", pub, "--json")
    d = json.loads(out)
    assert d["signer"] == kid and d["version"] == 7 and d["min_enclave_policy_version"] == 2
    assert d["root"]["name"] == "aws-nitro-root-g1" and d["root"]["mock"] is False
    # show checks P4 but does not record: showing a policy is not adopting it.
    assert not (home / POLICY_VERSIONS_FILE).exists()


def test_cli_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "signer.pem"
    pem.write_text("precious")
    assert run("policy", "keygen", "--out", str(pem))[0] == 2
    assert capsys.readouterr().err.strip() == f"ephemeral: error: {pem} exists; refusing to overwrite a key"
    assert pem.read_text() == "precious"


def test_cli_sign_refuses_an_invalid_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "signer.pem"
    assert run("policy", "keygen", "--out", str(pem))[0] == 0
    src = _json(tmp_path / "policy.json", measurements=[])
    out = tmp_path / "policy.cose"
    assert run("policy", "sign", str(src), "--key", str(pem), "--out", str(out))[0] == 2
    assert capsys.readouterr().err.strip() == (
        f"ephemeral: error: policy {src}: measurements must be a non-empty list"
    )
    assert not out.exists()


def test_cli_show_errors(tmp_path: Path, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]) -> None:
    cose = _cose(tmp_path / "policy.cose", key)
    assert run("policy", "show", str(cose))[0] == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ephemeral: policy error: P3 policy signature: signed by an unknown key")
    unsigned = _json(tmp_path / "policy.json")
    assert run("policy", "show", str(unsigned), "--policy-signer", _pub(key).hex())[0] == 1
    assert capsys.readouterr().err.strip() == (
        f"ephemeral: policy error: P3 policy signature: policy is not signed but signers are configured ({unsigned})"
    )
    code, out = run("policy", "show", str(unsigned))
    assert code == 0 and "UNSIGNED" in out.splitlines()[0]
    assert run("policy", "show", str(unsigned), "--policy-signer", "zz")[0] == 2


def test_cli_signers_from_the_home_file(tmp_path: Path, key: Ed25519PrivateKey, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home.mkdir()
    (home / POLICY_SIGNERS_FILE).write_text(f"# the policy team\n\n{_pub(key).hex()}  # 2026 key\n")
    cose = _cose(tmp_path / "policy.cose", key)
    assert run("policy", "show", str(cose))[0] == 0
    unsigned = _json(tmp_path / "policy.json")
    assert run("policy", "show", str(unsigned))[0] == 1
    assert "policy is not signed but signers are configured" in capsys.readouterr().err
    (home / POLICY_SIGNERS_FILE).write_text("not a key\n")
    assert run("policy", "show", str(cose))[0] == 2
    assert capsys.readouterr().err.strip() == (
        f"ephemeral: error: {home / POLICY_SIGNERS_FILE} line 1: 'not a key' must be 64 hex digits"
    )


DOC4 = REAL_VECTORS / "nitro_attestation_4.cbor"
DOC4_TIME = "2023-05-24T17:07:48.582Z"


def test_cli_attestation_with_a_signed_policy(tmp_path: Path, key: Ed25519PrivateKey, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = parse_unverified(DOC4.read_bytes())
    pcrs = {f"PCR{i}": d.pcrs[i].hex() for i in (0, 1, 2)}
    cose = _cose(tmp_path / "policy.cose", key, version=2, measurements=[pcrs])
    signer = _pub(key).hex()
    code, out = run("attestation", str(DOC4), "--at", DOC4_TIME, "--policy", str(cose), "--policy-signer", signer)
    assert code == 0 and "PCR policy    checked" in out
    # An offline check adopts no policy: P4 is the online rule (nothing recorded)...
    assert not (home / POLICY_VERSIONS_FILE).exists()
    ClientPolicy.from_file(cose, trusted_signers=_signers(key))
    assert PolicyVersionStore.in_home(home).accepted() == {_kid(key).hex(): 2}
    # ...and the policy of an old document's time, older than the one accepted, checks it.
    old = _cose(tmp_path / "old.cose", key, version=1, measurements=[pcrs])
    code, _ = run("attestation", str(DOC4), "--at", DOC4_TIME, "--policy", str(old), "--policy-signer", signer)
    assert code == 0
    assert PolicyVersionStore.in_home(home).accepted() == {_kid(key).hex(): 2}
    code, _ = run("attestation", str(DOC4), "--at", DOC4_TIME, "--policy", str(cose))
    assert code == 1  # a signed policy with no signer configured
    assert "signed by an unknown key" in capsys.readouterr().err


def test_policy_document_is_pure() -> None:
    """Parsing names a PEM root without reading it."""
    doc = PolicyDocument.from_json(json.dumps(_body(root={"pem": "/nonexistent.pem"})).encode(), where="t")
    assert doc.root.path == "/nonexistent.pem"  # type: ignore[union-attr]
    assert doc.version == 5 and doc.min_enclave_policy_version == 0


def test_cli_verify_applies_p1_and_p2_to_the_receipts_binding(
    tmp_path: Path, home: Path, world: MockWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = SessionPair(world)
    pair.handshake()
    receipt = pair.request().receipt
    assert pair.client.attestation is not None
    doc = pair.client.attestation.document
    (tmp_path / f"{doc.sha256_hex}.attestation.cbor").write_bytes(doc.raw)
    rpath = tmp_path / "r.receipt.cbor"
    rpath.write_bytes(receipt.raw)
    (home / "published").mkdir(parents=True)
    (home / "published" / "mock-root.pem").write_bytes(world.nsm.root_certificate_der)
    m = world.policy.measurements
    assert isinstance(m, PcrAllowlist)
    pcrs = [{f"PCR{i}": v.hex() for i, v in s.items()} for s in m.allowed]

    def verify(name: str, **extra: object) -> int:
        p = _json(tmp_path / name, root="mock", measurements=pcrs, **extra)
        return run("verify", str(rpath), "--policy", str(p))[0]

    assert verify("ok.json", min_enclave_policy_version=7) == 0  # the enclave reports 7
    capsys.readouterr()
    assert verify("p2.json", min_enclave_policy_version=8) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"ephemeral: policy error: P2 enclave policy version: the enclave enforces policy "
        f"version 7, the policy ({tmp_path / 'p2.json'}) requires at least 8"
    )
    assert verify("p1.json", models={"other-model": DIGEST}) == 1
    assert "P1 model: " in capsys.readouterr().err


def test_library_reads_the_homes_policy_signers_like_the_cli(
    tmp_path: Path, home: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 8: ClientPolicy.from_file accepted an unsigned policy where the CLI, reading
    # $EPHEMERALML_HOME/policy-signers, refused it; and a str path raised AttributeError.
    _json(tmp_path / "policy.json")
    home.mkdir(parents=True, exist_ok=True)
    (home / "policy-signers").write_text(_pub(key).hex() + "\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError) as info:
        ClientPolicy.from_file("policy.json")
    assert str(info.value) == (
        "P3 policy signature: policy is not signed but signers are configured (policy.json)"
    )
    signed = _cose(tmp_path / "policy.cose", key)
    assert ClientPolicy.from_file(str(signed)).version == 5
    # An explicit empty mapping still means "no signers configured".
    assert ClientPolicy.from_file("policy.json", trusted_signers={}).version == 5
