"""Persistent Chroma collections for bmrag: the right distance space, a recorded manifest, idempotent upserts.

A collection is created with the distance space the encoder's recipe needs (dot product -> ``"ip"``,
normalised vectors -> ``"cosine"``; Chroma's default L2 would rank differently and cannot be changed
later) and its metadata records a manifest: model, revision, recipe, space, dimension, dtype and the
Chroma and bmrag versions. Reopening compares the manifest with the embedding model and refuses a
mismatch, because vectors from different models or recipes are not comparable.

Scores: :class:`BMRagChromaVectorStore` reports ``node.score = 1 - distance``, which is the model's own
similarity: the dot product in ``"ip"`` collections (Chroma's ip distance is ``1 - dot``) and the cosine
in ``"cosine"`` collections. The stock ``ChromaVectorStore`` reports ``exp(-distance)`` instead
(``exp(dot - 1)`` for ip), which is monotone but unreadable and overflows (``OverflowError``) once a dot
product passes ~710, which unnormalised BMRetriever vectors reach.

Node ids are ``"{doc_id}#{chunk}"`` (:func:`node_id`) and writes are upserts, so indexing the same corpus
twice adds nothing; :func:`index_nodes` also skips ids already stored, so a re-run embeds nothing.

Example:
    >>> emb = BMRetrieverEmbedding(model_name="all-MiniLM-L6-v2")
    >>> store = open_store("~/.cache/bmrag/index/demo", emb)
    >>> report = index_nodes(store, corpus_to_nodes(corpus, emb.encoder), emb, show_progress=True)
    >>> index = VectorStoreIndex.from_vector_store(store, embed_model=emb)
"""

from __future__ import annotations

import logging
import os

from bmrag.index.chroma_client import index_location
from bmrag.index.manifest import (
    DEFAULT_COLLECTION,
    MANIFEST_PREFIX,
    EmbedModelLike,
    check_manifest,
    chroma_client,
    describe_manifest,
    encoder_of,
    manifest_for,
    no_collection_message,
    recorded_manifest,
    space_of,
)
from bmrag.llama_index.vector_store import BMRagChromaVectorStore

logger = logging.getLogger(__name__)

HNSW_EF_SEARCH = 200
"""Candidates Chroma's HNSW search keeps (``ef_search``) in collections bmrag creates; Chroma's default is 100.
Measured (``python evals/bench_hnsw.py``, all-MiniLM-L6-v2, SciFact 5,183 abstracts, 1,109 queries): recall@10
against exact search 0.9961 at 100, 0.9995 at 200, for 0.25 -> 0.49 ms per query, which the query's own encoding
dwarfs. Collections created before keep their setting."""


def open_store(path: str | os.PathLike[str], embed_model: EmbedModelLike, *, collection: str = DEFAULT_COLLECTION,
               create: bool = True) -> BMRagChromaVectorStore:
    """Open (or create) a persistent Chroma collection for ``embed_model`` and wrap it for LlamaIndex.

    Args:
        path: Directory of the Chroma database (created when ``create``).
        embed_model: A :class:`BMRetrieverEmbedding` or :class:`BMRetrieverEncoder`; its recipe decides the
            distance space and its description is the manifest checked on reopen.
        collection: Collection name (Chroma needs >= 3 characters).
        create: Create the directory and collection when missing; otherwise raise ``FileNotFoundError``.

    Raises:
        IndexMismatchError: The collection was built with another model, recipe, space or dimension.
        FileNotFoundError: ``create=False`` and nothing to open.
    """
    expected = manifest_for(encoder_of(embed_model))
    path = index_location(path)  # a directory, or http://HOST:PORT of a Chroma server (nothing to create here)
    if isinstance(path, str):
        pass
    elif create:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise FileNotFoundError(f"{path}: no index directory here")
    client = chroma_client(path)
    where = f"index {path} (collection {collection!r})"
    try:
        names = [c.name for c in client.list_collections()]
        if collection in names:
            col = client.get_collection(collection, embedding_function=None)
            recorded = recorded_manifest(col)
            if recorded is not None:
                recorded["space"] = space_of(col)  # the space Chroma really uses, not only what was written
            check_manifest(recorded, expected, where)
        elif create:
            col = client.create_collection(collection, embedding_function=None,
                                           configuration={"hnsw": {"space": expected["space"],
                                                                   "ef_search": HNSW_EF_SEARCH}},
                                           metadata={MANIFEST_PREFIX + k: v for k, v in expected.items()})
            logger.info("created %s: %s", where, describe_manifest(expected))
        else:
            raise FileNotFoundError(no_collection_message(path, collection, names))
    except BaseException:
        client.close()
        raise
    store = BMRagChromaVectorStore(chroma_collection=col, collection_name=collection, persist_dir=str(path))
    store._client = client
    store._manifest = {**expected, **(recorded_manifest(col) or {})}
    store._max_batch_size = int(client.get_max_batch_size())
    return store


