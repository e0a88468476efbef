"""Latency of ``bmrag ask``: p50/p95 of retrieval, rerank and generation, per generator configuration.

Runs the QA chain (public API only) over the bundled demo corpus indexed with the offline default
retriever (all-MiniLM-L6-v2), on a fixed list of questions the corpus answers, for:

* the embedded generator (SmolLM2-135M-Instruct, greedy, in the hardware's default dtype) with each
  ``--threads`` value;
* the same plus a reranking stage (``--rerank``, default all-MiniLM-L6-v2: the only reranker weights
  available offline; it measures the stage's cost, not BMRetriever's quality);
* a vLLM server when ``--api-base`` answers (e.g. ``bmrag serve-llm SmolLM2-135M-Instruct``); skipped, and
  said so, otherwise.

Writes ``evals/results/bench_ask.json`` and ``.md``. Target: p95 <= 3 s for a short answer.

    python evals/bench_ask.py --threads 2 1 --rounds 2 [--api-base http://127.0.0.1:8000/v1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bmrag.evaluation.report import portable
from bmrag.index.sample import SAMPLE_QUESTIONS

QUESTIONS = SAMPLE_QUESTIONS
OFF_TOPIC = (
    "What is the capital of France?", "How do I change a flat bicycle tyre?",
    "Who won the football world cup in 2014?",
    "What is the best programming language for web development?", "How many moons does Jupiter have?",
    "What is the price of gold today?", "How do I bake sourdough bread?", "What time zone is Tokyo in?",
    "Who wrote Pride and Prejudice?", "How does a car engine work?", "What is the tallest mountain in Europe?",
    "How to invest in index funds?",
)
NOT_COVERED = (
    "What is the recommended dose of amoxicillin for otitis media in children?", "Does acupuncture relieve migraine?",
    "What are the side effects of isotretinoin?", "How is Lyme disease diagnosed?",
    "What is the prognosis of pancreatic cancer?", "Can vitamin B12 deficiency cause neuropathy?",
)
"""Medical questions the demo corpus does not answer (checked by reading its top hits)."""
WARM_UP = "What is aspirin used for?"
"""Asked once before timing starts; not among QUESTIONS, so no timed question is in a server's prefix cache."""
STAGES = ("retrieval", "rerank", "generation", "total")
TARGET_P95_S = 3.0


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) without numpy."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low, high = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    stats = {}
    for stage in STAGES:
        values = [r["timings"].get(stage, 0.0) for r in runs]
        stats[stage] = {"p50": round(percentile(values, 0.5), 3), "p95": round(percentile(values, 0.95), 3),
                        "mean": round(statistics.fmean(values), 3)}
    tokens = [r["answer_tokens"] for r in runs if r["answer_tokens"] is not None]
    return {"n": len(runs), "seconds": stats,
            "answer_tokens_mean": round(statistics.fmean(tokens), 1) if tokens else None,
            "statuses": {s: sum(r["status"] == s for r in runs) for s in sorted({r["status"] for r in runs})},
            "answers_with_valid_citation": sum(bool(r["cited"]) for r in runs),
            "answers_with_removed_citation": sum(bool(r["removed"]) for r in runs),
            "meets_target": percentile([r["timings"]["total"] for r in runs], 0.95) <= TARGET_P95_S}


def first_asks(runs: list[dict[str, Any]], n_questions: int) -> dict[str, float]:
    """Total p50/p95 of round 1 only: vLLM caches prompt prefixes, so a repeated question skips its prefill."""
    totals = [r["timings"]["total"] for r in runs[:n_questions]]
    return {"n": len(totals), "p50": round(percentile(totals, 0.5), 3), "p95": round(percentile(totals, 0.95), 3)}


def run_config(name: str, chain: Any, questions: list[str], rounds: int, note: str) -> dict[str, Any]:
    chain.ask(WARM_UP)  # first-call allocations are not what users wait for
    runs = []
    for _ in range(rounds):
        for question in questions:
            result = chain.ask(question)
            tokens = result.answer_tokens
            runs.append({"question": question, "status": result.status, "timings": result.timings,
                         "answer_tokens": tokens, "cited": [s["number"] for s in result.sources],
                         "removed": [c["marker"] for c in result.invalid_citations], "answer": result.answer})
            print(f"  {name}: {result.timings['total']:.2f} s  {result.status:9s} {question[:50]}", flush=True)
    summary = summarise(runs)
    summary["first_asks"] = first_asks(runs, len(questions))
    return {"name": name, "note": note, "generator": chain.generator.describe(),
            "reranker": chain.reranker.model_name if chain.reranker else None, "summary": summary, "runs": runs}


