"""Indexes: corpus sources -> nodes -> a Chroma store with a manifest; :func:`open_index` opens one with its model.

Modules: :mod:`~bmrag.index.readers` (BEIR files), :mod:`~bmrag.index.sources` (every corpus format ``bmrag
index`` reads, and the bundled sample), :mod:`~bmrag.index.manifest` (what a collection records),
:mod:`~bmrag.index.store` (open or create a collection), :mod:`~bmrag.index.build` (embed and store,
idempotently), :mod:`~bmrag.index.open` (the one way to open an index with its recorded model),
:mod:`~bmrag.index.background` (indexing while answering), :mod:`~bmrag.index.chroma_client` (a directory or a
Chroma server), :mod:`~bmrag.index.ray_engine` (Ray Data corpus encoding).
Names are imported lazily, so reading BEIR files does not import Chroma.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "open_index": "bmrag.index.open",
    "OpenIndex": "bmrag.index.open",
    "default_index_dir": "bmrag.index.open",
    "load_embedding": "bmrag.index.open",
    "open_store": "bmrag.index.store",
    "read_manifest": "bmrag.index.manifest",
    "IndexMismatchError": "bmrag.index.manifest",
    "build_index": "bmrag.index.build",
    "corpus_to_nodes": "bmrag.index.build",
    "index_nodes": "bmrag.index.build",
    "run_index": "bmrag.index.build",
    "read_source": "bmrag.index.sources",
    "read_documents": "bmrag.index.sources",
    "index_location": "bmrag.index.chroma_client",
    "open_client": "bmrag.index.chroma_client",
    "BackgroundIndexer": "bmrag.index.background",
    "build_with_ray": "bmrag.index.ray_engine",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bmrag.index' has no attribute {name!r}")
