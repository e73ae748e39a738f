"""``ephemeral policy from-measurements``: published measurements (a mock enclave's, or
nitro-cli build-enclave's JSON) into a policy.json the client accepts and ``policy
sign`` signs; malformed input refused in one exact line."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ephemeralml.client._cli import main
from ephemeralml.client._policy import ClientPolicy, PolicyVersionStore
from ephemeralml.client._policy_make import parse_measurements
from ephemeralml.common._errors import ConfigError
from ephemeralml.mock._nsm import MockNsm
from ephemeralml.mock._profiles import publish_mock
from ephemeralml.runtime._home import MOCK_MEASUREMENTS

PCRS = {i: os.urandom(48) for i in (0, 1, 2)} | {8: bytes(48)}
D1, D2 = "a1" * 32, "b2" * 32
MOCK_WARNING = (
    "WARNING: {files} hold MOCK measurements: the policy trusts the local mock root "
    '("root": "mock"). A mock enclave proves nothing: the machine\'s owner can read '
    "everything. Use it for development only."
)


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out), out.getvalue()


def last_err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home where a mock enclave has published its root and measurements."""
    h = tmp_path / "home"
    publish_mock(h, MockNsm.load_or_create(h / "mock-nsm", PCRS))
    return h


def nitro_cli(pcrs: dict[int, bytes], **extra: object) -> str:
    m: dict[str, object] = {"HashAlgorithm": "Sha384 { ... }"}
    m.update({f"PCR{i}": v.hex() for i, v in sorted(pcrs.items())})
    return json.dumps({"Measurements": m, **extra}, indent=2)


