"""Per-sentence support of a generated answer by the evidence, with the retriever's own sentence embeddings.

Word overlap (:mod:`bmrag.qa.attribution`) counts shared content words, so a general page that repeats the
question's words "supports" any claim about them. :func:`support` instead compares the answer sentence with
every sentence of every passage using the retriever's embeddings (cosine), and reports per passage the best
sentence match; the overlap score is kept next to it. A citation is added only when the best passage's
support reaches :data:`MIN_DENSE_SUPPORT`, the level at which the added citation names a gold passage most of
the time on held-in data (``evals/support_calibration.py``, ``evals/results/support.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bmrag.bm25 import tokenize
from bmrag.qa.attribution import split_sentences
from bmrag.qa.specificity import stem

MIN_DENSE_SUPPORT = 0.6
"""Dense support at which an added citation is right most of the time: on 238 held-in BioASQ train ideal-answer
sentences against gold + BM25 hard-negative passages, citations at support >= 0.6 name a gold passage 92.3% of the
time and 87.8% of sentences reach it (word overlap at its 0.5 default: 92.7%, 74.4% cited); see
``evals/results/support.md``. That set has no unsupported sentences, so how well 0.6 rejects them is not measured."""


@dataclass(frozen=True)
class SentenceSupport:
    """How well the evidence supports one answer sentence.

    Attributes:
        sentence: The answer sentence.
        best: 1-based number of the best-supporting passage (ties: the higher-ranked one).
        dense: Its support: the highest cosine between the sentence and one of the passage's sentences.
        overlap: Share of the sentence's content words found in that passage (the old word-overlap score).
        per_passage: Dense support of every passage, in passage order.
        supported: ``dense >= min_dense`` (the threshold used).
    """

    sentence: str
    best: int
    dense: float
    overlap: float
    per_passage: tuple[float, ...]
    supported: bool


def _unit(vectors: Any) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def support(sentences: Sequence[str], passages: Sequence[str], embed_model: Any, *,
            min_dense: float = MIN_DENSE_SUPPORT) -> list[SentenceSupport]:
    """Score each answer sentence against each passage.

    Args:
        sentences: Answer sentences (e.g. ``bmrag.qa.attribution.split_sentences(answer)``).
        passages: Evidence texts in prompt order (``passages[0]`` is ``[1]``).
        embed_model: The retriever's embedding (``get_text_embedding_batch``), as the index uses it.
        min_dense: Support a passage needs for the sentence to count as supported.

    Raises:
        ValueError: No passage, or ``min_dense`` outside -1..1.
    """
    if not passages:
        raise ValueError("need at least one passage to check support against")
    if not -1.0 <= min_dense <= 1.0:
        raise ValueError(f"min_dense must be between -1 and 1, got {min_dense}")
    if not sentences:
        return []
    pieces: list[str] = []
    owner: list[int] = []
    for number, passage in enumerate(passages):
        for piece in split_sentences(passage) or [passage]:
            pieces.append(piece)
            owner.append(number)
    vectors = _unit(embed_model.get_text_embedding_batch(list(sentences) + pieces))
    answer, evidence = vectors[: len(sentences)], vectors[len(sentences):]
    cosine = answer @ evidence.T
    owners = np.asarray(owner)
    vocab = [set(tokenize(p)) for p in passages]
    out = []
    for i, sentence in enumerate(sentences):
        per_passage = tuple(float(cosine[i, owners == n].max()) for n in range(len(passages)))
        best = max(range(len(passages)), key=lambda n: (per_passage[n], -n))
        words = set(tokenize(sentence))
        overlap = len(words & vocab[best]) / len(words) if words else 0.0
        out.append(SentenceSupport(sentence, best + 1, per_passage[best], overlap, per_passage,
                                   per_passage[best] >= min_dense))
    return out


QUESTION_WORDS = frozenset("""
what which who whom whose when where why how do does did done doing can could should would may might must shall
will i me my mine we us our you your he him his she her they them their have has had having get gets got know
about any some much many more most other than very also just please tell explain mean means meaning someone
people person thing things way ways there here been being am were was are is it its take takes taken taking
before after during while
""".split())
"""Words a question is phrased with rather than about (besides the BM25 tokenizer's stop words)."""

LAY_TERMS = {"heart": ("cardiac", "cardio", "coronary"), "kidney": ("renal", "nephr"), "liver": ("hepat",),
             "lung": ("pulmonary", "respirat"), "brain": ("cerebr", "neuro"), "stomach": ("gastr",),
             "skin": ("derma", "cutaneous"), "bone": ("osteo", "skeletal"), "blood": ("haem", "hem", "plasma"),
             "child": ("pediatric", "paediatric", "infant", "adolescent"), "children": ("pediatric", "paediatric"),
             "eye": ("ocular", "ophthalm", "retina"), "cancer": ("tumor", "tumour", "carcinoma", "neoplas"),
             "pregnancy": ("pregnant", "gestation", "prenatal"), "surgery": ("surgical", "operative", "bypass")}
"""Lay words and the clinical stems a passage may use instead ("heart surgery" in the question, "cardiac" or
"coronary artery bypass" in the abstract)."""


def _mentions(word: str, vocabulary: set[str]) -> bool:
    # A shared 5-letter stem counts ("treatments"/"treatment", "prevent"/"prevention"): erring towards
    # "mentioned" only ever suppresses the note, never invents one.
    stems = (stem(word), *LAY_TERMS.get(word, ()))
    return word in vocabulary or any(token.startswith(stems) for token in vocabulary)


def unmentioned_terms(question: str, texts: Sequence[str]) -> list[str]:
    """The question's content words that none of ``texts`` (the answer's source passages) contains.

    A quoted or checked answer can still be about something else than the question: asked whether high blood
    pressure is a risk factor for dementia, a quote on blood-pressure risk factors that never says "dementia"
    is verbatim and cited, but does not answer it. The words listed here are shown with the answer.

    Args:
        question: The user's question.
        texts: Title + text of each passage the answer cites.

    Returns:
        Content words in question order, each once (BM25 tokens minus :data:`QUESTION_WORDS`; numbers kept).
    """
    vocabulary = {token for text in texts for token in tokenize(text)}
    missing: list[str] = []
    for word in tokenize(question):
        if word in QUESTION_WORDS or len(word) < 2 or word in missing:
            continue
        if not _mentions(word, vocabulary):
            missing.append(word)
    return missing
