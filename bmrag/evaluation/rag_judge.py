"""LLM-judged RAG metrics, only against an explicit judge endpoint: RAGAS is never allowed to reach OpenAI."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@contextlib.contextmanager
def openai_guard(allowed: Sequence[str] = ()) -> Iterator[list[str]]:
    """Make sure nothing inside reaches OpenAI: yields the base URLs of the OpenAI clients created inside.

    * An ``openai.OpenAI`` / ``openai.AsyncOpenAI`` created inside raises ``RuntimeError`` unless its base URL
      starts with one of ``allowed`` (the judge's and the vLLM generator's endpoints); api.openai.com always
      raises. Without a judge and with the local generator nothing needs a client, so any client raises.
    * ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` are set to a bogus key and a closed local URL while inside
      (restored afterwards), so even a client created another way cannot authenticate with OpenAI.
    """
    import openai

    created: list[str] = []
    prefixes = [str(a).rstrip("/") for a in allowed if a]
    originals = {cls: cls.__init__ for cls in (openai.OpenAI, openai.AsyncOpenAI)}
    saved = {key: os.environ.get(key) for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}

    def guarded(original):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            url = str(self.base_url).rstrip("/")
            created.append(url)
            if "api.openai.com" in url or not any(url.startswith(a) for a in prefixes):
                raise RuntimeError(f"bmrag eval rag: an OpenAI client for {url} was created, but only "
                                   f"{list(prefixes) or 'none (no judge configured)'} may be used; RAGAS must not "
                                   "reach OpenAI (pass --judge-api-base for the LLM-judged metrics)")
        return __init__

    os.environ["OPENAI_API_KEY"] = "bmrag-no-openai-key"
    os.environ["OPENAI_BASE_URL"] = "http://127.0.0.1:9/bmrag-no-openai"
    for cls, original in originals.items():
        cls.__init__ = guarded(original)  # type: ignore[method-assign]
    try:
        yield created
    finally:
        for cls, original in originals.items():
            cls.__init__ = original  # type: ignore[method-assign]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _EncoderEmbeddings:
    """A RAGAS embedding backed by a bmrag encoder (for AnswerRelevancy), so no embedding service is called."""

    @staticmethod
    def build(model: str) -> Any:
        from ragas.embeddings.base import BaseRagasEmbedding

        from bmrag.encoder import BMRetrieverEncoder

        encoder = BMRetrieverEncoder.from_pretrained(model)

        class EncoderEmbeddings(BaseRagasEmbedding):
            def embed_text(self, text: str, **kwargs: Any) -> list[float]:
                return encoder.encode_documents([text])[0].tolist()

            async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
                return self.embed_text(text)

            def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
                return encoder.encode_documents(list(texts)).tolist()

        return EncoderEmbeddings()


@dataclass
class Judge:
    """An OpenAI-compatible judge endpoint (vLLM) for the LLM-judged RAGAS metrics."""

    api_base: str
    model: str | None = None
    embedding_model: str = "all-MiniLM-L6-v2"
    timeout: float = 120.0

    def build(self) -> tuple[Any, Any, str]:
        """``(faithfulness metric, answer-relevancy metric, served model name)``."""
        from openai import AsyncOpenAI, OpenAI
        from ragas.llms import llm_factory
        from ragas.metrics.collections import AnswerRelevancy, Faithfulness

        model = self.model
        if model is None:
            # The one model the server serves (like `bmrag ask --backend vllm`); no guessing among several.
            served = [m.id for m in OpenAI(base_url=self.api_base, api_key="EMPTY", timeout=10,
                                           max_retries=0).models.list().data]
            if len(served) != 1:
                raise ValueError(f"the judge at {self.api_base} serves {served}; name one with --judge-model")
            model = served[0]
        client = AsyncOpenAI(base_url=self.api_base, api_key="EMPTY", timeout=self.timeout, max_retries=1)
        llm = llm_factory(model, provider="openai", client=client, temperature=0.0, max_tokens=1024)
        embeddings = _EncoderEmbeddings.build(self.embedding_model)
        return Faithfulness(llm=llm), AnswerRelevancy(llm=llm, embeddings=embeddings), model


# ------------------------------------------------------------------------------------------------ the run
