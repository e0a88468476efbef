"""Background indexing (bmrag.index.background): a prefix first, the rest while the index answers; idempotent."""

from __future__ import annotations

import threading

import pytest

from bmrag.index.background import BackgroundIndexer
from bmrag.index.open import load_embedding
from bmrag.index.store import open_store

CORPUS = {f"doc-{i:02d}": {"title": f"Topic {i}", "text": f"Passage {i} about {word}.", "metadata": {}}
          for i, word in enumerate(["stroke warning signs", "asthma symptoms", "glaucoma treatment", "statins",
                                    "metformin", "vitamin D and fractures", "ADHD in children", "dementia",
                                    "high blood pressure", "renal hypouricemia", "scurvy", "aspirin"])}


@pytest.fixture(scope="module")
def embed():
    return load_embedding("all-MiniLM-L6-v2", dtype="float32")


def test_prefix_then_background_then_nothing_left(embed, tmp_path):
    order = sorted(CORPUS, reverse=True)
    store = open_store(tmp_path, embed)
    try:
        indexer = BackgroundIndexer(store, embed, CORPUS, order, batch_documents=4, show_progress=False)
        first = indexer.run_until(5)
        assert first.documents == 5 and store.count() == 5 and not first.complete
        assert store.existing_ids([f"{d}#0" for d in order[:5]]) == {f"{d}#0" for d in order[:5]}
        assert "indexed 5 of 12 documents" in first.describe()
        lock = threading.Lock()
        indexer.lock = lock
        indexer.start()
        with pytest.raises(RuntimeError, match="already started"):
            indexer.start()
        done = indexer.wait(timeout=120)
        assert done.complete and done.added_nodes == 12 and done.error is None and store.count() == 12
        # A second run (a restart) finds everything stored and embeds nothing.
        again = BackgroundIndexer(store, embed, CORPUS, show_progress=False).run_until(len(CORPUS))
        assert again.added_nodes == 0 and again.complete and store.count() == 12
    finally:
        store.close()


def test_bad_order_and_batch_are_refused(embed, tmp_path):
    store = open_store(tmp_path, embed)
    try:
        with pytest.raises(ValueError, match=r"not in the corpus, e.g. \['nope'\]"):
            BackgroundIndexer(store, embed, CORPUS, ["nope"])
        with pytest.raises(ValueError, match="batch_documents must be >= 1"):
            BackgroundIndexer(store, embed, CORPUS, batch_documents=0)
    finally:
        store.close()
