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


# ------------------------------------------------------------------------------------------------ grounding

ABSTENTION_METRICS = ("abstention_precision", "abstention_recall", "false_abstention_rate")
"""Abstention scores over answerable + unanswerable questions (see :func:`abstention_scores`)."""


def abstention_scores(should_abstain: Sequence[bool], abstained: Sequence[bool]) -> dict[str, Any]:
    """Abstention as a detector of unanswerable questions.

    Args:
        should_abstain: Per question, True when the index cannot answer it (its gold passages are not indexed, or
            it is from another domain), False when its gold passages are indexed.
        abstained: Per question, True when the answer was an abstention.

    Returns:
        ``abstention_precision`` (share of abstentions that were on unanswerable questions; None without any
        abstention), ``abstention_recall`` (share of unanswerable questions abstained on; None without any),
        ``false_abstention_rate`` (share of answerable questions abstained on; None without any) and the counts
        ``tp``, ``fp``, ``fn``, ``tn``, ``n``.
    """
    if len(should_abstain) != len(abstained):
        raise ValueError(f"{len(should_abstain)} labels for {len(abstained)} abstention decisions")
    pairs = list(zip(map(bool, should_abstain), map(bool, abstained)))
    tp = sum(1 for y, a in pairs if y and a)
    fp = sum(1 for y, a in pairs if not y and a)
    fn = sum(1 for y, a in pairs if y and not a)
    tn = sum(1 for y, a in pairs if not y and not a)
    return {"abstention_precision": tp / (tp + fp) if tp + fp else None,
            "abstention_recall": tp / (tp + fn) if tp + fn else None,
            "false_abstention_rate": fp / (fp + tn) if fp + tn else None,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": len(pairs)}


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """p50 / p95 (linear interpolation between order statistics, numpy's default), mean and max, in seconds."""
    import numpy as np

    if not seconds:
        return {"n": 0, "p50_s": None, "p95_s": None, "mean_s": None, "max_s": None}
    values = np.asarray(seconds, dtype=np.float64)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("latencies must be finite and >= 0")
    return {"n": int(values.size), "p50_s": float(np.percentile(values, 50)),
            "p95_s": float(np.percentile(values, 95)), "mean_s": float(values.mean()), "max_s": float(values.max())}


def _squash(text: str) -> str:
    return " ".join(text.split())


def not_verbatim(quotes: Sequence[tuple[str, int]], passages: dict[int, str]) -> list[str]:
    """The quoted sentences that do not occur verbatim (up to whitespace) in the passage they cite.

    Args:
        quotes: ``(sentence, passage number)`` pairs of an extractive answer.
        passages: Passage text by number.

    Returns:
        The offending sentences (empty for a correct extractive answer: unsupported by construction = none).
    """
    return [sentence for sentence, number in quotes
            if number not in passages or _squash(sentence) not in _squash(passages[number])]
