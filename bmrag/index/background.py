"""Indexing while the index is already answering: documents added batch by batch, in a chosen order.

``bmrag demo`` indexes the first :data:`bmrag.index.sample.STARTUP_DOCUMENTS` documents of the bundled corpus
(:meth:`BackgroundIndexer.run_until`), starts the app, and indexes the rest in a daemon thread
(:meth:`BackgroundIndexer.start`): a fresh machine answers within minutes instead of after the ~18 minutes the
whole corpus takes on 2 cores, and the page says how much is indexed. Every batch is idempotent (documents
whose first chunk is stored are skipped without being chunked or embedded), so a restart continues where the
last run stopped.

Thread safety: the embedding model and its tokenizer are shared with the questions being answered, so each
batch runs under the caller's lock (the app's model lock); a question waits for at most one batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from bmrag.index.build import corpus_to_nodes, index_nodes, node_id

if TYPE_CHECKING:
    from bmrag.llama_index.embedding import BMRetrieverEmbedding
    from bmrag.llama_index.vector_store import BMRagChromaVectorStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexingProgress:
    """Where background indexing stands.

    Attributes:
        documents: Documents of the corpus handled so far (stored now or found stored already).
        total: Documents in the corpus.
        added_nodes: Passages embedded and stored by this indexer.
        seconds: Time spent indexing.
        running: Whether the background thread is still working.
        error: Why indexing stopped early, if it did.
    """

    documents: int
    total: int
    added_nodes: int
    seconds: float
    running: bool
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.documents >= self.total

    def describe(self) -> str:
        """``indexed 1,000 of 35,443 documents`` plus what is going on."""
        line = f"indexed {self.documents:,} of {self.total:,} documents"
        if self.error:
            return f"{line}; indexing stopped: {self.error}"
        if self.running and not self.complete:
            return f"{line}; the rest is being indexed in the background (answers come from what is indexed)"
        return line


class BackgroundIndexer:
    """Adds a corpus to an open store in batches, in ``order``, synchronously or in a daemon thread.

    Args:
        store: The open store (see :func:`bmrag.index.store.open_store`).
        embed_model: The embedding model the store was opened for.
        corpus: ``{doc_id: {"title", "text", "metadata"}}``.
        order: Document ids in the order to index them (default: the corpus order).
        lock: Held around each batch (the caller's model lock); None: no lock.
        batch_documents: Documents per batch.
        show_progress: A tqdm bar on the terminal.
    """

    def __init__(self, store: BMRagChromaVectorStore, embed_model: BMRetrieverEmbedding,
                 corpus: Mapping[str, Mapping[str, Any]], order: Sequence[str] | None = None, *,
                 lock: threading.Lock | None = None, batch_documents: int = 64, show_progress: bool = True) -> None:
        order = list(corpus) if order is None else list(order)
        unknown = [d for d in order if d not in corpus][:5]
        if unknown:
            raise ValueError(f"order names documents that are not in the corpus, e.g. {unknown}")
        if batch_documents < 1:
            raise ValueError(f"batch_documents must be >= 1, got {batch_documents}")
        self.store, self.embed_model, self.corpus, self.order = store, embed_model, corpus, order
        self.lock = lock
        self.batch_documents = batch_documents
        self.show_progress = show_progress
        self._done = 0
        self._added = 0
        self._seconds = 0.0
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def progress(self) -> IndexingProgress:
        """A snapshot of the progress (safe to call from any thread)."""
        running = self._thread is not None and self._thread.is_alive()
        return IndexingProgress(self._done, len(self.order), self._added, self._seconds, running, self._error)

    def run_until(self, documents: int) -> IndexingProgress:
        """Index (synchronously) until the first ``documents`` documents of the order are stored."""
        self._run(min(documents, len(self.order)))
        return self.progress()

    def start(self) -> None:
        """Index the rest of the order in a daemon thread (it ends with the process)."""
        if self._thread is not None:
            raise RuntimeError("background indexing was already started")
        self._thread = threading.Thread(target=self._background, name="bmrag-indexer", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> IndexingProgress:
        """Wait for the background thread to finish (or ``timeout`` seconds); returns the progress."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.progress()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to stop after its current batch and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _background(self) -> None:
        try:
            self._run(len(self.order))
        except Exception as err:  # noqa: BLE001 (reported through progress(); the app keeps answering)
            logger.exception("background indexing failed")
            self._error = f"{type(err).__name__}: {err}"

    def _run(self, until: int) -> None:
        bar = tqdm(total=until, initial=self._done, unit="doc", desc="indexing", disable=not self.show_progress)
        try:
            while self._done < until and not self._stop.is_set():
                batch = self.order[self._done:min(self._done + self.batch_documents, until)]
                start = time.perf_counter()
                with self.lock if self.lock is not None else contextlib.nullcontext():
                    self._added += self._index(batch)
                self._seconds += time.perf_counter() - start
                self._done += len(batch)
                bar.update(len(batch))
        finally:
            bar.close()

    def _index(self, batch: Sequence[str]) -> int:
        # A document whose first chunk is stored was indexed whole by an earlier batch (a batch's nodes, fewer than
        # index_nodes' insert batch of 512, reach Chroma in one upsert): skip it without chunking or embedding.
        stored = self.store.existing_ids([node_id(d, 0) for d in batch])
        todo = {d: self.corpus[d] for d in batch if node_id(d, 0) not in stored}
        if not todo:
            return 0
        nodes = corpus_to_nodes(todo, self.embed_model.encoder)
        return index_nodes(self.store, nodes, self.embed_model).added
