"""One way to get an index: :func:`open_index` reads the manifest, loads the recorded model, opens the store.

Every caller that queries an index (the QA chain, the app, ``bmrag search``, the RAG evaluation) goes through
here, so an index is always queried with the model, revision and recipe that filled it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmrag.index.chroma_client import index_location
from bmrag.index.manifest import DEFAULT_COLLECTION, read_manifest
from bmrag.index.store import open_store
from bmrag.loading import cache_dir

if TYPE_CHECKING:
    from bmrag.llama_index.embedding import BMRetrieverEmbedding
    from bmrag.llama_index.vector_store import BMRagChromaVectorStore

RECIPE_FIELDS = ("max_length", "pooling", "normalize", "padding_side", "query_template", "passage_template")
"""Recipe fields a manifest pins when its model is loaded again."""


def default_index_dir() -> Path:
    """Where ``bmrag index`` / ``bmrag demo`` keep the sample index: ``cache_dir()/index/demo``."""
    return cache_dir("index", "demo")


def load_embedding(model: str, *, batch_size: int = 32, recipe: dict[str, Any] | None = None,
                   revision: str | None = None, dtype: str | None = None,
                   api_base: str | None = None) -> BMRetrieverEmbedding:
    """Load ``model`` as a :class:`BMRetrieverEmbedding`; ``recipe`` (from a manifest) pins the recipe fields.

    With ``api_base`` the forward passes run on that vLLM pooling server (``bmrag serve-embed``), which must serve
    ``model``; ``dtype`` then declares the dtype the server was started with (recorded in the manifest).
    """
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    if api_base is not None:
        if recipe is not None or revision is not None:
            raise ValueError("an embedding server serves its own weights and recipe: recipe= and revision= do not "
                             "apply with api_base=")
        return BMRetrieverEmbedding(model_name=model, api_base=api_base, embed_batch_size=batch_size, dtype=dtype)
    if recipe is None:
        return BMRetrieverEmbedding(model_name=model, revision=revision, embed_batch_size=batch_size, dtype=dtype)
    from bmrag.encoder import BMRetrieverEncoder

    pinned = {k: recipe[k] for k in RECIPE_FIELDS if k in recipe}
    encoder = BMRetrieverEncoder.from_pretrained(model, revision=revision, dtype=dtype, **pinned)
    return BMRetrieverEmbedding(encoder=encoder, embed_batch_size=batch_size)


@dataclass
class OpenIndex:
    """An open index and the model it was built with.

    Attributes:
        path: The index directory.
        collection: The Chroma collection name.
        manifest: What the collection records (model, revision, recipe JSON, space, dim, ``count``...).
        embed_model: The recorded model (or the one asked for), loaded with the recorded recipe.
        store: The open vector store; :meth:`close` releases it.
    """

    path: Path | str
    collection: str
    manifest: dict[str, Any]
    embed_model: BMRetrieverEmbedding
    store: BMRagChromaVectorStore

    @property
    def label(self) -> str:
        """``DIR (collection 'bmrag', N passages)`` for reports."""
        return f"{self.path} (collection {self.collection!r}, {self.manifest['count']} passages)"

    def close(self) -> None:
        """Release the Chroma client."""
        self.store.close()


def open_index(path: str | os.PathLike[str] | None = None, *, collection: str = DEFAULT_COLLECTION,
               model: str | None = None, dtype: str | None = None, batch_size: int = 32,
               api_base: str | None = None) -> OpenIndex:
    """Open an existing index with the model recorded in its manifest.

    Args:
        path: Index directory (default :func:`default_index_dir`).
        collection: Chroma collection name.
        model: Query with this model instead of the recorded one (its manifest must still match: a different
            model raises :class:`~bmrag.index.manifest.IndexMismatchError`).
        dtype: Weights dtype of the embedding model (default: the hardware's, see :mod:`bmrag.loading`).
        batch_size: Texts per forward pass when embedding.
        api_base: Embed questions on this vLLM pooling server (``bmrag serve-embed``) instead of in this process;
            it must serve the model (and recipe) the index records. ``dtype`` then defaults to the recorded one.

    Raises:
        FileNotFoundError: No index at ``path`` or no such collection.
        IndexMismatchError: ``model`` is not the model the index was built with.
    """
    path = index_location(path) if path is not None else default_index_dir()
    manifest = read_manifest(path, collection)
    if api_base is not None:
        embed_model = load_embedding(model or manifest["model"], batch_size=batch_size,
                                     dtype=dtype or manifest.get("dtype") or None, api_base=api_base)
    elif model:
        embed_model = load_embedding(model, batch_size=batch_size, dtype=dtype)
    else:
        embed_model = load_embedding(manifest["model"], recipe=json.loads(manifest["recipe"]), batch_size=batch_size,
                                     revision=manifest.get("revision") or None, dtype=dtype)
    store = open_store(path, embed_model, collection=collection, create=False)
    return OpenIndex(path=path, collection=collection, manifest=manifest, embed_model=embed_model, store=store)
