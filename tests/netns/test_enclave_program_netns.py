"""The whole enclave program boots and serves from a namespace that looks like an enclave's.

The enclave program (the mock profile: mock NSM, everything else as on Nitro) runs
under ``unshare -n``: loopback down, no route, no resolver. Its only ways out are Unix
sockets standing for vsock: the host's model store and credentials, and the host's
egress proxy, through which boto3 reaches ``kms.us-east-1.amazonaws.com`` over TLS
(the mock's TLS front, under the mock KMS CA). It brings ``lo`` up for its own
forwarder, has the key released to its attestation, decrypts the model in memory and
serves on a Unix socket; the host relays a client's TCP connection to it, and the
client verifies the attestation and the receipt.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from ephemeralml.bench._processes import (
    ENCLAVE,
    HOST,
    program_command,
    program_env,
    start_program,
)
from tests.integration.conftest import BIN
from tests.netns import unshare_unavailable

_NO_NETNS = unshare_unavailable()
pytestmark = pytest.mark.skipif(_NO_NETNS is not None, reason=str(_NO_NETNS))


def _metrics(health: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{health.removeprefix('tcp:')}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line[:1] != "#")}


def test_the_enclave_program_boots_and_serves_from_an_enclave_like_namespace(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    env = program_env(home)
    sock = {name: f"unix:{tmp_path / name}.sock" for name in ("enclave", "services", "kms")}
    host = start_program(HOST, [
        *program_command(HOST), "--mock", "--listen", "127.0.0.1:0", "--enclave", sock["enclave"],
        "--services-listen", sock["services"], "--kms-listen", sock["kms"],
        "--mock-kms-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
    ], env)  # fmt: skip
    try:
        enclave = start_program(ENCLAVE, [
            "unshare", "-n", *program_command(ENCLAVE), "--mock", "--listen", sock["enclave"],
            "--host-services", sock["services"], "--host-kms", sock["kms"], "--host-wait", "60",
        ], env)  # fmt: skip
        try:
            assert enclave.ready["listen"] == sock["enclave"]
            assert enclave.ready["models"] == ["all-MiniLM-L6-v2"]
            relay = str(host.ready["relay"]).removeprefix("tcp:")
            out = tmp_path / "receipts"
            embed = subprocess.run(
                [str(BIN / "ephemeral"), "embed", "--mock", "--host", relay, "--json",
                 "--receipt-out", str(out), "from a client outside the namespace"],
                env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert embed.returncode == 0, embed.stderr
            doc = json.loads(embed.stdout)
            assert (doc["model"], doc["dim"], len(doc["embeddings"])) == ("all-MiniLM-L6-v2", 384, 1)
            (receipt,) = out.glob("*.receipt.cbor")
            verify = subprocess.run(
                [str(BIN / "ephemeral"), "verify", str(receipt), "--mock"],
                env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert verify.returncode == 0, verify.stderr
            # The key left KMS through exactly one tunnel to the one allowed name.
            metrics = _metrics(str(host.ready["health"]))
            assert metrics["ephemeralml_egress_tunnels_total"] == 1
            assert metrics["ephemeralml_egress_refused_total"] == 0
        finally:
            assert enclave.stop() == 0, "".join(enclave.lines)
    finally:
        assert host.stop() == 0, "".join(host.lines)
