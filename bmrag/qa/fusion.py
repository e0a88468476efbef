"""Hybrid retrieval for the QA chain: BM25 over a Chroma collection's texts + dense top-k, fused by RRF.

``bmrag ask --hybrid`` (``QAChain.ask(..., hybrid=True)``) runs both retrievers to a depth of
``max(candidates, HYBRID_DEPTH)`` each and fuses the two rankings with reciprocal-rank fusion
(:func:`reciprocal_rank_fusion`, Cormack, Clarke & Buettcher, SIGIR 2009):
``rrf(d) = sum over rankings r of 1 / (k + rank_r(d))`` with 1-based ranks and ``k = 60`` (:data:`RRF_K`,
the paper's constant). RRF uses ranks only, so BM25's unbounded scores and the model's cosines or dot
products never have to be put on one scale.

* **BM25 side** (:class:`CollectionBM25`): the texts stored in the collection (what the dense side embedded:
  title + chunk) indexed with :class:`bmrag.bm25.BM25Baseline` (bm25s, Lucene BM25, k1=0.9, b=0.4,
  the same tokeniser as the BM25 evaluation baseline). Built lazily on the first hybrid query and cached per
  collection (:func:`bm25_for_collection`); rebuilt when the collection's count changes. (A delete plus an
  add between two queries leaves the count unchanged and is not noticed: re-open the process after such
  edits, or call :func:`clear_bm25_cache`.) It holds every text in memory: fine for the corpora here
  (13k passages ~ 2 s to build), not meant for millions of passages.
* **Filters**: the same LlamaIndex ``MetadataFilters`` the dense query gets are translated to the same Chroma
  ``where`` clause (:func:`chroma_where`, LlamaIndex's own translation) and used to fetch the ids they allow;
  BM25 ranks only those, so hybrid never returns a passage the filters exclude.
* **Scores** (:func:`fuse`): the fused order is the RRF order, but every returned hit keeps a *dense* score
  (``node.score``) in the model's own units, because the weak-evidence threshold of the chain is calibrated on
  dense cosines and an RRF score (at most ``2 / 61``) must never be compared with it. A hit the dense side did
  not return gets its dense score computed from its stored embedding exactly as Chroma scores
  (``1 - distance``: the cosine in ``"cosine"`` collections, the dot product in ``"ip"`` ones). The RRF score
  and both ranks are kept in the node metadata (:data:`RRF_SCORE`, :data:`DENSE_RANK`, :data:`BM25_RANK`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from llama_index.core.schema import NodeWithScore
from llama_index.core.vector_stores.types import MetadataFilters

logger = logging.getLogger(__name__)

RRF_K = 60
"""Reciprocal-rank-fusion constant (Cormack et al. 2009): dampens the weight of the very top ranks."""

HYBRID_DEPTH = 20
"""Hits each retriever contributes to the fusion (at least; more when ``candidates`` is larger)."""

HYBRID_LABEL = f"hybrid (BM25 + dense, RRF k={RRF_K})"
DENSE_LABEL = "dense"
"""How ``AskResult.retrieval["mode"]`` names the two retrieval modes."""

RRF_SCORE = "retrieval_rrf_score"
DENSE_RANK = "retrieval_dense_rank"
BM25_RANK = "retrieval_bm25_rank"
"""Node metadata keys set by :func:`fuse` (ranks are 1-based; None when that retriever missed the passage)."""
_FUSION_KEYS = (RRF_SCORE, DENSE_RANK, BM25_RANK)

_PAGE = 5000  # ids/texts fetched from Chroma per call when building the BM25 index


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: float = RRF_K) -> list[tuple[str, float]]:
    """Fuse rankings of ids: ``score(d) = sum_r 1 / (k + rank_r(d))`` with 1-based ranks.

    Args:
        rankings: Each a list of ids, best first. An id missing from a ranking contributes nothing for it.
        k: The RRF constant (>= 0); 60 in the original paper and here.

    Returns:
        ``[(id, score)]`` sorted by descending score; ties keep the order in which ids were first met
        (ranking by ranking, so the first ranking wins ties).

    Raises:
        ValueError: ``k`` negative, or an id repeated within one ranking.

    Example:
        >>> reciprocal_rank_fusion([["a", "b"], ["b", "c"]], k=60)  # b: 1/62 + 1/61
        [('b', 0.03252...), ('a', 0.01639...), ('c', 0.01612...)]
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k < 0:
        raise ValueError(f"k must be a number >= 0, got {k!r}")
    scores: dict[str, float] = {}
    for which, ranking in enumerate(rankings):
        if isinstance(ranking, str):
            raise ValueError(f"ranking {which} is a string; pass a list of ids")
        seen: set[str] = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                raise ValueError(f"id {item!r} appears twice in ranking {which}")
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    order = {item: i for i, item in enumerate(scores)}  # dicts keep first-insertion order
    return sorted(scores.items(), key=lambda pair: (-pair[1], order[pair[0]]))


