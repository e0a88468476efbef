"""Checking an answer against its evidence: repeats dropped, citations mapped to sources, attribution added."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bmrag.qa import citations
from bmrag.qa.attribution import split_sentences
from bmrag.qa.evidence import Evidence


def cited_sources(check: citations.CitationCheck, evidence: Sequence[Evidence],
                  model_cited: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The passages an answer cites, in citation order.

    Args:
        check: The checked answer.
        evidence: The passages given, numbered.
        model_cited: Numbers the model itself wrote (None: all of ``check.cited``); any other cited number
            was added by attribution and is marked ``attributed``.

    Returns:
        ``{number, doc_id, node_id, pmid, url, title, label, attributed}`` per cited passage.
    """
    by_number = {item.number: item for item in evidence}
    written = set(check.cited if model_cited is None else model_cited)
    out = []
    for number in check.cited:
        item = by_number[number]
        out.append({"number": number, "doc_id": item.doc_id, "node_id": item.node_id, "pmid": item.pmid,
                    "url": item.url, "title": item.title, "label": item.label(),
                    "attributed": number not in written})
    return out


def drop_repeated_sentences(text: str) -> tuple[str, int]:
    """Remove sentences that repeat an earlier one word for word (small models loop under greedy decoding).

    Returns:
        The text without the repeats, and how many sentences were removed.
    """
    seen: set[str] = set()
    kept: list[str] = []
    removed = 0
    for sentence in split_sentences(text):
        key = " ".join(sentence.lower().split())
        if not key:
            continue
        if key in seen and len(key) > 12:
            removed += 1
            continue
        seen.add(key)
        kept.append(sentence)
    return (" ".join(kept), removed) if removed else (text.strip(), 0)


def declined(answer: str) -> bool:
    text = answer.lower()
    return "cannot answer" in text and "source" in text