def calibrate(index_dir: Path, pubmedqa: Path, n: int = 60) -> dict[str, Any]:
    """Top-1 first-stage cosine of questions the index answers vs off-topic and not-covered questions."""
    import gzip

    from bmrag import demo
    from bmrag.qa.chain import QAChain
    from bmrag.qa.evidence import COSINE_MIN_SCORE

    ids = [json.loads(line)["_id"] for line in gzip.open(demo.DEMO_CORPUS, "rt")]
    labelled = json.loads(pubmedqa.read_text())
    answered = [labelled[i.split("-", 1)[1]]["QUESTION"] for i in ids if i.startswith("pubmedqa-")][:n]
    chain = QAChain.from_index(index_dir, k=1, backend=None)
    groups = {}
    try:
        for name, questions in (("answered_by_corpus", answered), ("off_topic", OFF_TOPIC),
                                ("medical_not_covered", NOT_COVERED)):
            scores = [float(chain.retrieve(q)[0].score) for q in questions]
            groups[name] = {"n": len(scores), "min": round(min(scores), 3),
                            "median": round(statistics.median(scores), 3), "max": round(max(scores), 3),
                            "at_or_above_threshold": sum(s >= COSINE_MIN_SCORE for s in scores)}
    finally:
        chain.close()
    return {"threshold": COSINE_MIN_SCORE, "score": "top-1 cosine, all-MiniLM-L6-v2", "groups": groups,
            "answered_source": f"PubMedQA questions of the first {n} PubMedQA passages of the demo corpus"}


