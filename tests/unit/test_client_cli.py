"""The client CLI's offline commands and the trust policy, on real AWS documents."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from cryptography import x509

from ephemeralml._edge import enclave_main
from ephemeralml.client._aws_root import AWS_NITRO_ROOT_G1_PEM
from ephemeralml.client._cli import main
from ephemeralml.client._policy import ClientPolicy
from ephemeralml.common._attestation import AWS_NITRO_ROOT_SHA256, PcrAllowlist, parse_unverified
from ephemeralml.common._errors import ConfigError
from tests.vectors_path import REAL_VECTORS

DOC3 = REAL_VECTORS / "nitro_attestation_3.cbor"
DOC4 = REAL_VECTORS / "nitro_attestation_4.cbor"
DOC3_TIME = "2023-05-17T21:21:51.808Z"
DOC4_TIME = "2023-05-24T17:07:48.582Z"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out)
    return code, out.getvalue()


def test_embedded_aws_root_is_the_published_one() -> None:
    shared = x509.load_pem_x509_certificate((REAL_VECTORS / "aws_nitro_root_g1.pem").read_bytes())
    ours = x509.load_pem_x509_certificate(AWS_NITRO_ROOT_G1_PEM)
    assert ours == shared
    der = ours.public_bytes(encoding=__import__("cryptography").hazmat.primitives.serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == AWS_NITRO_ROOT_SHA256


def test_attestation_at_its_own_time_verifies() -> None:
    code, out = run("attestation", str(DOC4), "--at", DOC4_TIME, "--json")
    assert code == 0
    d = json.loads(out)
    assert d["verified"] is True
    assert d["module_id"] == "i-09b153b9b6859a1de-enc01884ebaeb16c078"
    assert d["pcrs"]["0"].startswith("28de6557cce896cf8c580d8674fbc13c")
    assert d["root"]["sha256"] == AWS_NITRO_ROOT_SHA256
    assert d["pcr_policy"] == "not checked (no --policy)"


def test_attestation_now_is_refused_with_the_failing_check(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("attestation", str(DOC4))
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("ephemeral: attestation error: A5 validity: cabundle[1] is not valid at now")


def test_attestation_with_another_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.test_attestation_helpers import self_signed_p384_root_pem

    root = tmp_path / "root.pem"
    root.write_bytes(self_signed_p384_root_pem())
    code, _ = run("attestation", str(DOC4), "--at", DOC4_TIME, "--root", str(root))
    assert code == 1
    assert "A4 chain: cabundle[0] is not the pinned root" in capsys.readouterr().err


def _policy_file(tmp_path: Path, doc: Path, **extra: object) -> Path:
    d = parse_unverified(doc.read_bytes())
    p = tmp_path / "policy.json"
    body = {"version": 3, "root": "aws-nitro", "measurements": [{f"PCR{i}": d.pcrs[i].hex() for i in (0, 1, 2)}]}
    body.update(extra)
    p.write_text(json.dumps(body))
    return p


def test_attestation_with_a_matching_policy(tmp_path: Path) -> None:
    policy = _policy_file(tmp_path, DOC4)
    code, out = run("attestation", str(DOC4), "--at", DOC4_TIME, "--policy", str(policy))
    assert code == 0 and "PCR policy    checked" in out


def test_attestation_with_a_policy_for_another_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = _policy_file(tmp_path, DOC4)
    doc5 = REAL_VECTORS / "nitro_attestation_5.cbor"
    code, _ = run("attestation", str(doc5), "--at", "2025-05-05T23:27:32.119Z", "--policy", str(policy))
    assert code == 1
    assert capsys.readouterr().err.startswith("ephemeral: policy error: A9")


def test_debug_mode_document_refused_by_a_production_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = _policy_file(tmp_path, DOC3)  # DOC3 is debug mode: PCR0 all zero
    code, _ = run("attestation", str(DOC3), "--at", DOC3_TIME, "--policy", str(policy))
    assert code == 1
    assert "debug" in capsys.readouterr().err
    allow = _policy_file(tmp_path, DOC3, allow_debug=True)
    assert run("attestation", str(DOC3), "--at", DOC3_TIME, "--policy", str(allow))[0] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"measurements": []}, "measurements must be a non-empty list"),
        ({"measurements": [{"PCR0": "00"}]}, "PCR0 must be 96 hex digits"),
        ({"measurements": [{"PCRX": "00" * 48}]}, "'PCRX' is not a PCR name"),
        ({"root": "nope", "measurements": [{"PCR0": "00" * 48}]}, "root must be"),
        ({"measurements": [{"PCR0": "11" * 48}], "extra": 1}, "unknown fields ['extra']"),
        ({"measurements": [{"PCR0": "11" * 48}], "models": {"m": "zz"}}, "models.m must be 64 hex digits"),
    ],
)
def test_bad_policy_files(tmp_path: Path, body: dict, message: str) -> None:  # type: ignore[type-arg]
    p = tmp_path / "p.json"
    p.write_text(json.dumps(body))
    with pytest.raises(ConfigError) as info:
        ClientPolicy.from_file(p)
    assert message in str(info.value)


def test_policy_file_round_trip(tmp_path: Path) -> None:
    p = _policy_file(tmp_path, DOC4, models={"all-MiniLM-L6-v2": "ab" * 32}, max_age_s=60)
    pol = ClientPolicy.from_file(p)
    assert pol.version == 3 and not pol.is_mock
    assert pol.attestation.max_age_s == 60
    assert isinstance(pol.attestation.measurements, PcrAllowlist)
    assert dict(pol.models or {}) == {"all-MiniLM-L6-v2": frozenset({bytes.fromhex("ab" * 32)})}


def test_mock_without_a_mock_enclave_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("attest", "--mock", "--home", str(tmp_path))
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"ephemeral: error: no mock root at {tmp_path}/published/mock-root.pem: start "
        "`ephemeral-enclave --mock` first (or set EPHEMERALML_HOME to the enclave's)"
    )


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("attestation", "/nonexistent/doc.cbor")
    assert code == 2
    assert capsys.readouterr().err.strip() == "ephemeral: error: attestation document /nonexistent/doc.cbor does not exist"


def test_bad_time(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("attestation", str(DOC4), "--at", "yesterday")
    assert code == 2
    assert "--at 'yesterday' is not an ISO 8601 time" in capsys.readouterr().err


def test_enclave_outside_nitro_fails_on_the_nsm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "libnsm.so"
    owners = tmp_path / "owners.txt"
    owners.write_text("ab" * 32 + "\n")
    argv = ["--home", str(tmp_path), "--listen", "vsock:any:5005", "--nsm-lib", str(missing),
            "--owner-keys", str(owners), "--host-wait", "0"]  # fmt: skip
    assert enclave_main(argv) == 2
    assert capsys.readouterr().err.startswith(f"ephemeral-enclave: error: NSM: cannot load {missing}: ")


def test_enclave_mock_needs_tcp_or_unix(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--listen", "--host-services", "--host-kms"):
        assert enclave_main(["--mock", flag, "vsock:any:5005"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"ephemeral-enclave: error: {flag} vsock:any:5005: the mock profile uses tcp or unix"
        )


def test_the_enclave_program_alone_has_no_mock_mode(capsys: pytest.CaptureFixture[str]) -> None:
    # What the Nitro image runs (python -m ephemeralml.enclave): no mock profile handed in.
    from ephemeralml.enclave._cli import main

    assert main(["--mock"]) == 2
    assert capsys.readouterr().err.strip() == (
        "ephemeral-enclave: error: this installation has no mock mode "
        "(start it as ephemeral-enclave --mock)"
    )


def test_one_base_port_moves_every_enclave_port(tmp_path: Path) -> None:
    from ephemeralml.enclave import _cli
    from ephemeralml.mock._profiles import enclave_profile

    def endpoints(argv: list[str], env: dict[str, str]) -> list[str]:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            c = _cli._config(_cli._parser().parse_args(argv), enclave_profile)
        return [str(c.listen), str(c.services), str(c.kms)]

    mock = ["--mock", "--home", str(tmp_path)]
    assert endpoints(mock, {}) == ["tcp:127.0.0.1:5005", "tcp:127.0.0.1:5006", "tcp:127.0.0.1:5007"]
    assert endpoints([*mock, "--base-port", "6200"], {}) == [
        "tcp:127.0.0.1:6205", "tcp:127.0.0.1:6206", "tcp:127.0.0.1:6207"
    ]  # fmt: skip
    assert endpoints(mock, {"EPHEMERALML_BASE_PORT": "6300"})[0] == "tcp:127.0.0.1:6305"
    assert endpoints(["--base-port", "6200"], {}) == [
        "vsock:any:6205", "vsock:3:6206", "vsock:3:6207"
    ]  # fmt: skip


def test_attestation_with_an_unparsable_leaf_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 7, finding 5: a certificate whose version cryptography does not know raised
    # x509.InvalidVersion out of `ephemeral attestation` (a traceback) before A3.
    import cbor2

    protected, unprotected, payload, sig = cbor2.loads(DOC4.read_bytes())
    body = cbor2.loads(payload)
    leaf = bytearray(body["certificate"])
    at = leaf.index(b"\xa0\x03\x02\x01\x02")
    leaf[at + 4] = 0x07
    body["certificate"] = bytes(leaf)
    bad = tmp_path / "bad.cbor"
    bad.write_bytes(cbor2.dumps([protected, unprotected, cbor2.dumps(body), sig]))
    code, _ = run("attestation", str(bad), "--at", DOC4_TIME)
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        "ephemeral: attestation error: A3 signature: leaf certificate is not a DER X.509 certificate (InvalidVersion: "
    )


def test_receipt_out_is_checked_before_any_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 8: a --receipt-out naming a file failed only after the inference (the
    # result was lost, with a traceback). Now it fails first, in one line, exit 2.
    taken = tmp_path / "taken"
    taken.write_text("x")
    for bad, why in ((taken, "exists and is not a folder"), (taken / "sub", "cannot create it: Not a directory")):
        code, _ = run("embed", "--mock", "--receipt-out", str(bad), "hello")
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"ephemeral: error: --receipt-out {bad}: {why}"]


def test_receipt_out_that_cannot_be_written_is_refused_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # os.access said yes to root for any folder; now a real write decides.
    folder = tmp_path / "read-only"
    folder.mkdir()

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    code, _ = run("embed", "--mock", "--receipt-out", str(folder), "hello")
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ephemeral: error: --receipt-out {folder}: not writable: Permission denied"
    ]


def test_receipt_out_in_a_folder_nobody_may_write(capsys: pytest.CaptureFixture[str]) -> None:
    # A real folder no one writes into, not even root (sysfs): the probe, not the mode
    # bits, decides, and it fails before any request.
    folder = Path("/sys/kernel")
    assert folder.is_dir()
    assert run("embed", "--mock", "--receipt-out", str(folder), "hello")[0] == 2
    assert capsys.readouterr().err.strip() == (
        f"ephemeral: error: --receipt-out {folder}: not writable: Permission denied"
    )


@pytest.mark.parametrize("command", ["attest", "embed"])
@pytest.mark.parametrize(("value", "shown"), [("0", "0.0"), ("-1", "-1.0"), ("nan", "nan"), ("inf", "inf"), ("-inf", "-inf")])
def test_a_timeout_that_is_no_deadline_is_refused_first(
    tmp_path: Path, command: str, value: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # First: before the policy (which may record its version) and before any request.
    # This home has no mock root; an error that came later would say so.
    policy = tmp_path / "policy.json"
    policy.write_text('{"version": 4, "measurements": [{"PCR0": "' + "11" * 48 + '"}]}')
    texts = ("hello",) if command == "embed" else ()
    for trust in (("--mock",), ("--policy", str(policy))):
        code, out = run(command, *trust, "--home", str(tmp_path), "--host", "127.0.0.1:1",
                        f"--timeout={value}", "--json", *texts)  # fmt: skip
        assert code == 2
        message = f"--timeout must be a positive, finite number of seconds, got {shown}"
        assert capsys.readouterr().err.strip().splitlines() == [f"ephemeral: error: {message}"]
        assert json.loads(out) == {"error": {"code": "config", "message": message}}
    assert not (tmp_path / "policy-versions.json").exists()


def test_an_enclave_that_fails_to_start_publishes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 8: a second enclave that failed to start rewrote published/measurements.json
    # and the healthy enclave was then refused (A9). Publishing now waits until it serves.
    published = tmp_path / "published"
    published.mkdir()
    healthy = '{"mode": "mock", "pcrs": {}}\n'
    (published / "measurements.json").write_text(healthy)
    owners = tmp_path / "owners.txt"
    owners.write_text("cd" * 32 + "\n")
    argv = ["--mock", "--home", str(tmp_path), "--listen", "127.0.0.1:0", "--owner-keys", str(owners),
            "--host-services", "tcp:127.0.0.1:9", "--host-wait", "0"]  # fmt: skip
    assert enclave_main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "ephemeral-enclave: transport error: cannot reach host services at tcp:127.0.0.1:9: connection refused"
    )
    assert (published / "measurements.json").read_text() == healthy
    assert not (published / "mock-root.pem").exists()
