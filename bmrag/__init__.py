"""bmrag: BMRetriever biomedical retrieval and question answering.

Public API::

    from bmrag import BMRetrieverEncoder, BMRetrieverEmbedding, BMRetrieverReranker
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bmrag._version import __version__

__all__ = [
    "BMRetrieverEmbedding",
    "BMRetrieverEncoder",
    "BMRetrieverReranker",
    "INSTRUCTIONS",
    "Recipe",
    "get_instruction",
    "__version__",
]

# LlamaIndex is imported only when an adapter is used, so training and evaluation stay light.
_LAZY = {
    "BMRetrieverEncoder": "bmrag.encoder",
    "Recipe": "bmrag.recipe",
    "BMRetrieverEmbedding": "bmrag.llama_index.embedding",
    "BMRetrieverReranker": "bmrag.llama_index.reranker",
    "INSTRUCTIONS": "bmrag.prompts",
    "get_instruction": "bmrag.prompts",
}

if TYPE_CHECKING:
    from bmrag.encoder import BMRetrieverEncoder
    from bmrag.llama_index.embedding import BMRetrieverEmbedding
    from bmrag.llama_index.reranker import BMRetrieverReranker
    from bmrag.prompts import INSTRUCTIONS, get_instruction
    from bmrag.recipe import Recipe


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bmrag' has no attribute {name!r}")
