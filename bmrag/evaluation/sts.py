"""Sentence-similarity evaluation (BIOSSES): correlation between model similarity and gold scores.

Protocol (documented in docs/evaluation.md): the pairs are symmetric, so **both sentences are encoded the
same way, as queries**. Models whose query template takes an instruction get the registered task's
instruction (``"biosses"``: E5-Mistral's STS wording); models without one (sentence-transformers) embed the
plain sentence. Similarity = cosine, whatever the retrieval score of the recipe is (MTEB does the same).
Spearman is the headline (the paper's), Pearson is recorded too; both come from ``scipy.stats``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class StsScores:
    """Correlations and the per-pair similarities they came from."""

    spearman: float
    pearson: float
    similarities: list[float]

    def metrics(self) -> dict[str, float]:
        return {"spearman": self.spearman, "pearson": self.pearson}


def correlations(predicted: Sequence[float], gold: Sequence[float]) -> StsScores:
    """Spearman and Pearson correlation of ``predicted`` with ``gold`` (scipy).

    Raises:
        ValueError: Different lengths, fewer than 3 pairs, or a constant input (correlation undefined).
    """
    from scipy import stats

    pred = np.asarray(predicted, dtype=np.float64)
    ref = np.asarray(gold, dtype=np.float64)
    if pred.shape != ref.shape or pred.ndim != 1:
        raise ValueError(f"predicted {pred.shape} and gold {ref.shape} must be 1-D and equally long")
    if len(pred) < 3:
        raise ValueError(f"need at least 3 pairs for a correlation, got {len(pred)}")
    if np.ptp(pred) == 0 or np.ptp(ref) == 0:
        raise ValueError("a constant input has no correlation (every predicted or gold score is the same)")
    return StsScores(float(stats.spearmanr(pred, ref).statistic), float(stats.pearsonr(pred, ref).statistic),
                     pred.tolist())


def encode_pairs(encoder: Any, pairs: Sequence[tuple[str, str]], *, task: str | None = "biosses",
                 batch_size: int = 32, show_progress_bar: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Encode both sides of each pair symmetrically as queries; returns L2-normalised (n, dim) arrays.

    The instruction of ``task`` is used only when the model's query template has an ``{instruction}`` slot.
    """
    sentences = [s for pair in pairs for s in pair]
    task = task if encoder.recipe.needs_instruction else None
    vectors = encoder.encode_queries(sentences, task=task, batch_size=batch_size,
                                     show_progress_bar=show_progress_bar)
    vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    return vectors[0::2], vectors[1::2]


def cosine_pair_scores(encoder: Any, pairs: Sequence[tuple[str, str]], *, task: str | None = "biosses",
                       batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
    """Cosine similarity of each pair under :func:`encode_pairs`."""
    first, second = encode_pairs(encoder, pairs, task=task, batch_size=batch_size,
                                 show_progress_bar=show_progress_bar)
    return np.sum(first * second, axis=1)
