"""Evidence: retrieved passages as the chain numbers them, and the weak-evidence threshold that holds some back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llama_index.core.schema import MetadataMode, NodeWithScore

from bmrag.llama_index.reranker import FIRST_STAGE_SCORE
from bmrag.qa import citations
from bmrag.qa.filters import YEAR_FIELD
from bmrag.qa.fusion import BM25_RANK, DENSE_RANK, RRF_SCORE

COSINE_MIN_SCORE = 0.35
"""Weak-evidence threshold for cosine scores (normalised models such as all-MiniLM-L6-v2). Measured on the
bundled demo corpus with all-MiniLM-L6-v2 (``evals/bench_ask.py``): the PubMedQA questions of its 60 first
PubMedQA passages reach a top-1 cosine of 0.31-0.90 (median 0.73; 1 of 60 below 0.35), 12 off-topic
questions at most 0.28. Medical questions the corpus does not answer still score 0.35-0.55: the threshold
stops off-topic questions, not near misses (see docs/qa-chain.md)."""

def default_min_score(similarity: str) -> float | None:
    """The documented weak-evidence threshold for a score kind.

    Args:
        similarity: ``"cosine"`` or ``"dot"`` (``Recipe.similarity`` of the model whose score is checked).

    Returns:
        :data:`COSINE_MIN_SCORE` for cosine. None for dot products: BMRetriever's unnormalised dot products
        have a per-checkpoint scale and no threshold has been calibrated offline, so the check is off unless
        ``min_score`` is given (the result says so).
    """
    if similarity == "cosine":
        return COSINE_MIN_SCORE
    if similarity == "dot":
        return None
    raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")


@dataclass
class Evidence:
    """One retrieved passage, numbered as it appears in the prompt (``number`` is 0 when not given).

    Attributes:
        number: ``n`` of ``[n]`` in the prompt; 0 for passages held back (below the threshold).
        node_id: Index node id (``"{doc_id}#{chunk}"``).
        doc_id: Document id in the corpus.
        title: Document title (may be empty).
        text: Passage text as stored (the prompt may show a trimmed copy).
        score: Score that ranked it: the rerank score when reranked, else the first-stage score.
        first_stage_score: Dense retrieval score (equal to ``score`` without a reranker).
        url: Link to the source (PubMed for PMIDs, or ``metadata["url"]``), when known.
        pmid: PubMed id when known.
        year: Publication year when the index has it.
        rrf_score: Hybrid retrieval only: the passage's reciprocal-rank-fusion score (orders, never thresholds).
        dense_rank: Hybrid retrieval only: 1-based rank on the dense side (None: dense missed it).
        bm25_rank: Hybrid retrieval only: 1-based rank on the BM25 side (None: BM25 missed it).
    """

    number: int
    node_id: str
    doc_id: str
    title: str
    text: str
    score: float
    first_stage_score: float
    url: str | None = None
    pmid: str | None = None
    year: int | None = None
    rrf_score: float | None = None
    dense_rank: int | None = None
    bm25_rank: int | None = None

    def label(self) -> str:
        """``PMID 123`` when known, else the document id."""
        return f"PMID {self.pmid}" if self.pmid else self.doc_id


def evidence_from_nodes(nodes: Sequence[NodeWithScore]) -> list[Evidence]:
    """Turn retrieved nodes into :class:`Evidence` (unnumbered) keeping their order and scores."""
    out = []
    for hit in nodes:
        meta = dict(hit.node.metadata)
        doc_id = str(meta.get("doc_id") or hit.node.ref_doc_id or hit.node.node_id)
        score = float(hit.score) if hit.score is not None else float("nan")
        first = meta.get(FIRST_STAGE_SCORE)
        year = meta.get(YEAR_FIELD)
        out.append(Evidence(
            # display_title: a card title for sources without one (PubMedQA, BioASQ), never embedded.
            number=0, node_id=hit.node.node_id, doc_id=doc_id,
            title=str(meta.get("title") or meta.get("display_title") or ""),
            text=hit.node.get_content(metadata_mode=MetadataMode.NONE), score=score,
            first_stage_score=float(first) if first is not None else score,
            url=citations.source_url(doc_id, meta), pmid=citations.pmid_of(doc_id, meta),
            year=int(year) if isinstance(year, (int, float)) and not isinstance(year, bool) else None,
            rrf_score=meta.get(RRF_SCORE), dense_rank=meta.get(DENSE_RANK), bm25_rank=meta.get(BM25_RANK),
        ))
    return out


def nearest(evidence: Sequence[Evidence], k: int) -> tuple[list[Evidence], list[Evidence]]:
    """The first ``k`` passages numbered ``1..k`` (shown, not answered from), and the rest unnumbered."""
    shown = list(evidence[:k])
    for number, item in enumerate(shown, start=1):
        item.number = number
    return shown, list(evidence[k:])


def select_evidence(evidence: Sequence[Evidence], min_score: float | None,
                    k: int) -> tuple[list[Evidence], list[Evidence]]:
    """Split ranked passages into those given to the generator (numbered 1..) and those held back.

    A passage is held back when its score is below ``min_score`` (None: no threshold) or it is beyond the
    first ``k``.
    """
    given: list[Evidence] = []
    held: list[Evidence] = []
    for item in evidence:
        if len(given) < k and (min_score is None or item.score >= min_score):
            given.append(item)
            item.number = len(given)
        else:
            item.number = 0
            held.append(item)
    return given, held


RERANK_POOL = 20
"""Least first-stage candidates a reranker re-scores (more when ``4 * k`` is larger)."""


def first_stage_candidates(k: int, reranking: bool) -> int:
    """First-stage passages retrieved for ``k`` evidence passages: ``k``, or ``max(4k, 20)`` with a reranker."""
    return max(4 * k, RERANK_POOL) if reranking else k
