"""Corpus -> nodes -> embedded and stored: what ``bmrag index`` does, idempotently.

Node ids are ``"{doc_id}#{chunk}"`` (:func:`node_id`) and writes are upserts, so indexing the same corpus
twice adds nothing; :func:`index_nodes` also skips ids already stored, so a re-run embeds nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode

from bmrag import models, prompts
from bmrag.encoder import BMRetrieverEncoder
from bmrag.index.chroma_client import index_location
from bmrag.index.manifest import DEFAULT_COLLECTION, EmbedModelLike, check_manifest, encoder_of, manifest_for
from bmrag.index.open import default_index_dir, load_embedding
from bmrag.index.sources import SourceReport, read_documents
from bmrag.index.store import open_store
from bmrag.llama_index.vector_store import BMRagChromaVectorStore

if TYPE_CHECKING:
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

LLM_METADATA_KEYS = ("doc_id", "source", "pmid", "year")
"""Node metadata shown to an LLM; every metadata key is excluded from the embedded text."""


def node_id(doc_id: str, chunk: int) -> str:
    """Stable node id of chunk ``chunk`` of document ``doc_id``: ``"{doc_id}#{chunk}"``."""
    return f"{doc_id}#{chunk}"


def _flat(value: Any) -> str | int | float | None:
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return "; ".join(str(v) for v in value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def corpus_to_nodes(corpus: Mapping[str, Mapping[str, Any]], encoder: BMRetrieverEncoder, *,
                    chunk_overlap: int = 32) -> list[TextNode]:
    """Turn ``{doc_id: {"title", "text", "metadata"}}`` into nodes that embed exactly as the recipe says.

    A node's text is ``(title + " " + text).strip()`` with every metadata key excluded from embedding.
    Documents longer than the model's ``max_length`` are split on sentences into chunks that fit (model
    tokens, not tiktoken), each chunk repeating the title; node ids are ``"{doc_id}#{chunk}"``.

    Args:
        corpus: Documents as returned by :func:`bmrag.index.readers.load_corpus`.
        encoder: The encoder whose tokenizer and ``max_length`` decide the chunking.
        chunk_overlap: Tokens shared by consecutive chunks.

    Raises:
        ValueError: A document with neither title nor text.
    """
    from llama_index.core.node_parser import SentenceSplitter

    tokenizer = encoder.tokenizer

    def count(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    recipe = encoder.recipe
    # Template tokens, EOS and a BOS some tokenizers add: what is left of max_length is the passage budget.
    budget = recipe.max_length - len(count(prompts.format_passage("", recipe.passage_template))) - 2
    splitters: dict[int, SentenceSplitter] = {}
    nodes: list[TextNode] = []
    for doc_id, doc in corpus.items():
        title, text = (doc.get("title") or "").strip(), (doc.get("text") or "").strip()
        passage = prompts.join_title(text, title)
        if not passage:
            raise ValueError(f"document {doc_id!r} has neither title nor text")
        if len(count(passage)) <= budget or not text:
            chunks = [passage]
        else:
            size = max(budget - len(count(title)) - 1, 16)
            if size not in splitters:
                splitters[size] = SentenceSplitter(chunk_size=size, chunk_overlap=min(chunk_overlap, size // 4),
                                                   tokenizer=count)
            chunks = [prompts.join_title(chunk, title) for chunk in splitters[size].split_text(text)]
        extra = {str(k): _flat(v) for k, v in (doc.get("metadata") or {}).items()}
        base = {**{k: v for k, v in extra.items() if v is not None}, "doc_id": str(doc_id), "title": title}
        for i, chunk in enumerate(chunks):
            metadata = {**base, "chunk": i}
            node = TextNode(id_=node_id(str(doc_id), i), text=chunk, metadata=metadata,
                            excluded_embed_metadata_keys=list(metadata),
                            excluded_llm_metadata_keys=[k for k in metadata if k not in LLM_METADATA_KEYS])
            node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=str(doc_id))
            nodes.append(node)
    return nodes


@dataclass(frozen=True)
class IndexReport:
    """What :func:`index_nodes` did."""

    nodes: int  # nodes offered
    added: int  # nodes embedded and written
    skipped: int  # nodes already stored (same id)
    documents_added: int
    seconds: float

    @property
    def docs_per_second(self) -> float:
        return self.documents_added / self.seconds if self.seconds > 0 else 0.0


def index_nodes(store: BMRagChromaVectorStore, nodes: Iterable[BaseNode], embed_model: EmbedModelLike, *,
                show_progress: bool = False, insert_batch_size: int = 512) -> IndexReport:
    """Embed and store the nodes whose ids are not stored yet, through LlamaIndex's ``VectorStoreIndex``.

    Nodes already in the collection are skipped (not re-embedded): a re-run adds nothing. To replace a
    changed document, delete it first (``store.delete(doc_id)``).

    Raises:
        IndexMismatchError: ``embed_model`` is not the model the store was opened for.
        ValueError: Duplicate node ids.
    """
    from llama_index.core import StorageContext, VectorStoreIndex

    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    encoder = encoder_of(embed_model)
    check_manifest(store.manifest, manifest_for(encoder), f"index {store.persist_dir}")
    if not isinstance(embed_model, BMRetrieverEmbedding):
        embed_model = BMRetrieverEmbedding(encoder=encoder)
    nodes = list(nodes)
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"duplicate node ids, e.g. {dupes}")
    existing = store.existing_ids(ids)
    # Length-sorted, so each embedding batch pads little (LlamaIndex slices batches in the order given).
    new = sorted((n for n in nodes if n.node_id not in existing),
                 key=lambda n: len(n.get_content(metadata_mode=MetadataMode.EMBED)))
    start = time.perf_counter()
    if new:
        VectorStoreIndex(nodes=new, storage_context=StorageContext.from_defaults(vector_store=store),
                         embed_model=embed_model, show_progress=show_progress, insert_batch_size=insert_batch_size)
    seconds = time.perf_counter() - start
    documents = {n.ref_doc_id or n.node_id for n in new}
    return IndexReport(nodes=len(nodes), added=len(new), skipped=len(existing), documents_added=len(documents),
                       seconds=seconds)


def build_index(corpus: dict[str, dict[str, Any]], index_dir: str | os.PathLike[str],
                embed_model: BMRetrieverEmbedding, *, collection: str = DEFAULT_COLLECTION,
                show_progress: bool = True) -> tuple[BMRagChromaVectorStore, IndexReport]:
    """Open (or create) the index and add the documents it lacks; returns the open store and a report."""
    store = open_store(index_dir, embed_model, collection=collection)
    try:
        nodes = corpus_to_nodes(corpus, embed_model.encoder)
        report = index_nodes(store, nodes, embed_model, show_progress=show_progress)
    except BaseException:
        store.close()
        raise
    return store, report


def report_line(report: IndexReport, documents: int, stored: int) -> str:
    """One line saying what indexing did (or that the index was up to date)."""
    if report.added == 0:
        return f"Index up to date: {stored} passages stored; all {documents} documents already indexed, 0 added."
    kept = f"; {report.skipped} passages were already stored" if report.skipped else ""
    return (f"Indexed {report.documents_added} documents ({report.added} passages) in {report.seconds:.1f} s: "
            f"{report.docs_per_second:.1f} docs/s{kept}.")


def run_index(*, corpus: str | None, index_dir: str | os.PathLike[str] | None, model: str | None,
              collection: str = DEFAULT_COLLECTION, batch_size: int = 32, show_progress: bool = True,
              skip_bad: bool = False, dtype: str | None = None, api_base: str | None = None,
              out: IO[str] | None = None) -> int:
    """``bmrag index``: embed a corpus into a persistent Chroma index (idempotent).

    ``skip_bad`` counts and reports malformed records instead of stopping at the first one; ``api_base`` runs the
    forward passes on a vLLM pooling server (``bmrag serve-embed``) instead of in this process.
    """
    out = out or sys.stdout
    index_dir = index_location(index_dir) if index_dir else default_index_dir()
    name = model or models.DEFAULT_RETRIEVER
    source_report = SourceReport()
    documents, label = read_documents(corpus, skip_bad=skip_bad, report=source_report)
    print(models.model_note(name, "option" if model else "default"), file=out)
    print(f"Corpus: {label} ({len(documents)} documents)", file=out)
    print(f"Index: {index_dir} (collection {collection!r})" + (f"; encoding on {api_base}" if api_base else ""),
          file=out, flush=True)
    embed_model = load_embedding(name, batch_size=batch_size, dtype=dtype, api_base=api_base)
    store, report = build_index(documents, index_dir, embed_model, collection=collection,
                                show_progress=show_progress)
    try:
        print(report_line(report, len(documents), store.count()), file=out)
        print(source_report.summary(), file=out)
    finally:
        store.close()
    return 0


