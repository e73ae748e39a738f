"""The import graph is the trust boundary: the contract in .importlinter holds, and
breaks on an import across programs (so CI's `lint-imports` can fail)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vectors_path import REPO_ROOT

LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), str(REPO_ROOT / ".importlinter"), "--no-cache"],
        capture_output=True, text=True, env=env, cwd=root, timeout=120,
    )  # fmt: skip


def test_the_contract_holds() -> None:
    done = _lint(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 4 kept, 0 broken." in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("client/_api.py", "import ephemeralml.enclave._loader", "Programs import only the core and the runtime"),
        ("enclave/_server.py", "import ephemeralml.host._store", "Programs import only the core and the runtime"),
        ("host/_cli.py", "import ephemeralml.mock._kms", "No production module imports the mock package or the benchmark"),
        ("common/_frame.py", "import socket", "The protocol core does no I/O and needs no AWS SDK or model runtime"),
        ("client/_policy.py", "import onnxruntime", "A client install carries no model runtime"),
    ],
)
def test_an_import_across_the_boundary_breaks_it(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    copy = tmp_path / "ephemeralml"
    shutil.copytree(REPO_ROOT / "ephemeralml", copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    done = _lint(tmp_path)
    assert done.returncode == 1
    out = " ".join(done.stdout.split())  # the report wraps long names
    assert f"{contract} BROKEN" in out
    source = "ephemeralml." + module.removesuffix(".py").replace("/", ".")
    target = line.split()[-1]
    assert f"- {source} -> {target} (l." in out
