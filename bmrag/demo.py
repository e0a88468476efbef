"""The terminal demo: ``bmrag demo --terminal`` and ``bmrag search`` (retrieval only, printed for a terminal).

``bmrag demo --terminal`` indexes the bundled sample corpus (``bmrag/data/demo_corpus.jsonl.gz``, see
``bmrag/data/README.md``) into a persistent Chroma collection through LlamaIndex and prints the passages
retrieved for three clinical questions. Indexing is idempotent: a second run embeds and adds nothing.

Offline, the default retriever is ``all-MiniLM-L6-v2`` (a general sentence-transformers model): the released
BMRetriever checkpoints need the Hugging Face Hub, and ``bmrag-mini`` (trained on a 2-core CPU, shipped
inside bmrag) is far weaker (SciFact nDCG@10 0.100 vs 0.645); every command says which model runs. Online,
pass ``--model BMRetriever/BMRetriever-410M``.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

from bmrag import models
from bmrag.index.build import build_index, report_line
from bmrag.index.chroma_client import index_location
from bmrag.index.manifest import DEFAULT_COLLECTION
from bmrag.index.open import default_index_dir, load_embedding, open_index
from bmrag.index.sample import DEMO_QUESTIONS
from bmrag.index.sources import read_documents

if TYPE_CHECKING:
    from llama_index.core.schema import NodeWithScore

    from bmrag.llama_index.embedding import BMRetrieverEmbedding
    from bmrag.llama_index.vector_store import BMRagChromaVectorStore


def _score_note(embed_model: BMRetrieverEmbedding) -> str:
    if embed_model.encoder.recipe.similarity == "dot":
        return ("Scores are dot products of the model's vectors: they rank passages for one question, "
                "they are not probabilities.")
    return "Scores are cosine similarities of normalised vectors (higher is more similar)."


def retrieve(store: BMRagChromaVectorStore, embed_model: BMRetrieverEmbedding, question: str,
             k: int) -> list[NodeWithScore]:
    """Top-``k`` nodes for ``question`` through LlamaIndex's ``VectorStoreIndex`` (scores: see the vector store)."""
    from llama_index.core import VectorStoreIndex

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    return index.as_retriever(similarity_top_k=k).retrieve(question)


def format_hits(hits: Sequence[NodeWithScore], *, width: int = 100, chars: int = 300) -> str:
    """Ranked passages with node ids, sources and scores, for the terminal."""
    if not hits:
        return "   (no passages: the index is empty)"
    lines = []
    for rank, hit in enumerate(hits, start=1):
        meta = hit.node.metadata
        source = meta.get("source") or "?"
        extra = f", PMID {meta['pmid']}" if meta.get("pmid") else ""
        lines.append(f"  {rank}. [{hit.node.node_id}] score {hit.score:.3f}  ({source}{extra})")
        text = " ".join(hit.node.get_content().split())
        text = text if len(text) <= chars else text[: chars - 3].rstrip() + "..."
        lines.append(textwrap.indent(textwrap.fill(text, width=width - 5), "     "))
    return "\n".join(lines)


def run_search(question: str, *, index_dir: str | os.PathLike[str] | None, k: int = 5, model: str | None = None,
               collection: str = DEFAULT_COLLECTION, embed_api_base: str | None = None,
               out: IO[str] | None = None) -> int:
    """``bmrag search``: print the top-``k`` passages of an index for ``question``.

    The model defaults to the one recorded in the index manifest (with its recipe), so queries are
    embedded the way the documents were; ``embed_api_base`` embeds them on that vLLM pooling server.
    """
    out = out or sys.stdout
    if not question.strip():
        raise ValueError("the question is empty")
    index = open_index(index_dir, collection=collection, model=model, api_base=embed_api_base)
    try:
        print(models.model_note(index.embed_model.model_name, "option" if model else "manifest"), file=out)
        print(f"Index: {index.label}", file=out)
        hits = retrieve(index.store, index.embed_model, question, k)
    finally:
        index.close()
    print(f"\nQ. {question}", file=out)
    print(format_hits(hits), file=out)
    print(f"\n{_score_note(index.embed_model)}", file=out)
    return 0


def run_demo(*, index_dir: str | os.PathLike[str] | None = None, model: str | None = None,
             corpus: str | None = None, k: int = 3, collection: str = DEFAULT_COLLECTION, show_progress: bool = True,
             questions: Sequence[str] = DEMO_QUESTIONS, out: IO[str] | None = None) -> int:
    """``bmrag demo``: index the bundled sample (idempotent) and answer the built-in questions by retrieval."""
    out = out or sys.stdout
    index_dir = index_location(index_dir) if index_dir else default_index_dir()
    name = model or models.DEFAULT_RETRIEVER
    documents, label = read_documents(corpus)
    print("bmrag demo: biomedical passage retrieval with LlamaIndex over a persistent Chroma index", file=out)
    print(models.model_note(name, "option" if model else "default"), file=out)
    print(f"Corpus: {label} ({len(documents)} documents)", file=out)
    print(f"Index: {index_dir} (collection {collection!r})", file=out, flush=True)
    embed_model = load_embedding(name)
    if embed_model.instruction:
        print(f"Query instruction: {embed_model.instruction!r}", file=out)
    store, report = build_index(documents, index_dir, embed_model, collection=collection,
                                show_progress=show_progress)
    try:
        print(report_line(report, len(documents), store.count()), file=out)
        for number, question in enumerate(questions, start=1):
            print(f"\nQ{number}. {question}", file=out)
            print(format_hits(retrieve(store, embed_model, question, k)), file=out)
    finally:
        store.close()
    print(f"\n{_score_note(embed_model)}", file=out)
    print(f"Ask your own: bmrag search \"your question\" --index {index_dir}", file=out)
    return 0
