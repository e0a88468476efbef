"""In-process transformers generation (greedy) as a LlamaIndex LLM: the QA chain's embedded generator."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from bmrag.loading import DTypeName, default_dtype, materialize_model, resolve_dtype
from bmrag.models import DEFAULT_LOCAL_MODEL
from bmrag.validation import reject_unknown_kwargs

DEFAULT_MAX_NEW_TOKENS = 64
"""Answer budget: short cited answers; a 135M model that goes longer mostly repeats itself."""
DEFAULT_CONTEXT_WINDOW = 2048
"""Matches ``--max-model-len 2048`` in ``bmrag serve-llm``; evidence is trimmed to fit it."""


class LocalLLM(CustomLLM):
    """In-process transformers generation (greedy) as a LlamaIndex LLM.

    Chat messages are rendered with the model's own chat template. ``complete(prompt)`` sends the prompt
    as one user message; ``complete(prompt, formatted=True)`` sends it verbatim.

    Example:
        >>> llm = LocalLLM()                                  # SmolLM2-135M-Instruct, greedy
        >>> llm.complete("What does aspirin inhibit?").text   # doctest: +SKIP
    """

    model_name: str = Field(default=DEFAULT_LOCAL_MODEL,
                            description="Offline alias, local Hugging Face directory or Hub id of an instruct model.")
    dtype: DTypeName | None = Field(
        default=None,
        description="Weights dtype; None picks bf16 on GPUs and CPUs with native bf16 matmuls (~3x faster there, "
                    "same answers as fp32) and fp32 on other CPUs (bf16 is emulated and far slower there); "
                    "filled in with the dtype used.")
    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, gt=0, description="Generation budget per answer.")
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, gt=0,
                                description="Prompt + answer tokens the chain may use.")
    device: str = Field(default="cpu", description="Torch device, e.g. 'cpu' or 'cuda'.")
    threads: int | None = Field(
        default=None, gt=0,
        description="CPU threads for torch (process-wide: torch.set_num_threads). None keeps torch's default; "
                    "1 is much faster when other processes keep the cores busy (oversubscription).")

    _model: Any = PrivateAttr()
    _tokenizer: Any = PrivateAttr()
    _path: Path | str = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        reject_unknown_kwargs({k: v for k, v in kwargs.items() if k not in type(self).model_fields},
                              type(self).model_fields, "LocalLLM")
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = default_dtype(kwargs.get("device") or "cpu")
        super().__init__(**kwargs)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self._path = materialize_model(self.model_name)
        self._tokenizer = AutoTokenizer.from_pretrained(self._path)
        if not getattr(self._tokenizer, "chat_template", None):
            raise ValueError(f"{self.model_name} ({self._path}) has no chat template; LocalLLM needs an "
                             "instruct model")
        dtype = resolve_dtype(self.dtype, self.device)
        self._model = AutoModelForCausalLM.from_pretrained(self._path, dtype=dtype).to(self.device).eval()

    @classmethod
    def class_name(cls) -> str:
        return "bmrag_local_llm"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.max_new_tokens,
                           model_name=self.model_name, is_chat_model=True)

    @property
    def path(self) -> Path | str:
        """The directory the weights were loaded from."""
        return self._path

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in this model's vocabulary (used to fit evidence into the context)."""
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate(self, text: str, max_tokens: int) -> str:
        """The first ``max_tokens`` tokens of ``text``, decoded."""
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        return self._tokenizer.decode(ids).strip()

    def render(self, messages: Sequence[ChatMessage]) -> str:
        """The exact prompt string the model sees for ``messages`` (chat template + generation prompt)."""
        turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
        return self._tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    def _inputs(self, prompt: str) -> dict[str, Any]:
        # The chat template already contains every special token; adding BOS again would change the answer.
        enc = self._tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        return {k: v.to(self._model.device) for k, v in enc.items()}

    def _generate_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        extra = {"max_new_tokens": int(kwargs.pop("max_new_tokens", kwargs.pop("max_tokens", self.max_new_tokens)))}
        if kwargs:
            raise TypeError(f"LocalLLM generation got unknown keyword argument(s) {sorted(kwargs)}; "
                            "valid: max_new_tokens, max_tokens")
        return {**extra, "do_sample": False, "pad_token_id": self._tokenizer.pad_token_id
                or self._tokenizer.eos_token_id}

    def _run(self, prompt: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        import torch

        inputs = self._inputs(prompt)
        gen_kwargs = self._generate_kwargs(kwargs)
        with torch.inference_mode():
            out = self._model.generate(**inputs, **gen_kwargs)
        new = out[0, inputs["input_ids"].shape[1]:]
        eos = self._tokenizer.eos_token_id
        stopped = bool(len(new)) and int(new[-1]) == eos
        # Same fields as an OpenAI response, so callers read both backends alike.
        usage = {"completion_tokens": int(len(new)), "prompt_tokens": int(inputs["input_ids"].shape[1]),
                 "finish_reason": "stop" if stopped or len(new) < gen_kwargs["max_new_tokens"] else "length"}
        return self._tokenizer.decode(new, skip_special_tokens=True).strip(), usage

    def _stream(self, prompt: str, kwargs: dict[str, Any]):
        import torch
        from transformers import TextIteratorStreamer

        inputs = self._inputs(prompt)
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        gen_kwargs = {**inputs, **self._generate_kwargs(kwargs), "streamer": streamer}

        def work() -> None:
            with torch.inference_mode():
                self._model.generate(**gen_kwargs)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            thread.join()

    def _as_prompt(self, prompt: str, formatted: bool) -> str:
        return prompt if formatted else self.render([ChatMessage(role=MessageRole.USER, content=prompt)])

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text, usage = self._run(self._as_prompt(prompt, formatted), kwargs)
        return CompletionResponse(text=text, raw=usage)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        def gen() -> CompletionResponseGen:
            text = ""
            for delta in self._stream(self._as_prompt(prompt, formatted), kwargs):
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text, usage = self._run(self.render(messages), kwargs)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), raw=usage)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        def gen() -> ChatResponseGen:
            text = ""
            for delta in self._stream(self.render(messages), kwargs):
                text += delta
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)

        return gen()
