"""Compare answer modes from committed ``bmrag eval rag`` results: one Markdown table row per result file.

Usage::

    python evals/rag_grounding_table.py evals/results/rag__*__extractive.json \
        evals/results/rag__*__local-SmolLM2-135M-Instruct.json > evals/results/rag_grounding.md

Reads only what the result files hold (each file records the command that produced it); runs nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _f(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def row(result: dict[str, Any]) -> str:
    """One table row: dataset, mode, questions, the grounding metrics, latency and the command."""
    g = result.get("grounding") or {}
    m = result["metrics"]
    gen = result["chain"].get("generator")
    mode = result["chain"].get("answer") or "retrieval only"
    who = mode if gen is None else f"{mode} ({gen['backend']} {Path(str(gen['model'])).name})"
    a = g.get("abstention") or {}
    lat = g.get("latency") or {}
    d = result["dataset"]
    unanswerable = f"{a.get('n_gold_removed', 0)} + {a.get('n_other_domain', 0)}" if a else "-"
    setup = g.get("abstention_setup") or {}
    calibration = (f"{str(setup['sha256'])[:12]} (p >= {_f(setup.get('threshold'))})" if setup.get("sha256")
                   else "-")
    return (f"| {d['name']} | {who} | {d['questions_evaluated']} / {unanswerable} | {result['status_counts']} | "
            f"{_f(m.get('citation_precision'))} | {_f(g.get('unsupported_sentence_rate'))} "
            f"({g.get('sentences_judged', 0)}) | {_f(m.get('rouge_l'))} / {_f(g.get('rouge_l_answered'))} | "
            f"{_f(a.get('abstention_precision'))} / {_f(a.get('abstention_recall'))} "
            f"(FAR {_f(a.get('false_abstention_rate'))}) | {calibration} | "
            f"{_f(lat.get('p50_s'), 2)} / {_f(lat.get('p95_s'), 2)} | "
            f"`{' '.join(result.get('command') or [])}` |")


HEADER = ("| set | answer mode | questions / unanswerable (gold removed + other domain) | statuses (answerable) | "
          "citation precision | unsupported-sentence rate (sentences) | ROUGE-L all / answered | "
          "abstention P / R (false-abstention rate) | calibration (SHA-256) | latency p50 / p95 s | command |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("results", nargs="+", type=Path, help="bmrag eval rag result JSON files")
    args = parser.parse_args(argv)
    rows = []
    cpus = set()
    for path in args.results:
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("schema") != "bmrag.rag/1":
            raise ValueError(f"{path}: not a bmrag eval rag result (schema {result.get('schema')!r})")
        rows.append((result["dataset"]["name"], result["chain"].get("answer") or "", row(result)))
        cpus.add(result["environment"].get("cpu"))
    print(f"CPU: {', '.join(sorted(str(c) for c in cpus))}\n")
    print(HEADER)
    for _, _, line in sorted(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
