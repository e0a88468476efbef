"""Extractive answers: 1-4 sentences quoted verbatim from the numbered evidence, each with its ``[n]``.

No generator is called, so nothing can be invented: every answer sentence is a substring of a passage the
user sees. :func:`extract_answer` splits each passage into sentences (:func:`bmrag.qa.attribution.split_sentences`,
the project's one splitter), scores them against the question with a :class:`SentenceScorer` and picks them by
maximal marginal relevance (MMR: relevance minus redundancy with what is already chosen).

Scorers:

* :class:`DenseScorer`: the retriever's own embeddings (``BMRetrieverEmbedding``): cosine of the question's
  query vector with each sentence's text vector; redundancy = cosine between sentences.
* :class:`LexicalScorer`: BM25 (``bm25s``, Lucene variant, the project's tokenizer) of the question against
  the candidate sentences, divided by the best sentence's score; redundancy = Jaccard of content words.
* :class:`MixScorer`: ``weight * dense + (1 - weight) * lexical``; redundancy from the dense side.

Which one is the default is decided by ``evals/extractive_abstention.py`` (see ``evals/results/``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from bmrag.bm25 import _import_bm25s, tokenize
from bmrag.qa.attribution import split_sentences

ScorerName = Literal["dense", "lexical", "mix"]

MAX_SENTENCES = 4
"""The most sentences an extractive answer quotes."""


@dataclass(frozen=True)
class Passage:
    """One numbered evidence passage as the prompt shows it (``[number] title. text``).

    Attributes:
        number: ``n`` of ``[n]`` (1-based, prompt order).
        text: The passage text (sentences are quoted from it verbatim). When it starts with ``title``, as index
            nodes do, that prefix is skipped: a title is never quoted.
        title: The document title.
    """

    number: int
    text: str
    title: str = ""


@dataclass(frozen=True)
class ExtractiveConfig:
    """How sentences are chosen.

    Attributes:
        max_sentences: Most sentences quoted (1..4).
        mmr_lambda: MMR trade-off: 1.0 pure relevance, lower values penalise redundancy more.
        min_relative: A further sentence is quoted only if its relevance is at least this share of the best
            sentence's (stops padding a focused answer with weak sentences).
        min_words: Sentences with fewer content words are not quoted ("Results.", "Yes.").
        max_chars: Longer sentences (usually an unsplit list or table) are not quoted.
        duplicate_similarity: Candidates this similar to a chosen sentence are skipped as repeats.
    """

    max_sentences: int = field(default=3, metadata={"help": "most sentences quoted (1..4)"})
    mmr_lambda: float = field(default=0.7, metadata={"help": "MMR relevance weight (0..1)"})
    min_relative: float = field(default=0.85, metadata={"help": "further sentences need this share of the best"})
    min_words: int = field(default=4, metadata={"help": "fewest content words a quoted sentence has"})
    max_chars: int = field(default=600, metadata={"help": "longest sentence quoted, in characters"})
    duplicate_similarity: float = field(default=0.95, metadata={"help": "skip candidates this similar to a pick"})

    def __post_init__(self) -> None:
        if not 1 <= self.max_sentences <= MAX_SENTENCES:
            raise ValueError(f"max_sentences must be 1..{MAX_SENTENCES}, got {self.max_sentences}")
        for name in ("mmr_lambda", "min_relative", "duplicate_similarity"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.min_words < 0 or self.max_chars < 1:
            raise ValueError(f"need min_words >= 0 and max_chars >= 1, got {self.min_words}, {self.max_chars}")


@dataclass(frozen=True)
class Candidate:
    """A sentence that may be quoted: its text (verbatim) and the number of its passage."""

    text: str
    passage: int


@dataclass(frozen=True)
class Scores:
    """What a scorer says about the candidates of one question.

    Attributes:
        relevance: (n,) relevance to the question; higher is better (only its order and ratios are used).
        similarity: (n, n) sentence-to-sentence similarity in 0..1 (diagonal 1) for MMR.
        dense: (n,) cosine with the question when the scorer has one (abstention uses it), else None.
        lexical: (n,) BM25 relative to the best candidate when the scorer has one, else None.
    """

    relevance: np.ndarray
    similarity: np.ndarray
    dense: np.ndarray | None = None
    lexical: np.ndarray | None = None


class SentenceScorer(Protocol):
    """Scores candidate sentences against a question."""

    name: str

    def score(self, question: str, sentences: Sequence[str]) -> Scores:  # pragma: no cover - protocol
        ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class DenseScorer:
    """Cosine of the retriever's question vector with each sentence's vector.

    Args:
        embed_model: The retriever's ``BMRetrieverEmbedding`` (anything with ``get_query_embedding`` and
            ``get_text_embedding_batch``): sentences are embedded as the index embeds passages, the
            question as retrieval embeds it. Cosine is used even for dot-product models, so that scores of
            different questions are comparable (abstention thresholds them).
    """

    name = "dense"

    def __init__(self, embed_model: Any) -> None:
        for method in ("get_query_embedding", "get_text_embedding_batch"):
            if not callable(getattr(embed_model, method, None)):
                raise TypeError(f"DenseScorer needs an embedding model with {method}(), got {type(embed_model)!r}")
        self.embed_model = embed_model

    def score(self, question: str, sentences: Sequence[str]) -> Scores:
        query = _normalise(np.asarray([self.embed_model.get_query_embedding(question)]))
        vectors = _normalise(np.asarray(self.embed_model.get_text_embedding_batch(list(sentences))))
        cosine = (vectors @ query[0]).astype(np.float64)
        similarity = np.clip(vectors @ vectors.T, 0.0, 1.0).astype(np.float64)
        return Scores(relevance=cosine, similarity=similarity, dense=cosine)


def _jaccard(words: Sequence[set[str]]) -> np.ndarray:
    n = len(words)
    out = np.eye(n, dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            union = len(words[i] | words[j])
            out[i, j] = out[j, i] = len(words[i] & words[j]) / union if union else 0.0
    return out


class LexicalScorer:
    """BM25 of the question against the candidate sentences (statistics from the candidates themselves).

    Args:
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
    """

    name = "lexical"

    def __init__(self, k1: float = 0.9, b: float = 0.4) -> None:
        self.k1, self.b = k1, b

    def score(self, question: str, sentences: Sequence[str]) -> Scores:
        bm25s = _import_bm25s()
        tokens = [tokenize(s) for s in sentences]
        query = tokenize(question)
        raw = np.zeros(len(sentences), dtype=np.float64)
        if query and any(tokens):
            retriever = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
            # bm25s cannot index an empty token list; a placeholder token matches no query word.
            retriever.index([t or ["\x00"] for t in tokens], show_progress=False)
            raw = np.asarray(retriever.get_scores(query), dtype=np.float64)
        best = float(raw.max()) if raw.size else 0.0
        relative = raw / best if best > 0 else raw
        return Scores(relevance=relative, similarity=_jaccard([set(t) for t in tokens]), lexical=relative)


class MixScorer:
    """``weight * dense cosine + (1 - weight) * relative BM25``; redundancy from the dense vectors.

    Args:
        embed_model: See :class:`DenseScorer`.
        weight: Weight of the dense side (0..1).
    """

    name = "mix"

    def __init__(self, embed_model: Any, weight: float = 0.5) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be between 0 and 1, got {weight}")
        self.dense, self.lexical, self.weight = DenseScorer(embed_model), LexicalScorer(), weight

    def score(self, question: str, sentences: Sequence[str]) -> Scores:
        dense = self.dense.score(question, sentences)
        lexical = self.lexical.score(question, sentences)
        relevance = self.weight * dense.relevance + (1.0 - self.weight) * lexical.relevance
        return Scores(relevance=relevance, similarity=dense.similarity, dense=dense.dense, lexical=lexical.lexical)


def make_scorer(name: ScorerName, embed_model: Any = None, *, weight: float = 0.5) -> SentenceScorer:
    """Build the scorer called ``name`` (``"dense"``, ``"lexical"`` or ``"mix"``)."""
    if name == "lexical":
        return LexicalScorer()
    if embed_model is None:
        raise ValueError(f"the {name!r} scorer needs the retriever's embedding model")
    if name == "dense":
        return DenseScorer(embed_model)
    if name == "mix":
        return MixScorer(embed_model, weight=weight)
    raise ValueError(f"scorer must be 'dense', 'lexical' or 'mix', got {name!r}")


@dataclass(frozen=True)
class QuotedSentence:
    """One quoted sentence.

    Attributes:
        text: The sentence exactly as it appears in passage ``passage``.
        passage: Its passage number (the ``[n]`` shown after it).
        relevance: The scorer's relevance.
        dense: Cosine with the question (dense and mix scorers), else None.
        lexical: Relative BM25 (lexical and mix scorers), else None.
    """

    text: str
    passage: int
    relevance: float
    dense: float | None = None
    lexical: float | None = None


@dataclass
class ExtractiveAnswer:
    """An extractive answer.

    Attributes:
        sentences: Quoted sentences, most relevant first.
        scorer: Name of the scorer that chose them.
        candidates: How many sentences were considered.
        best_dense: Highest dense cosine over all candidates (None without a dense side): an abstention signal.
        best_lexical_coverage: Highest share of the question's content words that one candidate contains.
    """

    sentences: list[QuotedSentence]
    scorer: str
    candidates: int
    best_dense: float | None = None
    best_lexical_coverage: float = 0.0

    @property
    def passages(self) -> list[int]:
        """Passage number of each quoted sentence, in answer order."""
        return [s.passage for s in self.sentences]

    @property
    def scores(self) -> list[float]:
        """Relevance of each quoted sentence, in answer order."""
        return [s.relevance for s in self.sentences]

    @property
    def text(self) -> str:
        """The answer as shown: each quoted sentence followed by its ``[n]``."""
        return " ".join(f"\u201c{s.text}\u201d [{s.passage}]" for s in self.sentences)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "scorer": self.scorer, "candidates": self.candidates,
                "best_dense": self.best_dense, "best_lexical_coverage": self.best_lexical_coverage,
                "sentences": [asdict(s) for s in self.sentences]}


_QUESTION_END = re.compile(r"\?\s*$")


def candidates(passages: Sequence[Passage], config: ExtractiveConfig | None = None) -> list[Candidate]:
    """Sentences of the passages that may be quoted, in passage order (verbatim, repeats dropped)."""
    config = config or ExtractiveConfig()
    numbers = [p.number for p in passages]
    if len(set(numbers)) != len(numbers) or any(n < 1 for n in numbers):
        raise ValueError(f"passage numbers must be distinct and >= 1, got {numbers}")
    out: list[Candidate] = []
    seen: set[str] = set()
    for passage in passages:
        text, title = passage.text.strip(), " ".join(passage.title.split())
        # Index nodes repeat the title before the text (prompts.join_title); a title is not a quotable sentence.
        if title and " ".join(text.split()).startswith(title):
            text = text[_prefix_end(text, title):].strip()
        for sentence in split_sentences(text):
            key = " ".join(sentence.lower().split())
            # Questions inside a passage (FAQ headings) are not answers; very long "sentences" are unsplit lists.
            if (key in seen or _QUESTION_END.search(sentence) or len(sentence) > config.max_chars
                    or len(set(tokenize(sentence))) < config.min_words):
                continue
            seen.add(key)
            out.append(Candidate(sentence, passage.number))
    return out


def _prefix_end(text: str, title: str) -> int:
    """Index in ``text`` just after the words of ``title`` (whitespace in either may differ)."""
    words = title.split()
    position = 0
    for word in words:
        position = text.index(word, position) + len(word)
    return position


def coverage(question: str, sentence: str) -> float:
    """Share of the question's distinct content words that occur in ``sentence`` (0 for a wordless question)."""
    words = set(tokenize(question))
    return len(words & set(tokenize(sentence))) / len(words) if words else 0.0


