"""What the clinical QA app serves and how (:class:`AppConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bmrag.index.chroma_client import index_location
from bmrag.loading import DTypeName
from bmrag.options import DEFAULT_RERANK_MODEL
from bmrag.qa.grounding import AnswerMode, check_answer_mode, default_answer_mode

MAX_TOP_K = 10
"""Largest top-k the settings offer (the prompt must still fit the generator's context window)."""

Backend = Literal["local", "vllm"]


@dataclass
class AppConfig:
    """What the app serves and how.

    Attributes:
        index_dir: Index built by ``bmrag index``.
        collection: Chroma collection name.
        backend: ``"local"`` (in-process transformers) or ``"vllm"`` (OpenAI-compatible server).
        api_base: vLLM server URL (default ``http://127.0.0.1:8000/v1``); vllm backend only.
        llm_model: Generator model: local alias/dir, or the vLLM served name (default: the only one served).
        answer: ``"extractive"`` (quoted sentences, no generator loaded) or ``"generative"``; None: generative
            with the vllm backend, else extractive (:func:`bmrag.qa.grounding.default_answer_mode`).
        threads: Local backend: torch CPU threads (None keeps torch's default).
        dtype: Weights dtype of the in-process models (retriever, reranker, local generator); None: the
            hardware's default (:func:`bmrag.loading.default_dtype`).
        max_new_tokens: Answer budget in tokens (default: the generator's, 64).
        rerank_model: Model loaded (lazily, once) when a user ticks "rerank".
        top_k: Initial value of the top-k setting.
        concurrency_limit: Answers computed at once by the Gradio queue (default: 1 for local, 8 for vLLM).
        max_queue: Requests the queue holds before refusing new ones.
    """

    index_dir: Path
    collection: str = "bmrag"
    backend: Backend = "local"
    api_base: str | None = None
    llm_model: str | None = None
    answer: AnswerMode | None = None
    threads: int | None = None
    dtype: DTypeName | None = None
    max_new_tokens: int | None = None
    rerank_model: str = DEFAULT_RERANK_MODEL
    top_k: int = 3
    concurrency_limit: int | None = None
    max_queue: int = 64

    def __post_init__(self) -> None:
        self.index_dir = index_location(self.index_dir)  # a directory or http://HOST:PORT of a Chroma server
        if self.backend not in ("local", "vllm"):
            raise ValueError(f"backend must be 'local' or 'vllm', got {self.backend!r}")
        self.answer = check_answer_mode(self.answer or default_answer_mode(self.backend))
        if self.backend == "local" and self.api_base is not None:
            raise ValueError("api_base applies to the vllm backend only")
        if self.backend == "vllm" and self.threads is not None:
            raise ValueError("threads applies to the local backend only")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in 1..{MAX_TOP_K}, got {self.top_k}")
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValueError(f"concurrency_limit must be >= 1, got {self.concurrency_limit}")

    @property
    def queue_concurrency(self) -> int:
        """Gradio ``concurrency_limit`` of the ask event (see :func:`launch`)."""
        if self.concurrency_limit is not None:
            return self.concurrency_limit
        return 1 if self.backend == "local" else 8
