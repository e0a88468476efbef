"""Attribute answer sentences to the evidence they come from, by word overlap, and flag unsupported ones.

Small generators rarely write ``[n]`` themselves, and when forced to, pick the wrong number: with
SmolLM2-135M-Instruct on 50 PubMedQA questions, constrained decoding made 92% of answers cite, but only
31.5% of the cited passages were the gold abstract, while passage [1] was gold for 95.7% of the same
answers (``docs/qa-chain.md``). What a small model writes is mostly copied from one passage, so the
passage that contains a sentence's words is the better citation.

:func:`attribute` scores every sentence of an answer against every given passage: *support* = the share
of the sentence's distinct content words (lower-cased ``[a-z0-9]+``, Lucene stop words removed) that
occur in the passage. A sentence without a valid citation gets ``[n]`` of its best-supported passage when
that support reaches ``min_support``; below it the sentence is reported as unsupported by the sources.
Citations the model wrote itself are kept and their support reported. Pure functions: no model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bmrag.bm25 import tokenize
from bmrag.qa.citations import parse_citations

MIN_SUPPORT = 0.5
"""Share of a sentence's content words a passage must contain to be cited for it (see docs/qa-chain.md)."""
MIN_WORDS = 3
"""Sentences with fewer content words ("Yes.", "No, it does not.") are neither attributed nor flagged."""

# A sentence: text up to ., ! or ? followed by whitespace or the end (so "1.5 mg" stays whole); a last
# sentence cut by the token budget has no terminator.
_SENTENCE = re.compile(r".+?(?:[.!?]+(?=\s|$)|$)", re.DOTALL)
_END = re.compile(r"\s*([.!?]+)\s*$")


@dataclass(frozen=True)
class SentenceSupport:
    """One answer sentence and the passage that supports it best.

    Attributes:
        sentence: The sentence as written by the model (before any citation was added).
        best: Number of the best-supporting passage (1-based; ties go to the higher-ranked passage), or
            None when the sentence has fewer than :data:`MIN_WORDS` content words.
        support: That passage's support (0..1): share of the sentence's content words it contains.
        cited: Valid numbers the sentence cites after attribution.
        attributed: True when bmrag added the citation (the model wrote none for this sentence).
        unsupported: True when no passage reaches ``min_support`` and the sentence cites nothing.
        incomplete: True for a last sentence cut off by the token budget (no final punctuation); it is
            scored like the others (the chain notes separately that the answer hit its budget).
    """

    sentence: str
    best: int | None
    support: float
    cited: list[int] = field(default_factory=list)
    attributed: bool = False
    unsupported: bool = False
    incomplete: bool = False


@dataclass
class Attribution:
    """The result of :func:`attribute`.

    Attributes:
        text: The answer with the added citations.
        sentences: Per-sentence support, in order.
        min_support: The threshold used.
    """

    text: str
    sentences: list[SentenceSupport]
    min_support: float

    @property
    def added(self) -> list[int]:
        """Numbers bmrag added, in order (repeats included)."""
        return [n for s in self.sentences if s.attributed for n in s.cited]

    @property
    def unsupported(self) -> list[str]:
        """Sentences no passage supports."""
        return [s.sentence for s in self.sentences if s.unsupported]

    def to_dict(self) -> dict[str, Any]:
        return {"min_support": self.min_support, "sentences": [asdict(s) for s in self.sentences]}


def split_sentences(text: str) -> list[str]:
    """Sentences of an answer, whitespace-trimmed, in order (a cut-off last sentence included)."""
    return [m.group(0).strip() for m in _SENTENCE.finditer(text.strip()) if m.group(0).strip()]


def _cite(sentence: str, number: int) -> str:
    # "... discharge." -> "... discharge [2]."; a sentence cut by the budget gets the bracket at its end.
    end = _END.search(sentence)
    return f"{sentence[:end.start()]} [{number}]{end.group(1)}" if end else f"{sentence} [{number}]"


def attribute(answer: str, passages: Sequence[str], *, min_support: float = MIN_SUPPORT) -> Attribution:
    """Cite the best-supporting passage for each uncited sentence; flag sentences no passage supports.

    Args:
        answer: A generated answer whose citations were already checked (only ``1..len(passages)`` left).
        passages: The evidence texts in prompt order (``passages[0]`` is ``[1]``), titles included.
        min_support: Support a passage needs to be cited for a sentence (0..1).

    Returns:
        An :class:`Attribution`.

    Raises:
        ValueError: ``min_support`` outside 0..1.

    Example:
        >>> attribute("Metformin lowers hepatic glucose output.",
        ...           ["Insulin comes from beta cells.", "Metformin lowers hepatic glucose production."]).text
        'Metformin lowers hepatic glucose output [2].'
    """
    if not 0.0 <= min_support <= 1.0:
        raise ValueError(f"min_support must be between 0 and 1, got {min_support}")
    vocab = [set(tokenize(p)) for p in passages]
    pieces: list[str] = []
    rows: list[SentenceSupport] = []
    sentences = split_sentences(answer)
    for position, sentence in enumerate(sentences, start=1):
        cited = [n for _, numbers in parse_citations(sentence) for n in (numbers or []) if 1 <= n <= len(passages)]
        words = set(tokenize(re.sub(r"\[[^\]]*\]", " ", sentence)))
        cut = position == len(sentences) and not _END.search(sentence)
        best, score = None, 0.0
        if len(words) >= MIN_WORDS and vocab:
            scores = [len(words & v) / len(words) for v in vocab]
            top = max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties: the higher-ranked passage
            best, score = top + 1, scores[top]
        attributed = best is not None and not cited and score >= min_support
        if attributed:
            cited = [best]
            sentence_out = _cite(sentence, best)
        else:
            sentence_out = sentence
        rows.append(SentenceSupport(sentence, best, score, cited, attributed=attributed,
                                    unsupported=best is not None and not cited, incomplete=cut))
        pieces.append(sentence_out)
    return Attribution(text=" ".join(pieces), sentences=rows, min_support=min_support)
