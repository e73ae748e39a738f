"""A model as a model owner packages it and the enclave loads it: three files, one digest.

A model directory or bundle holds ``model.onnx``, ``tokenizer.json`` and
``model.json``; :class:`ModelFiles` is those files' exact bytes, checked when built.
The enclave attests :attr:`ModelFiles.digest`, a SHA-256 over a deterministic-CBOR
manifest of the file hashes and the pooling settings. Sans-IO: reading a directory
or the installed default model is the model owner's tool's job
(:mod:`ephemeralml.client._modeldir`); running the model is the enclave's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ._cbor import encode
from ._errors import ConfigError

__all__ = [
    "DIM",
    "MAX_SEQ_TOKENS",
    "MODEL_FILE_NAMES",
    "MODEL_ID",
    "MODEL_JSON_FILE",
    "ONNX_FILE",
    "POOLING",
    "TOKENIZER_FILE",
    "ModelFiles",
    "is_int",
]

#: The model's name in requests, manifests and receipts.
MODEL_ID = "all-MiniLM-L6-v2"

#: Width of an embedding (BERT hidden size of MiniLM-L6-H384).
DIM = 384

#: Tokens per input, [CLS] and [SEP] included. sentence-transformers' own limit for
#: this model (``sentence_bert_config.json``: ``max_seq_length``); it truncates
#: beyond it. We reject instead, so that a client never gets a vector for a text it
#: did not send. (The model was trained on 128 and its position table has 512.)
MAX_SEQ_TOKENS = 256

# BERT's position-embedding table: no model directory may claim a longer input.
_MAX_POSITIONS = 512

# model.json: exactly these keys. Only mean pooling with normalisation is
# implemented, so the file must say so rather than be silently ignored.
_MODEL_JSON_KEYS = frozenset({"model_id", "dim", "max_seq_tokens", "pooling", "normalize"})
POOLING = "mean"
_MAX_MODEL_ID_CHARS = 128

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MODEL_JSON_FILE = "model.json"
#: The files of a model, small ones first.
MODEL_FILE_NAMES = (MODEL_JSON_FILE, TOKENIZER_FILE, ONNX_FILE)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelFiles:
    """What a model directory holds, checked when built (no half-valid instance).

    ``onnx`` and ``tokenizer_json`` are the files' exact bytes; they are hashed
    as they are, so the digest names the files, not our reading of them.
    """

    model_id: str
    onnx: bytes = field(repr=False)
    tokenizer_json: bytes = field(repr=False)
    max_seq_tokens: int
    dim: int

    def __post_init__(self) -> None:
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise ConfigError("model_id must be a non-empty string")
        if len(self.model_id) > _MAX_MODEL_ID_CHARS or self.model_id != self.model_id.strip():
            raise ConfigError(
                f"model_id must be at most {_MAX_MODEL_ID_CHARS} characters"
                " without surrounding whitespace"
            )
        for name in ("onnx", "tokenizer_json"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or not value:
                raise ConfigError(f"{name} must be non-empty bytes")
        if not is_int(self.max_seq_tokens) or not 3 <= self.max_seq_tokens <= _MAX_POSITIONS:
            raise ConfigError(
                f"max_seq_tokens must be an integer from 3 to {_MAX_POSITIONS},"
                f" not {self.max_seq_tokens!r}"
            )
        if not is_int(self.dim) or self.dim < 1:
            raise ConfigError(f"dim must be a positive integer, not {self.dim!r}")

    @cached_property
    def _file_hashes(self) -> tuple[bytes, bytes]:
        # Hashing the ONNX file takes ~15 ms: once per instance is enough.
        return hashlib.sha256(self.onnx).digest(), hashlib.sha256(self.tokenizer_json).digest()

    @property
    def manifest(self) -> dict[str, Any]:
        """What :attr:`digest` covers: file hashes (raw 32-byte SHA-256) and settings."""
        onnx_sha256, tokenizer_sha256 = self._file_hashes
        return {
            "model_id": self.model_id,
            "onnx_sha256": onnx_sha256,
            "tokenizer_sha256": tokenizer_sha256,
            "pooling": POOLING,
            "normalize": True,
            "max_seq_tokens": self.max_seq_tokens,
        }

    @cached_property
    def digest(self) -> bytes:
        """The manifest digest the enclave attests: SHA-256 of deterministic CBOR."""
        return hashlib.sha256(encode(self.manifest)).digest()

    @classmethod
    def from_bundle(cls, files: Mapping[str, bytes | memoryview], *, where: str) -> ModelFiles:
        """The same three files, decrypted in memory from a verified bundle."""
        missing = sorted({ONNX_FILE, TOKENIZER_FILE, MODEL_JSON_FILE} - set(files))
        if missing:
            raise ConfigError(f"{where}: the bundle lacks {', '.join(missing)}")
        return cls.from_parts(
            bytes(files[MODEL_JSON_FILE]),
            bytes(files[ONNX_FILE]),
            bytes(files[TOKENIZER_FILE]),
            where=f"{where}: {MODEL_JSON_FILE}",
        )

    @classmethod
    def from_parts(
        cls, raw: bytes, onnx: bytes, tokenizer_json: bytes, *, where: str
    ) -> ModelFiles:
        meta_path = where
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{meta_path} is not valid JSON: {e}") from e
        if not isinstance(meta, dict):
            raise ConfigError(f"{meta_path} must hold a JSON object")
        missing = sorted(_MODEL_JSON_KEYS - meta.keys())
        unknown = sorted(meta.keys() - _MODEL_JSON_KEYS)
        if missing or unknown:
            raise ConfigError(f"{meta_path}: missing keys {missing}, unknown keys {unknown}")
        if meta["pooling"] != POOLING:
            raise ConfigError(f"{meta_path}: pooling must be {POOLING!r}, not {meta['pooling']!r}")
        if meta["normalize"] is not True:
            raise ConfigError(f"{meta_path}: normalize must be true")
        try:
            return cls(
                model_id=meta["model_id"],
                onnx=onnx,
                tokenizer_json=tokenizer_json,
                max_seq_tokens=meta["max_seq_tokens"],
                dim=meta["dim"],
            )
        except ConfigError as e:
            raise ConfigError(f"{meta_path}: {e}") from e
