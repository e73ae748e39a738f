"""The one trust choice (``trust_policy``) and the two rules of P4.

``--mock``, ``--policy FILE`` and ``--root PEM`` mean the same thing to every command
and to the library. P4 (rollback) is the online rule: adopting a policy for new
sessions refuses an older version and records a newer one. Offline (checking a stored
receipt or document against the policy of its time) runs no P4 and records nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.client import connect, trust_policy
from ephemeralml.client._cli import main
from ephemeralml.client._policy import (
    POLICY_VERSIONS_FILE,
    ClientPolicy,
    PolicyVersionStore,
    sign_policy,
)
from ephemeralml.common._attestation import AWS_NITRO_ROOT_SHA256, PcrAllowlist
from ephemeralml.common._errors import ConfigError, PolicyError
from tests.pair import MockWorld, SessionPair
from tests.vectors_path import REAL_VECTORS


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("EPHEMERALML_HOME", str(h))
    return h


def _pcrs(world: MockWorld) -> list[dict[str, str]]:
    m = world.policy.measurements
    assert isinstance(m, PcrAllowlist)
    return [{f"PCR{i}": v.hex() for i, v in s.items()} for s in m.allowed]


def _publish(home: Path, world: MockWorld, *, measurements: bool = True) -> None:
    """What a mock enclave publishes in its home: its root and (optionally) its PCRs."""
    (home / "published").mkdir(exist_ok=True)
    (home / "published" / "mock-root.pem").write_bytes(world.nsm.root_certificate_der)
    if measurements:
        pcrs = _pcrs(world)[0]
        (home / "published" / "measurements.json").write_text(json.dumps({"pcrs": pcrs}))


def _policy(path: Path, world: MockWorld, version: int) -> Path:
    path.write_text(json.dumps({"version": version, "root": "mock", "measurements": _pcrs(world)}))
    return path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out), out.getvalue()


# ---------------------------------------------------------------- the trust choice


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize(
    "choice", [{"mock": True, "policy": "p.json"}, {"mock": True, "root": "r.pem"}, {"policy": "p", "root": "r"}]
)
def test_one_choice_at_most(choice: dict[str, object], offline: bool) -> None:
    with pytest.raises(ConfigError) as info:
        trust_policy(offline=offline, **choice)  # type: ignore[arg-type]
    assert str(info.value) == "give one of --mock, --policy FILE or --root PEM, not several"


def test_a_session_needs_measurements() -> None:
    with pytest.raises(ConfigError) as info:
        trust_policy()
    assert str(info.value) == (
        "no trust policy: give --policy FILE (allowed PCRs for a real enclave) "
        "or --mock to trust a local mock enclave"
    )
    with pytest.raises(ConfigError) as info:
        trust_policy(root=REAL_VECTORS / "aws_nitro_root_g1.pem")
    assert str(info.value) == (
        "--root PEM is for offline checks; a session needs --policy FILE "
        "(the measurements to expect) or --mock"
    )


def test_offline_defaults_to_the_aws_root_with_pcrs_shown_not_checked() -> None:
    p = trust_policy(offline=True)
    assert p.attestation.root.fingerprint == AWS_NITRO_ROOT_SHA256
    assert (p.offline_only, p.checks_measurements, p.is_mock, p.source) == (
        True, False, False, "the AWS Nitro root"
    )  # fmt: skip
    root = REAL_VECTORS / "aws_nitro_root_g1.pem"
    r = trust_policy(root=root, offline=True)
    assert (r.attestation.root.name, r.checks_measurements, r.source) == (str(root), False, f"--root {root}")
    with pytest.raises(ConfigError, match=r"^root /nonexistent\.pem does not exist$"):
        trust_policy(root="/nonexistent.pem", offline=True)


def test_mock_online_and_offline(home: Path, world: MockWorld) -> None:
    with pytest.raises(ConfigError, match=r"^no mock root at "):
        trust_policy(mock=True, offline=True)
    _publish(home, world, measurements=False)
    warned = io.StringIO()
    # Offline without published measurements: the PCRs are shown, not checked...
    p = trust_policy(mock=True, offline=True, stream=warned)
    assert (p.is_mock, p.checks_measurements, p.offline_only) == (True, False, True)
    assert "WARNING: trusting the MOCK attestation root" in warned.getvalue()
    # ...while a session needs them.
    with pytest.raises(ConfigError, match=r"^no mock measurements at "):
        trust_policy(mock=True, stream=warned)
    _publish(home, world)
    for offline in (False, True):
        q = trust_policy(mock=True, offline=offline, stream=warned)
        assert (q.is_mock, q.checks_measurements, q.offline_only) == (True, True, offline)
        assert q.attestation.measurements.allowed == world.policy.measurements.allowed  # type: ignore[attr-defined]


def test_policy_signers_are_the_homes_plus_the_given(home: Path, world: MockWorld, tmp_path: Path) -> None:
    _publish(home, world)
    key = Ed25519PrivateKey.generate()
    signed, _ = sign_policy(
        json.dumps({"version": 1, "root": "mock", "measurements": _pcrs(world)}).encode(), key, where="t"
    )
    cose = tmp_path / "policy.cose"
    cose.write_bytes(signed)
    with pytest.raises(PolicyError, match=r"^P3 policy signature: signed by an unknown key "):
        trust_policy(policy=cose, offline=True)  # P3 runs offline too
    hex_key = key.public_key().public_bytes_raw().hex()
    assert trust_policy(policy=cose, offline=True, policy_signers=[hex_key]).signer is not None
    with pytest.raises(ConfigError, match=r"^--policy-signer 'zz' must be 64 hex digits$"):
        trust_policy(mock=True, policy_signers=["zz"])


# ---------------------------------------------------------------- P4: online and offline


def test_p4_is_the_online_rule_only(home: Path, world: MockWorld, tmp_path: Path) -> None:
    _publish(home, world)
    # One file (an unsigned policy's P4 identity), rewritten with each version.
    path = tmp_path / "policy.json"
    ident = str(path.resolve())
    store = home / POLICY_VERSIONS_FILE
    ClientPolicy.from_file(_policy(path, world, 5))  # online: accepted and recorded
    recorded = store.read_bytes()
    assert PolicyVersionStore(store).accepted() == {ident: 5}

    _policy(path, world, 3)
    # Offline: the policy of an old receipt's time. Neither refused nor recorded.
    audit = ClientPolicy.for_offline(path)
    assert (audit.version, audit.offline_only) == (3, True)
    assert trust_policy(policy=path, offline=True).version == 3
    assert store.read_bytes() == recorded
    # Online the same file is a rollback, by either door.
    loads: list[Callable[[], ClientPolicy]] = [
        lambda: ClientPolicy.from_file(path),
        lambda: trust_policy(policy=path),
    ]
    for load in loads:
        with pytest.raises(PolicyError) as info:
            load()
        assert str(info.value) == (
            f"P4 policy version: version 3 is older than version 5 already accepted from {ident}"
        )
    # A newer version seen offline is not adopted either.
    _policy(path, world, 9)
    assert ClientPolicy.for_offline(path).version == 9
    assert store.read_bytes() == recorded
    assert trust_policy(policy=path).version == 9  # online, it is
    assert PolicyVersionStore(store).accepted() == {ident: 9}


def test_a_session_refuses_a_policy_built_for_offline_checks(home: Path, world: MockWorld, tmp_path: Path) -> None:
    _publish(home, world)
    for offline_policy in (
        ClientPolicy.for_offline(_policy(tmp_path / "p.json", world, 1)),
        trust_policy(mock=True, offline=True),
    ):
        with pytest.raises(ConfigError) as info:
            connect("127.0.0.1:1", policy=offline_policy)  # nothing is dialled
        assert str(info.value) == (
            f"policy {offline_policy.source} is for offline checks only (it skipped P4 rollback "
            "or checks no measurements); a session needs ClientPolicy.from_file or "
            "trust_policy(offline=False)"
        )


def _stored_receipt(world: MockWorld, folder: Path) -> Path:
    pair = SessionPair(world)
    pair.handshake()
    receipt = pair.request().receipt
    doc = receipt.attestation.document
    (folder / f"{doc.sha256_hex}.attestation.cbor").write_bytes(doc.raw)
    path = folder / f"{receipt.receipt.receipt_id_hex}.receipt.cbor"
    path.write_bytes(receipt.raw)
    return path


def test_cli_offline_commands_never_touch_the_rollback_state(
    home: Path, world: MockWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(home, world)
    receipt = _stored_receipt(world, tmp_path)
    policy = _policy(tmp_path / "policy.json", world, 5)
    ClientPolicy.from_file(policy)
    store = home / POLICY_VERSIONS_FILE
    recorded = store.read_bytes()
    _policy(policy, world, 3)  # the policy of the receipt's time, older than the accepted
    code, out = run("verify", str(receipt), "--policy", str(policy), "--json")
    assert code == 0 and json.loads(out)["pcr_policy"] == "checked"
    doc = next(tmp_path.glob("*.attestation.cbor"))
    code, out = run("attestation", str(doc), "--policy", str(policy), "--json")
    assert code == 0 and json.loads(out)["pcr_policy"] == "checked"
    _policy(policy, world, 8)
    assert run("verify", str(receipt), "--policy", str(policy))[0] == 0
    assert store.read_bytes() == recorded
    # The audit log has the receipt, once (verified twice, recorded once).
    with contextlib.closing(sqlite3.connect(home / "audit.db")) as db:
        ids = [r[0] for r in db.execute("SELECT receipt_id FROM entries ORDER BY n")]
    assert ids == [receipt.name.split(".")[0]]
    # Online, the older version is refused before anything is dialled.
    _policy(policy, world, 3)
    capsys.readouterr()
    for argv in (("embed", "text"), ("attest",)):
        code, _ = run(*argv, "--policy", str(policy), "--host", "127.0.0.1:1")
        assert code == 1
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("WARNING: trusting the MOCK attestation root")  # root "mock"
        assert err[1:] == [
            "ephemeral: policy error: P4 policy version: version 3 is older than version 5 "
            f"already accepted from {policy.resolve()}"
        ]
    assert store.read_bytes() == recorded


def test_cli_trust_flags_are_one_choice(home: Path, world: MockWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _publish(home, world)
    receipt = _stored_receipt(world, tmp_path)
    root = home / "published" / "mock-root.pem"
    p = _policy(tmp_path / "p.json", world, 1)
    doc = str(next(tmp_path.glob("*.attestation.cbor")))
    for argv in (
        ("verify", str(receipt), "--mock", "--root", str(root)),
        ("verify", str(receipt), "--policy", str(p), "--root", str(root)),
        ("attestation", doc, "--policy", str(p), "--mock"),
        ("attestation", doc, "--root", str(root), "--mock"),
    ):
        assert run(*argv)[0] == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            "ephemeral: error: give one of --mock, --policy FILE or --root PEM, not several"
        )
    # --mock means the published measurements, offline as online.
    code, out = run("attestation", doc, "--mock", "--json")
    assert code == 0
    assert json.loads(out)["pcr_policy"] == "checked (the measurements the mock enclave published)"
