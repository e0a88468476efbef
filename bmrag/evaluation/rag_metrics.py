"""RAG metrics that need no judge: yes/no/maybe decisions, ID-based context precision/recall, citations."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

Decision = Literal["yes", "no", "maybe"]
DECISIONS: tuple[str, ...] = ("yes", "no", "maybe")


_LEADING = re.compile(r"^[\s\"'*_#>\-\[\]().:]*(?:(?:final\s+)?(?:answer|decision)\s*[:\-]\s*)?", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+")
_FIRST_SENTENCE = re.compile(r"[^.!?\n]*")


def parse_decision(answer: str | None) -> Decision | None:
    """Read a yes/no/maybe decision from a generated answer.

    Rules, in order (case-insensitive):

    1. Strip leading spaces, quotes, markdown, brackets and an ``Answer:`` / ``Decision:`` prefix; if the first
       word is ``yes``, ``no`` or ``maybe``, that is the decision (``"Yes, statins ..."`` -> yes,
       ``"No."`` -> no). ``"No evidence ..."`` therefore reads as no: small models start negative answers so.
    2. Otherwise, if exactly one of the three words occurs as a word in the first sentence, that one
       (``"The answer is yes [1]."`` -> yes). None or several -> unparseable.

    The chain's refusal ("I cannot answer this question from the given sources.") is unparseable.

    Returns:
        ``"yes"``, ``"no"``, ``"maybe"``, or None when no decision can be read.
    """
    if not answer or not answer.strip():
        return None
    text = _LEADING.sub("", answer.strip().lower(), count=1)
    first = _WORD.match(text)
    if first and first.group(0) in DECISIONS:
        return first.group(0)  # type: ignore[return-value]
    sentence = _FIRST_SENTENCE.match(text)
    found = {w for w in _WORD.findall(sentence.group(0) if sentence else "") if w in DECISIONS}
    return found.pop() if len(found) == 1 else None  # type: ignore[return-value]


def decision_scores(gold: Sequence[str], predicted: Sequence[str | None]) -> dict[str, Any]:
    """Accuracy (unparseable = wrong), accuracy over parseable answers, counts, and the majority baseline."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels for {len(predicted)} predictions")
    n = len(gold)
    if n == 0:
        return {"n": 0}
    correct = sum(1 for g, p in zip(gold, predicted) if p == g)
    parsed = [(g, p) for g, p in zip(gold, predicted) if p is not None]
    counts = Counter(gold)
    majority, majority_n = max(sorted(counts.items()), key=lambda kv: kv[1])
    return {
        "n": n, "accuracy": correct / n,
        "accuracy_parseable": (sum(1 for g, p in parsed if g == p) / len(parsed)) if parsed else None,
        "unparseable": n - len(parsed), "predicted": dict(Counter(p or "unparseable" for p in predicted)),
        "gold": dict(sorted(counts.items())), "majority_class": majority, "majority_baseline": majority_n / n,
    }


# ------------------------------------------------------------------------------------------------ RAGAS


def id_context_scores(retrieved: Sequence[str], relevant: Sequence[str]) -> tuple[float, float]:
    """RAGAS ``IDBasedContextPrecision`` and ``IDBasedContextRecall`` for one question (NaN when undefined)."""
    from ragas.dataset_schema import SingleTurnSample
    from ragas.metrics import IDBasedContextPrecision, IDBasedContextRecall

    if not relevant:
        raise ValueError("a question without relevant ids cannot be scored")
    if not retrieved:
        return float("nan"), 0.0  # RAGAS asserts on an empty list; precision is undefined, recall is 0
    sample = SingleTurnSample(retrieved_context_ids=list(retrieved), reference_context_ids=list(relevant))
    return (float(IDBasedContextPrecision().single_turn_score(sample)),
            float(IDBasedContextRecall().single_turn_score(sample)))


CITATION_METRICS = ("citation_rate", "citation_precision", "citation_precision_first_passage",
                    "unsupported_sentences")
"""Citation scores of answered questions: ID-based (see :func:`citation_scores`), and the share of answer
sentences that no given passage supports by word overlap (:mod:`bmrag.qa.attribution`)."""


def citation_scores(cited: Sequence[str], given: Sequence[str], relevant: Sequence[str]) -> dict[str, float | None]:
    """Whether an answer cites, and whether what it cites is a gold-relevant passage.

    Args:
        cited: Document ids the answer's valid citations point to.
        given: Document ids of the evidence in prompt order (``given[0]`` is passage [1]).
        relevant: Gold relevant document ids.

    Returns:
        ``citation_rate`` (1.0 when at least one valid citation, else 0.0), ``citation_precision`` (share of
        cited documents that are relevant; None without citations) and ``citation_precision_first_passage``
        (the same for a trivial citer that always cites [1], over the same answers: the positional
        baseline; None without citations).
    """
    gold = set(relevant)
    if not cited:
        return {"citation_rate": 0.0, "citation_precision": None, "citation_precision_first_passage": None}
    return {"citation_rate": 1.0, "citation_precision": sum(doc in gold for doc in cited) / len(cited),
            "citation_precision_first_passage": float(bool(given) and given[0] in gold)}
