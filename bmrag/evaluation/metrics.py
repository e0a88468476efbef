"""Retrieval metrics computed by ``pytrec_eval`` (trec_eval's code), as BEIR does. Nothing is re-implemented.

Metric names are ``"<name>@<k>"``:

=============  ===========================  ==============================================================
ours           pytrec_eval measure           note
=============  ===========================  ==============================================================
``ndcg@k``     ``ndcg_cut.k``               linear gains (trec_eval), as BEIR
``recall@k``   ``recall.k``
``map@k``      ``map_cut.k``                as BEIR's MAP@k
``precision@k`` ``P.k``
``mrr@k``      ``recip_rank`` on the top k  the run is cut to its k best hits first (trec_eval order:
                                            score descending, then doc id descending), as BEIR's MRR@k
=============  ===========================  ==============================================================

Means are taken over every judged query; a query with no hits counts as 0 (pytrec_eval would leave it out).
BEIR also drops hits whose doc id equals the query id; here that is the explicit ``ignore_identical_ids``
option, applied to a copy, so inputs are never mutated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_METRICS = ("ndcg@10", "recall@100", "map@10", "mrr@10")
"""What every retrieval result records; ``ndcg@10`` is the headline."""

_MEASURES = {"ndcg": ("ndcg_cut", "ndcg_cut_{k}"), "recall": ("recall", "recall_{k}"),
             "map": ("map_cut", "map_cut_{k}"), "precision": ("P", "P_{k}")}
_NAME = re.compile(r"^(ndcg|recall|map|precision|mrr)@([1-9][0-9]*)$")


def parse_metric(name: str) -> tuple[str, int]:
    """Split ``"ndcg@10"`` into ``("ndcg", 10)``.

    Raises:
        ValueError: Unknown metric or cutoff; the message lists the accepted forms.
    """
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"unknown metric {name!r}; use ndcg@K, recall@K, map@K, precision@K or mrr@K (K >= 1)")
    return match.group(1), int(match.group(2))


def filter_identical_ids(run: Run) -> dict[str, dict[str, float]]:
    """A copy of ``run`` without hits whose doc id equals their query id (BEIR's default); input untouched."""
    return {qid: {doc: float(score) for doc, score in hits.items() if doc != qid} for qid, hits in run.items()}


def top_k(run: Run, k: int) -> dict[str, dict[str, float]]:
    """A copy of ``run`` keeping each query's ``k`` best hits, in trec_eval's order (score desc, doc id desc)."""
    out = {}
    for qid, hits in run.items():
        ranked = sorted(hits.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k]
        out[qid] = {doc: float(score) for doc, score in ranked}
    return out


@dataclass
class RetrievalScores:
    """Mean and per-query metric values.

    Attributes:
        mean: ``{metric: mean over judged queries}``.
        per_query: ``{query_id: {metric: value}}``.
        n_queries: Judged queries averaged over.
        n_queries_without_hits: Judged queries the run returned nothing for (scored 0).
        ignore_identical_ids: Whether doc id == query id hits were dropped first.
    """

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]
    n_queries: int
    n_queries_without_hits: int
    ignore_identical_ids: bool

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.mean), "per_query": self.per_query, "n_queries": self.n_queries,
                "n_queries_without_hits": self.n_queries_without_hits,
                "ignore_identical_ids": self.ignore_identical_ids}


def evaluate_run(qrels: Qrels, run: Run, *, metrics: Sequence[str] = DEFAULT_METRICS,
                 ignore_identical_ids: bool = True) -> RetrievalScores:
    """Score a run against qrels with ``pytrec_eval``.

    Args:
        qrels: ``{query_id: {doc_id: grade}}`` (grade > 0 is relevant; 0 = judged non-relevant).
        run: ``{query_id: {doc_id: score}}``; higher scores rank first.
        metrics: Names like ``"ndcg@10"`` (see module docstring).
        ignore_identical_ids: Drop hits whose doc id equals the query id before scoring (BEIR's default);
            done on a copy.

    Returns:
        Means over every judged query (queries in ``qrels``), and per-query values.

    Raises:
        ValueError: Unknown metric, or empty qrels.
    """
    import pytrec_eval

    parsed = [(name, *parse_metric(name)) for name in metrics]
    if not qrels:
        raise ValueError("qrels are empty: nothing to evaluate")
    qrels_copy = {str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    run_copy = filter_identical_ids(run) if ignore_identical_ids else {
        str(q): {str(d): float(s) for d, s in hits.items()} for q, hits in run.items()}
    run_copy = {q: hits for q, hits in run_copy.items() if q in qrels_copy and hits}

    per_query: dict[str, dict[str, float]] = {qid: {} for qid in qrels_copy}
    plain = {(measure, k) for _, measure, k in parsed if measure != "mrr"}
    if plain:
        families = sorted({_MEASURES[m][0] for m, _ in plain})
        cutoffs = {family: sorted({k for m, k in plain if _MEASURES[m][0] == family}) for family in families}
        evaluator = pytrec_eval.RelevanceEvaluator(
            qrels_copy, {f"{family}.{','.join(map(str, cutoffs[family]))}" for family in families})
        results = evaluator.evaluate(run_copy)
        for name, measure, k in parsed:
            if measure == "mrr":
                continue
            key = _MEASURES[measure][1].format(k=k)
            for qid in per_query:
                per_query[qid][name] = float(results.get(qid, {}).get(key, 0.0))
    for name, measure, k in parsed:
        if measure != "mrr":
            continue
        evaluator = pytrec_eval.RelevanceEvaluator(qrels_copy, {"recip_rank"})
        results = evaluator.evaluate(top_k(run_copy, k))
        for qid in per_query:
            per_query[qid][name] = float(results.get(qid, {}).get("recip_rank", 0.0))

    n = len(per_query)
    mean = {name: sum(scores[name] for scores in per_query.values()) / n for name, _, _ in parsed}
    return RetrievalScores(mean, per_query, n, sum(1 for qid in per_query if qid not in run_copy),
                           ignore_identical_ids)
