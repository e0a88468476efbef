"""Evaluation harness: the paper's benchmarks and baselines, reproducible, one JSON per run.

Modules, one concern each (metric code knows nothing about datasets):

- :mod:`~bmrag.evaluation.registry`: what each set is (folders, instructions, published numbers)
- :mod:`~bmrag.evaluation.datasets`: finding and loading the data, ``download_beir``
- :mod:`~bmrag.evaluation.search`: exact top-k search and the same through Chroma
- :mod:`~bmrag.evaluation.metrics`: ``pytrec_eval`` metrics, the explicit identical-id filter
- :mod:`~bmrag.evaluation.cache`: on-disk corpus-embedding cache
- :mod:`~bmrag.bm25`: the BM25 baseline (``bm25s``)
- :mod:`~bmrag.evaluation.sts`: BIOSSES sentence similarity
- :mod:`~bmrag.evaluation.run`: one run -> one result record (``evaluate_retrieval``, ``evaluate_sts``)
- :mod:`~bmrag.evaluation.report`: what every result records (environment, portable paths), atomic writes
- :mod:`~bmrag.evaluation.rag` (+ ``rag_data``, ``rag_metrics``, ``rag_judge``): the QA chain scored end to end
- :mod:`~bmrag.evaluation.cli`: the ``bmrag eval`` sub-commands
- :mod:`~bmrag.evaluation.leaderboard`: README + PNG from a folder of results

Heavy dependencies (torch, pytrec_eval, bm25s, chromadb, matplotlib) load when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "DATASETS",
    "REFERENCES",
    "build_leaderboard",
    "download_beir",
    "evaluate_retrieval",
    "evaluate_run",
    "evaluate_sts",
    "exact_search",
    "chroma_search",
    "load_retrieval_dataset",
    "load_sts_dataset",
]

_LAZY = {
    "DATASETS": "bmrag.evaluation.registry",
    "REFERENCES": "bmrag.evaluation.registry",
    "download_beir": "bmrag.evaluation.datasets",
    "load_retrieval_dataset": "bmrag.evaluation.datasets",
    "load_sts_dataset": "bmrag.evaluation.datasets",
    "evaluate_run": "bmrag.evaluation.metrics",
    "exact_search": "bmrag.evaluation.search",
    "chroma_search": "bmrag.evaluation.search",
    "evaluate_retrieval": "bmrag.evaluation.run",
    "evaluate_sts": "bmrag.evaluation.run",
    "build_leaderboard": "bmrag.evaluation.leaderboard",
}

if TYPE_CHECKING:
    from bmrag.evaluation.datasets import download_beir, load_retrieval_dataset, load_sts_dataset
    from bmrag.evaluation.leaderboard import build_leaderboard
    from bmrag.evaluation.metrics import evaluate_run
    from bmrag.evaluation.registry import DATASETS, REFERENCES
    from bmrag.evaluation.run import evaluate_retrieval, evaluate_sts
    from bmrag.evaluation.search import chroma_search, exact_search


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bmrag.evaluation' has no attribute {name!r}")
