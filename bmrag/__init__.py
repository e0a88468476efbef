"""bmrag: BMRetriever biomedical retrieval and question answering.

Public API::

    from bmrag import BMRetrieverEncoder, BMRetrieverEmbedding, BMRetrieverReranker
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
    "Recipe": "bmrag.encoder",
    "BMRetrieverEmbedding": "bmrag.llama_index.embedding",
    "BMRetrieverReranker": "bmrag.llama_index.reranker",
    "INSTRUCTIONS": "bmrag.prompts",
    "get_instruction": "bmrag.prompts",
}

if TYPE_CHECKING:
    from bmrag.encoder import BMRetrieverEncoder, Recipe
    from bmrag.llama_index.embedding import BMRetrieverEmbedding
    from bmrag.llama_index.reranker import BMRetrieverReranker
    from bmrag.prompts import INSTRUCTIONS, get_instruction


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bmrag' has no attribute {name!r}")
