"""``scripts/build_host_release.sh`` against a stand-in for pip (no PyPI here).

The archive holds what terraform's bootstrap reads (host.lock, wheels/, systemd/), is
the same bytes when built twice, prints its SHA-256 last, and a failed step leaves
nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build_host_release.sh"
BOOTSTRAP = ROOT / "infra" / "terraform" / "modules" / "ephemeralml" / "user_data.sh.tftpl"
EPOCH = 1_700_000_000

FAKE_PIP = """\
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
assert args[:2] == ["-m", "pip"], args
if os.environ.get("FAKE_PIP_FAIL") == args[2]:
    print("ERROR: No matching distribution", file=sys.stderr)
    sys.exit(1)
if args[2] == "download":
    out = Path(args[args.index("-d") + 1])
    for name in ("cbor2-5.6.5-cp311-cp311-manylinux_2_17_x86_64.whl", "h11-0.14.0-py3-none-any.whl"):
        (out / name).write_bytes(name.encode())
elif args[2] == "wheel":
    out = Path(args[args.index("--wheel-dir") + 1])
    (out / "ephemeralml-0.1.0-py3-none-any.whl").write_bytes(b"our wheel")
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    (tmp_path / "fake_pip.py").write_text(FAKE_PIP)
    exe = tmp_path / "python"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "fake_pip.py"} "$@"\n')
    exe.chmod(0o755)
    return exe


def build(fake_python: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ, "PYTHON": str(fake_python), "SOURCE_DATE_EPOCH": str(EPOCH),
        "FAKE_LOG": str(fake_python.parent / "pip.log"), **env,
    }  # fmt: skip
    return subprocess.run(
        [str(SCRIPT), "--out", str(out)], env=full, capture_output=True, text=True, timeout=60
    )


def test_the_archive_is_what_the_bootstrap_installs_and_is_reproducible(
    fake_python: Path, tmp_path: Path
) -> None:
    done = build(fake_python, tmp_path / "a")
    assert done.returncode == 0, done.stderr
    archive = tmp_path / "a" / "host-release.tar.gz"
    data = archive.read_bytes()
    assert done.stdout.splitlines()[-1] == f"{hashlib.sha256(data).hexdigest()}  {archive}"
    calls = [json.loads(line) for line in (fake_python.parent / "pip.log").read_text().splitlines()]
    assert calls[0][:3] == ["-m", "pip", "download"]
    assert {"--require-hashes", "--no-deps", "--only-binary=:all:"} <= set(calls[0])
    assert calls[0][calls[0].index("-r") + 1] == str(ROOT / "requirements" / "host.lock")
    assert calls[1][:3] == ["-m", "pip", "wheel"] and calls[1][-1] == str(ROOT)

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "host.lock", "systemd", "systemd/ephemeralml-enclave.service",
            "systemd/ephemeralml-host.service", "wheels",
            "wheels/cbor2-5.6.5-cp311-cp311-manylinux_2_17_x86_64.whl",
            "wheels/ephemeralml-0.1.0-py3-none-any.whl", "wheels/h11-0.14.0-py3-none-any.whl",
        ]  # fmt: skip
        assert {(m.mtime, m.uid, m.gid) for m in members} == {(EPOCH, 0, 0)}
        lock = tar.extractfile("host.lock")
        assert lock is not None and lock.read() == (ROOT / "requirements" / "host.lock").read_bytes()
        names = {m.name for m in members}

    # Every path the terraform bootstrap reads from the unpacked archive is in it.
    bootstrap = BOOTSTRAP.read_text()
    read = set(re.findall(r'\$work/((?:host\.lock|wheels|systemd)[\w./$-]*)"', bootstrap))
    units = re.search(r"for unit in ([\w.\- ]+); do", bootstrap)
    assert units is not None
    assert read == {"host.lock", "wheels", "systemd/$unit"}
    assert {f"systemd/{u}" for u in units.group(1).split()} <= names
    assert '"$work"/wheels/ephemeralml-*.whl' in bootstrap

    # Built again from the same wheels: the same bytes, so the same host_release_sha256.
    again = build(fake_python, tmp_path / "b")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "b" / "host-release.tar.gz").read_bytes() == data


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("download", "pip could not download the wheels of requirements/host.lock"),
        ("wheel", "pip could not build the ephemeralml wheel"),
    ],
)
def test_a_failed_step_is_one_line_and_leaves_nothing(
    fake_python: Path, tmp_path: Path, step: str, message: str
) -> None:
    out = tmp_path / "out"
    done = build(fake_python, out, FAKE_PIP_FAIL=step)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == f"build_host_release.sh: error: {message}"
    assert not out.exists()


def test_a_bad_argument_is_one_line() -> None:
    done = subprocess.run([str(SCRIPT), "--outt", "x"], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stderr) == (
        2, "build_host_release.sh: error: unknown argument: --outt (see --help)\n"
    )  # fmt: skip
