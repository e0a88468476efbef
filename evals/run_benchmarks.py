"""Run models x datasets sequentially, one result JSON each, then regenerate the leaderboard.

Resumable: a result file that already exists is skipped (``--force`` re-runs it), and corpus embeddings
come from the on-disk cache, so an interrupted run picks up where it stopped (even mid-corpus).

Examples::

    # the cheap baselines
    python evals/run_benchmarks.py --models bm25 all-MiniLM-L6-v2 --dtype float32
    # the untrained decoders, in the background
    nohup python evals/run_benchmarks.py --models SmolLM2-135M-Instruct gemma-3-270m --dtype bfloat16 \\
        > /tmp/bmrag-decoders.log 2>&1 &
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from bmrag import loading
from bmrag.evaluation import DATASETS, build_leaderboard, evaluate_retrieval, evaluate_sts
from bmrag.evaluation.run import print_summary, result_filename, write_result
from bmrag.loading import DTYPE_NAMES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = os.environ.get("BMRAG_DATA") or str(REPO.parent / "shared" / "data")
DEFAULT_DATASETS = ["biosses", "pubmedqa-retrieval", "bioasq-snippets", "scifact"]  # cheap first: errors surface early


def expected_name(model: str, dataset: str, dtype: str | None) -> str:
    """The file name a run will get (see ``bmrag.evaluation.run.result_filename``), to skip finished runs."""
    fake = {"model": {"model": model, "dtype": None if model == "bm25" else dtype}, "dataset": {"name": dataset}}
    return result_filename(fake)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="bm25, offline aliases, Hub ids or paths")
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, choices=list(DATASETS))
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                        help="default: bmrag.loading.default_dtype (bfloat16 on GPUs and AMX/AVX512-BF16 CPUs, "
                             "else float32)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="data root (default $BMRAG_DATA or ../shared/data)")
    parser.add_argument("--results", default=str(REPO / "evals" / "results"), help="where result JSON files go")
    parser.add_argument("--cache-dir", default=None, help="embedding cache (default ~/.cache/bmrag/embeddings)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--force", action="store_true", help="re-run results that already exist")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; 1 is several times faster when other processes share the cores")
    args = parser.parse_args(argv)
    import torch

    if args.dtype is None:  # resolved here so finished runs are found under their dtype's file name
        args.dtype = loading.default_dtype("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    results = Path(args.results)
    for model in args.models:
        encoder = None  # loaded once per model, reused across datasets
        for name in args.datasets:
            target = results / expected_name(model, name, args.dtype)
            if target.exists() and not args.force:
                print(f"skip {target.name} (exists)", flush=True)
                continue
            if model != "bm25" and encoder is None:
                from bmrag import BMRetrieverEncoder

                started = time.perf_counter()
                encoder = BMRetrieverEncoder.from_pretrained(model, dtype=args.dtype)
                print(f"loaded {model} ({args.dtype}) in {time.perf_counter() - started:.1f} s", flush=True)
            runner = model if model == "bm25" else encoder
            command = [sys.executable, *sys.argv]
            if DATASETS[name].kind == "sts":
                result = evaluate_sts(runner, dataset=name, data=args.data, batch_size=args.batch_size,
                                      command=command)
            else:
                result = evaluate_retrieval(runner, dataset=name, data=args.data, batch_size=args.batch_size,
                                            cache_dir=args.cache_dir, command=command)
            if model != "bm25":
                result["timing"]["load_model_s"] = None  # loaded once for all datasets; see the log
            write_result(result, results / result_filename(result))
            print_summary(result)
            sys.stdout.flush()
    readme, plot = build_leaderboard(results)
    print(f"wrote {readme} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
