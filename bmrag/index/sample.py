"""The bundled sample corpus and the questions it answers (see ``bmrag/data/README.md``)."""

from __future__ import annotations

from pathlib import Path

DEMO_CORPUS = Path(__file__).resolve().parents[1] / "data" / "demo_corpus.jsonl.gz"
"""350 passages: 150 PubMedQA abstracts (MIT), 100 MedQuAD answers (CC BY 4.0), 100 SciFact abstracts (ODC-By)."""

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
"""Answered by passages the bundled corpus is built to contain (tools/build_demo_corpus.py pins them)."""
