"""A tiny decoder-only transformer, built in code: an ONNX graph and a numpy reference.

The graph has the exact interface of an optimum ``text-generation-with-past`` export
of a llama-style model (SmolLM2's architecture), so the enclave's generation loop
runs on it as it would on the real model:

* inputs ``input_ids`` [batch, seq] int64, ``attention_mask`` [batch, past + seq]
  int64, ``position_ids`` [batch, seq] int64, ``past_key_values.{i}.key`` and
  ``.value`` [batch, KV_HEADS, past, HEAD_DIM] float32;
* outputs ``logits`` [batch, seq, VOCAB] float32, ``present.{i}.key`` and ``.value``
  [batch, KV_HEADS, past + seq, HEAD_DIM] float32.

Architecture (llama): token embedding; per layer RMSNorm, attention with rotary
positions (HF's ``rotate_half`` layout, computed from ``position_ids``) and
grouped-query attention (2 query heads share 1 KV head), residual, RMSNorm, SwiGLU
MLP, residual; final RMSNorm; lm_head tied to the embedding. A query at cache
position ``past + j`` sees keys ``0..past + j`` whose ``attention_mask`` is 1
(causal mask and padding mask, as HF does).

Weights come from ``np.random.default_rng(seed)``, so the model is the same bytes
every time it is built with the same numpy and onnx. :func:`reference_logits` is the
same math in float64 numpy, with no KV cache (every call recomputes the whole
sequence): an independent check of the graph and of the loop's cache handling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers

__all__ = [
    "CONTEXT",
    "EOS_ID",
    "HEADS",
    "HEAD_DIM",
    "HIDDEN",
    "KV_HEADS",
    "LAYERS",
    "SEED",
    "VOCAB",
    "WORDS",
    "Weights",
    "make_weights",
    "reference_greedy",
    "reference_logits",
    "tiny_decoder_onnx",
    "tiny_tokenizer",
]

VOCAB = 64
HIDDEN = 16
LAYERS = 2
HEADS = 2
KV_HEADS = 1
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 32
ROPE_THETA = 10000.0
RMS_EPS = 1e-5
#: The model's declared context (its ``max_position_embeddings``); rotary positions
#: work past it, so it is a declared limit, as it is for SmolLM2 (8192).
CONTEXT = 32
SEED = 12
#: ``<eos>`` in :func:`tiny_tokenizer`.
EOS_ID = 0
#: Attention and MLP outputs scaled up, so the context moves the residual stream enough
#: for varied greedy continuations (at 1.0 the current token dominates).
OUT_SCALE = 2.0
OPSET = 18
IR_VERSION = 8  # opset 18's IR; ONNX Runtime >= 1.14 reads it

#: The tokenizer's words, id = index: a special ``<eos>``, then 63 words.
WORDS: tuple[str, ...] = (
    "<eos>",
    *"abcdefghijklmnopqrstuvwxyz",
    *"0123456789",
    "the", "cat", "sat", "on", "mat", "dog", "ran", "far", "and", "then", "we",
    "saw", "a1", "b2", "stop", "go", "up", "down", "in", "out", "is", "it",
    "to", "be", "or", "not", "yes",
)  # fmt: skip

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Layer:
    attn_norm: F32  # [HIDDEN]
    q: F32  # [HIDDEN, HEADS * HEAD_DIM]
    k: F32  # [HIDDEN, KV_HEADS * HEAD_DIM]
    v: F32  # [HIDDEN, KV_HEADS * HEAD_DIM]
    o: F32  # [HEADS * HEAD_DIM, HIDDEN]
    mlp_norm: F32  # [HIDDEN]
    gate: F32  # [HIDDEN, INTERMEDIATE]
    up: F32  # [HIDDEN, INTERMEDIATE]
    down: F32  # [INTERMEDIATE, HIDDEN]


@dataclass(frozen=True)
class Weights:
    embed: F32  # [VOCAB, HIDDEN]
    layers: tuple[Layer, ...]
    final_norm: F32  # [HIDDEN]
    lm_head: F32  # [HIDDEN, VOCAB], untied


@cache
def make_weights(seed: int = SEED) -> Weights:
    """Fixed weights: N(0, 1/fan_in) projections, unit-ish norms, N(0, 1) embedding."""
    rng = np.random.default_rng(seed)

    def dense(n_in: int, n_out: int) -> F32:
        scaled: F64 = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
        return scaled.astype(np.float32)

    def norm() -> F32:
        return (1.0 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)

    embed = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    layers = tuple(
        Layer(
            attn_norm=norm(),
            q=dense(HIDDEN, HEADS * HEAD_DIM),
            k=dense(HIDDEN, KV_HEADS * HEAD_DIM),
            v=dense(HIDDEN, KV_HEADS * HEAD_DIM),
            o=OUT_SCALE * dense(HEADS * HEAD_DIM, HIDDEN),
            mlp_norm=norm(),
            gate=dense(HIDDEN, INTERMEDIATE),
            up=dense(HIDDEN, INTERMEDIATE),
            down=OUT_SCALE * dense(INTERMEDIATE, HIDDEN),
        )
        for _ in range(LAYERS)
    )
    final_norm = norm()
    lm_head = rng.standard_normal((HIDDEN, VOCAB)).astype(np.float32)
    return Weights(embed=embed, layers=layers, final_norm=final_norm, lm_head=lm_head)


# --- The ONNX graph -------------------------------------------------------------


class _Graph:
    """Collects nodes and initializers; names are made unique by a counter."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        self._n += 1
        name = out or f"{op_type.lower()}_{self._n}"
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [name], name=f"n{self._n}", **attrs)
        )
        return name


