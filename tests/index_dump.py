"""Read a built Chroma index back for comparisons between indexing paths (in-process, Ray, embedding server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def dump_index(index: Path, collection: str = "bmrag") -> dict:
    """``{"__manifest__": manifest, node_id: (document, metadata, vector), ...}``; Chroma's version left out."""
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(index), settings=Settings(anonymized_telemetry=False))
    try:
        col = client.get_collection(collection)
        got = col.get(include=["documents", "metadatas", "embeddings"])
        manifest = {k: v for k, v in (col.metadata or {}).items() if k not in ("bmrag_chroma_version",)}
        rows = {i: (d, m, np.asarray(e)) for i, d, m, e in zip(got["ids"], got["documents"], got["metadatas"],
                                                                 got["embeddings"])}
        return {"__manifest__": manifest, **rows}
    finally:
        client.close()


def assert_same_index(got: dict, want: dict, *, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Same manifest, ids, documents and metadata; vectors equal within float tolerance (batching differs)."""
    assert got["__manifest__"] == want["__manifest__"]
    assert sorted(got) == sorted(want)
    for node_id in want:
        if node_id == "__manifest__":
            continue
        g_doc, g_meta, g_vec = got[node_id]
        w_doc, w_meta, w_vec = want[node_id]
        assert g_doc == w_doc, node_id
        assert g_meta == w_meta, node_id
        np.testing.assert_allclose(g_vec, w_vec, rtol=rtol, atol=atol, err_msg=node_id)
