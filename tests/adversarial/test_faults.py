"""Faults: processes killed or restarted, KMS down or slow at boot, a store that lies.

Each fault must end in a clear, typed, one-line error where someone is waiting, leave
the surviving programs serving, and never leave an enclave half-loaded: an enclave
either prints "serving" with every model it names verified, or exits with a one-line
error and listens on nothing.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.client._api import connect
from ephemeralml.client._package import load_owner_key
from ephemeralml.common._bundle import Manifest, owner_key_id, sign_manifest
from ephemeralml.common._cose import decode_sign1
from ephemeralml.common._errors import TransportError
from ephemeralml.mock._kms_tls import ensure_tls_ca
from ephemeralml.runtime._home import MOCK_KMS_TLS_CA
from tests.integration.conftest import Program, Stack, free_port, program_env

from .conftest import (
    SECRET,
    assert_no_plaintext,
    assert_serving,
    enclave_cmd,
    kms_port,
    launch_enclave,
    launch_host,
    policy,
    services_port,
    wait_port_closed,
)
from .hostile import Delay, Hook, HostileRelay

pytestmark = pytest.mark.integration

MODEL = "all-MiniLM-L6-v2"
#: A failed boot must end within this (KMS down: 5 tries and 7.5 s of backoff).
BOOT_FAILURE_BOUND_S = 60.0


@dataclass
class Site:
    """A host on its own home, and the port its enclave is to listen on."""

    home: Path
    env: dict[str, str]
    host: Program
    host_port: int
    enclave_port: int

    @property
    def store(self) -> Path:
        return self.home / "store" / MODEL

    def stack(self, enclave: Program) -> Stack:
        return Stack(self.home, self.env, enclave, self.host, self.enclave_port, self.host_port)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("fault-home")
    env = program_env(home)
    enclave_port = free_port()
    host, host_port = launch_host(env, enclave_port)
    yield Site(home, env, host, host_port, enclave_port)
    assert host.stop() == 0, "".join(host.lines)


@dataclass(frozen=True)
class Boot:
    code: int
    lines: list[str]


def boot(site: Site, *extra: str, kms: int | None = None) -> Boot:
    """An enclave that is expected to fail at boot: its exit code and its lines."""
    port = free_port()
    cmd = enclave_cmd(
        port, services_port(site.host), kms if kms is not None else kms_port(site.host), *extra
    )
    r = subprocess.run(cmd, env=site.env, capture_output=True, text=True,
                       timeout=BOOT_FAILURE_BOUND_S, stdin=subprocess.DEVNULL)  # fmt: skip
    lines = r.stderr.splitlines()
    # Nothing half-loaded: it never said it serves, and nothing listens where it would.
    assert not any("serving" in line for line in lines), r.stderr
    assert wait_port_closed(port, timeout_s=2)
    assert "Traceback" not in r.stderr, r.stderr
    return Boot(r.returncode, lines)


def assert_refused_load(b: Boot, why: str) -> None:
    """The one model did not load, for exactly ``why``, and the enclave said so and exited 2."""
    assert b.code == 2, b.lines
    assert f"ephemeral-enclave: error: could not load {MODEL}: {why}" in b.lines, b.lines
    assert b.lines[-1] == f"ephemeral-enclave: error: no model loaded ({MODEL}: {why})", b.lines


# ---------------------------------------------------------------- the enclave dies


def test_enclave_killed_mid_request(site: Site) -> None:
    enclave = launch_enclave(site.env, site.enclave_port, site.host)
    stack = site.stack(enclave)
    try:

        def kill() -> None:
            enclave.proc.send_signal(signal.SIGKILL)
            enclave.proc.wait(timeout=10)

        # The request goes out, then the enclave is killed before it can answer.
        with HostileRelay(site.host_port, {("up", 2): Hook(kill, after=True)}) as relay:
            with connect(relay.address, policy=policy(stack), timeout=10) as s:
                with pytest.raises(TransportError) as ei:
                    s.embed([SECRET])
        assert str(ei.value) in {
            f"{relay.address} closed the connection mid-session "
            "(is the enclave behind the host running?)",
            f"connection to {relay.address} lost: Connection reset by peer",
        }
        assert enclave.proc.returncode == -signal.SIGKILL
        # The host stays up and says clearly that no enclave answers.
        assert site.host.proc.poll() is None
        with pytest.raises(TransportError) as ei:
            connect(stack.address, policy=policy(stack), timeout=10)
        assert str(ei.value) == (
            f"{stack.address} closed the connection before the enclave answered "
            "(is the enclave behind the host running?)"
        )
        # A restarted enclave serves new sessions through the same host.
        enclave = launch_enclave(site.env, site.enclave_port, site.host)
        assert_serving(site.stack(enclave))
        assert_no_plaintext(relay, _embedding(site.stack(enclave), SECRET))
    finally:
        assert enclave.stop() in (0, -signal.SIGKILL)


def _embedding(stack: Stack, text: str) -> bytes:
    """The float32 bytes of ``text``'s embedding, straight from the enclave."""
    with connect(f"127.0.0.1:{stack.enclave_port}", policy=policy(stack), timeout=30) as s:
        return s.embed([text])[0].vectors.astype("<f4").tobytes()


