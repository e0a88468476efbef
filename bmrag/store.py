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

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import chromadb
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode, VectorStoreQueryResult
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from llama_index.vector_stores.chroma import ChromaVectorStore

from bmrag import __version__, prompts
from bmrag.encoder import BMRetrieverEncoder, Recipe
from bmrag.index.chroma_client import index_location, open_client

if TYPE_CHECKING:
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

logger = logging.getLogger(__name__)

Space = Literal["ip", "cosine"]
EmbedModelLike = Union["BMRetrieverEmbedding", BMRetrieverEncoder]

DEFAULT_COLLECTION = "bmrag"
MANIFEST_PREFIX = "bmrag_"
"""Collection metadata keys of the manifest are ``bmrag_<field>`` (Chroma metadata must be flat)."""
CHECKED_FIELDS = ("model", "revision", "recipe", "space", "dim")
"""Manifest fields that must match to reuse a collection (dtype and versions are informational)."""
LLM_METADATA_KEYS = ("doc_id", "source", "pmid", "year")
"""Node metadata shown to an LLM; every metadata key is excluded from the embedded text."""


class IndexMismatchError(ValueError):
    """An existing collection was built with another model, recipe or distance space."""


def space_for(recipe: Recipe) -> Space:
    """Chroma distance space for a recipe: ``"ip"`` for dot-product models, ``"cosine"`` for normalised ones."""
    return "ip" if recipe.similarity == "dot" else "cosine"


def node_id(doc_id: str, chunk: int) -> str:
    """Stable node id of chunk ``chunk`` of document ``doc_id``: ``"{doc_id}#{chunk}"``."""
    return f"{doc_id}#{chunk}"


def manifest_for(encoder: BMRetrieverEncoder) -> dict[str, str | int]:
    """What a collection records about the model that filled it (flat values, ``""`` for unknown)."""
    described = encoder.describe()
    return {
        "model": described["model"],
        "revision": described["revision"] or "",
        "kind": described["kind"],
        "base_model": described["base_model"] or "",
        "recipe": json.dumps(encoder.recipe.to_dict(), sort_keys=True),
        "space": space_for(encoder.recipe),
        "dim": int(described["dim"]),
        "dtype": described["dtype"],
        "chroma_version": chromadb.__version__,
        "bmrag_version": __version__,
    }


def _encoder_of(embed_model: EmbedModelLike) -> BMRetrieverEncoder:
    encoder = embed_model if isinstance(embed_model, BMRetrieverEncoder) else getattr(embed_model, "encoder", None)
    if not isinstance(encoder, BMRetrieverEncoder):
        raise TypeError(f"expected a BMRetrieverEmbedding or BMRetrieverEncoder, got {type(embed_model).__name__}")
    return encoder


def _client(path: Path | str) -> Any:
    return open_client(path)  # PersistentClient for a directory, HttpClient for an http://HOST:PORT server


def _space_of(collection: Any) -> str:
    hnsw = (collection.configuration or {}).get("hnsw") or {}
    return str(hnsw.get("space") or (collection.metadata or {}).get("hnsw:space") or "l2")


def _recorded(collection: Any) -> dict[str, Any] | None:
    meta = collection.metadata or {}
    manifest = {k.removeprefix(MANIFEST_PREFIX): v for k, v in meta.items() if k.startswith(MANIFEST_PREFIX)}
    return manifest or None


def _describe(manifest: Mapping[str, Any]) -> str:
    revision = f"@{manifest['revision']}" if manifest.get("revision") else ""
    return (f"model {manifest.get('model')!r}{revision} (space {manifest.get('space')!r}, dim {manifest.get('dim')}, "
            f"recipe {manifest.get('recipe')})")


def check_manifest(recorded: Mapping[str, Any] | None, expected: Mapping[str, Any], where: str) -> None:
    """Raise :class:`IndexMismatchError` naming both models unless ``recorded`` matches ``expected``."""
    if recorded is None:
        raise IndexMismatchError(f"{where} has no bmrag manifest (it was not created by bmrag.store), so which "
                                 "model filled it is unknown; use another index directory or collection name")
    differs = [key for key in CHECKED_FIELDS if str(recorded.get(key, "")) != str(expected.get(key, ""))]
    if differs:
        raise IndexMismatchError(
            f"{where} was built with {_describe(recorded)}, but the embedding model is {_describe(expected)}; "
            f"they differ in {', '.join(differs)}. Vectors of different models or recipes are not comparable: "
            "query it with the model it was built with, or index into another directory or collection."
        )


def _no_collection(path: Path, collection: str, names: list[str]) -> str:
    return f"{path}: no collection {collection!r} (collections: {', '.join(names) or 'none'})"


