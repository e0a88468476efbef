"""``bmrag index --engine ray``: corpus encoding on Ray Data, writing the same index as the single-process path.

Pipeline (one Ray Data dataset, streamed):

1. **Read, sharded**: the driver only *plans* shards (:func:`plan_shards`): one per PubMed/MEDLINE file (the
   PubMed baseline is ~1,200 ``.xml.gz`` files), groups of ``.txt``/``.md`` files, and line ranges of a BEIR
   ``.jsonl[.gz]`` file. ``flat_map`` tasks read their shard with bmrag's own readers (same ids, same
   metadata, same errors naming file and line) and chunk it into nodes with the model's tokenizer
   (:func:`bmrag.store.corpus_to_nodes`); node ids already stored are dropped here, so a re-run embeds nothing.
2. **Encode**: ``map_batches`` with :class:`EncodeBatch`, a callable class holding the encoder: one actor per
   worker (``num_gpus=1`` each when the cluster has GPUs, one CPU each otherwise), or a thin client of a vLLM
   pooling server (``api_base``). Ray restarts an actor that dies and re-runs its batch.
3. **Write**: the driver upserts the encoded rows in batches within Chroma's ``max_batch_size`` through
   :class:`bmrag.store.BMRagChromaVectorStore` (same node metadata as the single-process path), into a
   directory or a Chroma server (``--index http://HOST:PORT``). Upserts keyed by node id make a batch that
   Ray re-ran harmless: nothing is lost or duplicated.

Document ids that occur twice keep the first occurrence (as :func:`bmrag.index.sources.read_source` does; order is
preserved), except in BEIR files, where a duplicate ``_id`` is a malformed record.

``ray.init()`` starts a local cluster (``workers`` CPUs); ``address`` joins a running one (``ray start --head``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from bmrag.index.shards import LINES_PER_SHARD, Shard, plan_shards, shard_records

logger = logging.getLogger(__name__)

class _Chunker:
    """What :func:`bmrag.store.corpus_to_nodes` reads of an encoder: the tokenizer and the recipe."""

    def __init__(self, tokenizer: Any, recipe: Any) -> None:
        self.tokenizer, self.recipe = tokenizer, recipe


_EMPTY_ROW = {"kind": "", "id": "", "doc_id": "", "occurrence": "", "where": "", "text": "", "node": ""}


def read_shard(row: dict[str, Any], *, tokenizer: Any, recipe: Any, stored: Any, skip_bad: bool) -> list[dict]:
    """Ray ``flat_map``: one shard -> node rows (``kind="node"``) and skipped-record rows (``kind="bad"``)."""
    import ray

    from bmrag.index.build import corpus_to_nodes

    shard = Shard(**{k: (tuple(v) if k == "files" else v) for k, v in json.loads(row["shard"]).items()})
    stored_ids = ray.get(stored) if isinstance(stored, ray.ObjectRef) else stored
    chunker = _Chunker(tokenizer, recipe)
    problems: list[str] = []
    out: list[dict] = []
    for number, (doc_id, record, where) in enumerate(shard_records(shard, skip_bad, problems)):
        for node in corpus_to_nodes({doc_id: record}, chunker):
            if node.node_id in stored_ids:
                continue
            out.append({**_EMPTY_ROW, "kind": "node", "id": node.node_id, "doc_id": doc_id,
                        "occurrence": f"{shard.index}:{number}", "where": where, "text": node.get_content(),
                        "node": node.to_json()})
    out.extend({**_EMPTY_ROW, "kind": "bad", "where": problem} for problem in problems)
    return out


# ----------------------------------------------------------------------------------------------- encode
class EncodeBatch:
    """Ray ``map_batches`` callable class: holds one encoder per actor and adds a ``vector`` column.

    Args:
        model: What ``BMRetrieverEncoder.from_pretrained`` loads (or the served model with ``api_base``).
        recipe: Recipe fields pinned by the index manifest (so vectors match the collection's recipe).
        dtype: Weights dtype (None: bmrag's default for the device).
        api_base: A vLLM pooling server (``bmrag serve-embed``) doing the forward passes instead.
        batch_size: Texts per forward pass. threads: torch CPU threads per actor.
    """

    def __init__(self, model: str, recipe: dict[str, Any], dtype: str | None = None, api_base: str | None = None,
                 batch_size: int = 32, threads: int = 1) -> None:
        import torch

        from bmrag.encoder import BMRetrieverEncoder

        torch.set_num_threads(threads)
        self.batch_size = batch_size
        if api_base:
            self.encoder = BMRetrieverEncoder.from_server(api_base, model, dtype=dtype)
        else:
            self.encoder = BMRetrieverEncoder.from_pretrained(model, dtype=dtype, **recipe)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        is_node = batch["kind"] == "node"
        vectors = np.zeros((len(texts), self.encoder.dim), dtype=np.float32)
        if is_node.any():
            # The passage template is applied to the node text, exactly as BMRetrieverEmbedding does.
            chosen = [t for t, keep in zip(texts, is_node) if keep]
            vectors[is_node] = self.encoder.encode_documents(chosen, batch_size=self.batch_size)
        return {**batch, "vector": vectors}


# ------------------------------------------------------------------------------------------------ drive
@dataclass
class RayIndexReport:
    """What :func:`run_ray_index` did."""

    shards: int
    nodes_added: int
    documents_added: int
    skipped_stored: int
    duplicates: list[str] = field(default_factory=list)
    bad_records: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    @property
    def docs_per_second(self) -> float:
        return self.documents_added / self.seconds if self.seconds > 0 else 0.0


def _stored_ids(store: Any) -> set[str]:
    ids: set[str] = set()
    collection = store._collection
    page = store._max_batch_size
    offset = 0
    while True:
        got = collection.get(include=[], limit=page, offset=offset)["ids"]
        ids.update(got)
        if len(got) < page:
            return ids
        offset += page


def _has_gpus() -> bool:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) >= 1


def build_with_ray(corpus: str | os.PathLike[str], index: str | os.PathLike[str], embed_model: Any,
                   **options: Any) -> RayIndexReport:
    """Index ``corpus`` into ``index`` on a Ray cluster; see the module docstring.

    Args:
        corpus: Any source ``bmrag index --corpus`` reads.
        index: Index directory or ``http://HOST:PORT`` Chroma server.
        embed_model: The driver's :class:`~bmrag.llama_index.embedding.BMRetrieverEmbedding`: its manifest creates
            or checks the collection and its tokenizer chunks documents (the actors load their own copy).
        collection: Collection name.
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None starts a local one.
        workers: Encoding actors (GPUs when the cluster has them, else one CPU each).
        batch_size: Texts per forward pass (and rows per Ray batch).
        api_base: Encode on a vLLM pooling server instead of in the actors' own model copies.
        skip_bad: Count malformed records instead of stopping at the first.
        show_progress: tqdm over written nodes.
        encode_class: The ``map_batches`` callable class (:class:`EncodeBatch`; tests pass a subclass).
        lines_per_shard: BEIR jsonl lines per read shard.

    Raises:
        bmrag.index.readers.DataError: Malformed input (file and line named); what was written before stays.
        IndexMismatchError: The index was built with another model or recipe.
    """
    from bmrag.index.readers import DataError

    message = None
    try:
        return _build_with_ray(corpus, index, embed_model, **options)
    except Exception as err:
        # A reader's DataError (file and line named) arrives wrapped in Ray's task error (or raw from the driver).
        original = getattr(err, "cause", None) if not isinstance(err, DataError) or hasattr(err, "cause") else err
        if not isinstance(original, DataError):
            raise
        message = str(original)
    # Raised here, after the except block dropped the traceback: its frames hold the dataset, whose actors
    # (and their CPUs) Ray frees only when nothing references them any more.
    gc.collect()
    raise DataError(message)


def _build_with_ray(corpus: str | os.PathLike[str], index: str | os.PathLike[str], embed_model: Any, *,
                    collection: str = "bmrag", address: str | None = None, workers: int = 2, batch_size: int = 32,
                    api_base: str | None = None, skip_bad: bool = False, show_progress: bool = True,
                    encode_class: type = EncodeBatch, lines_per_shard: int = LINES_PER_SHARD) -> RayIndexReport:
    import ray
    from llama_index.core.schema import TextNode
    from tqdm.auto import tqdm

    from bmrag.index.readers import DataError
    from bmrag.index.store import open_store

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    encoder = embed_model.encoder
    shards = plan_shards(corpus, lines_per_shard=lines_per_shard)
    store = open_store(index, embed_model, collection=collection)
    start = time.perf_counter()
    stack = contextlib.ExitStack()
    try:
        stored = _stored_ids(store)
        if not ray.is_initialized():
            if address:  # a real cluster: bmrag must be installed on its nodes
                ray.init(address=address, log_to_driver=False)
            else:
                # Local workers import the bmrag this driver imports (not another install on the same machine).
                env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
                ray.init(num_cpus=workers + 1, runtime_env=env, include_dashboard=False, log_to_driver=False)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # first occurrence of a duplicate id wins, as in-process
        context.enable_progress_bars = False
        context.raise_original_map_exception = True  # the reader's DataError, not Ray's UserCodeException
        gpus = _has_gpus()
        recipe = {k: getattr(encoder.recipe, k) for k in ("max_length", "pooling", "normalize", "padding_side",
                                                           "query_template", "passage_template")}
        model = encoder.source.model  # the alias / path / Hub id the actors load, as the driver did
        items = [{"shard": json.dumps(s.__dict__)} for s in shards]
        dataset = (
            ray.data.from_items(items, override_num_blocks=max(1, len(items)))
            .flat_map(read_shard, fn_kwargs={"tokenizer": encoder.tokenizer, "recipe": encoder.recipe,
                                             "stored": ray.put(stored), "skip_bad": skip_bad})
            .map_batches(encode_class, batch_size=batch_size, batch_format="numpy", concurrency=workers,
                         num_gpus=1 if gpus and not api_base else 0, num_cpus=1,
                         fn_constructor_kwargs={"model": model, "recipe": recipe,
                                                "dtype": str(encoder.dtype).removeprefix("torch."),
                                                "api_base": api_base, "batch_size": batch_size})
        )
        seen: dict[str, str] = {}
        report = RayIndexReport(shards=len(shards), nodes_added=0, documents_added=0, skipped_stored=len(stored),
                                workers=workers)
        documents: set[str] = set()
        bar = tqdm(desc="index (ray)", unit="node", disable=not show_progress)
        batches = iter(dataset.iter_batches(batch_size=store._max_batch_size, batch_format="numpy"))
        stack.callback(getattr(batches, "close", lambda: None))  # on any error: stop the executor, free its actors
        for batch in batches:
            nodes = []
            for kind, doc_id, occurrence, where, node_json, vector in zip(
                    batch["kind"], batch["doc_id"], batch["occurrence"], batch["where"], batch["node"],
                    batch["vector"]):
                if kind == "bad":
                    report.bad_records.append(str(where))
                    continue
                first = seen.setdefault(str(doc_id), str(occurrence))
                if first != occurrence:
                    if shards[0].kind == "beir":
                        if not skip_bad:
                            raise DataError(f"{where}: duplicate _id {str(doc_id)!r}")
                        report.bad_records.append(f"{where}: duplicate _id {str(doc_id)!r}")
                    else:
                        report.duplicates.append(str(doc_id))
                    continue
                node = TextNode.from_json(str(node_json))
                node.embedding = np.asarray(vector, dtype=np.float32).tolist()
                nodes.append(node)
                documents.add(str(doc_id))
            if nodes:
                store.add(nodes)
                report.nodes_added += len(nodes)
                bar.update(len(nodes))
        bar.close()
        report.documents_added = len(documents)
        report.seconds = time.perf_counter() - start
        return report
    finally:
        stack.close()
        store.close()


def run_ray_index(*, corpus: str | None, index_dir: str | os.PathLike[str] | None, model: str | None,
                  collection: str = "bmrag", batch_size: int = 32, address: str | None = None, workers: int = 2,
                  api_base: str | None = None, dtype: str | None = None, show_progress: bool = True,
                  skip_bad: bool = False, out: IO[str] | None = None) -> int:
    """``bmrag index --engine ray``: :func:`build_with_ray` with the CLI's defaults and report lines."""
    from bmrag import models
    from bmrag.index.chroma_client import index_location
    from bmrag.index.open import default_index_dir, load_embedding
    from bmrag.index.sources import DEMO_CORPUS
    from bmrag.models import model_note

    out = out or sys.stdout
    where = index_location(index_dir) if index_dir else default_index_dir()
    name = model or models.DEFAULT_RETRIEVER
    source = Path(corpus).expanduser() if corpus else DEMO_CORPUS
    print(model_note(name, "option" if model else "default"), file=out)
    print(f"Corpus: {source} (read by Ray in shards)", file=out)
    print(f"Index: {where} (collection {collection!r}); Ray: {address or 'local cluster'}, {workers} workers"
          + (f", encoding on {api_base}" if api_base else ""), file=out, flush=True)
    embed_model = load_embedding(name, batch_size=batch_size, dtype=dtype, api_base=api_base)
    report = build_with_ray(source, where, embed_model, collection=collection, address=address, workers=workers,
                            batch_size=batch_size, api_base=api_base, skip_bad=skip_bad, show_progress=show_progress)
    if report.nodes_added == 0:
        print(f"Index up to date: {report.skipped_stored} passages already stored, 0 added.", file=out)
    else:
        print(f"Indexed {report.documents_added} documents ({report.nodes_added} passages) in {report.seconds:.1f} s "
              f"with {workers} Ray workers: {report.docs_per_second:.1f} docs/s"
              + (f"; {report.skipped_stored} passages were already stored" if report.skipped_stored else "") + ".",
              file=out)
    if report.duplicates:
        print(f"  {len(report.duplicates)} duplicate document ids kept their first occurrence, e.g. "
              f"{report.duplicates[:3]}", file=out)
    if report.bad_records:
        print(f"  skipped {len(report.bad_records)} malformed records, e.g. {report.bad_records[:3]}", file=out)
    return 0