def _rms_norm(g: _Graph, x: str, weight: str, eps: str, axis: str) -> str:
    mean_sq = g.op("ReduceMean", g.op("Mul", x, x), axis, keepdims=1)
    return g.op("Mul", g.op("Div", x, g.op("Sqrt", g.op("Add", mean_sq, eps))), weight)


def _rotary(g: _Graph, x: str, cos: str, sin: str, consts: dict[str, str]) -> str:
    first = g.op("Slice", x, consts["zero"], consts["half"], consts["last_axis"])
    second = g.op("Slice", x, consts["half"], consts["head_dim"], consts["last_axis"])
    rotated = g.op("Concat", g.op("Neg", second), first, axis=-1)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))


def _build_graph(w: Weights) -> onnx.ModelProto:
    g = _Graph()
    consts = {
        "eps": g.const("rms_eps", RMS_EPS),
        "last_axis": g.const("axes_last", [-1], np.int64),
        "zero": g.const("start_0", [0], np.int64),
        "half": g.const("half_head", [HEAD_DIM // 2], np.int64),
        "head_dim": g.const("head_dim", [HEAD_DIM], np.int64),
    }
    axis = consts["last_axis"]
    scale = g.const("attn_scale", 1.0 / np.sqrt(HEAD_DIM))
    lowest = g.const("mask_min", np.finfo(np.float32).min)
    embed = g.const("embed_tokens", w.embed)

    # Rotary angles from position_ids: [b, s, 1] x [HEAD_DIM/2] -> [b, 1, s, HEAD_DIM].
    inv_freq = g.const(
        "inv_freq", 1.0 / ROPE_THETA ** (np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM)
    )
    pos = g.op("Unsqueeze", g.op("Cast", "position_ids", to=TensorProto.FLOAT), axis)
    freqs = g.op("Mul", pos, inv_freq)
    angles = g.op(
        "Unsqueeze",
        g.op("Concat", freqs, freqs, axis=-1),
        g.const("axes_1", [1], np.int64),
    )
    cos, sin = g.op("Cos", angles), g.op("Sin", angles)

    # Allowed (query, key) pairs [b, 1, 1, s, past + s]: key index <= past + query
    # index (causal, on cache positions), and attention_mask[key] == 1.
    one = g.const("one", 1, np.int64)
    seq = g.op("Gather", g.op("Shape", "input_ids"), one, axis=0)
    total = g.op("Gather", g.op("Shape", "attention_mask"), one, axis=0)
    zero_scalar = g.const("zero", 0, np.int64)
    past = g.op("Sub", total, seq)
    key_idx = g.op(
        "Unsqueeze", g.op("Range", zero_scalar, total, one), g.const("axes_0", [0], np.int64)
    )
    query_idx = g.op("Unsqueeze", g.op("Add", g.op("Range", zero_scalar, seq, one), past), axis)
    causal = g.op("LessOrEqual", key_idx, query_idx)  # [s, total]
    padding = g.op(
        "Unsqueeze",
        g.op("Cast", "attention_mask", to=TensorProto.BOOL),
        g.const("axes_123", [1, 2, 3], np.int64),
    )  # [b, 1, 1, 1, total]
    allowed = g.op("And", causal, padding)  # [b, 1, 1, s, total]

    group = HEADS // KV_HEADS
    shape_q = g.const("shape_q", [0, 0, HEADS, HEAD_DIM], np.int64)
    shape_kv = g.const("shape_kv", [0, 0, KV_HEADS, HEAD_DIM], np.int64)
    shape_q5 = g.const("shape_q5", [0, KV_HEADS, group, -1, HEAD_DIM], np.int64)
    shape_heads = g.const("shape_heads", [0, HEADS, -1, HEAD_DIM], np.int64)
    shape_hidden = g.const("shape_hidden", [0, 0, HEADS * HEAD_DIM], np.int64)
    axes_2 = g.const("axes_2", [2], np.int64)

    h = g.op("Gather", embed, "input_ids", axis=0)  # [b, s, HIDDEN]
    for i, layer in enumerate(w.layers):
        p = f"layers.{i}."
        x = _rms_norm(g, h, g.const(p + "attn_norm", layer.attn_norm), consts["eps"], axis)
        q = g.op("MatMul", x, g.const(p + "q_proj", layer.q))
        k = g.op("MatMul", x, g.const(p + "k_proj", layer.k))
        v = g.op("MatMul", x, g.const(p + "v_proj", layer.v))
        q = g.op("Transpose", g.op("Reshape", q, shape_q), perm=[0, 2, 1, 3])  # [b, H, s, d]
        k = g.op("Transpose", g.op("Reshape", k, shape_kv), perm=[0, 2, 1, 3])  # [b, KV, s, d]
        v = g.op("Transpose", g.op("Reshape", v, shape_kv), perm=[0, 2, 1, 3])
        q = _rotary(g, q, cos, sin, consts)
        k = _rotary(g, k, cos, sin, consts)
        k_all = g.op("Concat", f"past_key_values.{i}.key", k, axis=2, out=f"present.{i}.key")
        v_all = g.op("Concat", f"past_key_values.{i}.value", v, axis=2, out=f"present.{i}.value")
        # Grouped-query attention by broadcasting: query heads [b, KV, group, s, d]
        # against keys [b, KV, 1, total, d] (HF's repeat_kv: head h uses KV head h // group).
        q5 = g.op("Reshape", q, shape_q5)
        k5 = g.op("Transpose", g.op("Unsqueeze", k_all, axes_2), perm=[0, 1, 2, 4, 3])
        v5 = g.op("Unsqueeze", v_all, axes_2)
        scores = g.op("Mul", g.op("MatMul", q5, k5), scale)
        probs = g.op("Softmax", g.op("Where", allowed, scores, lowest), axis=-1)
        attn = g.op("MatMul", probs, v5)  # [b, KV, group, s, d]
        attn = g.op("Transpose", g.op("Reshape", attn, shape_heads), perm=[0, 2, 1, 3])
        attn = g.op("Reshape", attn, shape_hidden)
        h = g.op("Add", h, g.op("MatMul", attn, g.const(p + "o_proj", layer.o)))
        x = _rms_norm(g, h, g.const(p + "mlp_norm", layer.mlp_norm), consts["eps"], axis)
        gate = g.op("MatMul", x, g.const(p + "gate_proj", layer.gate))
        up = g.op("MatMul", x, g.const(p + "up_proj", layer.up))
        act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)  # SwiGLU
        h = g.op("Add", h, g.op("MatMul", act, g.const(p + "down_proj", layer.down)))
    h = _rms_norm(g, h, g.const("final_norm", w.final_norm), consts["eps"], axis)
    g.op("MatMul", h, g.const("lm_head", w.lm_head), out="logits")

    def info(name: str, dtype: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, dtype, list(shape))

    kv_past: list[int | str] = ["batch_size", KV_HEADS, "past_sequence_length", HEAD_DIM]
    kv_present: list[int | str] = ["batch_size", KV_HEADS, "total_sequence_length", HEAD_DIM]
    inputs = [
        info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", VOCAB])]
    for i in range(LAYERS):
        for kind in ("key", "value"):
            inputs.append(info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_past))
            outputs.append(info(f"present.{i}.{kind}", TensorProto.FLOAT, kv_present))
    graph = helper.make_graph(g.nodes, "tiny_decoder", inputs, outputs, g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ephemeralml-tests",
        producer_version="1",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


@cache
def tiny_decoder_onnx(seed: int = SEED) -> bytes:
    """The serialized model (checked by ``onnx.checker`` with shape inference)."""
    serialized: bytes = _build_graph(make_weights(seed)).SerializeToString()
    return serialized


# --- The numpy reference --------------------------------------------------------


def _rms_norm_ref(x: F64, weight: F32) -> F64:
    out: F64 = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * weight
    return out


def _rotary_ref(x: F64, positions: npt.NDArray[np.int64]) -> F64:
    """x [b, heads, s, d] rotated by angle position * theta^(-2i/d), HF layout."""
    inv_freq = 1.0 / ROPE_THETA ** (np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM)
    freqs = positions[..., None].astype(np.float64) * inv_freq  # [b, s, d/2]
    angles = np.concatenate([freqs, freqs], axis=-1)[:, None]  # [b, 1, s, d]
    half = HEAD_DIM // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out: F64 = x * np.cos(angles) + rotated * np.sin(angles)
    return out


def reference_logits(
    input_ids: Sequence[Sequence[int]] | npt.NDArray[np.int64],
    attention_mask: npt.NDArray[np.int64] | None = None,
    position_ids: npt.NDArray[np.int64] | None = None,
    *,
    seed: int = SEED,
) -> F64:
    """Logits [b, s, VOCAB] in float64 for whole sequences, without a KV cache.

    Defaults: every token attended, positions ``0..s-1``.
    """
    w = make_weights(seed)
    ids = np.asarray(input_ids, dtype=np.int64)
    b, s = ids.shape
    mask = np.ones((b, s), np.int64) if attention_mask is None else attention_mask
    positions = np.broadcast_to(np.arange(s), (b, s)) if position_ids is None else position_ids
    allowed = np.tril(np.ones((s, s), dtype=bool))[None, None] & (mask[:, None, None, :] == 1)
    group = HEADS // KV_HEADS
    h = w.embed[ids].astype(np.float64)
    for layer in w.layers:
        x = _rms_norm_ref(h, layer.attn_norm)
        q = (x @ layer.q).reshape(b, s, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)
        k = (x @ layer.k).reshape(b, s, KV_HEADS, HEAD_DIM).transpose(0, 2, 1, 3)
        v = (x @ layer.v).reshape(b, s, KV_HEADS, HEAD_DIM).transpose(0, 2, 1, 3)
        q, k = _rotary_ref(q, positions), _rotary_ref(k, positions)
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # HF repeat_kv
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(HEAD_DIM)
        scores = np.where(allowed, scores, np.finfo(np.float32).min)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, HIDDEN)
        h = h + attn @ layer.o
        x = _rms_norm_ref(h, layer.mlp_norm)
        gate = x @ layer.gate
        h = h + (gate / (1.0 + np.exp(-gate)) * (x @ layer.up)) @ layer.down
    out: F64 = _rms_norm_ref(h, w.final_norm) @ w.lm_head.astype(np.float64)
    return out


def reference_greedy(
    prompt: Sequence[int], max_tokens: int, *, stop_ids: Sequence[int] = ()
) -> tuple[list[int], list[F64]]:
    """Greedy continuation of ``prompt``: the ids (a stop id included, then it ends)
    and the last-position logits of each step. Recomputes the whole sequence per step."""
    ids, steps = list(prompt), []
    for _ in range(max_tokens):
        logits = reference_logits([ids])[0, -1]
        steps.append(logits)
        ids.append(int(np.argmax(logits)))
        if ids[-1] in stop_ids:
            break
    return ids[len(prompt) :], steps


def tiny_tokenizer() -> Tokenizer:
    """A WordLevel tokenizer over :data:`WORDS`, split on whitespace; ``<eos>`` is
    special. Without a decoder, ``decode`` joins words with single spaces."""
    tokenizer = Tokenizer(
        models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<eos>")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<eos>"])
    return tokenizer