def chroma_where(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """The Chroma ``where`` clause LlamaIndex sends for ``filters`` (None without filters).

    Uses LlamaIndex's own translation (``_to_chroma_filter``) so the BM25 side filters exactly as the dense
    vector-store query does.
    """
    if filters is None or not filters.filters:
        return None
    from llama_index.vector_stores.chroma.base import _to_chroma_filter

    return _to_chroma_filter(filters)


def allowed_ids(collection: Any, where: Mapping[str, Any] | None) -> set[str] | None:
    """Ids of the passages matching ``where`` (None: no filter, every passage is allowed)."""
    if where is None:
        return None
    return set(collection.get(where=dict(where), include=[])["ids"])


@dataclass(frozen=True)
class BM25Hit:
    """One BM25 hit: node id, its BM25 score (> 0) and 1-based rank after filtering."""

    node_id: str
    score: float
    rank: int


class CollectionBM25:
    """A BM25 index over the texts stored in one Chroma collection.

    Args:
        collection: The Chroma collection (``store.client``).
        k1: Term-frequency saturation (0.9, as the BM25 evaluation baseline).
        b: Length normalisation (0.4).
    """

    def __init__(self, collection: Any, *, k1: float = 0.9, b: float = 0.4) -> None:
        from bmrag.bm25 import BM25Baseline

        start = time.perf_counter()
        ids: list[str] = []
        texts: list[str] = []
        total = int(collection.count())
        for offset in range(0, total, _PAGE):
            page = collection.get(include=["documents"], limit=_PAGE, offset=offset)
            ids.extend(page["ids"])
            texts.extend(text or "" for text in page["documents"])
        self.count = len(ids)
        self._baseline = BM25Baseline(k1=k1, b=b)
        if ids:
            # Stored texts already carry the title (they are what the dense side embedded).
            self._baseline.index({nid: {"title": "", "text": text} for nid, text in zip(ids, texts)})
        self.build_seconds = time.perf_counter() - start
        self.description = {**self._baseline.describe(), "documents": self.count,
                            "document_text": "the passage text stored in the collection (title + chunk)"}
        logger.info("built BM25 over %d passages in %.1f s", self.count, self.build_seconds)

    def search(self, question: str, top_n: int, allowed: set[str] | None = None) -> list[BM25Hit]:
        """Top ``top_n`` passages with a positive BM25 score, among ``allowed`` ids when given."""
        if top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {top_n}")
        if self.count == 0 or (allowed is not None and not allowed):
            return []
        # With a filter, score every passage and keep the allowed ones, so the top-n is taken among them.
        depth = self.count if allowed is not None else min(top_n, self.count)
        scores = self._baseline.search({"q": question}, top_k=depth)["q"]
        ranked = [(nid, s) for nid, s in scores.items() if allowed is None or nid in allowed]
        ranked.sort(key=lambda pair: -pair[1])
        return [BM25Hit(nid, float(s), rank) for rank, (nid, s) in enumerate(ranked[:top_n], start=1)]


_CACHE: dict[str, CollectionBM25] = {}
_LOCK = threading.Lock()


def bm25_for_collection(collection: Any) -> tuple[CollectionBM25, bool]:
    """The cached BM25 index of ``collection``, (re)built when missing or when the count changed.

    Returns:
        ``(index, built)``: ``built`` is True when this call built it.
    """
    key = str(collection.id)
    count = int(collection.count())
    with _LOCK:  # a Gradio app may ask from several threads: build once
        cached = _CACHE.get(key)
        if cached is not None and cached.count == count:
            return cached, False
        index = CollectionBM25(collection)
        _CACHE[key] = index
        return index, True


def clear_bm25_cache() -> None:
    """Forget every cached BM25 index."""
    with _LOCK:
        _CACHE.clear()


def dense_scores(query_embedding: Sequence[float], embeddings: Any, space: str) -> np.ndarray:
    """Scores as the collection reports them (``1 - Chroma distance``) for stored embeddings.

    Args:
        query_embedding: The query vector.
        embeddings: ``(n, dim)`` stored vectors.
        space: ``"cosine"`` (cosine similarity) or ``"ip"`` (dot product).
    """
    q = np.asarray(query_embedding, dtype=np.float64)
    emb = np.asarray(embeddings, dtype=np.float64).reshape(-1, q.shape[0])
    dots = emb @ q
    if space == "ip":
        return dots
    if space == "cosine":
        norms = np.linalg.norm(emb, axis=1) * np.linalg.norm(q)
        return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    raise ValueError(f"space must be 'cosine' or 'ip', got {space!r}")


def fuse(dense: Sequence[NodeWithScore], bm25: Sequence[BM25Hit], *, collection: Any,
         query_embedding: Sequence[float], space: str, top_n: int, k: float = RRF_K) -> list[NodeWithScore]:
    """RRF-fuse dense hits and BM25 hits into ``top_n`` nodes scored by their dense score.

    Args:
        dense: Dense hits, best first (``node.score`` = dense score).
        bm25: BM25 hits, best first.
        collection: The Chroma collection, to fetch BM25-only passages (text, metadata, embedding).
        query_embedding: The query vector the dense side used.
        space: The collection's distance space (``"cosine"`` or ``"ip"``).
        top_n: Fused hits kept.
        k: RRF constant.

    Returns:
        Nodes in RRF order; ``score`` is the dense score; metadata holds the RRF score and both ranks.
    """
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    dense_ids = [hit.node.node_id for hit in dense]
    fused = reciprocal_rank_fusion([dense_ids, [hit.node_id for hit in bm25]], k=k)[:top_n]
    by_id = {hit.node.node_id: hit for hit in dense}
    dense_rank = {nid: rank for rank, nid in enumerate(dense_ids, start=1)}
    bm25_rank = {hit.node_id: hit.rank for hit in bm25}
    missing = [nid for nid, _ in fused if nid not in by_id]
    if missing:
        rows = collection.get(ids=missing, include=["documents", "metadatas", "embeddings"])
        scores = dense_scores(query_embedding, rows["embeddings"], space)
        for nid, text, meta, score in zip(rows["ids"], rows["documents"], rows["metadatas"], scores):
            by_id[nid] = NodeWithScore(node=metadata_dict_to_node(meta, text=text), score=float(score))
    out = []
    for nid, rrf in fused:
        hit = by_id[nid]
        hit.node.metadata[RRF_SCORE] = rrf
        hit.node.metadata[DENSE_RANK] = dense_rank.get(nid)
        hit.node.metadata[BM25_RANK] = bm25_rank.get(nid)
        # Bookkeeping only: never part of the text a reranker embeds or an LLM reads.
        for keys in ("excluded_embed_metadata_keys", "excluded_llm_metadata_keys"):
            current = list(getattr(hit.node, keys))
            setattr(hit.node, keys, current + [key for key in _FUSION_KEYS if key not in current])
        out.append(hit)
    return out


def hybrid_retrieve(index: Any, store: Any, embed_model: Any, question: str, filters: MetadataFilters | None, *,
                    depth: int, top_n: int) -> tuple[list[NodeWithScore], dict[str, Any]]:
    """BM25 and dense hits (``depth`` each, same filters) fused by RRF, the best ``top_n`` kept (see :func:`fuse`).

    Args:
        index: The LlamaIndex ``VectorStoreIndex`` over ``store``.
        store: The open vector store (its Chroma collection feeds the BM25 side).
        embed_model: The embedding model the index was built with.
        question: The question.
        filters: Metadata filters, applied to both sides.
        depth: Hits each retriever contributes.
        top_n: Fused hits kept.

    Returns:
        The fused nodes and what ran (mode, depths, hit counts, the BM25 index and whether it was built now).
    """
    from llama_index.core.schema import QueryBundle

    # Embed once: the dense query and the dense scores of BM25-only hits use the same vector.
    embedding = embed_model.get_query_embedding(question)
    dense = index.as_retriever(similarity_top_k=depth, filters=filters).retrieve(
        QueryBundle(query_str=question, embedding=embedding))
    collection = store.client
    bm25, built = bm25_for_collection(collection)
    hits = bm25.search(question, depth, allowed_ids(collection, chroma_where(filters)))
    nodes = fuse(dense, hits, collection=collection, query_embedding=embedding, space=str(store.manifest["space"]),
                 top_n=top_n)
    info = {"mode": HYBRID_LABEL, "fusion_depth": depth, "dense_hits": len(dense), "bm25_hits": len(hits),
            "bm25_only": sum(1 for n in nodes if n.node.metadata.get(DENSE_RANK) is None),
            "bm25_index": {**bm25.description, "built_now": built, "build_seconds": round(bm25.build_seconds, 3)}}
    return nodes, info
