"""Chroma's HNSW search against exact search: recall@10 and query time per ``ef_search``, on real and adversarial data.

bmrag stores vectors in Chroma, whose HNSW index answers approximately (``ef_search`` candidates kept during
the graph walk; Chroma's default 100). This measures what that costs, in one run, against exact search
(every query scored against every stored vector with numpy):

* **real**: SciFact (``--n-docs`` abstracts, title + text, and its queries), embedded by ``--model``; for each
  ``ef_search``, a fresh collection holding the same vectors, upserted in batches of ``--batch-size`` as
  ``bmrag index`` writes them: recall@10, top-1 agreement, query time per query and its ratio to ef 100.
* **near-copies**: 200 generated reports that differ in a word or a number ("Report i about aspirin platelets
  in adults; outcome measured at i weeks."; 40 of them twice, as two files numbered from 0 gave) and one
  distinct document (hydroxyurea in sickle cell anaemia),
  built ``--builds`` times per ``ef_search``: how often the distinct document is the top hit for its own
  question (exact search: always). This was the corpus of the first Chroma-server concurrency test, whose
  "new document not visible" failures were this miss, served or embedded, concurrent or not.

Usage::

    python evals/bench_hnsw.py                                   # all-MiniLM-L6-v2, SciFact 5,183 docs
    python evals/bench_hnsw.py --n-docs 1000 --ef-search 100 400 --builds 5

Writes ``bench_hnsw.json`` and ``bench_hnsw.md`` under ``--out-dir`` (default evals/results).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

TOPICS = ["aspirin platelets", "metformin diabetes", "statin cholesterol", "insulin glucose", "asthma inhaler",
          "vitamin C scurvy", "warfarin bleeding", "malaria artemisinin", "tuberculosis isoniazid", "migraine"]
DISTINCT = ("Hydroxyurea in sickle cell anaemia Hydroxyurea raises fetal haemoglobin and reduces painful crises in "
            "sickle cell anaemia.")
DISTINCT_QUESTION = "What does hydroxyurea do in sickle cell anaemia?"


def _collection(root: Path, name: str, vectors: np.ndarray, ids: list[str], ef_search: int, batch_size: int) -> Any:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(root / name), settings=Settings(anonymized_telemetry=False))
    col = client.create_collection(name, embedding_function=None,
                                   configuration={"hnsw": {"space": "cosine", "ef_search": ef_search}})
    for start in range(0, len(ids), batch_size):
        col.upsert(ids=ids[start:start + batch_size], embeddings=vectors[start:start + batch_size].tolist())
    return col


def _real(encoder: Any, n_docs: int, efs: list[int], batch_size: int, root: Path) -> list[dict[str, Any]]:
    from bmrag.index.readers import load_corpus, load_queries
    from bmrag.loading import data_root

    root = data_root()
    if root is None:
        raise FileNotFoundError("SciFact not found: set $BMRAG_DATA to the folder holding scifact/ "
                                "(../shared/data beside the repository is used when it exists)")
    folder = root / "scifact"
    corpus = load_corpus(folder)
    ids = sorted(corpus)[:n_docs]
    queries = list(load_queries(folder).values())
    docs = encoder.encode_documents([corpus[d] for d in ids], batch_size=64)
    qs = encoder.encode_queries(queries)
    exact = np.argsort(-(qs @ docs.T), axis=1)[:, :10]
    rows = []
    for ef in efs:
        col = _collection(root, f"real-{ef}", docs, ids, ef, batch_size)
        col.query(query_embeddings=qs[:8].tolist(), n_results=10, include=[])  # load the index before timing
        start = time.perf_counter()
        got = col.query(query_embeddings=qs.tolist(), n_results=10, include=[])["ids"]
        seconds = time.perf_counter() - start
        recall = np.mean([len(set(g) & {ids[i] for i in e}) / 10 for g, e in zip(got, exact)])
        top1 = np.mean([g[0] == ids[e[0]] for g, e in zip(got, exact)])
        rows.append({"ef_search": ef, "docs": len(ids), "queries": len(queries),
                     "recall_at_10": round(float(recall), 4), "top1_agreement": round(float(top1), 4),
                     "ms_per_query": round(1000 * seconds / len(queries), 3)})
    base = next((r["ms_per_query"] for r in rows if r["ef_search"] == 100), rows[0]["ms_per_query"])
    for row in rows:
        row["time_vs_ef100"] = round(row["ms_per_query"] / base, 2)
    return rows


def _near_copies(encoder: Any, efs: list[int], builds: int, batch_size: int, root: Path) -> list[dict[str, Any]]:
    numbers = [*range(40), *range(160)]  # as the old test wrote them: two files numbered from 0, 40 exact copies
    texts = [f"{TOPICS[i % 10]} study {i} Report {i} about {TOPICS[i % 10]} in adults; outcome measured at {i} weeks."
             for i in numbers] + [DISTINCT]
    ids = [f"r{n:03d}" for n in range(200)] + ["distinct"]
    vectors = encoder.encode_documents(texts, batch_size=64)
    question = encoder.encode_queries([DISTINCT_QUESTION])
    assert ids[int(np.argmax(question @ vectors.T))] == "distinct"  # exact search finds it
    rows = []
    for ef in efs:
        found = sum(_collection(root, f"near-{ef}-{b}", vectors, ids, ef, batch_size)
                    .query(query_embeddings=question.tolist(), n_results=1, include=[])["ids"][0][0] == "distinct"
                    for b in range(builds))
        rows.append({"ef_search": ef, "builds": builds, "distinct_found_top1": found})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="retriever whose vectors are indexed")
    parser.add_argument("--n-docs", type=int, default=5183, help="SciFact abstracts indexed (first by id)")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[100, 200, 400],
                        help="HNSW ef_search values compared (Chroma's default is 100)")
    parser.add_argument("--builds", type=int, default=10, help="near-copies: fresh collections per ef_search")
    parser.add_argument("--batch-size", type=int, default=8, help="upsert batch size (bmrag index's --batch-size)")
    parser.add_argument("--out-dir", default="evals/results", help="where bench_hnsw.json/.md are written")
    args = parser.parse_args(argv)

    import chromadb

    from bmrag import hardware
    from bmrag.encoder import BMRetrieverEncoder
    from bmrag.evaluation.report import environment, write_result

    load_before = round(os.getloadavg()[0], 2)
    encoder = BMRetrieverEncoder.from_pretrained(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-hnsw-") as tmp:
        real = _real(encoder, args.n_docs, args.ef_search, args.batch_size, Path(tmp))
        near = _near_copies(encoder, args.ef_search, args.builds, args.batch_size, Path(tmp))
    result = {
        "benchmark": "bench_hnsw", "model": args.model, "chromadb": chromadb.__version__, "real": real,
        "near_copies": near, "cpu": hardware.describe_cpu(), "load": {"before": load_before,
                                                                      "after": round(os.getloadavg()[0], 2)},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "environment": environment(),
        "command": "python evals/bench_hnsw.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    }
    out = Path(args.out_dir)
    write_result(result, out / "bench_hnsw.json")
    lines = [
        "# Chroma HNSW against exact search", "",
        f"{args.model} vectors (cosine), Chroma {chromadb.__version__}, upserts in batches of {args.batch_size}; "
        f"one run on {result['cpu']}, load {load_before} before, {result['load']['after']} after; {result['date']}.",
        "", f"## Real: SciFact, {real[0]['docs']} abstracts, {real[0]['queries']} queries", "",
        "| ef_search | recall@10 | top-1 agreement | ms/query | time vs ef 100 |", "|---|---|---|---|---|",
        *(f"| {r['ef_search']} | {r['recall_at_10']} | {r['top1_agreement']} | {r['ms_per_query']} | "
          f"{r['time_vs_ef100']}x |" for r in real),
        "", "## Near-copies: 200 reports differing in a word or number (40 exact copies) + 1 distinct document", "",
        "| ef_search | builds | distinct document is the top hit |", "|---|---|---|",
        *(f"| {r['ef_search']} | {r['builds']} | {r['distinct_found_top1']} of {r['builds']} |" for r in near),
        "", "Exact search ranks the distinct document first every time. See docs/scale.md for what this means "
        "for an index.", "", "## Reproduce", "", "```", result["command"], "```", "",
    ]
    (out / "bench_hnsw.md").write_text("\n".join(lines))
    print(f"wrote {out / 'bench_hnsw.json'} and {out / 'bench_hnsw.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