def mmr_select(relevance: np.ndarray, similarity: np.ndarray, config: ExtractiveConfig) -> list[int]:
    """Indices chosen by maximal marginal relevance, in the order chosen.

    The first pick is the most relevant candidate (ties: the earlier one). Each further pick maximises
    ``lambda * relevance - (1 - lambda) * max similarity to the picks``, among candidates whose relevance is
    at least ``min_relative`` of the best and that are not near-duplicates of a pick.
    """
    n = len(relevance)
    if n == 0:
        return []
    best = int(np.argmax(relevance))
    chosen = [best]
    floor = relevance[best] * config.min_relative if relevance[best] > 0 else math.inf
    while len(chosen) < min(config.max_sentences, n):
        top, top_value = None, -math.inf
        for i in range(n):
            if i in chosen or relevance[i] < floor:
                continue
            redundancy = max(similarity[i, j] for j in chosen)
            if redundancy >= config.duplicate_similarity:
                continue
            value = config.mmr_lambda * relevance[i] - (1.0 - config.mmr_lambda) * redundancy
            if value > top_value:
                top, top_value = i, value
        if top is None:
            break
        chosen.append(top)
    return chosen


def extract_answer(question: str, passages: Sequence[Passage], scorer: SentenceScorer,
                   config: ExtractiveConfig | None = None) -> ExtractiveAnswer:
    """Quote 1..``max_sentences`` sentences of ``passages`` that answer ``question``.

    Args:
        question: The user's question.
        passages: The numbered evidence (see :class:`Passage`; :func:`passages_from_evidence` converts the
            chain's ``Evidence`` items).
        scorer: A :class:`SentenceScorer` (see :func:`make_scorer`).
        config: Selection settings.

    Returns:
        An :class:`ExtractiveAnswer`; its ``sentences`` is empty only when no passage has a quotable sentence.

    Raises:
        ValueError: Empty question, or passage numbers that repeat or are below 1.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty")
    config = config or ExtractiveConfig()
    pool = candidates(passages, config)
    if not pool:
        return ExtractiveAnswer([], scorer.name, 0)
    scores = scorer.score(question, [c.text for c in pool])
    picked = mmr_select(np.asarray(scores.relevance, dtype=np.float64), scores.similarity, config)

    def _at(values: np.ndarray | None, i: int) -> float | None:
        return None if values is None else float(values[i])

    quoted = [QuotedSentence(pool[i].text, pool[i].passage, float(scores.relevance[i]), _at(scores.dense, i),
                             _at(scores.lexical, i)) for i in picked]
    return ExtractiveAnswer(
        quoted, scorer.name, len(pool),
        best_dense=None if scores.dense is None else float(np.max(scores.dense)),
        best_lexical_coverage=max(coverage(question, c.text) for c in pool))


def passages_from_evidence(evidence: Sequence[Any]) -> list[Passage]:
    """The chain's numbered ``Evidence`` items (``number >= 1``) as :class:`Passage` objects."""
    return [Passage(number=item.number, text=item.text, title=item.title) for item in evidence if item.number >= 1]