def read_manifest(path: str | os.PathLike[str], collection: str = DEFAULT_COLLECTION) -> dict[str, Any]:
    """The manifest of an existing collection (plus ``count``), without loading any model.

    Raises:
        FileNotFoundError: No index at ``path`` or no such collection.
    """
    path = index_location(path)
    if isinstance(path, Path) and not path.is_dir():
        raise FileNotFoundError(f"{path}: no index directory here (build one with `bmrag index --index {path}`)")
    client = _client(path)
    try:
        names = [c.name for c in client.list_collections()]
        if collection not in names:
            raise FileNotFoundError(_no_collection(path, collection, names))
        col = client.get_collection(collection, embedding_function=None)
        recorded = _recorded(col)
        if recorded is None:
            raise IndexMismatchError(f"{path} collection {collection!r} has no bmrag manifest")
        return {**recorded, "space": _space_of(col), "count": col.count()}
    finally:
        client.close()


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
    expected = manifest_for(_encoder_of(embed_model))
    path = index_location(path)
    if isinstance(path, str):  # a Chroma server URL: nothing to create locally
        pass
    elif create:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise FileNotFoundError(f"{path}: no index directory here")
    client = _client(path)
    where = f"index {path} (collection {collection!r})"
    try:
        names = [c.name for c in client.list_collections()]
        if collection in names:
            col = client.get_collection(collection, embedding_function=None)
            recorded = _recorded(col)
            if recorded is not None:
                recorded["space"] = _space_of(col)  # the space Chroma really uses, not only what was written
            check_manifest(recorded, expected, where)
        elif create:
            col = client.create_collection(collection, embedding_function=None,
                                           configuration={"hnsw": {"space": expected["space"]}},
                                           metadata={MANIFEST_PREFIX + k: v for k, v in expected.items()})
            logger.info("created %s: %s", where, _describe(expected))
        else:
            raise FileNotFoundError(_no_collection(path, collection, names))
    except BaseException:
        client.close()
        raise
    store = BMRagChromaVectorStore(chroma_collection=col, collection_name=collection, persist_dir=str(path))
    store._client = client
    store._manifest = {**expected, **(_recorded(col) or {})}
    store._max_batch_size = int(client.get_max_batch_size())
    return store


