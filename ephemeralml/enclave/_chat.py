"""A chat model in the enclave: its template, its tokenizer and the generation loop.

:class:`ChatModel` turns a :class:`~ephemeralml.common._messages.GenerateRequest` into
prompt token ids and :class:`~._generate.GenerationParams` (every check before any
compute: a bad request is a typed refusal), and runs :func:`~._generate.generate`.

The chat template is rendered here in code, not by a template engine: ChatML, as
SmolLM2's own template writes it (``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n`` per
message, the model's default system message first when the chat has none, then
``<|im_start|>assistant\\n``). A message whose content holds one of the tokenizer's
special tokens is refused: the tokenizer would read ``<|im_start|>`` inside a user's
text as the marker itself, so a message could forge another role's turn. A plain
``prompt`` is the caller's whole text and is tokenized as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from tokenizers import Tokenizer

from ephemeralml.common._errors import ConfigError, InferenceError
from ephemeralml.common._messages import ChatMessage, GenerateRequest
from ephemeralml.common._modelfiles import ChatModelFiles

from ._generate import (
    DecoderModel,
    Finished,
    GenerationParams,
    StreamState,
    Token,
    generate,
    start_stream,
)

__all__ = ["ChatModel", "render_chatml"]


def render_chatml(messages: tuple[ChatMessage, ...], default_system: str | None) -> str:
    """The ChatML text of a chat, ready for the assistant's answer."""
    parts = []
    if messages[0].role != "system" and default_system is not None:
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts += [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages]
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class ChatModel:
    """A loaded chat model (files checked, ONNX Runtime session made from bytes)."""

    def __init__(
        self,
        files: ChatModelFiles,
        *,
        intra_op_threads: int | None = None,
        device: str = "cpu",
        io_binding: bool | None = None,
    ) -> None:
        self.model_id = files.model_id
        self.decoder = DecoderModel.from_bytes(
            files.onnx,
            context_limit=files.context_length,
            intra_op_threads=intra_op_threads,
            device=device,
            io_binding=io_binding,
        )
        if self.decoder.vocab_size != files.vocab_size:
            raise ConfigError(
                f"model {files.model_id}: the ONNX model's vocabulary is"
                f" {self.decoder.vocab_size}, model.json says {files.vocab_size}"
            )
        try:
            self._tokenizer = Tokenizer.from_str(files.tokenizer_json.decode("utf-8"))
        except Exception as e:  # tokenizers raises plain Exception
            raise ConfigError(f"model {files.model_id}: tokenizer.json does not load: {e}") from e
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._specials = tuple(
            t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special
        )
        if files.chat_format == "chatml" and not {"<|im_start|>", "<|im_end|>"} <= set(
            self._specials
        ):
            raise ConfigError(
                f"model {files.model_id}: chat_format chatml needs the special tokens"
                " <|im_start|> and <|im_end|> in tokenizer.json"
            )
        self.eos_token_ids = files.eos_token_ids
        self._system = files.default_system_prompt
        #: What the receipt's result names as where the model ran.
        self.provider: str = self.decoder.session.get_providers()[0]

    @property
    def context_limit(self) -> int:
        return self.decoder.context_limit

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        """The prompt's token ids: the rendered chat, or the plain prompt."""
        if request.messages is not None:
            for i, m in enumerate(request.messages):
                hit = next((s for s in self._specials if s in m.content), None)
                if hit is not None:
                    raise InferenceError(
                        f"message {i} contains the special token {hit!r}, which only the"
                        " chat template may write"
                    )
            text = render_chatml(request.messages, self._system)
        else:
            assert request.prompt is not None
            text = request.prompt
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            raise InferenceError("the prompt has no tokens")
        return ids

    @staticmethod
    def params(request: GenerateRequest) -> GenerationParams:
        """The request's sampling parameters, checked (:class:`InferenceError`)."""
        return GenerationParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            seed=request.seed,
            stop=request.stop,
        )

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def stream(
        self,
        prompt: list[int],
        params: GenerationParams,
        cancelled: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[Token | Finished]:
        """The generation loop over ``prompt``; its checks run now (the context bound
        is a :class:`LimitError` before any compute)."""
        check = cancelled.is_set if isinstance(cancelled, threading.Event) else cancelled
        return generate(
            self.decoder,
            prompt,
            params,
            decode=self.decode,
            eos_token_ids=self.eos_token_ids,
            cancelled=check,
        )

    def start(
        self,
        prompt: list[int],
        params: GenerationParams,
        cancelled: threading.Event,
        cached: int = 0,
    ) -> StreamState:
        """A stream's state for the batching scheduler; the same checks as :meth:`stream`.
        ``cached``: the prompt's first ids a prefix cache already holds."""
        return start_stream(
            self.decoder,
            prompt,
            params,
            decode=self.decode,
            eos_token_ids=self.eos_token_ids,
            cancelled=cancelled.is_set,
            cached=cached,
        )
