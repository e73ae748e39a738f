"""The embedding model: all-MiniLM-L6-v2, int8 ONNX export, run by ONNX Runtime.

What the enclave serves is sentence-transformers' all-MiniLM-L6-v2: BERT WordPiece
tokens with [CLS]/[SEP], 6 transformer layers, mean pooling of the last hidden state
over the attention mask, then L2 normalisation. Two details decide whether our
vectors match the reference implementation (tests/vectors/embeddings):

* The ``tokenizer.json`` shipped with the model pads every input to 128 tokens and
  truncates at 128. sentence-transformers overrides both; so do we: no fixed
  padding (we pad a sub-batch only to its own longest input) and no truncation
  (an input over :data:`MAX_SEQ_TOKENS` is rejected, never silently cut).
* Mean pooling counts only real tokens (attention mask), never padding.

A model directory holds three files (:meth:`ModelFiles.from_dir`); the enclave
attests :attr:`ModelFiles.digest`, a SHA-256 over a deterministic-CBOR manifest of
the file hashes and the pooling settings. :class:`Embedder` loads the ONNX model
from bytes, never from a path, so that the model can be decrypted in memory only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from ephemeralml.common._errors import ConfigError, InferenceError, LimitError
from ephemeralml.common._modelfiles import (
    DIM,
    MAX_SEQ_TOKENS,
    MODEL_ID,
    ONNX_FILE,
    TOKENIZER_FILE,
    ModelFiles,
    is_int,
)
from ephemeralml.common._texts import MAX_INPUTS, MAX_TEXT_BYTES, check_texts

__all__ = [
    "DIM",
    "MAX_INPUTS",
    "MAX_SEQ_TOKENS",
    "MAX_SUB_BATCH",
    "MAX_TEXT_BYTES",
    "MODEL_ID",
    "Embedder",
    "ModelFiles",
    "load_session",
]

#: Inputs per ONNX Runtime call. Beyond 32 the throughput gain is gone while peak
#: memory (batch x seq x 384 floats per layer) keeps growing.
MAX_SUB_BATCH = 32

# Cost of one ONNX Runtime call beyond its tokens, in tokens: a 3-token input runs
# in ~1.2 ms, each further token adds ~0.07 ms (measured on 2 cores). Used only to
# choose where to cut sorted inputs into sub-batches.
_RUN_OVERHEAD_TOKENS = 16


class Embedder:
    """Sentence embeddings from a :class:`ModelFiles`, with ONNX Runtime on CPU.

    ``embed`` returns float32 ``[n, dim]``, L2-normalised, rows in input order.
    Every input is checked (:meth:`check_inputs`) before any compute; a bad one
    fails the whole call. Safe to call from several threads.
    """

    model_id: str
    dim: int
    digest: bytes
    max_seq_tokens: int

    def __init__(
        self, files: ModelFiles, *, intra_op_threads: int | None = None, device: str = "cpu"
    ) -> None:
        if intra_op_threads is not None and (not is_int(intra_op_threads) or intra_op_threads < 1):
            raise ConfigError(
                f"intra_op_threads must be a positive integer, not {intra_op_threads!r}"
            )
        self.model_id = files.model_id
        self.dim = files.dim
        self.digest = files.digest
        self.max_seq_tokens = files.max_seq_tokens
        self._tokenizer = _load_tokenizer(files.tokenizer_json)
        # For requests that ask for truncation: cuts at max_seq_tokens, [CLS] and [SEP]
        # included, as sentence-transformers does for this model.
        self._truncating = _load_tokenizer(files.tokenizer_json)
        self._truncating.enable_truncation(max_length=self.max_seq_tokens)
        # [CLS] and [SEP]: an input with no more tokens than this has no content.
        self._n_special = len(self._tokenizer.encode("").ids)
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or 0
        self._session = load_session(files.onnx, intra_op_threads, device)
        self.device = device
        names = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= names:
            raise ConfigError(
                f"{ONNX_FILE} must take input_ids and attention_mask, not {sorted(names)}"
            )
        self._with_token_types = "token_type_ids" in names
        output = self._session.get_outputs()[0]
        shape = output.shape
        if len(shape) != 3 or (isinstance(shape[-1], int) and shape[-1] != self.dim):
            raise ConfigError(
                f"{ONNX_FILE} output {output.name} has shape {shape};"
                f" expected [batch, sequence, {self.dim}]"
            )
        self._output = output.name

    def check_inputs(self, texts: Sequence[str], *, truncate: bool = False) -> None:
        """Raise if ``embed(texts)`` would refuse them; tokenizes, never runs the model.

        :class:`InferenceError`: not a list of strings, no texts, an empty (or
        whitespace-only) text, a text with no tokens. :class:`LimitError`: more
        than :data:`MAX_INPUTS` texts, a text over :data:`MAX_TEXT_BYTES` bytes or
        (unless ``truncate``) over ``max_seq_tokens`` tokens. Messages name the
        input's index.
        """
        self._encode(texts, _flags(texts, truncate))

    def embed(self, texts: Sequence[str], *, truncate: bool = False) -> npt.NDArray[np.float32]:
        """Embeddings of ``texts``: float32 ``[len(texts), dim]``, unit rows, input order.

        With ``truncate``, an input over ``max_seq_tokens`` tokens is cut to that many
        (its first tokens, then [SEP]) instead of refused; :meth:`run` also says which.
        """
        return self.run(texts, _flags(texts, truncate))[0]

    def run(
        self, texts: Sequence[str], truncate: Sequence[bool]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Embeddings of ``texts`` and which of them were cut; ``truncate[i]`` allows
        cutting input ``i`` (the batcher mixes requests that did and did not ask).

        Inputs are sorted by token count and run in sub-batches of similar
        length, each padded only to its own longest input.
        """
        encodings, lengths, cut = self._encode(texts, truncate)
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(encodings), self.dim), dtype=np.float32)
        for start, end in _plan_sub_batches(lengths[order].tolist()):
            rows = order[start:end]
            out[rows] = self._run([encodings[i] for i in rows], lengths[rows])
        return out, cut

    def _encode(
        self, texts: Sequence[str], truncate: Sequence[bool]
    ) -> tuple[list[Encoding], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Check, then tokenize once: the encodings serve the checks and the model."""
        checked = check_texts(texts)
        if len(truncate) != len(checked):
            raise InferenceError("one truncation choice per input text is needed")
        try:
            encodings = self._tokenizer.encode_batch(checked)
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise InferenceError(f"cannot tokenize the input texts: {e}") from e
        lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        cut = np.zeros(len(encodings), dtype=np.bool_)
        for i in np.flatnonzero(lengths > self.max_seq_tokens).tolist():
            if not truncate[i]:
                raise LimitError(
                    f"input {i} is {lengths[i]} tokens; the limit is {self.max_seq_tokens}"
                    " (ask for truncation to cut it)"
                )
            try:
                encodings[i] = self._truncating.encode(checked[i])
            except Exception as e:
                raise InferenceError(f"cannot tokenize input {i}: {e}") from e
            lengths[i], cut[i] = len(encodings[i]), True
        no_content = np.flatnonzero(lengths <= self._n_special)
        if no_content.size:
            raise InferenceError(f"input {int(no_content[0])} has no tokens the model can read")
        return encodings, lengths, cut

    def _run(
        self, encodings: list[Encoding], lengths: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        longest = int(lengths.max())
        ids = np.full((len(encodings), longest), self._pad_id, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : lengths[row]] = encoding.ids
        mask = (np.arange(longest)[None, :] < lengths[:, None]).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if self._with_token_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        try:
            hidden: npt.NDArray[np.float32] = np.asarray(
                self._session.run([self._output], feed)[0], dtype=np.float32
            )
        except Exception as e:  # onnxruntime's errors share no public base class
            raise InferenceError(f"the model failed to run: {e}") from e
        if hidden.shape != (len(encodings), longest, self.dim):
            raise InferenceError(f"the model returned shape {hidden.shape}")
        # Mean over real tokens only: [b, 1, s] @ [b, s, d] -> [b, 1, d].
        weights = mask.astype(np.float32)[:, None, :]
        summed = np.matmul(weights, hidden)[:, 0, :]
        pooled = summed / lengths.astype(np.float32)[:, None]
        # sentence-transformers' Normalize: x / max(||x||, 1e-12).
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit


def _flags(texts: Sequence[str], truncate: bool) -> list[bool]:
    return [truncate] * (len(texts) if isinstance(texts, list | tuple) else 0)


def _plan_sub_batches(lengths: list[int]) -> list[tuple[int, int]]:
    """Cut ascending ``lengths`` into runs of at most :data:`MAX_SUB_BATCH`.

    Minimises the modelled work, sum over runs of (overhead + count x longest),
    by dynamic programming: at most 64 x 32 steps. Mixed lengths split where
    padding would cost more than another call; similar lengths stay together.
    """
    n = len(lengths)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = lengths[end - 1]
        for start in range(max(0, end - MAX_SUB_BATCH), end):
            cost = best[start] + _RUN_OVERHEAD_TOKENS + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs = []
    end = n
    while end > 0:
        runs.append((cut[end], end))
        end = cut[end]
    return runs[::-1]


def _load_tokenizer(tokenizer_json: bytes) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    except Exception as e:  # UnicodeDecodeError, or tokenizers' own Exception
        raise ConfigError(f"{TOKENIZER_FILE} cannot be loaded: {e}") from e
    # The shipped file pads to 128 and truncates at 128 (see the module docstring):
    # we pad per sub-batch ourselves and check the length ourselves.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


#: Execution providers by ``--device``: CPU always; CUDA needs onnxruntime-gpu.
DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def providers_for(device: str) -> list[str]:
    """ONNX Runtime providers for ``device``; a clear error if it is not available."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of {sorted(DEVICES)}")
    wanted = DEVICES[device]
    if wanted not in ort.get_available_providers():
        raise ConfigError(
            f"--device {device} needs {wanted}, which this onnxruntime does not have"
            + (" (install onnxruntime-gpu instead of onnxruntime)" if device == "cuda" else "")
        )
    # CPU stays as the fallback for operators the GPU provider does not implement.
    return [wanted] if device == "cpu" else [wanted, DEVICES["cpu"]]


def load_session(
    onnx: bytes, intra_op_threads: int | None, device: str = "cpu"
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; warnings would go to stderr
    # One batch at a time (the batcher serialises them); all the enclave's cores
    # work on it. The memory arena stays on: batches of similar shapes reuse it.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    providers = providers_for(device)
    try:
        # From bytes, never a path: the weights may exist only in memory.
        return ort.InferenceSession(onnx, sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime's errors share no public base class
        raise ConfigError(f"{ONNX_FILE} cannot be loaded: {e}") from e
