"""CPU threads vs answer latency: ``bmrag ask --questions`` with 1 thread, all cores, and bmrag's default.

Each configuration runs in a fresh process (torch's thread pool is process-wide) over the same questions and
the same index; per-question times come from the answers' own ``timings.total`` (retrieval + answer; model
loading excluded). The 1-minute load average before each run says how busy the machine was: the point is the
busy case, where more threads than free cores oversubscribe the CPU.

    python evals/bench_threads.py --answer extractive generative --tag bench_threads

Writes ``evals/results/<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bmrag import hardware
from bmrag.evaluation.report import environment, portable
from bmrag.index.sample import SAMPLE_QUESTIONS

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run(index: str, questions: Path, answer: str, threads: int | None, max_new_tokens: int) -> dict:
    """One ``bmrag ask --questions`` process; returns its per-question totals and the load it started under."""
    cmd = [sys.executable, "-m", "bmrag.cli", "ask", "--questions", str(questions), "--index", index,
           "--answer", answer, "--max-new-tokens", str(max_new_tokens)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    load = hardware.load_average()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    banner = next((line for line in proc.stderr.splitlines() if line.startswith("bmrag ask:")), "")
    totals = [row["timings"]["total"] for row in rows]
    return {"answer": answer, "threads": threads if threads is not None else "default", "banner": banner,
            "load_before": round(load, 2), "wall_s": round(wall, 2), "n": len(totals),
            "p50_s": round(percentile(totals, 0.5), 3), "p95_s": round(percentile(totals, 0.95), 3),
            "mean_s": round(statistics.fmean(totals), 3), "statuses": [row["status"] for row in rows]}


def to_markdown(result: dict) -> str:
    lines = [f"# Answer latency vs CPU threads ({result['machine']['cpu']})", "",
             f"Command: `{result['command']}`. {result['n_questions']} questions (`bmrag.index.sample."
             "SAMPLE_QUESTIONS`), the demo index, each configuration in a fresh process; times are the answers' "
             "`timings.total` (retrieval + answer, model loading excluded).", "",
             "| answer | threads | load before | p50 s | p95 s | mean s | vs 1 thread (p50) |",
             "|---|---|---|---|---|---|---|"]
    base = {r["answer"]: r["p50_s"] for r in result["runs"] if r["threads"] == 1}
    for r in result["runs"]:
        ratio = r["p50_s"] / base[r["answer"]] if base.get(r["answer"]) else float("nan")
        lines.append(f"| {r['answer']} | {r['threads']} | {r['load_before']} | {r['p50_s']} | {r['p95_s']} | "
                     f"{r['mean_s']} | {ratio:.2f}x |")
    lines += ["", "The default (`bmrag.hardware.default_threads`) is the cores not already busy (cores minus the "
              "1-minute load average, at least 1); each run's start line:", ""]
    lines += [f"- {r['answer']}, threads {r['threads']}: `{r['banner']}`" for r in result["runs"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", default=None, help="index (default: the demo index; built by `bmrag index`)")
    parser.add_argument("--answer", nargs="+", default=["extractive"], choices=["extractive", "generative"])
    parser.add_argument("--threads", nargs="+", default=["1", str(hardware.usable_cores()), "default"],
                        help="thread counts to compare ('default' = bmrag's choice)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--tag", default="bench_threads")
    parser.add_argument("--out", default=str(REPO / "evals" / "results"))
    args = parser.parse_args(argv)
    from bmrag.index.open import default_index_dir

    index = args.index or str(default_index_dir())
    with tempfile.TemporaryDirectory() as tmp:
        questions = Path(tmp) / "questions.txt"
        questions.write_text("\n".join(SAMPLE_QUESTIONS) + "\n", encoding="utf-8")
        runs = []
        for answer in args.answer:
            for threads in args.threads:
                runs.append(run(index, questions, answer, None if threads == "default" else int(threads),
                                args.max_new_tokens))
                print(json.dumps(runs[-1]), flush=True)
    result = portable({"command": " ".join(["python", "evals/bench_threads.py", *(argv or sys.argv[1:])]),
                       "machine": {"cpu": hardware.describe_cpu(), "cores": hardware.usable_cores()},
                       "environment": environment(), "n_questions": len(SAMPLE_QUESTIONS), "runs": runs})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / f"{args.tag}.md").write_text(to_markdown(result), encoding="utf-8")
    print(f"wrote {out / args.tag}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
