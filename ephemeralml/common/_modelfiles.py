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
    "CHAT_FORMATS",
    "CHAT_MODEL_FORMAT",
    "DIM",
    "MAX_SEQ_TOKENS",
    "MODEL_FILE_NAMES",
    "MODEL_ID",
    "MODEL_JSON_FILE",
    "ONNX_FILE",
    "POOLING",
    "TOKENIZER_FILE",
    "ChatModelFiles",
    "ModelFiles",
    "is_int",
    "model_files_from_bundle",
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


# ---------------------------------------------------------------- causal language models

#: ``model.json``'s ``format`` for a decoder-only chat model (``scripts/models.sh``).
CHAT_MODEL_FORMAT = "ephemeralml-causal-lm-onnx/1"
#: Chat templates the enclave renders itself (no template engine in the enclave).
CHAT_FORMATS = frozenset({"chatml"})
#: What the enclave reads from a chat model's model.json.
_CHAT_JSON_REQUIRED = frozenset(
    {"format", "files", "context_length", "vocab_size", "eos_token_ids", "chat_format"}
)
#: What it may also hold: provenance and shapes, kept in the signed bundle as written
#: (``default_system_prompt`` and ``model_id`` are read when present).
_CHAT_JSON_INFO = frozenset(
    {
        "model_id", "default_system_prompt", "name", "license", "architecture", "source",
        "onnx", "num_layers", "hidden_size", "num_attention_heads", "num_kv_heads",
        "head_dim", "bos_token_id", "eos_token", "add_bos_token", "chat_template",
        "converted_with",
    }
)  # fmt: skip
#: The longest context a chat model may declare: bounds what one stream's KV cache
#: can grow to before any request is seen.
MAX_CONTEXT_TOKENS = 131072


@dataclass(frozen=True)
class ChatModelFiles:
    """A decoder-only chat model's files, checked when built: ``model.onnx`` with a KV
    cache (optimum's ``text-generation-with-past`` interface), ``tokenizer.json`` and
    the ``model.json`` that ``scripts/models.sh`` writes (``format``
    :data:`CHAT_MODEL_FORMAT`), kept as its exact bytes."""

    model_id: str
    onnx: bytes = field(repr=False)
    tokenizer_json: bytes = field(repr=False)
    model_json: bytes = field(repr=False)
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    chat_format: str
    default_system_prompt: str | None

    def __post_init__(self) -> None:
        ModelFiles(self.model_id, self.onnx, self.tokenizer_json, 3, 1)  # the shared checks
        if not is_int(self.context_length) or not 2 <= self.context_length <= MAX_CONTEXT_TOKENS:
            raise ConfigError(
                f"context_length must be an integer from 2 to {MAX_CONTEXT_TOKENS},"
                f" not {self.context_length!r}"
            )
        if not is_int(self.vocab_size) or self.vocab_size < 1:
            raise ConfigError(f"vocab_size must be a positive integer, not {self.vocab_size!r}")
        ids = self.eos_token_ids
        if not ids or not all(is_int(i) and 0 <= i < self.vocab_size for i in ids):
            raise ConfigError(
                f"eos_token_ids must be a non-empty list of ids below vocab_size, not {list(ids)!r}"
            )
        if self.chat_format not in CHAT_FORMATS:
            raise ConfigError(
                f"chat_format must be one of {sorted(CHAT_FORMATS)}, not {self.chat_format!r}"
            )
        if self.default_system_prompt is not None and not isinstance(
            self.default_system_prompt, str
        ):
            raise ConfigError("default_system_prompt must be a string or null")

    @classmethod
    def from_parts(
        cls, raw: bytes, onnx: bytes, tokenizer_json: bytes, *, model_id: str | None, where: str
    ) -> ChatModelFiles:
        """``model_id``: the id the model is served as (the signed manifest's); a
        model.json that names one must name the same."""
        meta = _json_object(raw, where)
        missing = sorted(_CHAT_JSON_REQUIRED - meta.keys())
        unknown = sorted(meta.keys() - _CHAT_JSON_REQUIRED - _CHAT_JSON_INFO)
        if missing or unknown:
            raise ConfigError(f"{where}: missing keys {missing}, unknown keys {unknown}")
        if meta["format"] != CHAT_MODEL_FORMAT:
            raise ConfigError(f"{where}: format must be {CHAT_MODEL_FORMAT!r}")
        files = meta["files"]
        if not isinstance(files, dict) or (files.get("model"), files.get("tokenizer")) != (
            ONNX_FILE,
            TOKENIZER_FILE,
        ):
            raise ConfigError(
                f"{where}: files must name model {ONNX_FILE!r} and tokenizer {TOKENIZER_FILE!r}"
            )
        named = meta.get("model_id")
        if named is not None and model_id is not None and named != model_id:
            raise ConfigError(f"{where}: model_id is {named!r}, not {model_id!r}")
        served = model_id if model_id is not None else named
        if served is None:
            raise ConfigError(f"{where}: no model_id (give one when packaging)")
        eos = meta["eos_token_ids"]
        try:
            return cls(
                model_id=served,
                onnx=onnx,
                tokenizer_json=tokenizer_json,
                model_json=raw,
                context_length=meta["context_length"],
                vocab_size=meta["vocab_size"],
                eos_token_ids=tuple(eos) if isinstance(eos, list) else eos,
                chat_format=meta["chat_format"],
                default_system_prompt=meta.get("default_system_prompt"),
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e


def _json_object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ConfigError(f"{where} must hold a JSON object")
    return meta


def model_files_from_bundle(
    files: Mapping[str, bytes | memoryview], *, model_id: str, where: str
) -> ModelFiles | ChatModelFiles:
    """The model in a verified bundle, of the kind its model.json declares: a chat
    model when it has ``format`` :data:`CHAT_MODEL_FORMAT`, else an embedding model."""
    missing = sorted({ONNX_FILE, TOKENIZER_FILE, MODEL_JSON_FILE} - set(files))
    if missing:
        raise ConfigError(f"{where}: the bundle lacks {', '.join(missing)}")
    raw = bytes(files[MODEL_JSON_FILE])
    meta_where = f"{where}: {MODEL_JSON_FILE}"
    if "format" in _json_object(raw, meta_where):
        return ChatModelFiles.from_parts(
            raw,
            bytes(files[ONNX_FILE]),
            bytes(files[TOKENIZER_FILE]),
            model_id=model_id,
            where=meta_where,
        )
    return ModelFiles.from_bundle(files, where=where)
