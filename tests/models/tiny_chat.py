"""The tiny decoder as a chat model directory, as ``scripts/models.sh`` writes SmolLM2's.

Same graph and weights as :mod:`tests.models.tiny_decoder` (so greedy output is
exact against its numpy reference); the tokenizer's two words ``a1`` and ``b2`` are
replaced by ChatML's special markers ``<|im_start|>`` and ``<|im_end|>``, and
``go``, ``up`` and ``down`` by the roles ``user``, ``assistant`` and ``system``, so the
enclave renders a chat into ids this model knows. ``model.json`` has the chat
model format with the tiny context (32 tokens) and no default system message.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

from tests.models import tiny_decoder as tiny

__all__ = ["CHAT_WORDS", "MODEL_ID", "chat_prompt_ids", "reference_answer", "write_tiny_chat"]

MODEL_ID = "tiny-chat"

_SWAP = {"a1": "<|im_start|>", "b2": "<|im_end|>", "go": "user", "up": "assistant",
         "down": "system"}  # fmt: skip
CHAT_WORDS: tuple[str, ...] = tuple(_SWAP.get(w, w) for w in tiny.WORDS)
_SPECIAL = ("<eos>", "<|im_start|>", "<|im_end|>")


def tiny_chat_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(
        models.WordLevel({word: i for i, word in enumerate(CHAT_WORDS)}, unk_token="<eos>")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(list(_SPECIAL))
    return tokenizer


def model_json() -> dict[str, object]:
    return {
        "format": "ephemeralml-causal-lm-onnx/1",
        "name": "tiny-chat (tests)",
        "files": {"model": "model.onnx", "tokenizer": "tokenizer.json"},
        "context_length": tiny.CONTEXT,
        "vocab_size": tiny.VOCAB,
        "eos_token_ids": [tiny.EOS_ID],
        "chat_format": "chatml",
        "default_system_prompt": None,
    }


def write_tiny_chat(path: Path) -> Path:
    """Write the model directory (model.onnx, tokenizer.json, model.json) at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(tiny.tiny_decoder_onnx())
    (path / "tokenizer.json").write_text(tiny_chat_tokenizer().to_str())
    (path / "model.json").write_text(json.dumps(model_json(), indent=2) + "\n")
    return path


def chat_prompt_ids(messages: list[tuple[str, str]]) -> list[int]:
    """The ids the enclave's ChatML rendering gives, computed here from the words."""
    ids = []
    index = {w: i for i, w in enumerate(CHAT_WORDS)}
    for role, content in [*messages, ("assistant", None)]:
        ids += [index["<|im_start|>"], index[role]]
        if content is None:
            break
        ids += [index.get(w, tiny.EOS_ID) for w in content.split()]
        ids.append(index["<|im_end|>"])
    return ids


def reference_answer(prompt: list[int], max_tokens: int) -> tuple[str, str, int]:
    """The greedy answer by the numpy reference: its text (special tokens skipped, as
    the enclave decodes), finish reason and completion token count."""
    ids, _ = tiny.reference_greedy(prompt, min(max_tokens, tiny.CONTEXT - len(prompt)),
                                   stop_ids=[tiny.EOS_ID])  # fmt: skip
    stopped = bool(ids) and ids[-1] == tiny.EOS_ID
    words = [CHAT_WORDS[i] for i in (ids[:-1] if stopped else ids) if CHAT_WORDS[i] not in _SPECIAL]
    context = [CHAT_WORDS[i] for i in prompt[-5:] if CHAT_WORDS[i] not in _SPECIAL]
    # The loop decodes in context: words are joined by single spaces after the prompt's.
    text = (" " if context and words else "") + " ".join(words)
    return text, "stop" if stopped else "length", len(ids)
