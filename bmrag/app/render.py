"""What the page shows, as HTML and Markdown: evidence cards, the answer view, the page's CSS. No Gradio here."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bmrag.qa.result import AskResult

DISCLAIMER = ("**Not medical advice.** This is a research demo: answers are sentences quoted from (or checked "
              "against) the indexed sources, which can be incomplete or out of date. Do not use it to diagnose or "
              "treat anyone; ask a qualified clinician.")

ViewStatus = Literal["answered", "partially_supported", "abstained", "no_passages", "generator_unavailable",
                     "working", "no_index", "bad_input", "error"]


@dataclass
class EvidenceRow:
    """One passage of the evidence panel.

    Attributes:
        number: ``n`` of ``[n]`` in the prompt and the answer.
        cited: Whether the (checked) answer cites it.
        attributed: Cited only through bmrag's word-overlap attribution, not by the model (see
            :mod:`bmrag.qa.attribution`).
        title: Document title.
        source_id: ``PMID 123`` or the document id.
        url: PubMed link for PMIDs (or the document's own URL), else None.
        text: The passage.
        score: Final score (rerank score when reranked, else the retriever's).
        year: Publication year, when the index has it.
        pub_type: Publication type, when the index has it.
        corpus: Where the document comes from (``metadata["source"]``, e.g. ``PubMedQA``).
    """

    number: int
    cited: bool
    title: str
    source_id: str
    url: str | None
    text: str
    score: float
    year: int | None = None
    pub_type: str | None = None
    corpus: str | None = None
    attributed: bool = False


def evidence_rows(result: AskResult, metadata: dict[str, dict[str, Any]] | None = None) -> list[EvidenceRow]:
    """Rows of the evidence panel: the cited passages first (in citation order), then the other passages given.

    Args:
        result: What the chain returned.
        metadata: Extra metadata per node id (``pub_type``, ``source``) read from the index.
    """
    metadata = metadata or {}
    cited = [src["number"] for src in result.sources]
    added = {src["number"] for src in result.sources if src.get("attributed")}
    order = cited + [item.number for item in result.evidence if item.number not in cited]
    by_number = {item.number: item for item in result.evidence}
    rows = []
    for number in order:
        item = by_number[number]
        meta = metadata.get(item.node_id, {})
        pub_type = meta.get("pub_type")
        rows.append(EvidenceRow(number=number, cited=number in cited, title=item.title, source_id=item.label(),
                                url=item.url, text=item.text, score=item.score, year=item.year,
                                pub_type=str(pub_type) if pub_type not in (None, "") else None,
                                corpus=meta.get("source"), attributed=number in added))
    return rows


def render_evidence(rows: Sequence[EvidenceRow], *, empty: str = "No evidence yet.") -> str:
    """The evidence panel as HTML (every field escaped)."""
    if not rows:
        return f'<div class="bm-evidence bm-empty">{html.escape(empty)}</div>'
    cards = []
    for row in rows:
        source = html.escape(row.source_id)
        if row.url:
            source = (f'<a href="{html.escape(row.url, quote=True)}" target="_blank" rel="noopener noreferrer">'
                      f"{source}</a>")
        meta = [f"<span>source: {source}</span>", f"<span>score {row.score:.3f}</span>",
                f"<span>year {row.year if row.year is not None else 'n/a'}</span>",
                f"<span>type {html.escape(row.pub_type) if row.pub_type else 'n/a'}</span>"]
        if row.corpus:
            meta.append(f"<span>{html.escape(row.corpus)}</span>")
        badge = ('<span class="bm-badge">given, not cited</span>' if not row.cited
                 else '<span class="bm-badge bm-cited" title="the model wrote no citation; bmrag cited the passage '
                      'holding most of the sentence\'s words">cited (word overlap)</span>' if row.attributed
                 else '<span class="bm-badge bm-cited">cited</span>')
        title = html.escape(row.title) if row.title else html.escape(row.source_id)
        cards.append(
            f'<div class="bm-card" id="evidence-{row.number}" data-number="{row.number}" '
            f'data-cited="{str(row.cited).lower()}">'
            f'<div class="bm-head"><span class="bm-num">[{row.number}]</span> <b>{title}</b> {badge}</div>'
            f'<div class="bm-meta">{" · ".join(meta)}</div>'
            f'<div class="bm-text">{html.escape(" ".join(row.text.split()))}</div></div>')
    return '<div class="bm-evidence">' + "".join(cards) + "</div>"


@dataclass
class AnswerView:
    """One update of the page: what the answer, evidence and message areas show.

    Attributes:
        status: The chain's status, ``"working"`` while streaming, or a UI failure (``no_index``,
            ``bad_input``, ``error``).
        answer: Markdown for the answer area.
        evidence: Rows of the evidence panel.
        message: Warnings for the user in plain language (truncation, generator down, removed sentences, ...),
            Markdown; shown in their own box, apart from the status.
        details: JSON-able record of the run (the chain's result plus the UI's notes).
        final: Whether this is the last update for the question.
        run_status: One line: the outcome in words, retrieval mode and timings (Markdown).
    """

    status: ViewStatus
    answer: str = ""
    evidence: list[EvidenceRow] = field(default_factory=list)
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    final: bool = False
    run_status: str = ""

    def outputs(self) -> tuple[str, str, str, dict[str, Any], str]:
        """``(answer, evidence HTML, warnings, details, run status)`` for the Gradio components."""
        empty = ("Evidence appears here as soon as the passages are retrieved." if self.status == "working"
                 else "No evidence to show.")
        paragraphs = [html.escape(p.strip()) for p in self.message.split("\n\n") if p.strip()]
        warnings = ('<div class="bm-warn">' + "".join(f"<p>{p}</p>" for p in paragraphs) + "</div>"
                    if paragraphs else "")
        return self.answer, render_evidence(self.evidence, empty=empty), warnings, self.details, self.run_status


def answer_markdown(result: AskResult) -> str:
    """The answer area: quotations for extractive answers, the checked text for generated ones, and the
    sentences removed because no source supports them."""
    if result.status == "abstained":
        return f"**{result.answer}** The nearest passages are shown below; none of them answers the question."
    quotes = (result.quotes or {}).get("sentences") or []
    if result.answer_mode.startswith("extractive") and quotes:
        lines = [f"> \u201c{q['text']}\u201d [{q['passage']}]" for q in quotes]
        head = ("_None of the generated sentences is supported by the sources; quoted from them instead:_\n\n"
                if result.answer_mode != "extractive" else "")
        body = head + "\n>\n".join(lines)
    else:
        body = result.answer or ""
    if result.unsupported:
        body += "\n\n**Not supported by the sources (removed from the answer):**\n" + "\n".join(
            f"- ~~{sentence}~~" for sentence in result.unsupported)
    return body


# ------------------------------------------------------------------------------------------------ page
CSS = """
.bm-notice {border: 2px solid #b45309; background: #fffbeb; color: #78350f; border-radius: 8px; padding: 4px 12px;}
.bm-warn {border-left: 5px solid #b45309; background: #fffbeb; color: #78350f; padding: 4px 12px; border-radius: 4px;}
#bm-run-status {color: #374151; font-size: 14px;}
.bm-evidence {display: flex; flex-direction: column; gap: 10px;}
.bm-card {border: 1px solid #d1d5db; border-radius: 8px; padding: 8px 12px; background: #ffffff; color: #111827;}
.bm-card[data-cited="true"] {border-left: 5px solid #15803d;}
.bm-head {font-size: 15px;} .bm-num {font-weight: 700; color: #1d4ed8;}
.bm-badge {font-size: 12px; padding: 1px 6px; border-radius: 6px; background: #e5e7eb; margin-left: 6px;}
.bm-cited {background: #dcfce7; color: #14532d;}
.bm-meta {font-size: 13px; color: #4b5563; margin: 4px 0;}
.bm-text {font-size: 14px; max-height: 9em; overflow-y: auto;}
.bm-empty {color: #6b7280; font-style: italic;}
"""
