"""The bundled sample corpus, the questions it answers, and the order it is indexed in (bmrag/data/README.md)."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import zip_longest
from pathlib import Path
from typing import Any

DEMO_CORPUS = Path(__file__).resolve().parents[1] / "data" / "demo_corpus.jsonl.gz"
"""35,443 documents (``tools/build_demo_corpus.py``): every answered MedQuAD page (15,811, CC BY 4.0), the 1,000
PubMedQA abstracts (MIT), the 13,449 BioASQ snippet documents (CC BY 2.5, BioASQ terms) and the 5,183 SciFact
abstracts (ODC-By 1.0)."""

SAMPLE_QUESTIONS = (
    "What are the warning signs of a stroke?",
    "What are the symptoms of asthma?",
    "Do statins taken before heart surgery prevent atrial fibrillation?",
    "What causes renal hypouricemia?",
    "What are the treatments for glaucoma?",
    "Is high blood pressure a risk factor for dementia?",
)
"""Clinical questions the bundled corpus answers: the app's examples and the latency/concurrency benchmarks."""

DEMO_QUESTIONS = SAMPLE_QUESTIONS[:3]
"""The terminal demo's questions (``bmrag demo --terminal``)."""

SAMPLE_TOPICS = ("stroke", "asthma", "renal hypouricemia", "glaucoma", "high blood pressure", "dementia")
"""MedQuAD topics (``metadata.focus``, any case) of the sample questions: indexed first."""
SAMPLE_DOCUMENTS = ("pubmedqa-21881325", "pubmedqa-11340218")
"""Other documents the sample questions are answered from (statins before heart surgery; statins and stroke)."""

STARTUP_DOCUMENTS = 500
"""Documents ``bmrag demo`` indexes before the app starts answering; the rest are indexed in the background while
the app answers from what is indexed. 1,000 documents (2,277 passages) took 158 CPU-s, model loading and one
answer included, on an AMD EPYC with AVX512-BF16 (``bmrag demo --smoke``; 12 min wall on a machine whose load
was 7-9 on 2 cores): 500 keep a fresh, idle 2-core machine within its 5-minute budget, install included."""


def priority_order(corpus: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Document ids in indexing order: the sample questions' documents, then the sources interleaved.

    Interleaving (one MedQuAD page, one PubMedQA abstract, one BioASQ document, one SciFact abstract, ...) makes
    any prefix of the order cover every source, so answers drawn from a partly built index are not all from one.
    """
    topics = set(SAMPLE_TOPICS)
    first = [d for d, doc in corpus.items()
             if str((doc.get("metadata") or {}).get("focus", "")).lower() in topics or d in SAMPLE_DOCUMENTS]
    chosen = set(first)
    by_source: dict[str, list[str]] = {}
    for doc_id, doc in corpus.items():
        if doc_id not in chosen:
            source = str((doc.get("metadata") or {}).get("source", "")).split("/")[0]
            by_source.setdefault(source, []).append(doc_id)
    rest = [d for group in zip_longest(*by_source.values()) for d in group if d is not None]
    return first + rest
