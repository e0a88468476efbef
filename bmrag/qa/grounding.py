"""Grounded answers: quoted (extractive) or generated-and-checked, and abstention when the sources don't answer.

What a user is shown is always one of three things (:data:`bmrag.qa.result.Status`):

* ``answered``: every sentence of the answer is in, or supported by, the numbered evidence. In ``extractive``
  mode the answer is 1-4 sentences quoted verbatim (:mod:`bmrag.qa.extractive`): nothing can be invented.
  In ``generative`` mode each generated sentence is checked against the evidence (:mod:`bmrag.qa.attribution`).
* ``partially_supported``: the generated answer had sentences no passage supports; they are removed from the
  answer and listed separately.
* ``abstained``: the sources don't answer the question (:mod:`bmrag.qa.abstention`, calibrated per retriever;
  or no passage reaches the weak-evidence threshold; or the model itself declined). The nearest passages are
  still shown.

The default mode follows what generator is configured (:func:`default_answer_mode`): ``generative`` with a
served model (``--backend vllm``), ``extractive`` otherwise, because the embedded 135M model cannot carry
answers on its own; the local model writes answers only when asked (``--answer generative``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from llama_index.core.schema import MetadataMode, NodeWithScore

from bmrag.llama_index.reranker import FIRST_STAGE_SCORE
from bmrag.qa import citations
from bmrag.qa.abstention import (
    ABSTAIN_MESSAGE,
    AbstentionModel,
    Decision,
    UncalibratedRetriever,
    model_for,
    signals_from,
)
from bmrag.qa.attribution import Attribution, attribute, split_sentences
from bmrag.qa.evidence import Evidence
from bmrag.qa.extractive import ExtractiveAnswer, extract_answer, make_scorer, passages_from_evidence

logger = logging.getLogger(__name__)

AnswerMode = Literal["extractive", "generative"]
ANSWER_MODES: tuple[str, ...] = get_args(AnswerMode)

EXTRACTIVE_SCORER = "mix"
"""Sentence scorer of extractive answers (the retriever's sentence embeddings mixed with BM25; see
``evals/results/abstention.md`` for the comparison of dense, lexical and mix)."""

__all__ = ["ABSTAIN_MESSAGE", "ANSWER_MODES", "AnswerMode", "Abstainer", "default_answer_mode", "drop_unfinished",
           "quoted_sources", "supported_sentences"]


def default_answer_mode(backend: str | None) -> AnswerMode:
    """``"generative"`` with a served generator (``backend="vllm"``), else ``"extractive"``."""
    return "generative" if backend == "vllm" else "extractive"


def check_answer_mode(answer: str) -> AnswerMode:
    """``answer`` when it is a known mode; a ``ValueError`` naming the modes otherwise."""
    if answer not in ANSWER_MODES:
        raise ValueError(f"answer mode must be one of {', '.join(ANSWER_MODES)}, got {answer!r}")
    return answer  # type: ignore[return-value]


class Abstainer:
    """Decides abstention for one retriever from the calibration shipped in ``bmrag/data/abstention.json``.

    Args:
        retriever: The retriever model name recorded in the index manifest.

    A retriever without a calibration gets no calibrated abstention (``model`` is None and :attr:`note` says
    so in every result): only the weak-evidence threshold and the model's own refusals then abstain.
    """

    def __init__(self, retriever: str) -> None:
        self.retriever = retriever
        self.model: AbstentionModel | None
        self.note: str | None = None
        try:
            self.model = model_for(retriever)
        except (UncalibratedRetriever, FileNotFoundError) as err:
            self.model = None
            self.note = f"no calibrated abstention for this retriever ({err})"

    @property
    def depth(self) -> int:
        """Passages the calibration's signals were computed over (its recipe's ``k``)."""
        return int((self.model.recipe if self.model else {}).get("k", 0) or 0)

    def decide(self, question: str, nodes: Sequence[NodeWithScore], extractive: ExtractiveAnswer) -> Decision | None:
        """The calibrated decision from the first-stage scores of ``nodes`` and the extractive answer."""
        if self.model is None or not nodes:
            return None
        # The calibration scored first-stage (dense) retrieval, best first: use those scores, not rerank scores.
        ranked = sorted(nodes, key=lambda n: -_first_stage(n))[: max(self.depth, 1)]
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in ranked]
        return self.model.decide(signals_from(question, [_first_stage(n) for n in ranked], texts, extractive))


def _first_stage(node: NodeWithScore) -> float:
    value = node.node.metadata.get(FIRST_STAGE_SCORE)
    return float(value if value is not None else (node.score if node.score is not None else float("-inf")))


def extractive_answer(question: str, evidence: Sequence[Evidence], embed_model: Any) -> ExtractiveAnswer:
    """Quote 1-4 sentences of the numbered ``evidence`` that answer ``question`` (no generator)."""
    return extract_answer(question, passages_from_evidence(evidence), make_scorer(EXTRACTIVE_SCORER, embed_model))


def quoted_sources(answer: ExtractiveAnswer, evidence: Sequence[Evidence]) -> list[dict[str, Any]]:
    """The passages an extractive answer quotes, in answer order (the same fields as ``AskResult.sources``)."""
    by_number = {item.number: item for item in evidence}
    out, seen = [], set()
    for number in answer.passages:
        if number in seen:
            continue
        seen.add(number)
        item = by_number[number]
        out.append({"number": number, "doc_id": item.doc_id, "node_id": item.node_id, "pmid": item.pmid,
                    "url": item.url, "title": item.title, "label": item.label(), "attributed": False,
                    "quoted": True})
    return out


def drop_unfinished(text: str, finish_reason: str | None) -> tuple[str, str | None]:
    """Without its last sentence when generation stopped at the token budget mid-sentence.

    Returns:
        The text to show, and the dropped fragment (None when nothing was dropped).
    """
    if finish_reason != "length":
        return text, None
    sentences = split_sentences(text)
    if not sentences or sentences[-1].rstrip().rstrip("]").rstrip("0123456789[ ,").endswith((".", "!", "?")):
        return text, None
    return " ".join(sentences[:-1]).strip(), sentences[-1].strip()


@dataclass
class CheckedGeneration:
    """A generated answer after the support check.

    Attributes:
        check: The answer keeping only supported sentences, citations re-checked.
        attribution: Per-sentence support of the whole generated answer.
        unsupported: Sentences removed because no passage supports them.
        notes: What was changed, in plain language.
    """

    check: citations.CitationCheck
    attribution: Attribution
    unsupported: list[str]
    notes: list[str]


def supported_sentences(check: citations.CitationCheck, evidence: Sequence[Evidence], texts: Sequence[str],
                        min_support: float) -> CheckedGeneration:
    """Keep the generated sentences the evidence supports; remove and list the others.

    A sentence is supported when one passage (as shown to the model) holds at least ``min_support`` of its
    content words (:func:`bmrag.qa.attribution.attribute`); a citation the model wrote does not make a sentence
    supported by itself. A supported sentence the model left uncited gets that passage's citation, marked as
    added by bmrag. Sentences too short to judge (fewer than 3 content words) are kept only when they cite.
    """
    shown = [f"{item.title} {text}" for item, text in zip(evidence, texts)]
    attribution = attribute(check.text, shown, min_support=min_support)
    pieces = split_sentences(attribution.text)
    if len(pieces) != len(attribution.sentences):  # never expected: attribution adds citations, not sentences
        pieces = [row.sentence for row in attribution.sentences]
    kept, unsupported = [], []
    for piece, row in zip(pieces, attribution.sentences):
        judged = row.best is not None
        if (judged and row.support >= min_support) or (not judged and row.cited):
            kept.append(piece)
        else:
            unsupported.append(row.sentence)
    notes = []
    if attribution.added:
        notes.append(f"bmrag added the citation(s) {', '.join(f'[{n}]' for n in attribution.added)} to sentences "
                     "the model left uncited: the cited passage contains most of the sentence's words")
    if unsupported:
        notes.append(f"removed {len(unsupported)} generated sentence(s) that none of the sources supports "
                     "(listed under 'Not supported by the sources')")
    return CheckedGeneration(citations.validate_citations(" ".join(kept), len(evidence)), attribution, unsupported,
                             notes)


__all__ += ["ABSTAIN_MESSAGE", "CheckedGeneration", "check_answer_mode", "extractive_answer"]
