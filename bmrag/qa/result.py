"""What one question produced (:class:`AskResult`), its statuses and the exit code of each."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bmrag.qa.evidence import Evidence

Status = Literal["answered", "partially_supported", "abstained", "no_passages", "generator_unavailable"]
"""What a question got: a grounded answer, an answer with unsupported sentences removed, an abstention (the
sources don't answer it; the nearest passages are shown), nothing retrieved, or no generator to write one."""

STATUS_LABELS: dict[str, str] = {
    "answered": "answered from the sources",
    "partially_supported": "partially supported: sentences the sources do not support were removed",
    "abstained": "the indexed sources don't answer this question",
    "no_passages": "nothing retrieved",
    "generator_unavailable": "no answer generated: the generator is unavailable",
}
"""How each status reads for people (terminal and app)."""

EXIT_CODES: dict[str, int] = {
    "answered": 0,
    "partially_supported": 0,
    "abstained": 0,
    "no_passages": 4,
    "generator_unavailable": 3,
    "no_index": 2,
    "bad_input": 2,
    "error": 1,
}
"""Exit status per outcome, for ``bmrag ask`` and ``bmrag demo --smoke``: 0 the chain ran (an answer, a partly
supported answer or an abstention), 3 the generator is unavailable (the evidence is still printed), 4 nothing was
retrieved (empty index or filters that match nothing), 2 a usage or input error (the app's ``no_index`` and
``bad_input``), 1 any other failure (the app's ``error``)."""


@dataclass
class AskResult:
    """Everything ``ask`` did, for people (:meth:`format`) and programs (:meth:`to_dict`).

    Attributes:
        question: The question asked.
        status: See :data:`Status` and :data:`STATUS_LABELS`.
        answer_mode: ``extractive`` (sentences quoted from the evidence) or ``generative`` (generated, each
            sentence checked); ``extractive (fallback)`` when no generated sentence was supported.
        answer: The answer after checking (or the abstention message); None when nothing could be answered.
        raw_answer: The generator's text before citation checking.
        sources: Cited passages, in order of first citation: number, doc id, PMID, URL, title.
        invalid_citations: Removed citations (marker, number, reason).
        evidence: Passages given to the generator, numbered as in the prompt.
        held_back: Retrieved passages not given (below the threshold or beyond k).
        retrieval: Retriever model, ``mode`` (``"dense"`` or ``"hybrid (BM25 + dense, RRF k=60)"``), index, k,
            filters, threshold (and, for hybrid, the BM25 index and fusion depth).
        reranker: Reranker model and top_n, or None.
        generator: Backend, model, endpoint, decoding; None when unavailable.
        timings: Seconds for ``retrieval``, ``rerank``, ``generation`` and ``total``.
        answer_tokens: Tokens the generator produced, when the backend reports them.
        attribution: Per-sentence support of the generated answer by the evidence (:mod:`bmrag.qa.attribution`);
            None when nothing was generated or attribution is off.
        unsupported: Generated sentences removed from the answer because no passage supports them.
        quotes: The extractive answer (quoted sentences, their passages and scores), whatever the mode.
        abstention: The abstention decision (probability, threshold, signals) when a calibration exists.
        unmentioned: Question words that none of the answer's source passages contains: the answer may not
            address them (:func:`bmrag.qa.support.unmentioned_terms`; also said in ``notes``).
        notes: Human-readable notes (server down, filters matched nothing, uncited answer, ...).
    """

    question: str
    status: Status
    answer_mode: str = "extractive"
    answer: str | None = None
    raw_answer: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    invalid_citations: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    held_back: list[Evidence] = field(default_factory=list)
    retrieval: dict[str, Any] = field(default_factory=dict)
    reranker: dict[str, Any] | None = None
    generator: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    answer_tokens: int | None = None
    attribution: dict[str, Any] | None = None
    unsupported: list[str] = field(default_factory=list)
    quotes: dict[str, Any] | None = None
    abstention: dict[str, Any] | None = None
    unmentioned: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The ``bmrag ask`` exit status for this outcome (see :data:`EXIT_CODES`)."""
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def format(self, *, chars: int = 300) -> str:
        """A terminal report: answer, sources, removed citations, evidence, what ran and timings."""
        lines = [f"Question: {self.question}", f"Status: {STATUS_LABELS[self.status]}"]
        gen = self.generator
        if self.answer_mode.startswith("extractive"):
            who = "quoted from the sources, no generator"
        else:
            who = (f"{gen['backend']} backend, {gen['model']}, greedy; each sentence checked against the sources"
                   if gen else "no generator")
        if self.answer is not None:
            lines += [f"\nAnswer ({who}):" if self.status != "abstained" else "\nAnswer:", f"  {self.answer}"]
        if self.unsupported:
            lines.append("\nNot supported by the sources (removed from the answer):")
            lines += [f"  - {sentence}" for sentence in self.unsupported]
        if self.sources:
            lines.append("\nSources:")
            for src in self.sources:
                link = f"  {src['url']}" if src.get("url") else ""
                added = "  (citation added by bmrag: the passage holds most of the sentence's words)" \
                    if src.get("attributed") else ""
                lines.append(f"  [{src['number']}] {src['label']}{link}{added}")
        if self.invalid_citations:
            removed = ", ".join(f"{c['marker']} ({c['reason']})" for c in self.invalid_citations)
            lines.append(f"\nRemoved citations (not among the evidence given): {removed}")
        for note in self.notes:
            lines.append(f"\nNote: {note}")
        if self.evidence:
            given = ("Nearest passages (none answers the question)" if self.status == "abstained"
                     else "Evidence given to the generator" if self.generator and self.answer_mode == "generative"
                     else "Retrieved evidence (no generator ran)" if self.answer_mode == "generative"
                     else "Evidence (the answer quotes it)")
            lines.append(f"\n{given} ({len(self.evidence)} passages, score = "
                         f"{self.retrieval.get('score_kind', 'score')}):")
            lines += [_format_evidence(item, chars) for item in self.evidence]
        if self.held_back:
            title = "Retrieved passages not given to the generator"
            threshold = self.retrieval.get("min_score")
            reason = f" (score below {threshold:g} or beyond k)" if threshold is not None else " (beyond k)"
            lines.append(f"\n{title}{reason}:")
            lines += [_format_evidence(item, chars) for item in self.held_back]
        lines.append("")
        lines.append(f"Retriever: {self.retrieval.get('model')}, {self.retrieval.get('mode', 'dense')} retrieval "
                     f"(index {self.retrieval.get('index')}, k={self.retrieval.get('k')}, "
                     f"filters: {self.retrieval.get('filters')})")
        if self.reranker:
            lines.append(f"Reranker: {self.reranker['model']} (top {self.reranker['top_n']} of "
                         f"{self.retrieval.get('candidates')})")
        lines.append(f"Evidence threshold: {self.retrieval.get('threshold_note')}")
        lines.append(f"Answer mode: {self.answer_mode}")
        if self.abstention is not None and self.abstention.get("p_unanswerable") is not None:
            lines.append(f"Abstention: p(unanswerable) {self.abstention['p_unanswerable']:.2f}, abstain at >= "
                         f"{self.abstention['threshold']:.2f} (calibrated for {self.abstention['retriever']})")
        if gen:
            lines.append(f"Generator: {gen['backend']} backend, model {gen['model']} at {gen['endpoint']}")
        t = self.timings
        lines.append("Timings: " + ", ".join(f"{k} {t[k]:.2f} s" for k in ("retrieval", "rerank", "generation",
                                                                           "total") if k in t))
        return "\n".join(lines)


def _format_evidence(item: Evidence, chars: int) -> str:
    text = " ".join(item.text.split())
    text = text if len(text) <= chars else text[: chars - 3].rstrip() + "..."
    tag = f"[{item.number}]" if item.number else " - "
    link = f" {item.url}" if item.url else ""
    fused = ""
    if item.rrf_score is not None:
        ranks = ", ".join(f"{name} #{rank}" if rank else f"not in {name}"
                          for name, rank in (("dense", item.dense_rank), ("BM25", item.bm25_rank)))
        fused = f"; RRF {item.rrf_score:.4f}: {ranks}"
    return f"  {tag} {item.label()}{link} (score {item.score:.3f}{fused})\n      {text}"


