"""Nearest-neighbour search for evaluation: exact (chunked matrix product + top-k) or through Chroma.

Both return a run ``{query_id: {doc_id: similarity}}``. Exact search is the reference (BEIR's
``DenseRetrievalExactSearch`` does the same); the Chroma path exists to check that an index built the way
the QA chain builds it ranks the same documents.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

Score = Literal["dot", "cosine"]
SearchMethod = Literal["exact", "chroma"]
Run = dict[str, dict[str, float]]


def _check(query_emb: np.ndarray, doc_emb: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str],
           top_k: int, score: str) -> None:
    if score not in ("dot", "cosine"):
        raise ValueError(f"score must be 'dot' or 'cosine', got {score!r}")
    if query_emb.ndim != 2 or doc_emb.ndim != 2 or query_emb.shape[1] != doc_emb.shape[1]:
        raise ValueError(f"embeddings must be 2-D with one width: queries {query_emb.shape}, docs {doc_emb.shape}")
    if len(query_ids) != len(query_emb) or len(doc_ids) != len(doc_emb):
        raise ValueError(f"{len(query_ids)} query ids for {len(query_emb)} vectors, "
                         f"{len(doc_ids)} doc ids for {len(doc_emb)} vectors")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


def exact_search(query_emb: np.ndarray, doc_emb: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str], *,
                 top_k: int = 1000, score: Score = "dot", query_chunk: int = 256, doc_chunk: int = 50_000,
                 show_progress_bar: bool = False) -> Run:
    """Exact top-k by dot product (or cosine) over all documents.

    Scores are computed in fp32 in (query_chunk x doc_chunk) blocks; each block's top-k is merged with the
    running top-k, so memory stays bounded for large corpora.

    Args:
        query_emb: (n_queries, dim) vectors.
        doc_emb: (n_docs, dim) vectors.
        query_ids: Ids in ``query_emb`` order.
        doc_ids: Ids in ``doc_emb`` order.
        top_k: Hits kept per query (capped at the corpus size).
        score: ``"dot"`` (BMRetriever) or ``"cosine"`` (vectors are L2-normalised first).
        query_chunk: Queries per block.
        doc_chunk: Documents per block.
        show_progress_bar: tqdm over query blocks.

    Returns:
        ``{query_id: {doc_id: score}}`` with ``min(top_k, n_docs)`` hits per query.
    """
    _check(query_emb, doc_emb, query_ids, doc_ids, top_k, score)
    queries = torch.from_numpy(np.ascontiguousarray(query_emb, dtype=np.float32))
    docs = torch.from_numpy(np.ascontiguousarray(doc_emb, dtype=np.float32))
    if score == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=-1)
        docs = torch.nn.functional.normalize(docs, dim=-1)
    k = min(top_k, len(doc_ids))
    run: Run = {}
    starts = range(0, len(query_ids), query_chunk)
    with torch.inference_mode():
        for start in tqdm(starts, desc="search", unit="block", disable=not show_progress_bar):
            block = queries[start:start + query_chunk]  # (q, dim)
            best_scores = torch.empty((len(block), 0))
            best_index = torch.empty((len(block), 0), dtype=torch.long)
            for d_start in range(0, len(doc_ids), doc_chunk):
                scores = block @ docs[d_start:d_start + doc_chunk].T  # (q, d)
                local = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                merged_scores = torch.cat([best_scores, local.values], dim=1)
                merged_index = torch.cat([best_index, local.indices + d_start], dim=1)
                keep = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
                best_scores = keep.values
                best_index = torch.gather(merged_index, 1, keep.indices)
            for row, qid in enumerate(query_ids[start:start + query_chunk]):
                run[qid] = {doc_ids[i]: float(s) for i, s in zip(best_index[row].tolist(), best_scores[row].tolist())}
    return run


def chroma_search(query_emb: np.ndarray, doc_emb: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str], *,
                  top_k: int = 1000, score: Score = "dot", path: str | None = None, ef_search: int | None = None,
                  show_progress_bar: bool = False) -> Run:
    """Top-k through a Chroma collection (HNSW), converted back to similarities.

    The collection is created with ``embedding_function=None`` (vectors are always supplied) and the
    distance space the score needs: ``"ip"`` for dot product, ``"cosine"`` for normalised recipes. Chroma
    returns distances ``1 - dot`` / ``1 - cosine``; the run holds ``1 - distance``. A temporary collection
    is created and deleted; ``path`` selects a ``PersistentClient`` folder instead of an in-memory client.

    Args:
        ef_search: HNSW search breadth; default ``max(top_k, 100)`` so small sets are searched exhaustively.
        Other arguments: as :func:`exact_search`.
    """
    import chromadb
    from chromadb.config import Settings

    _check(query_emb, doc_emb, query_ids, doc_ids, top_k, score)
    settings = Settings(anonymized_telemetry=False)
    client = chromadb.PersistentClient(path=path, settings=settings) if path else chromadb.EphemeralClient(
        settings=settings)
    space = "ip" if score == "dot" else "cosine"
    k = min(top_k, len(doc_ids))
    ef = ef_search or max(k, 100)
    name = f"bmrag-eval-{uuid.uuid4().hex[:12]}"
    collection = client.create_collection(
        name, embedding_function=None,
        configuration={"hnsw": {"space": space, "ef_search": ef, "ef_construction": max(ef, 200)}})
    try:
        batch = client.get_max_batch_size()
        docs = np.asarray(doc_emb, dtype=np.float32)
        for start in tqdm(range(0, len(doc_ids), batch), desc="chroma add", unit="batch",
                          disable=not show_progress_bar):
            collection.add(ids=list(doc_ids[start:start + batch]), embeddings=docs[start:start + batch])
        run: Run = {}
        queries = np.asarray(query_emb, dtype=np.float32)
        for start in tqdm(range(0, len(query_ids), 256), desc="chroma query", unit="block",
                          disable=not show_progress_bar):
            found = collection.query(query_embeddings=queries[start:start + 256], n_results=k,
                                     include=["distances"])
            for qid, ids, distances in zip(query_ids[start:start + 256], found["ids"], found["distances"]):
                run[qid] = {doc: 1.0 - float(dist) for doc, dist in zip(ids, distances)}
        return run
    finally:
        client.delete_collection(name)