# ---------------------------------------------------------------- the host restarts


def test_host_restarted(tmp_path: Path) -> None:
    env = program_env(tmp_path)
    enclave_port, listen = free_port(), free_port()
    host, _ = launch_host(env, enclave_port, listen)
    enclave = launch_enclave(env, enclave_port, host)
    stack = Stack(tmp_path, env, enclave, host, enclave_port, listen)
    try:
        with connect(stack.address, policy=policy(stack), timeout=10) as s:
            assert s.embed(["before the restart"])[0].receipt.receipt.seq == 0
            assert host.stop() == 0, "".join(host.lines)
            with pytest.raises(TransportError) as ei:
                s.embed(["during the restart"])
            assert str(ei.value) in {
                f"{stack.address} closed the connection mid-session "
                "(is the enclave behind the host running?)",
                f"connection to {stack.address} lost while sending: Broken pipe",
                f"connection to {stack.address} lost: Connection reset by peer",
            }
        # The enclave did not notice beyond its sessions ending.
        assert enclave.proc.poll() is None
        host, _ = launch_host(env, enclave_port, listen)
        stack = replace(stack, host=host)
        assert_serving(stack)
    finally:
        codes = (stack.host.stop(), enclave.stop())
        assert codes == (0, 0), "".join(stack.host.lines + enclave.lines)


# ---------------------------------------------------------------- KMS at boot


def test_kms_down_at_boot(site: Site) -> None:
    # The host's KMS egress proxy is not there: every try fails to connect.
    b = boot(site, kms=free_port())
    why = b.lines[-1].rpartition(f"({MODEL}: ")[2].removesuffix(")")
    assert re.fullmatch(
        rf"KMS unreachable for model {MODEL} after 5 attempts in \d+\.\d s "
        r"\(last: (EndpointConnectionError|ConnectionClosedError|ReadTimeoutError)\)",
        why,
    ), b.lines
    assert_refused_load(b, why)


def test_kms_behind_a_certificate_the_enclave_does_not_trust(site: Site, tmp_path: Path) -> None:
    # Whatever answers at the end of the tunnel must prove it is KMS under the CAs the
    # enclave trusts (a Nitro image's bundle; here another home's mock CA): a host that
    # sends the CONNECT somewhere else gets no key, only a TLS failure.
    ensure_tls_ca(tmp_path)
    b = boot(site, "--kms-ca-bundle", str(tmp_path / MOCK_KMS_TLS_CA))
    # Final at once, not retried: asking again reaches the same peer.
    assert_refused_load(
        b, f"KMS's TLS certificate did not verify for model {MODEL}: "
        "unable to get local issuer certificate",
    )  # fmt: skip


def test_kms_slow_at_boot(site: Site) -> None:
    # Every KMS answer is held 2 s (well within the enclave's read timeout): boot is
    # slower, and complete.
    with HostileRelay(kms_port(site.host), {("down", 0): Delay(2.0)}, raw=True,
                      max_connections=16) as relay:  # fmt: skip
        port = free_port()
        enclave = launch_enclave(site.env, port, site.host, kms=relay.port)
    try:
        stack = site.stack(enclave)
        assert_serving(stack, via=f"127.0.0.1:{port}")
    finally:
        assert enclave.stop() == 0, "".join(enclave.lines)


