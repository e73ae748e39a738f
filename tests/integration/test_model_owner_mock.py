"""README "Your own model in mock mode", command by command, with the real programs.

A model owner packages a model of their own under the mock deployment's local KMS
(no AWS credentials anywhere in the environment), checks the bundle, uploads it into
the mock store, restarts the enclave with ``--model``, embeds with it, maps the
receipt's manifest digest back to the release with ``model show --digest``, and
makes, signs and uses a policy from the enclave's published measurements. The ports
are the test's (the host on a base port whose BASE+9 is free, the rest chosen by the
kernel); every command is otherwise the README's.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeralml.bench._processes import ENCLAVE, HOST, start_program
from ephemeralml.client._modeldir import default_model_files, write_model_dir
from ephemeralml.runtime._home import MOCK_KMS_CREDENTIALS, MOCK_STORE
from tests.integration.conftest import BIN, Program, free_port, program_env

pytestmark = pytest.mark.integration

MODEL = "my-minilm"


@dataclasses.dataclass
class Host:
    home: Path
    env: dict[str, str]
    program: Program
    base: int
    ready: dict[str, str]

    def port(self, name: str) -> int:
        return int(self.ready[name].rsplit(":", 1)[1])


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ephemeral"), *args], env=env, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)  # fmt: skip


def owner_env(env: dict[str, str], tmp: Path) -> dict[str, str]:
    """The model owner's shell: no AWS credentials of any kind."""
    clean = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    clean |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"), "AWS_CONFIG_FILE": str(tmp / "none"),
              "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    return clean


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    home = tmp_path_factory.mktemp("owner-home")
    env = program_env(home)
    base = free_port() - 9  # the local KMS on BASE+9, as the README's host
    enclave_port = free_port()
    program = start_program(
        HOST,
        [str(BIN / "ephemeral-host"), "--mock", "--base-port", str(base), "--listen", "127.0.0.1:0",
         "--enclave", f"tcp:127.0.0.1:{enclave_port}", "--services-listen", "127.0.0.1:0",
         "--kms-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"],
        env,
    )  # fmt: skip
    ready = dict(program.ready)
    assert ready["kms_upstream"] == "kms.us-east-1.amazonaws.com:443"
    assert ready["mock_kms"] == f"tcp:127.0.0.1:{base + 9}"
    ready["enclave"] = f"tcp:127.0.0.1:{enclave_port}"
    yield Host(home, env, program, base, ready)
    assert program.stop() == 0, "".join(program.lines)


def test_package_upload_restart_embed_and_trace_a_receipt(host: Host, tmp_path: Path) -> None:
    env = owner_env(host.env, tmp_path)
    base = ["--base-port", str(host.base)]
    assert (host.home / MOCK_KMS_CREDENTIALS).is_file()  # where the client finds them

    # A model folder of one's own: model.onnx, tokenizer.json, model.json naming its id.
    model_dir = tmp_path / "my-model"
    write_model_dir(dataclasses.replace(default_model_files(), model_id=MODEL), model_dir)

    # ephemeral model package --mock --model-dir my-model/ --model-id my-minilm --release 1 --out bundle/
    bundle = tmp_path / "bundle"
    r = cli(env, "model", "package", "--mock", *base, "--model-dir", str(model_dir), "--model-id", MODEL,
            "--release", "1", "--out", str(bundle))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"packaged {MODEL} 1 release 1: ")

    # ephemeral model show bundle/
    r = cli(env, "model", "show", str(bundle), "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert (shown["model_id"], shown["release"], shown["bundle_files_checked"]) == (MODEL, 1, True)
    digest = shown["manifest_digest"]

    # ephemeral model upload bundle/ --mock
    r = cli(env, "model", "upload", str(bundle), "--mock")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"uploaded {MODEL} to {host.home / MOCK_STORE / MODEL}"

    # ephemeral-enclave --mock --model all-MiniLM-L6-v2 --model my-minilm
    enclave = start_program(
        ENCLAVE,
        [str(BIN / "ephemeral-enclave"), "--mock", "--listen", host.ready["enclave"],
         "--host-services", host.ready["services"], "--host-kms", host.ready["kms"],
         "--model", "all-MiniLM-L6-v2", "--model", MODEL, "--host-wait", "60"],
        host.env,
    )  # fmt: skip
    try:
        ready = enclave.ready
        assert ready["models"] == ["all-MiniLM-L6-v2", MODEL], "".join(enclave.lines)
        relay = ["--host", host.ready["relay"].removeprefix("tcp:")]

        # ephemeral embed --mock --model my-minilm --receipt-out receipts/ "some text"
        receipts = tmp_path / "receipts"
        r = cli(env, "embed", "--mock", *relay, "--model", MODEL, "--receipt-out", str(receipts), "some text")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"{MODEL}: 1 embedding(s) of dimension 384")
        (receipt,) = receipts.glob("*.receipt.cbor")

        # Which release served it: the receipt's manifest digest, then model show --digest.
        r = cli(env, "verify", str(receipt), "--mock", "--json")
        assert r.returncode == 0, r.stderr
        model_digest = json.loads(r.stdout)["receipt"]["model_digest"]
        assert model_digest == digest
        store = host.home / MOCK_STORE
        r = cli(env, "model", "show", *(str(p) for p in sorted(store.iterdir())), "--digest", model_digest)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[:3] == [
            f"manifest {store / MODEL / 'manifest.cose'} VERIFIED: signed by owner {shown['owner_key_id'][:16]}…",
            f"  model         {MODEL}",
            "  release       1",
        ]

        # A policy from the published measurements, pinning this release, signed and used.
        policy = tmp_path / "policy.json"
        r = cli(env, "policy", "from-measurements", "-o", str(policy), "--model", f"{MODEL}={digest}")
        assert r.returncode == 0, r.stderr
        assert "MOCK measurements" in r.stderr
        r = cli(env, "embed", "--policy", str(policy), *relay, "--model", MODEL, "text")
        assert r.returncode == 0, r.stderr
        signer = tmp_path / "signer.pem"
        r = cli(env, "policy", "keygen", "--out", str(signer))
        assert r.returncode == 0, r.stderr
        signer_hex = r.stdout.splitlines()[1].split()[-1]
        r = cli(env, "policy", "sign", str(policy), "--key", str(signer), "--out", str(tmp_path / "policy.cose"))
        assert r.returncode == 0, r.stderr
        r = cli(env, "embed", "--policy", str(tmp_path / "policy.cose"), "--policy-signer", signer_hex, *relay,
                "--model", MODEL, "--json", "pinned")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["receipts"][0]["model_digest"] == digest
    finally:
        assert enclave.stop() == 0, "".join(enclave.lines)


def test_packaging_without_a_running_host_says_what_to_start(host: Host, tmp_path: Path) -> None:
    env = owner_env(host.env, tmp_path)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    for name in ("model.json", "tokenizer.json", "model.onnx"):
        (model_dir / name).write_bytes(b"{}")
    dead = free_port()  # no local KMS there
    r = cli(env, "model", "package", "--mock", "--base-port", str(dead - 9), "--model-dir", str(model_dir),
            "--model-id", "x", "--out", str(tmp_path / "b"))  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"ephemeral: transport error: mock KMS at http://127.0.0.1:{dead} is not reachable: start "
        "`ephemeral-host --mock` first (it serves the local KMS on 127.0.0.1:BASE+9; give this command "
        "the host's --base-port or EPHEMERALML_BASE_PORT)"
    )
