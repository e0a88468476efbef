"""LlamaIndex components over the framework-free :mod:`bmrag.encoder`: an embedding model and a reranker."""

from __future__ import annotations

from bmrag.llama_index.embedding import BMRetrieverEmbedding
from bmrag.llama_index.reranker import BMRetrieverReranker

__all__ = ["BMRetrieverEmbedding", "BMRetrieverReranker"]
