"""BM25 baseline with ``bm25s`` (Lucene variant), run through the same harness as the dense models.

Defaults follow BEIR's Elasticsearch baseline where it is documented (k1=0.9, b=0.4, document = title + " " +
text) and keep the analysis simple and explicit: lower-cased ``[a-z0-9]+`` tokens, Lucene's 33-word English
stop-list, no stemming (Elasticsearch's English analyser stems; that is the known gap, see docs/evaluation.md).
Hits with score 0 (no query term in the document) are not returned, as a search engine would not return them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any

import numpy as np

LUCENE_ENGLISH_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)
"""Lucene's ``EnglishAnalyzer.ENGLISH_STOP_WORDS_SET`` (33 words)."""

_TOKEN = re.compile(r"[a-z0-9]+")


def _import_bm25s():
    import bm25s

    # bm25s sets its own logger to DEBUG at import, which prints index-building chatter through any root handler.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def tokenize(text: str, stopwords: frozenset[str] = LUCENE_ENGLISH_STOP_WORDS) -> list[str]:
    """Lower-case alphanumeric tokens without stop words: ``"The p53 Pathway!"`` -> ``["p53", "pathway"]``."""
    return [token for token in _TOKEN.findall(text.lower()) if token not in stopwords]


class BM25Baseline:
    """BM25 over a BEIR corpus.

    Args:
        k1: Term-frequency saturation (BEIR/Elasticsearch: 0.9).
        b: Length normalisation (BEIR/Elasticsearch: 0.4).
        method: ``bm25s`` scoring variant (``"lucene"`` matches Elasticsearch's formula).
        show_progress_bar: Show bm25s' progress bars.
    """

    def __init__(self, k1: float = 0.9, b: float = 0.4, method: str = "lucene", *,
                 show_progress_bar: bool = False) -> None:
        bm25s = _import_bm25s()
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.method = k1, b, method
        self.show_progress_bar = show_progress_bar
        self._retriever = bm25s.BM25(k1=k1, b=b, method=method)
        self._doc_ids: list[str] = []

    def describe(self) -> dict[str, Any]:
        """JSON-able record of what runs (for result files)."""
        return {
            "model": "bm25", "revision": None, "kind": "bm25", "implementation": f"bm25s {version('bm25s')}",
            "k1": self.k1, "b": self.b, "method": self.method,
            "tokenizer": "lower-case [a-z0-9]+ tokens, Lucene English stop-list (33 words), no stemming",
            "document_text": "(title + ' ' + text).strip()", "dtype": None, "recipe": None,
        }

    def index(self, corpus: Mapping[str, Mapping[str, Any]]) -> None:
        """Index ``{doc_id: {"title", "text"}}``."""
        self._doc_ids = list(corpus)
        tokens = [tokenize(f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()) for doc in corpus.values()]
        self._retriever.index(tokens, show_progress=self.show_progress_bar)

    def search(self, queries: Mapping[str, str], top_k: int = 1000) -> dict[str, dict[str, float]]:
        """Return ``{query_id: {doc_id: bm25 score}}`` (positive scores only, at most ``top_k``)."""
        if not self._doc_ids:
            raise ValueError("index a corpus first")
        qids = list(queries)
        k = min(top_k, len(self._doc_ids))
        tokens = [tokenize(queries[q]) for q in qids]
        docs, scores = self._retriever.retrieve(tokens, k=k, show_progress=self.show_progress_bar)
        run = {}
        for qid, row_docs, row_scores in zip(qids, docs, scores):
            run[qid] = {self._doc_ids[int(d)]: float(s) for d, s in zip(row_docs, row_scores) if s > 0}
        return run


def bm25_pair_scores(pairs: Sequence[tuple[str, str]], k1: float = 0.9, b: float = 0.4) -> np.ndarray:
    """A symmetric lexical similarity per sentence pair: mean of BM25(s1 -> s2) and BM25(s2 -> s1).

    Statistics (IDF, average length) come from all sentences of all pairs. A lexical reference for STS,
    not a similarity model: BM25 scores are unbounded and only their order is meaningful (use Spearman).
    """
    bm25s = _import_bm25s()
    sentences = [s for pair in pairs for s in pair]
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index([tokenize(s) for s in sentences], show_progress=False)
    out = np.empty(len(pairs), dtype=np.float64)
    for i, (first, second) in enumerate(pairs):
        forward = retriever.get_scores(tokenize(first))[2 * i + 1]
        backward = retriever.get_scores(tokenize(second))[2 * i]
        out[i] = (forward + backward) / 2
    return out
