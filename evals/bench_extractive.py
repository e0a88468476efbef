"""Latency of the extractive answer (models loaded): p50/p95 per scorer, with the query embedding as baseline.

For N training-split questions (BioASQ train, MedQuAD calibration topics) the evidence is the question's gold
document plus two seeded random documents of the new demo corpus, chunked as the index chunks them (the top
3 passages the extractive answer quotes from). Each scorer runs once per question after one warm-up; the
baseline is embedding the question alone (what retrieval does anyway), measured in the same run.

Wall time on a machine shared with other jobs mostly measures waiting; the process CPU time is recorded too
(with ``--threads 1`` it is what the call takes on an idle core).

Usage::

    BMRAG_DATA=/path/to/shared/data python evals/bench_extractive.py [--threads 2] [--n 40]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmrag.qa import extractive as ex  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("BMRAG_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--out", type=Path, default=REPO / "evals" / "results" / "bench_extractive.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from llama_index.core.schema import MetadataMode

    from bmrag.hardware import describe_cpu
    from bmrag.index.build import corpus_to_nodes
    from bmrag.index.open import load_embedding

    spec = importlib.util.spec_from_file_location("calib", REPO / "evals" / "abstention_calibration.py")
    calib = importlib.util.module_from_spec(spec)
    sys.modules["calib"] = calib  # dataclasses resolve the module by name
    spec.loader.exec_module(calib)
    rng = random.Random(7)
    docs = {d["_id"]: d for d in calib._load_builder().build(args.data)}
    questions, _ = calib.build_questions(args.data, docs, {"medquad": args.n // 2, "pubmedqa": 0,
                                                           "bioasq": args.n - args.n // 2, "other": 0}, rng)
    embed = load_embedding("all-MiniLM-L6-v2")
    ids = sorted(docs)
    cases = []
    for q in questions:
        chosen = [sorted(q.gold)[0]] + rng.sample(ids, 2)
        corpus = {i: {"title": docs[i]["title"], "text": docs[i]["text"]} for i in chosen}
        nodes = corpus_to_nodes(corpus, embed.encoder)[:3]
        cases.append((q.text, [ex.Passage(i + 1, n.get_content(metadata_mode=MetadataMode.NONE),
                                          n.metadata.get("title") or "") for i, n in enumerate(nodes)]))
    scorers = {"lexical": ex.make_scorer("lexical"), "dense": ex.make_scorer("dense", embed),
               "mix": ex.make_scorer("mix", embed)}
    ex.extract_answer(cases[0][0], cases[0][1], scorers["mix"])  # warm-up
    timings: dict[str, list[float]] = {"baseline_query_embedding": [], **{name: [] for name in scorers}}
    cpu: dict[str, list[float]] = {name: [] for name in timings}
    sentences = []
    for question, passages in cases:
        t, c = time.perf_counter(), time.process_time()
        embed.get_query_embedding(question)
        timings["baseline_query_embedding"].append(time.perf_counter() - t)
        cpu["baseline_query_embedding"].append(time.process_time() - c)
        for name, scorer in scorers.items():
            t, c = time.perf_counter(), time.process_time()
            answer = ex.extract_answer(question, passages, scorer)
            timings[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        sentences.append(answer.candidates)
    base = float(np.median(timings["baseline_query_embedding"]))
    result = {
        "command": f"BMRAG_DATA=<shared data> python evals/bench_extractive.py --threads {args.threads} --n {args.n}",
        "cpu": describe_cpu(), "threads": args.threads, "load_average_at_end": os.getloadavg(),
        "questions": len(cases), "candidate_sentences_median": float(np.median(sentences)),
        "wall_seconds": {name: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                                "max": float(np.max(v)), "p50_vs_query_embedding": float(np.percentile(v, 50)) / base}
                         for name, v in timings.items()},
        "cpu_seconds": {name: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                               "max": float(np.max(v))} for name, v in cpu.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
