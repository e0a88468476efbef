"""Hard-negative mining: one function, explicit knobs, a report of everything it filtered.

BMRetriever sampled hard negatives from the top 100 of a first-stage retriever (E5), excluding the
positives. Here the first stage is BM25 (``bm25s``) or any ``BMRetrieverEncoder`` (e.g. the offline
``all-MiniLM-L6-v2``, or a Stage I checkpoint). A candidate becomes a negative only if it

1. ranks inside ``rank_range`` (0-based, ``[start, stop)``) for the query,
2. is not a positive (by document id, and by identical text),
3. is not barred (documents judged in a test split are never used),
4. scores below the weakest positive by ``margin`` (absolute) and below ``max_ratio`` times it
   (NV-Retriever's "positive-aware" filter against false negatives), when those are set,
5. is not a text already chosen for the group.

Then ``count`` of the survivors are kept: the best ranked (``sample="top"``) or a seeded random
sample (``sample="random"``, the paper's choice).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from retriever_training.data import Group, Passage, normalize_text, passage_text

logger = logging.getLogger(__name__)

Method = Literal["bm25", "encoder"]


@dataclass
class MiningReport:
    """Counts of what :func:`mine_hard_negatives` looked at and filtered."""

    method: str = ""
    groups: int = 0
    candidates_seen: int = 0
    excluded_positive: int = 0
    excluded_same_text_as_positive: int = 0
    excluded_barred: int = 0
    excluded_margin: int = 0
    excluded_duplicate: int = 0
    negatives_added: int = 0
    groups_short: int = 0  # fewer than `count` negatives survived
    positives_not_in_corpus: int = 0  # margin could not use this positive's score
    settings: dict[str, object] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.method}: {self.negatives_added} negatives for {self.groups} groups from "
                f"{self.candidates_seen} candidates in range; filtered {self.excluded_positive} positives, "
                f"{self.excluded_same_text_as_positive} same-text-as-positive, {self.excluded_barred} barred "
                f"(test-judged), {self.excluded_margin} by margin, {self.excluded_duplicate} duplicate texts; "
                f"{self.groups_short} groups got fewer than requested; settings {self.settings}")


class _BM25Scorer:
    """BM25 scores of queries against a fixed document list, one query chunk at a time."""

    def __init__(self, docs: Sequence[str]) -> None:
        import bm25s

        # k1/b as BEIR's Anserini BM25 (k1=0.9, b=0.4), which reproduces SciFact's published BM25.
        self.retriever = bm25s.BM25(k1=0.9, b=0.4)
        self.retriever.index(bm25s.tokenize(list(docs), stopwords="en", show_progress=False), show_progress=False)
        self.n_docs = len(docs)

    def __call__(self, queries: Sequence[str]) -> np.ndarray:
        import bm25s

        tokenized = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        return np.stack([np.asarray(self.retriever.get_scores(tokens), dtype=np.float32) if tokens
                         else np.zeros(self.n_docs, dtype=np.float32) for tokens in tokenized])  # (n, n_docs)


def mine_hard_negatives(
    groups: Sequence[Group],
    corpus: Mapping[str, Passage],
    *,
    method: Method = "bm25",
    encoder=None,
    rank_range: tuple[int, int] = (10, 100),
    count: int = 7,
    margin: float | None = None,
    max_ratio: float | None = None,
    sample: Literal["random", "top"] = "random",
    barred_ids: Iterable[str] = (),
    keep_existing: bool = True,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[list[Group], MiningReport]:
    """Add up to ``count`` hard negatives from ``corpus`` to every group (see the module docstring).

    Args:
        groups: Groups to mine for; ``positive_ids`` (when set) name their positives in ``corpus``.
        corpus: ``{doc_id: passage}`` to mine from.
        method: ``"bm25"`` or ``"encoder"`` (then pass ``encoder``, a ``BMRetrieverEncoder``).
        encoder: The first-stage dense encoder for ``method="encoder"``.
        rank_range: 0-based ``[start, stop)`` ranks a candidate must fall in.
        count: Negatives wanted per group (added to existing ones when ``keep_existing``).
        margin: Drop candidates scoring above ``weakest positive - margin``.
        max_ratio: Drop candidates scoring above ``max_ratio * weakest positive`` (e.g. 0.95).
        sample: ``"random"`` (seeded) or ``"top"`` among the survivors.
        barred_ids: Document ids never to use (e.g. judged in a test split).
        keep_existing: Keep negatives already in the group (they count towards ``count``).
        seed: Seed of the random sample.
        batch_size: Encoder batch size.

    Returns:
        New groups (inputs are not modified) and a :class:`MiningReport`.
    """
    start, stop = rank_range
    if not 0 <= start < stop:
        raise ValueError(f"rank_range must be (start, stop) with 0 <= start < stop, got {rank_range}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if method not in ("bm25", "encoder"):
        raise ValueError(f"method must be 'bm25' or 'encoder', got {method!r}")
    if method == "encoder" and encoder is None:
        raise ValueError("method='encoder' needs encoder= (a BMRetrieverEncoder)")
    if sample not in ("random", "top"):
        raise ValueError(f"sample must be 'random' or 'top', got {sample!r}")
    if not corpus:
        raise ValueError("the mining corpus is empty")
    report = MiningReport(method=method, groups=len(groups), settings={
        "rank_range": list(rank_range), "count": count, "margin": margin, "max_ratio": max_ratio, "sample": sample,
        "encoder": getattr(getattr(encoder, "source", None), "model", None)})
    ids = list(corpus)
    docs = [corpus[i] for i in ids]
    keys = [normalize_text(passage_text(d)) for d in docs]
    index_of_key: dict[str, int] = {}
    for i, key in enumerate(keys):
        index_of_key.setdefault(key, i)
    index_of_id = {d: i for i, d in enumerate(ids)}
    barred = {index_of_id[d] for d in barred_ids if d in index_of_id}

    if method == "bm25":
        bm25 = _BM25Scorer([passage_text(d) for d in docs])
    else:
        q_vectors = encoder.encode([encoder.format_query(g.query, instruction=g.instruction or None)
                                    for g in groups], batch_size=batch_size)  # (n_queries, D)
        d_vectors = encoder.encode_documents(list(docs), batch_size=batch_size)  # (n_docs, D)
    depth = min(stop, len(ids))

    rng = random.Random(seed)
    out = []
    chunk = 512  # query rows scored at once: bounds memory to chunk x n_docs floats
    for g_index, group in enumerate(groups):
        if g_index % chunk == 0:
            rows = groups[g_index:g_index + chunk]
            if method == "bm25":
                scores = bm25([g.query for g in rows])  # (chunk, n_docs)
            else:
                scores = encoder.similarity(q_vectors[g_index:g_index + chunk], d_vectors)  # (chunk, n_docs)
            top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]  # (chunk, depth)
        local = g_index % chunk
        positive_keys = {normalize_text(passage_text(p)) for p in group.positives}
        positive_rows = {index_of_id[d] for d in group.positive_ids if d in index_of_id}
        positive_rows |= {index_of_key[k] for k in positive_keys if k in index_of_key}
        report.positives_not_in_corpus += len(group.positives) - min(len(group.positives), len(positive_rows))
        row_scores = scores[local]
        floor = min((float(row_scores[r]) for r in positive_rows), default=None)
        existing = list(group.negatives) if keep_existing else []
        taken = {normalize_text(passage_text(n)) for n in existing}
        survivors = []
        for doc in top[local, start:depth].tolist():
            report.candidates_seen += 1
            score = float(row_scores[doc])
            if doc in positive_rows:
                report.excluded_positive += 1
            elif keys[doc] in positive_keys:
                report.excluded_same_text_as_positive += 1
            elif doc in barred:
                report.excluded_barred += 1
            elif floor is not None and ((margin is not None and score > floor - margin)
                                        or (max_ratio is not None and score > max_ratio * floor)):
                report.excluded_margin += 1
            elif keys[doc] in taken:
                report.excluded_duplicate += 1
            else:
                taken.add(keys[doc])
                survivors.append(doc)
        need = max(count - len(existing), 0)
        chosen = survivors[:need] if sample == "top" else sorted(rng.sample(survivors, min(need, len(survivors))))
        if len(existing) + len(chosen) < count:
            report.groups_short += 1
        report.negatives_added += len(chosen)
        out.append(replace(group, negatives=existing + [docs[d] for d in chosen]))
    logger.info("mining %s", report.summary())
    return out, report