class BMRagChromaVectorStore(ChromaVectorStore):
    """``ChromaVectorStore`` with upserts in batches, scores in the model's units, and a manifest.

    Build it with :func:`open_store`. ``node.score`` is ``1 - distance`` (dot product or cosine, see the
    module docstring). MMR mode is refused: LlamaIndex's Chroma MMR path reports ``exp(-distance)``.
    """

    _client: Any = PrivateAttr(default=None)
    _manifest: dict[str, Any] = PrivateAttr(default_factory=dict)
    _max_batch_size: int = PrivateAttr(default=5000)

    @classmethod
    def class_name(cls) -> str:
        return "BMRagChromaVectorStore"

    @property
    def manifest(self) -> dict[str, Any]:
        """The collection's manifest (model, revision, recipe JSON, space, dim, dtype, versions)."""
        return dict(self._manifest)

    def count(self) -> int:
        """Number of stored nodes."""
        return int(self._collection.count())

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` already stored."""
        found: set[str] = set()
        for start in range(0, len(ids), self._max_batch_size):
            found.update(self._collection.get(ids=list(ids[start:start + self._max_batch_size]), include=[])["ids"])
        return found

    def add(self, nodes: list[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert nodes (with embeddings) in batches under Chroma's max batch size; returns their ids."""
        ids: list[str] = []
        for start in range(0, len(nodes), self._max_batch_size):
            batch = nodes[start:start + self._max_batch_size]
            metadatas = []
            for node in batch:
                meta = node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
                metadatas.append({k: ("" if v is None else v) for k, v in meta.items()})
            self._collection.upsert(ids=[n.node_id for n in batch], embeddings=[n.get_embedding() for n in batch],
                                    metadatas=metadatas,
                                    documents=[n.get_content(metadata_mode=MetadataMode.NONE) for n in batch])
            ids.extend(n.node_id for n in batch)
        return ids

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.mode == VectorStoreQueryMode.MMR:
            raise ValueError("BMRagChromaVectorStore does not support MMR mode: LlamaIndex's Chroma MMR scores are "
                             "exp(-distance), which overflows for BMRetriever dot products; use the default mode")
        return super().query(query, **kwargs)

    def _query(self, query_embeddings: list[float], n_results: int, where: dict | None,
               **kwargs: Any) -> VectorStoreQueryResult:
        filters = {"where": where} if where else {}
        results = self._collection.query(query_embeddings=query_embeddings, n_results=n_results, **filters, **kwargs)
        nodes, scores, ids = [], [], []
        for nid, text, metadata, distance in zip(results["ids"][0], results["documents"][0],
                                                 results["metadatas"][0], results["distances"][0]):
            nodes.append(metadata_dict_to_node(metadata, text=text))
            scores.append(1.0 - float(distance))  # ip: 1 - (1 - dot) = dot; cosine: 1 - (1 - cos) = cos
            ids.append(nid)
        return VectorStoreQueryResult(nodes=nodes, similarities=scores, ids=ids)

    def close(self) -> None:
        """Release the Chroma client (SQLite handles); the store is unusable afterwards."""
        if self._client is not None:
            self._client.close()
            self._client = None


def _flat(value: Any) -> str | int | float | None:
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return "; ".join(str(v) for v in value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def corpus_to_nodes(corpus: Mapping[str, Mapping[str, Any]], encoder: BMRetrieverEncoder, *,
                    chunk_overlap: int = 32) -> list[TextNode]:
    """Turn ``{doc_id: {"title", "text", "metadata"}}`` into nodes that embed exactly as the recipe says.

    A node's text is ``(title + " " + text).strip()`` with every metadata key excluded from embedding.
    Documents longer than the model's ``max_length`` are split on sentences into chunks that fit (model
    tokens, not tiktoken), each chunk repeating the title; node ids are ``"{doc_id}#{chunk}"``.

    Args:
        corpus: Documents as returned by :func:`bmrag.readers.load_corpus`.
        encoder: The encoder whose tokenizer and ``max_length`` decide the chunking.
        chunk_overlap: Tokens shared by consecutive chunks.

    Raises:
        ValueError: A document with neither title nor text.
    """
    from llama_index.core.node_parser import SentenceSplitter

    tokenizer = encoder.tokenizer

    def count(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    recipe = encoder.recipe
    # Template tokens, EOS and a BOS some tokenizers add: what is left of max_length is the passage budget.
    budget = recipe.max_length - len(count(prompts.format_passage("", recipe.passage_template))) - 2
    splitters: dict[int, SentenceSplitter] = {}
    nodes: list[TextNode] = []
    for doc_id, doc in corpus.items():
        title, text = (doc.get("title") or "").strip(), (doc.get("text") or "").strip()
        passage = prompts.join_title(text, title)
        if not passage:
            raise ValueError(f"document {doc_id!r} has neither title nor text")
        if len(count(passage)) <= budget or not text:
            chunks = [passage]
        else:
            size = max(budget - len(count(title)) - 1, 16)
            if size not in splitters:
                splitters[size] = SentenceSplitter(chunk_size=size, chunk_overlap=min(chunk_overlap, size // 4),
                                                   tokenizer=count)
            chunks = [prompts.join_title(chunk, title) for chunk in splitters[size].split_text(text)]
        extra = {str(k): _flat(v) for k, v in (doc.get("metadata") or {}).items()}
        base = {**{k: v for k, v in extra.items() if v is not None}, "doc_id": str(doc_id), "title": title}
        for i, chunk in enumerate(chunks):
            metadata = {**base, "chunk": i}
            node = TextNode(id_=node_id(str(doc_id), i), text=chunk, metadata=metadata,
                            excluded_embed_metadata_keys=list(metadata),
                            excluded_llm_metadata_keys=[k for k in metadata if k not in LLM_METADATA_KEYS])
            node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=str(doc_id))
            nodes.append(node)
    return nodes


@dataclass(frozen=True)
class IndexReport:
    """What :func:`index_nodes` did."""

    nodes: int  # nodes offered
    added: int  # nodes embedded and written
    skipped: int  # nodes already stored (same id)
    documents_added: int
    seconds: float

    @property
    def docs_per_second(self) -> float:
        return self.documents_added / self.seconds if self.seconds > 0 else 0.0


def index_nodes(store: BMRagChromaVectorStore, nodes: Iterable[BaseNode], embed_model: EmbedModelLike, *,
                show_progress: bool = False, insert_batch_size: int = 512) -> IndexReport:
    """Embed and store the nodes whose ids are not stored yet, through LlamaIndex's ``VectorStoreIndex``.

    Nodes already in the collection are skipped (not re-embedded): a re-run adds nothing. To replace a
    changed document, delete it first (``store.delete(doc_id)``).

    Raises:
        IndexMismatchError: ``embed_model`` is not the model the store was opened for.
        ValueError: Duplicate node ids.
    """
    from llama_index.core import StorageContext, VectorStoreIndex

    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    encoder = _encoder_of(embed_model)
    check_manifest(store.manifest, manifest_for(encoder), f"index {store.persist_dir}")
    if not isinstance(embed_model, BMRetrieverEmbedding):
        embed_model = BMRetrieverEmbedding(encoder=encoder)
    nodes = list(nodes)
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"duplicate node ids, e.g. {dupes}")
    existing = store.existing_ids(ids)
    # Length-sorted, so each embedding batch pads little (LlamaIndex slices batches in the order given).
    new = sorted((n for n in nodes if n.node_id not in existing),
                 key=lambda n: len(n.get_content(metadata_mode=MetadataMode.EMBED)))
    start = time.perf_counter()
    if new:
        VectorStoreIndex(nodes=new, storage_context=StorageContext.from_defaults(vector_store=store),
                         embed_model=embed_model, show_progress=show_progress, insert_batch_size=insert_batch_size)
    seconds = time.perf_counter() - start
    documents = {n.ref_doc_id or n.node_id for n in new}
    return IndexReport(nodes=len(nodes), added=len(new), skipped=len(existing), documents_added=len(documents),
                       seconds=seconds)