def ensure_index(index_dir: Path) -> None:
    from bmrag import demo

    documents, _ = demo.read_documents(None)
    embed = demo.load_embedding("all-MiniLM-L6-v2")
    store, report = demo.build_index(documents, index_dir, embed, show_progress=False)
    store.close()
    print(f"index {index_dir}: {report.added} passages added, {report.skipped} already there", flush=True)


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# `bmrag ask` latency",
        "",
        f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['processor']}), "
        f"load average at start {result['machine']['load_at_start']}, Python {result['machine']['python']}. "
        f"Index: bundled demo corpus ({result['index_passages']} passages), retriever all-MiniLM-L6-v2, "
        f"k={result['k']}. "
        f"{len(result['questions'])} questions x {result['rounds']} rounds after one warm-up ask "
        f"({result.get('warm_up', 'the first question')!r}); first asks = round 1 only. "
        f"Target: p95 total <= {TARGET_P95_S:g} s.",
        "",
        "| configuration | retrieval p50 / p95 | rerank p50 / p95 | generation p50 / p95 | total p50 / p95 | "
        "first asks: total p50 / p95 | answer tokens | valid citation | removed citation | p95 <= 3 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config in result["configs"]:
        if "skipped" in config:
            lines.append(f"| {config['name']} | skipped: {config['skipped']} | | | | | | | | |")
            continue
        s = config["summary"]
        cells = [f"{s['seconds'][st]['p50']:.2f} / {s['seconds'][st]['p95']:.2f}" for st in STAGES]
        first = s.get("first_asks")
        cells.append(f"{first['p50']:.2f} / {first['p95']:.2f}" if first else "-")
        lines.append(f"| {config['name']} | " + " | ".join(cells) + f" | {s['answer_tokens_mean']} | "
                     f"{s['answers_with_valid_citation']}/{s['n']} | {s['answers_with_removed_citation']}/{s['n']} | "
                     f"{'yes' if s['meets_target'] else 'no'} |")
    cal = result["threshold_calibration"]
    if "groups" in cal:
        lines += ["", f"Weak-evidence threshold {cal['threshold']} ({cal['score']}; {cal['answered_source']}):", "",
                  "| questions | n | min | median | max | >= threshold |", "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {g['n']} | {g['min']} | {g['median']} | {g['max']} | {g['at_or_above_threshold']} |"
                  for name, g in cal["groups"].items()]
    lines += ["", "Notes:"]
    lines += [f"- {config['name']}: {config['note']}" for config in result["configs"]]
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", default=None, help="demo index dir (default ~/.cache/bmrag/index/bench-demo)")
    parser.add_argument("--threads", type=int, nargs="*", default=[2, 1],
                        help="torch threads per local run; none (a bare --threads) skips the embedded generator, "
                             "so a vLLM run is not slowed by a second model in this process")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the questions per configuration")
    parser.add_argument("-k", type=int, default=3, help="evidence passages per answer")
    parser.add_argument("--rerank", default="all-MiniLM-L6-v2", help="reranker model ('' to skip that config)")
    parser.add_argument("--api-base", default=None, help="vLLM server to measure (skipped when down)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="answer budget (default: the chain's, bmrag.generators.DEFAULT_MAX_NEW_TOKENS)")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--tag", default="bench_ask", help="file name stem of the JSON and markdown written")
    data_root = os.environ.get("BMRAG_DATA", "../shared/data")
    parser.add_argument("--pubmedqa", default=f"{data_root}/pubmedqa/ori_pqal.json",
                        help="PubMedQA ori_pqal.json (questions for the threshold calibration; skipped if missing)")
    args = parser.parse_args(argv)

    from bmrag import generators, hardware, loading
    from bmrag.qa.chain import QAChain

    index_dir = Path(args.index) if args.index else loading.cache_dir("index", "bench-demo")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ensure_index(index_dir)
    questions = list(QUESTIONS)
    pubmedqa = Path(args.pubmedqa)
    calibration = calibrate(index_dir, pubmedqa) if pubmedqa.is_file() else {"skipped": f"{pubmedqa} not found"}
    configs = []
    count = None
    for threads in args.threads:
        gen = generators.load_generator("local", threads=threads, max_new_tokens=args.max_new_tokens)
        chain = QAChain.from_index(index_dir, k=args.k, generator=gen)
        configs.append(run_config(f"local, {threads} thread(s)", chain, questions, args.rounds,
                                  f"embedded SmolLM2-135M-Instruct {gen.describe()['dtype']} greedy, "
                                  f"torch threads={threads}"))
        count = chain.store.count()
        chain.close()
    if args.rerank and args.threads:
        threads = args.threads[-1]
        gen = generators.load_generator("local", threads=threads, max_new_tokens=args.max_new_tokens)
        chain = QAChain.from_index(index_dir, k=args.k, rerank=args.rerank, generator=gen)
        configs.append(run_config(f"local + rerank, {threads} thread(s)", chain, questions, args.rounds,
                                  f"reranker {args.rerank} over {chain.candidates} candidates (stage cost only: no "
                                  "BMRetriever reranker weights are available offline)"))
        chain.close()
    if args.api_base:
        try:
            gen = generators.load_generator("vllm", api_base=args.api_base, max_new_tokens=args.max_new_tokens)
            chain = QAChain.from_index(index_dir, k=args.k, generator=gen)
            configs.append(run_config(f"vLLM {gen.model}", chain, questions, args.rounds,
                                      f"vLLM OpenAI-compatible server at {args.api_base} (greedy; dtype as the "
                                      "server was started, bmrag serve-llm: the hardware default)"))
            count = chain.store.count()
            chain.close()
        except generators.BackendUnavailable as err:
            configs.append({"name": "vLLM", "skipped": str(err), "note": "server not reachable"})
    else:
        configs.append({"name": "vLLM", "skipped": "no --api-base given", "note": "not measured in this run"})

    result = {
        "benchmark": "bench_ask", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "k": args.k, "rounds": args.rounds,
        "questions": questions, "warm_up": WARM_UP, "index": str(index_dir), "index_passages": count,
        "target_p95_s": TARGET_P95_S,
        "machine": {"cpus": os.cpu_count(), "processor": hardware.describe_cpu(),
                    "python": platform.python_version(), "load_at_start": round(load, 2) if load else None},
        "command": " ".join(["python", "evals/bench_ask.py", *(argv if argv is not None else sys.argv[1:])]),
        "configs": configs, "threshold_calibration": calibration,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = portable(result)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out / f"{args.tag}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