# ---------------------------------------------------------------- the store lies


@pytest.fixture
def store(site: Site) -> Iterator[Path]:
    """The site's store for MODEL, restored byte for byte after the test."""
    backup = site.home / "store-backup"
    shutil.copytree(site.store, backup)
    yield site.store
    shutil.rmtree(site.store)
    shutil.copytree(backup, site.store)
    shutil.rmtree(backup)


def _truncate(path: Path, keep: Callable[[int], int]) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])


def test_store_object_truncated(site: Site, store: Path) -> None:
    size = (store / "model.enc").stat().st_size
    _truncate(store / "model.enc", lambda n: n // 2)
    b = boot(site)
    assert_refused_load(b, f"M6 size: model.enc is {size // 2} bytes; the manifest says {size}")


def test_store_manifest_truncated(site: Site, store: Path) -> None:
    n = (store / "manifest.cose").stat().st_size
    _truncate(store / "manifest.cose", lambda n: n - 1)
    b = boot(site)
    # The last item is the 64-byte signature (a 2-byte head, then the bytes).
    assert_refused_load(
        b,
        f"M1 envelope: manifest is not well-formed CBOR: a string of 64 bytes at byte {n - 66} "
        "runs past the end",
    )


def test_store_key_truncated(site: Site, store: Path) -> None:
    _truncate(store / "model.key", lambda n: n - 1)
    b = boot(site)
    assert_refused_load(b, f"M10 key: model.key for {MODEL} is not the one its manifest names")


# ---------------------------------------------------------------- another bundle


def _resign(store: Path, key: Ed25519PrivateKey, **changes: object) -> Manifest:
    """Re-sign the stored manifest with ``changes`` (the owner did sign such a one)."""
    raw = (store / "manifest.cose").read_bytes()
    m = Manifest.from_cbor(decode_sign1(raw, what="manifest", max_bytes=16384).payload)
    m = replace(m, **changes)  # type: ignore[arg-type]
    (store / "manifest.cose").write_bytes(sign_manifest(m, key))
    return m


def test_serve_older_bundle(site: Site, store: Path, tmp_path: Path) -> None:
    # The owner signed release 1, then release 2, and the image carries the floor 2.
    # The host serves release 1 again: refused before any key is released (M11).
    _resign(store, load_owner_key(site.home / "mock-owner.pem"), release=1)
    floors = tmp_path / "model-floors.txt"
    floors.write_text(f"{MODEL} 2\n")
    b = boot(site, "--model-floors", str(floors))
    assert_refused_load(b, f"M11 rollback: {MODEL} release 1 is below the floor 2")


def test_serve_unordered_bundle_under_a_floor(site: Site, store: Path, tmp_path: Path) -> None:
    # A manifest signed before releases existed (v1, release 0) under any floor.
    _resign(store, load_owner_key(site.home / "mock-owner.pem"), release=0)
    floors = tmp_path / "model-floors.txt"
    floors.write_text(f"{MODEL} 1\n")
    b = boot(site, "--model-floors", str(floors))
    assert_refused_load(b, f"M11 rollback: {MODEL} release 0 is below the floor 1")


def test_serve_bundle_of_another_model(site: Site, store: Path) -> None:
    _resign(store, load_owner_key(site.home / "mock-owner.pem"), model_id="other-model")
    b = boot(site)
    assert_refused_load(b, f"M5 model: manifest is for 'other-model', not {MODEL!r}")


def test_serve_bundle_of_unknown_owner(site: Site, store: Path) -> None:
    stranger = Ed25519PrivateKey.generate()
    kid = owner_key_id(stranger.public_key().public_bytes_raw())
    _resign(store, stranger, owner=kid)
    b = boot(site)
    assert_refused_load(b, f"M2 owner: signed by an unknown key {kid.hex()[:16]}…")


def test_no_traceback_in_the_host_log(site: Site) -> None:
    # Last in this module: every fault above left the host's log free of foreign
    # exceptions (each failed boot checks its own enclave's).
    logs = "".join(site.host.lines)
    assert "Traceback" not in logs, logs
    assert site.host.proc.poll() is None