def test_from_the_mock_enclaves_published_measurements(home: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "policy.json"
    code, text = run("policy", "from-measurements", "--home", str(home), "-o", str(out),
                     "--model", f"m1={D1}", "--model", f"m2={D1}", "--model", f"m2={D2.upper()}")  # fmt: skip
    assert code == 0
    assert json.loads(out.read_text()) == {
        "version": 1,
        "root": "mock",
        "measurements": [{f"PCR{i}": v.hex() for i, v in sorted(PCRS.items())}],
        "models": {"m1": D1, "m2": [D1, D2]},
    }
    src = home / MOCK_MEASUREMENTS
    assert capsys.readouterr().err.strip() == MOCK_WARNING.format(files=src)
    assert text.splitlines() == [
        f"policy version 1 -> {out}",
        "  root          mock (MOCK: a mock enclave proves nothing)",
        "  set 0         PCR0, PCR1, PCR2, PCR8",
        f"  from          {src} (mock, ephemeralml)",
        f"  model         m1 manifest {D1}",
        f"  model         m2 manifest {D1}",
        f"  model         m2 manifest {D2}",
        f"check it: ephemeral policy show {out}; sign it: ephemeral policy sign {out} --key KEY.pem --out policy.cose",
    ]
    policy = ClientPolicy.from_file(out, home=home, trusted_signers={}, record=False)
    assert policy.is_mock and policy.version == 1
    assert policy.models == {"m1": frozenset({bytes.fromhex(D1)}), "m2": frozenset({bytes.fromhex(D1), bytes.fromhex(D2)})}
    assert policy.to_json()["measurements"] == [{f"PCR{i}": v.hex() for i, v in sorted(PCRS.items())}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "policy.json"]  # no temporary file left


def test_nitro_cli_output_gets_the_aws_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "build.json"
    src.write_text(nitro_cli({i: PCRS[i] for i in (0, 1, 2)}))
    out = tmp_path / "policy.json"
    code, text = run("policy", "from-measurements", str(src), "-o", str(out), "--version", "7")
    assert code == 0 and capsys.readouterr().err == ""
    assert json.loads(out.read_text()) == {
        "version": 7, "root": "aws-nitro",
        "measurements": [{f"PCR{i}": PCRS[i].hex() for i in (0, 1, 2)}],
    }  # fmt: skip
    assert text.splitlines()[1:5] == [
        "  root          aws-nitro (the built-in AWS Nitro Enclaves root, pinned by fingerprint)",
        "  set 0         PCR0, PCR1, PCR2",
        f"  from          {src} (nitro, nitro-cli)",
        "  models        any attested model (no --model pinned)",
    ]
    policy = ClientPolicy.from_file(out, home=tmp_path / "h", trusted_signers={}, record=False)
    assert not policy.is_mock and policy.models is None


def test_describe_eif_output_and_two_images(tmp_path: Path) -> None:
    """nitro-cli describe-eif carries more top-level keys; several files, several sets."""
    other = {i: os.urandom(48) for i in (0, 1, 2, 8)}
    a, b = tmp_path / "old.json", tmp_path / "new.json"
    a.write_text(nitro_cli({i: PCRS[i] for i in (0, 1, 2)}, EifVersion=4, IsSigned=False, ImageName="x"))
    b.write_text(nitro_cli(other))
    code, _ = run("policy", "from-measurements", str(a), str(b), str(a), "-o", str(tmp_path / "p.json"))
    assert code == 0
    sets = json.loads((tmp_path / "p.json").read_text())["measurements"]
    assert sets == [{f"PCR{i}": PCRS[i].hex() for i in (0, 1, 2)}, {f"PCR{i}": v.hex() for i, v in other.items()}]


def test_a_root_pem_is_pinned_and_the_policy_signs(tmp_path: Path, att_other_root_pem: bytes) -> None:
    src = tmp_path / "build.json"
    src.write_text(nitro_cli({i: PCRS[i] for i in (0, 1, 2)}))
    (tmp_path / "certs").mkdir()
    pem = tmp_path / "certs" / "root.pem"
    pem.write_bytes(att_other_root_pem)
    out_dir = tmp_path / "policies"
    out = out_dir / "policy.json"
    assert run("policy", "from-measurements", str(src), "-o", str(out), "--root", str(pem),
               "--model", f"m={D1}")[0] == 0  # fmt: skip
    fp = x509.load_pem_x509_certificate(att_other_root_pem).fingerprint(hashes.SHA256()).hex()
    assert json.loads(out.read_text())["root"] == {"pem": "../certs/root.pem", "sha256": fp}
    # policy sign takes it as it is, and a client accepts the signed policy.
    signer = tmp_path / "signer.pem"
    code, text = run("policy", "keygen", "--out", str(signer))
    pub = text.splitlines()[1].split()[-1]
    code, text = run("policy", "sign", str(out), "--key", str(signer), "--out", str(out_dir / "policy.cose"))
    assert code == 0 and text.startswith(f"signed policy version 1 -> {out_dir / 'policy.cose'}")
    home = tmp_path / "home"
    code, text = run("policy", "show", str(out_dir / "policy.cose"), "--policy-signer", pub, "--home", str(home), "--json")
    assert code == 0
    shown = json.loads(text)
    assert shown["root"]["sha256"] == fp and shown["models"] == {"m": [D1]}
    assert shown["measurements"] == [{f"PCR{i}": PCRS[i].hex() for i in (0, 1, 2)}]


def test_the_mock_policy_signs_too(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    assert run("policy", "from-measurements", "--home", str(home), "-o", str(out), "--version", "3")[0] == 0
    signer = tmp_path / "signer.pem"
    pub = run("policy", "keygen", "--out", str(signer))[1].splitlines()[1].split()[-1]
    assert run("policy", "sign", str(out), "--key", str(signer), "--out", str(tmp_path / "p.cose"))[0] == 0
    signers = {hashlib.sha256(bytes.fromhex(pub)).digest(): bytes.fromhex(pub)}
    policy = ClientPolicy.from_file(tmp_path / "p.cose", home=home, trusted_signers=signers,
                                    versions=PolicyVersionStore(tmp_path / "v.json"))  # fmt: skip
    assert policy.is_mock and policy.version == 3 and policy.signer is not None


def test_output_rules(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "policy.json"
    out.write_text("mine")
    assert run("policy", "from-measurements", "--home", str(home), "-o", str(out))[0] == 2
    assert last_err(capsys) == f"ephemeral: error: {out} exists; give --force to replace it"
    assert out.read_text() == "mine"
    assert run("policy", "from-measurements", "--home", str(home), "-o", str(out), "--force")[0] == 0
    assert json.loads(out.read_text())["root"] == "mock"
    code, text = run("policy", "from-measurements", "--home", str(home), "-o", "-")
    assert code == 0 and text == out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "policy.json"]


def test_write_never_replaces_a_file_that_appears_meanwhile(tmp_path: Path) -> None:
    from ephemeralml.client._policy_make import write_policy

    out = tmp_path / "p.json"
    out.write_text("raced")
    with pytest.raises(ConfigError, match=r"exists; give --force to replace it$"):
        write_policy(out, b"{}", force=False)
    assert out.read_text() == "raced" and [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_option_errors(home: Path, tmp_path: Path, att_other_root_pem: bytes,
                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = str(tmp_path / "p.json")
    pem = tmp_path / "root.pem"
    pem.write_bytes(att_other_root_pem)
    src = home / MOCK_MEASUREMENTS
    cases = [
        (["--root", str(pem)], f"--root: {src} hold MOCK measurements, which only the local mock root attests; drop --root"),
        (["--model", "m"], "--model 'm': give ID=DIGEST, the model id and its 64-hex manifest digest (`ephemeral model show BUNDLE` prints it)"),
        (["--model", "m=abc"], "--model 'm=abc': give ID=DIGEST, the model id and its 64-hex manifest digest (`ephemeral model show BUNDLE` prints it)"),
        (["--model", f"../m={D1}"], f"--model '../m={D1}': give ID=DIGEST, the model id and its 64-hex manifest digest (`ephemeral model show BUNDLE` prints it)"),
        ([x for i in range(17) for x in ("--model", f"m={i:064x}")], "--model m: at most 16 digests a model"),
        (["--version", "-1"], "--version must be an integer ≥ 0"),
    ]
    for extra, message in cases:
        assert run("policy", "from-measurements", "--home", str(home), "-o", out, *extra)[0] == 2, extra
        assert last_err(capsys) == f"ephemeral: error: {message}"
    assert not (tmp_path / "p.json").exists()


def test_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert run("policy", "from-measurements", "--home", str(home), "-o", str(tmp_path / "p.json"))[0] == 2
    assert last_err(capsys) == (
        f"ephemeral: error: no published measurements at {home / MOCK_MEASUREMENTS}: start "
        "`ephemeral-enclave --mock` first (it publishes them), or give the file nitro-cli build-enclave wrote"
    )
    assert run("policy", "from-measurements", str(tmp_path / "m.json"), "-o", str(tmp_path / "p.json"))[0] == 2
    assert last_err(capsys) == f"ephemeral: error: measurements {tmp_path / 'm.json'} do not exist"


def test_mock_and_nitro_measurements_do_not_mix(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "build.json"
    src.write_text(nitro_cli({i: PCRS[i] for i in (0, 1, 2)}))
    mock = home / MOCK_MEASUREMENTS
    assert run("policy", "from-measurements", str(src), str(mock), "-o", str(tmp_path / "p.json"))[0] == 2
    assert last_err(capsys) == f"ephemeral: error: measurements: {mock} is mock and {src} is nitro; one policy trusts one root"


H = "ab" * 48
PCRS_OURS: dict[str, object] = {"0": H, "1": H, "2": H}
OURS: dict[str, object] = {"mode": "nitro", "pcrs": PCRS_OURS}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", " are not JSON: Expecting value: line 1 column 1 (char 0)"),
        ('{"pcrs": {}, "pcrs": {}}', " are not JSON: duplicate key 'pcrs'"),
        ("[]", ": not a JSON object"),
        ("{}", ': neither published measurements ({"mode", "pcrs"}) nor nitro-cli build-enclave output ({"Measurements"})'),
        (json.dumps({**OURS, "Measurements": {}}), ': both "Measurements" and "pcrs"; give one shape'),
        (json.dumps({**OURS, "extra": 1}), ": unknown fields ['extra']"),
        (json.dumps({**OURS, "mode": "MOCK"}), ': mode must be "mock" or "nitro"'),
        (json.dumps({"pcrs": OURS["pcrs"]}), ': mode must be "mock" or "nitro"'),
        (json.dumps({**OURS, "note": 5}), ": note must be text"),
        (json.dumps({**OURS, "pcrs": [H]}), ": pcrs must be an object of PCR: hex"),
        (json.dumps({**OURS, "pcrs": {**PCRS_OURS, "32": H}}), ": '32' is not a PCR name (PCR0..PCR31)"),
        (json.dumps({**OURS, "pcrs": {**PCRS_OURS, "01": H}}), ": '01' is not a PCR name (PCR0..PCR31)"),
        (json.dumps({**OURS, "pcrs": {**PCRS_OURS, "PCR0": H}}), ": PCR0 is named twice"),
        (json.dumps({**OURS, "pcrs": {**PCRS_OURS, "1": H[:-2]}}), ": PCR1 must be 96 hex digits (SHA-384)"),
        (json.dumps({**OURS, "pcrs": {**PCRS_OURS, "1": 5}}), ": PCR1 must be 96 hex digits (SHA-384)"),
        (json.dumps({**OURS, "pcrs": {"0": H, "2": H}}), ": PCR1 is missing (a policy pins at least PCR0, PCR1 and PCR2)"),
        (json.dumps({**OURS, "pcrs": {**PCRS_OURS, "0": "0" * 96}}), ": PCR0 is all zeros, a debug-mode enclave (it proves nothing about its code)"),
        (json.dumps({"Measurements": []}), ": Measurements must be an object"),
        (json.dumps({"Measurements": {"PCR0": H, "PCR1": H, "PCR2": H}}), ": Measurements.HashAlgorithm is missing"),
        (json.dumps({"Measurements": {"HashAlgorithm": "Sha256 { ... }", "PCR0": H, "PCR1": H, "PCR2": H}}), ": HashAlgorithm 'Sha256 { ... }' is not Sha384"),
        (json.dumps({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": H, "PCR1": H, "PCR2": H, "Extra": H}}), ": 'Extra' is not a PCR name (PCR0..PCR31)"),
        (json.dumps({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": H, "PCR2": H}}), ": PCR1 is missing (a policy pins at least PCR0, PCR1 and PCR2)"),
        ('{"x": "' + "a" * 70000 + '"}', " are over 65536 bytes"),
    ],
)
def test_malformed_measurements(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    src = tmp_path / "m.json"
    src.write_text(text)
    with pytest.raises(ConfigError) as info:
        parse_measurements(text.encode(), str(src))
    assert str(info.value) == f"measurements {src}{message}"
    assert run("policy", "from-measurements", str(src), "-o", str(tmp_path / "p.json"))[0] == 2
    assert last_err(capsys) == f"ephemeral: error: measurements {src}{message}"
    assert not (tmp_path / "p.json").exists()
