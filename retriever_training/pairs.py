"""Stage I pseudo pairs from raw text (BMRetriever's unsupervised contrastive pre-training).

Two kinds of pairs, both taken from one document (the paper's recipe; its sampling details were not
published, so these rules are bmrag's and are fixed by a seed):

* **title -> body**: when a document has a title of ``title_words`` words and a body of at least
  ``min_body_words`` words, the title is the query and the body the positive.
* **span -> span**: two *disjoint* word spans of the same document; the query span has
  ``query_words`` words (uniform in the range), the positive span ``passage_words`` words (uniform),
  their order in the document is random. A document needs at least ``min(query) + min(passage)``
  words; ``spans_per_doc`` pairs are drawn from each (fewer if the document is short).

Documents with identical normalised text are used once. Negatives are in-batch only (``negatives``
stays empty). Each kind gets its own instruction (:data:`STAGE1_INSTRUCTIONS`), rendered with the
same query template as inference.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmrag.index.readers import iter_jsonl, load_corpus, load_qrels
from retriever_training.data import Group, normalize_text

logger = logging.getLogger(__name__)

STAGE1_INSTRUCTIONS = {
    "title_body": "Given a title, retrieve the passage that it is the title of",
    "span_span": "Given a passage, retrieve another passage from the same document",
}
"""bmrag's Stage I instructions (the paper does not publish its own)."""

RAW_SOURCES = ("bioasq", "medquad", "pubmedqa", "scifact")
"""Raw-text sources known to :func:`raw_documents`."""


@dataclass(frozen=True)
class PairRules:
    """The sampling knobs of Stage I (see the module docstring).

    Attributes:
        title_words: Inclusive (min, max) words of a usable title.
        min_body_words: Minimum words of the body for a title -> body pair.
        query_words: Inclusive (min, max) words of the query span.
        passage_words: Inclusive (min, max) words of the positive span.
        spans_per_doc: Span pairs drawn per document.
        title_body: Make title -> body pairs.
        seed: Random seed.
    """

    title_words: tuple[int, int] = (3, 64)
    min_body_words: int = 20
    query_words: tuple[int, int] = (8, 32)
    passage_words: tuple[int, int] = (32, 96)
    spans_per_doc: int = 1
    title_body: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("title_words", "query_words", "passage_words"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be (min, max) with 1 <= min <= max, got {(low, high)}")
        if self.spans_per_doc < 0 or self.min_body_words < 1:
            raise ValueError("spans_per_doc must be >= 0 and min_body_words >= 1")


@dataclass
class PairReport:
    documents: int = 0
    duplicates: int = 0
    title_body: int = 0
    span_span: int = 0
    too_short_for_spans: int = 0

    def summary(self) -> str:
        return (f"{self.documents} documents ({self.duplicates} duplicate texts skipped): {self.title_body} "
                f"title->body and {self.span_span} span->span pairs; {self.too_short_for_spans} documents too "
                "short for a span pair")


def _spans(words: list[str], rules: PairRules, rng: random.Random) -> tuple[str, str] | None:
    """Two disjoint spans (query, positive) or None when the document is too short."""
    n = len(words)
    if n < rules.query_words[0] + rules.passage_words[0]:
        return None
    q_len = rng.randint(rules.query_words[0], min(rules.query_words[1], n - rules.passage_words[0]))
    p_len = rng.randint(rules.passage_words[0], min(rules.passage_words[1], n - q_len))
    first, second = (q_len, p_len) if rng.random() < 0.5 else (p_len, q_len)
    start_a = rng.randint(0, n - first - second)  # leave room for the second span after the first
    start_b = rng.randint(start_a + first, n - second)
    span_a = " ".join(words[start_a:start_a + first])
    span_b = " ".join(words[start_b:start_b + second])
    return (span_a, span_b) if first == q_len else (span_b, span_a)


def make_pairs(documents: Iterable[Mapping[str, Any]], rules: PairRules = PairRules(),
               report: PairReport | None = None) -> Iterator[Group]:
    """Yield Stage I groups from documents ``{"id", "title", "text"}`` following ``rules``."""
    report = report if report is not None else PairReport()
    rng = random.Random(rules.seed)
    seen: set[str] = set()
    for doc in documents:
        title, text = (doc.get("title") or "").strip(), (doc.get("text") or "").strip()
        key = normalize_text(title + " " + text)
        if not key:
            continue
        if key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        report.documents += 1
        doc_id = str(doc.get("id", report.documents))
        words = text.split()
        n_title = len(title.split())
        if (rules.title_body and rules.title_words[0] <= n_title <= rules.title_words[1]
                and len(words) >= rules.min_body_words):
            report.title_body += 1
            yield Group(query=title, positives=[text], instruction=STAGE1_INSTRUCTIONS["title_body"],
                        task="title_body", source=str(doc.get("source", "")), id=f"{doc_id}:title")
        made = 0
        for k in range(rules.spans_per_doc):
            pair = _spans(words, rules, rng)
            if pair is None:
                break
            made += 1
            report.span_span += 1
            yield Group(query=pair[0], positives=[pair[1]], instruction=STAGE1_INSTRUCTIONS["span_span"],
                        task="span_span", source=str(doc.get("source", "")), id=f"{doc_id}:span{k}")
        if rules.spans_per_doc and not made:
            report.too_short_for_spans += 1


def raw_documents(data_dir: str | os.PathLike[str], sources: Iterable[str]) -> Iterator[dict[str, str]]:
    """Raw text for Stage I from the shared data folder (no queries or labels are read).

    ``bioasq``: the ``bioasq-snippets`` corpus (PubMed abstract snippets); ``medquad``: the 16,407
    answers, titled with their ``focus``; ``pubmedqa``: the abstracts of the 500 *train* questions only
    (the test abstracts are skipped); ``scifact``: the SciFact corpus (leave it out for zero-shot
    SciFact claims).
    """
    root = Path(data_dir)
    for source in sources:
        if source not in RAW_SOURCES:
            raise ValueError(f"unknown raw-text source {source!r}; valid: {', '.join(RAW_SOURCES)}")
        if source in ("bioasq", "scifact"):
            folder = root / ("bioasq-snippets" if source == "bioasq" else "scifact")
            for doc_id, doc in load_corpus(folder).items():
                yield {"id": f"{source}:{doc_id}", "title": doc["title"], "text": doc["text"], "source": source}
        elif source == "pubmedqa":
            folder = root / "pubmedqa-retrieval"
            test_docs = {d for docs in load_qrels(folder, "test").values() for d in docs}
            for doc_id, doc in load_corpus(folder).items():
                if doc_id not in test_docs:
                    yield {"id": f"pubmedqa:{doc_id}", "title": doc["title"], "text": doc["text"], "source": source}
        else:
            for _, record in iter_jsonl(root / "medquad" / "medquad.jsonl.gz"):
                if (record.get("answer") or "").strip():
                    yield {"id": f"medquad:{record['uid']}", "title": record.get("focus") or "",
                           "text": record["answer"], "source": source}
