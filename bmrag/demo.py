"""Terminal demo and the work behind ``bmrag index``, ``bmrag search`` and ``bmrag demo``.

``bmrag demo`` indexes the bundled sample corpus (``bmrag/data/demo_corpus.jsonl.gz``: PubMedQA, MedQuAD
and SciFact passages, see ``bmrag/data/README.md``) into a persistent Chroma collection through
LlamaIndex and answers three clinical questions by retrieval. Indexing is idempotent: a second run embeds
and adds nothing.

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
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from bmrag import models
from bmrag.index.chroma_client import index_location

if TYPE_CHECKING:
    from llama_index.core.schema import NodeWithScore

    from bmrag.llama_index.embedding import BMRetrieverEmbedding
    from bmrag.sources import SourceReport
    from bmrag.store import BMRagChromaVectorStore, IndexReport

DEMO_CORPUS = Path(__file__).resolve().parent / "data" / "demo_corpus.jsonl.gz"
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

ModelOrigin = Literal["default", "option", "manifest"]


def default_index_dir() -> Path:
    """``$XDG_CACHE_HOME/bmrag/index/demo`` (``~/.cache/bmrag/index/demo`` when the variable is unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bmrag" / "index" / "demo"


def model_note(model: str, origin: ModelOrigin) -> str:
    """One line saying which retriever runs and why."""
    known = models.lookup(model)
    if origin == "default":
        why = (f"offline default: stronger than the shipped bmrag-mini; "
               f"use --model {models.RECOMMENDED_RETRIEVER} online")
    elif origin == "manifest":
        why = "recorded in the index manifest: the model the index was built with"
    else:
        why = "chosen with --model"
    if known is not None and known.kind == "decoder":
        why += "; an untrained decoder, so its rankings are random"
    elif known is not None and known.name == "bmrag-mini":
        why += "; trained on a 2-core CPU as a proof of the recipe, far weaker than all-MiniLM-L6-v2"
    return f"Retriever model: {model} ({why})"


def read_documents(source: str | os.PathLike[str] | None, *, skip_bad: bool = False,
                   report: SourceReport | None = None) -> tuple[dict[str, dict[str, Any]], str]:
    """Documents from any source :func:`bmrag.sources.read_source` reads, or the bundled sample (None).

    Sources: a BEIR folder or ``.jsonl``/``.jsonl.gz`` corpus file, PubMed/MEDLINE ``.xml[.gz]`` files,
    or a folder of ``.txt``/``.md`` files.

    Args:
        source: The path, or None for the bundled sample corpus.
        skip_bad: Count malformed records in ``report`` instead of raising.
        report: Filled with what was read and skipped (see :class:`bmrag.sources.SourceReport`).

    Returns:
        ``({doc_id: {"title", "text", "metadata"}}, description)``.

    Raises:
        bmrag.readers.DataError: Missing file, malformed record (file and line named), unsupported source.
    """
    from bmrag.sources import read_source

    path = DEMO_CORPUS if source is None else Path(source).expanduser()
    corpus, report = read_source(path, skip_bad=skip_bad, report=report)
    label = "the bundled sample corpus" if source is None else f"{path} ({report.kind})"
    return corpus, label


def load_embedding(model: str, *, batch_size: int = 32, recipe: dict[str, Any] | None = None,
                   revision: str | None = None) -> BMRetrieverEmbedding:
    """Load ``model`` as a :class:`BMRetrieverEmbedding`; ``recipe`` (from a manifest) pins the recipe fields."""
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    if recipe is None:
        return BMRetrieverEmbedding(model_name=model, revision=revision, embed_batch_size=batch_size)
    from bmrag.encoder import BMRetrieverEncoder

    keys = ("max_length", "pooling", "normalize", "padding_side", "query_template", "passage_template")
    pinned = {k: recipe[k] for k in keys if k in recipe}
    encoder = BMRetrieverEncoder.from_pretrained(model, revision=revision, **pinned)
    return BMRetrieverEmbedding(encoder=encoder, embed_batch_size=batch_size)


def _score_note(embed_model: BMRetrieverEmbedding) -> str:
    if embed_model.encoder.recipe.similarity == "dot":
        return ("Scores are dot products of the model's vectors: they rank passages for one question, "
                "they are not probabilities.")
    return "Scores are cosine similarities of normalised vectors (higher is more similar)."


def build_index(corpus: dict[str, dict[str, Any]], index_dir: str | os.PathLike[str],
                embed_model: BMRetrieverEmbedding, *, collection: str = "bmrag",
                show_progress: bool = True) -> tuple[BMRagChromaVectorStore, IndexReport]:
    """Open (or create) the index and add the documents it lacks; returns the open store and a report."""
    from bmrag.store import corpus_to_nodes, index_nodes, open_store

    store = open_store(index_dir, embed_model, collection=collection)
    try:
        nodes = corpus_to_nodes(corpus, embed_model.encoder)
        report = index_nodes(store, nodes, embed_model, show_progress=show_progress)
    except BaseException:
        store.close()
        raise
    return store, report


def retrieve(store: BMRagChromaVectorStore, embed_model: BMRetrieverEmbedding, question: str,
             k: int) -> list[NodeWithScore]:
    """Top-``k`` nodes for ``question`` through LlamaIndex's ``VectorStoreIndex`` (scores: see bmrag.store)."""
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


def _report_line(report: IndexReport, documents: int, stored: int) -> str:
    if report.added == 0:
        return f"Index up to date: {stored} passages stored; all {documents} documents already indexed, 0 added."
    kept = f"; {report.skipped} passages were already stored" if report.skipped else ""
    return (f"Indexed {report.documents_added} documents ({report.added} passages) in {report.seconds:.1f} s: "
            f"{report.docs_per_second:.1f} docs/s{kept}.")


def run_index(*, corpus: str | None, index_dir: str | os.PathLike[str] | None, model: str | None,
              collection: str = "bmrag", batch_size: int = 32, show_progress: bool = True,
              skip_bad: bool = False, out: IO[str] | None = None) -> int:
    """``bmrag index``: embed a corpus into a persistent Chroma index (idempotent).

    ``skip_bad`` counts and reports malformed records instead of stopping at the first one.
    """
    from bmrag.sources import SourceReport

    out = out or sys.stdout
    index_dir = index_location(index_dir) if index_dir else default_index_dir()
    name = model or models.DEFAULT_RETRIEVER
    source_report = SourceReport()
    documents, label = read_documents(corpus, skip_bad=skip_bad, report=source_report)
    print(model_note(name, "option" if model else "default"), file=out)
    print(f"Corpus: {label} ({len(documents)} documents)", file=out)
    print(f"Index: {index_dir} (collection {collection!r})", file=out, flush=True)
    embed_model = load_embedding(name, batch_size=batch_size)
    store, report = build_index(documents, index_dir, embed_model, collection=collection,
                                show_progress=show_progress)
    try:
        print(_report_line(report, len(documents), store.count()), file=out)
        print(source_report.summary(), file=out)
    finally:
        store.close()
    return 0


def run_search(question: str, *, index_dir: str | os.PathLike[str] | None, k: int = 5, model: str | None = None,
               collection: str = "bmrag", out: IO[str] | None = None) -> int:
    """``bmrag search``: print the top-``k`` passages of an index for ``question``.

    The model defaults to the one recorded in the index manifest (with its recipe), so queries are
    embedded the way the documents were.
    """
    from bmrag.store import open_store, read_manifest

    out = out or sys.stdout
    if not question.strip():
        raise ValueError("the question is empty")
    index_dir = index_location(index_dir) if index_dir else default_index_dir()
    manifest = read_manifest(index_dir, collection)
    if model:
        embed_model = load_embedding(model)
    else:
        import json

        embed_model = load_embedding(manifest["model"], recipe=json.loads(manifest["recipe"]),
                                     revision=manifest.get("revision") or None)
    print(model_note(embed_model.model_name, "option" if model else "manifest"), file=out)
    print(f"Index: {index_dir} (collection {collection!r}, {manifest['count']} passages)", file=out)
    store = open_store(index_dir, embed_model, collection=collection, create=False)
    try:
        hits = retrieve(store, embed_model, question, k)
    finally:
        store.close()
    print(f"\nQ. {question}", file=out)
    print(format_hits(hits), file=out)
    print(f"\n{_score_note(embed_model)}", file=out)
    return 0


def run_demo(*, index_dir: str | os.PathLike[str] | None = None, model: str | None = None,
             corpus: str | None = None, k: int = 3, collection: str = "bmrag", show_progress: bool = True,
             questions: Sequence[str] = DEMO_QUESTIONS, out: IO[str] | None = None) -> int:
    """``bmrag demo``: index the bundled sample (idempotent) and answer the built-in questions by retrieval."""
    out = out or sys.stdout
    index_dir = index_location(index_dir) if index_dir else default_index_dir()
    name = model or models.DEFAULT_RETRIEVER
    documents, label = read_documents(corpus)
    print("bmrag demo: biomedical passage retrieval with LlamaIndex over a persistent Chroma index", file=out)
    print(model_note(name, "option" if model else "default"), file=out)
    print(f"Corpus: {label} ({len(documents)} documents)", file=out)
    print(f"Index: {index_dir} (collection {collection!r})", file=out, flush=True)
    embed_model = load_embedding(name)
    if embed_model.instruction:
        print(f"Query instruction: {embed_model.instruction!r}", file=out)
    store, report = build_index(documents, index_dir, embed_model, collection=collection,
                                show_progress=show_progress)
    try:
        print(_report_line(report, len(documents), store.count()), file=out)
        for number, question in enumerate(questions, start=1):
            print(f"\nQ{number}. {question}", file=out)
            print(format_hits(retrieve(store, embed_model, question, k)), file=out)
    finally:
        store.close()
    print(f"\n{_score_note(embed_model)}", file=out)
    print(f"Ask your own: bmrag search \"your question\" --index {index_dir}", file=out)
    return 0
