"""Decide "the indexed sources don't answer this question" from retrieval and extractive signals.

A small logistic model over a few signals of one question (:class:`Signals`: the top retrieval score, its
margin over the next passages, the best sentence's cosine with the question, how many of the question's
content words the best sentence / the top passage contain, and how rare the rarest question word no passage
mentions is) gives ``p_unanswerable``; the question is
abstained on when it reaches the calibrated threshold. Scores of different retrievers live on different
scales, so the model and its threshold are calibrated PER RETRIEVER (``evals/abstention_calibration.py``) on
labelled questions built from training splits only, and shipped as data: ``bmrag/data/abstention.json``
holds one :class:`AbstentionModel` per retriever name, with the recipe, the chosen point and how it was built.

There is no silent fallback: asking for a retriever that has no calibration raises
:class:`UncalibratedRetriever` naming the ones that have one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from bmrag.bm25 import tokenize
from bmrag.qa import specificity
from bmrag.qa.support import unmentioned_terms

CALIBRATION_FILE = Path(__file__).resolve().parents[1] / "data" / "abstention.json"
"""The shipped calibrations (one entry per retriever)."""

ABSTAIN_MESSAGE = "The indexed sources don't answer this question."
"""What users see instead of an answer (the nearest passages are still shown)."""


class UncalibratedRetriever(LookupError):
    """No abstention calibration exists for the retriever asked for."""


@dataclass(frozen=True)
class Signals:
    """What one question's retrieval and extractive answer say about answerability.

    Attributes:
        top_score: Score of the best passage (the retriever's own scale: cosine, dot product or BM25).
        margin: ``top_score`` minus the mean score of passages 2..k (0 with a single passage).
        best_sentence: Best cosine of a candidate sentence with the question (extractive dense side; 0 when
            the scorer has no dense side).
        sentence_coverage: Highest share of the question's content words found in one candidate sentence.
        passage_coverage: Share of the question's content words found in the top passage (title + text).
        unmentioned_rarity: Rarity (:meth:`bmrag.qa.specificity.DocumentFrequencies.rarity`, 0-1) of the rarest
            question word that none of the passages mentions (:func:`bmrag.qa.support.unmentioned_terms`); 0 when
            every one is mentioned. A rare unmentioned word ("harlequin" over lamellar-ichthyosis pages) says the
            passages are about something near the question, not about it.
    """

    top_score: float
    margin: float
    best_sentence: float
    sentence_coverage: float
    passage_coverage: float
    unmentioned_rarity: float = 0.0

    def vector(self, names: Sequence[str]) -> np.ndarray:
        """The named signals as a float vector (the model's feature order)."""
        return np.asarray([float(getattr(self, name)) for name in names], dtype=np.float64)


SIGNAL_NAMES = tuple(f.name for f in fields(Signals))


def content_coverage(question: str, text: str) -> float:
    """Share of the question's distinct content words (bmrag's BM25 tokenizer) that occur in ``text``."""
    words = set(tokenize(question))
    return len(words & set(tokenize(text))) / len(words) if words else 0.0


def signals_from(question: str, scores: Sequence[float], passages: Sequence[str], extractive: Any) -> Signals:
    """Build :class:`Signals` from ranked passage scores/texts and an ``ExtractiveAnswer``.

    Args:
        question: The question.
        scores: Retrieval scores of the ranked passages, best first (at least one).
        passages: Their texts, same order (titles included as the index embeds them).
        extractive: The :class:`bmrag.qa.extractive.ExtractiveAnswer` for these passages.

    Raises:
        ValueError: No passage, or scores and passages of different lengths.
    """
    if not scores or len(scores) != len(passages):
        raise ValueError(f"need one score per passage and at least one passage, got {len(scores)} scores for "
                         f"{len(passages)} passages")
    rest = [float(s) for s in scores[1:]]
    margin = float(scores[0]) - (sum(rest) / len(rest)) if rest else 0.0
    missing = unmentioned_terms(question, passages)
    frequencies = specificity.shipped()
    return Signals(top_score=float(scores[0]), margin=margin,
                   best_sentence=float(extractive.best_dense) if extractive.best_dense is not None else 0.0,
                   sentence_coverage=float(extractive.best_lexical_coverage),
                   passage_coverage=content_coverage(question, passages[0]),
                   unmentioned_rarity=max((frequencies.rarity(word) for word in missing), default=0.0))


@dataclass(frozen=True)
class Decision:
    """The abstention decision for one question.

    Attributes:
        abstain: True when the sources are judged not to answer the question.
        p_unanswerable: The model's probability that the question is unanswerable from the sources.
        threshold: The calibrated threshold it was compared with (abstain when ``p >= threshold``).
        retriever: The retriever whose calibration decided.
        signals: The inputs.
    """

    abstain: bool
    p_unanswerable: float
    threshold: float
    retriever: str
    signals: Signals

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AbstentionModel:
    """A calibrated logistic model for one retriever.

    Attributes:
        retriever: Retriever model name (as recorded in the index manifest).
        features: Signal names used, in order (a subset of :data:`SIGNAL_NAMES`).
        mean: Per-feature mean used to standardise.
        scale: Per-feature standard deviation used to standardise.
        weights: Logistic weights (standardised features); positive = more likely unanswerable.
        bias: Logistic intercept.
        threshold: Abstain when ``p_unanswerable >= threshold``.
        recipe: How the signals are produced (k, extractive scorer, ...), so users can check they match.
        chosen_point: Precision/recall at the threshold on the calibration and held-out parts.
        built: How the calibration data was built (script, sources, counts).
    """

    retriever: str
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float
    recipe: dict[str, Any] = field(default_factory=dict)
    chosen_point: dict[str, Any] = field(default_factory=dict)
    built: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in SIGNAL_NAMES]
        if unknown:
            raise ValueError(f"{self.retriever}: unknown signals {unknown}; known: {list(SIGNAL_NAMES)}")
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.weights) == n) or n == 0:
            raise ValueError(f"{self.retriever}: features, mean, scale and weights need the same non-zero length, "
                             f"got {n}, {len(self.mean)}, {len(self.scale)}, {len(self.weights)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"{self.retriever}: threshold must be between 0 and 1, got {self.threshold}")

    def probability(self, signals: Signals) -> float:
        """``p_unanswerable`` for one question."""
        x = (signals.vector(self.features) - np.asarray(self.mean)) / np.asarray(self.scale)
        z = float(np.dot(np.asarray(self.weights), x) + self.bias)
        return 1.0 / (1.0 + math.exp(-z)) if z >= -700 else 0.0

    def decide(self, signals: Signals) -> Decision:
        """Abstain or not, with the probability and the threshold."""
        p = self.probability(signals)
        return Decision(p >= self.threshold, p, self.threshold, self.retriever, signals)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"] = list(self.features)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "abstention calibration") -> AbstentionModel:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.name not in
                         ("recipe", "chosen_point", "built"))
        if unknown or missing:
            raise ValueError(f"{where}: unknown fields {unknown}, missing fields {missing}")
        values = dict(data)
        for key in ("features", "mean", "scale", "weights"):
            values[key] = tuple(values[key])
        return cls(**values)


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, iterations: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method on standardised features.

    Args:
        x: (n, d) standardised features.
        y: (n,) labels, 1 = unanswerable.
        l2: Ridge penalty on the weights (not the bias).
        iterations: Newton steps (converges in a few for these sizes).

    Returns:
        ``(weights, bias)``.
    """
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    penalty = np.diag([l2] * d + [0.0])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -30, 30)))
        gradient = design.T @ (p - y) / n + penalty @ theta
        hessian = (design.T * (p * (1 - p))) @ design / n + penalty + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta[:d], float(theta[d])


def precision_recall(p: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float, int]:
    """Abstention precision and recall at ``threshold`` (abstain when ``p >= threshold``; y=1 unanswerable)."""
    abstain = p >= threshold
    n = int(abstain.sum())
    hits = int((abstain & (y == 1)).sum())
    positives = int((y == 1).sum())
    return (hits / n if n else 1.0), (hits / positives if positives else 0.0), n


def load_models(path: str | Path = CALIBRATION_FILE) -> dict[str, AbstentionModel]:
    """All calibrations in a calibration file, by retriever name.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Malformed entries (the message names the file and the entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no abstention calibration file at {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = data.get("retrievers") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected an object with a 'retrievers' list")
    models = {}
    for i, entry in enumerate(entries):
        model = AbstentionModel.from_dict(entry, f"{path}: retrievers[{i}]")
        models[model.retriever] = model
    return models


def model_for(retriever: str, path: str | Path = CALIBRATION_FILE) -> AbstentionModel:
    """The calibration for ``retriever``.

    Raises:
        UncalibratedRetriever: None exists (the message lists the calibrated retrievers).
    """
    models = load_models(path)
    if retriever not in models:
        raise UncalibratedRetriever(f"no abstention calibration for retriever {retriever!r} in {Path(path).name}; "
                                    f"calibrated: {sorted(models)} (run evals/abstention_calibration.py)")
    return models[retriever]


def write_models(models: Sequence[AbstentionModel], path: str | Path, *, note: str = "") -> None:
    """Write calibrations (sorted by retriever) as the JSON :func:`load_models` reads."""
    payload = {"note": note, "retrievers": [m.to_dict() for m in sorted(models, key=lambda m: m.retriever)]}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
