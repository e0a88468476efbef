"""At which support level is an added citation right most of the time? Dense support vs word overlap.

Held-in data (BioASQ train questions, tasks 7B/9B/10B/11B): each sentence of the question's ideal answer
(written by experts from the gold snippets: a stand-in for a generated sentence) is checked against 5
passages in seeded random order: up to 2 gold documents and the BM25 top non-gold documents of the same
question from the BioASQ snippet corpus (hard negatives). A citation is right when the best-supporting passage
is a gold one. For each threshold: precision of the added citations and the share of sentences cited.

Writes ``evals/results/support.json`` and ``.md``.

Usage::

    BMRAG_DATA=/path/to/shared/data python evals/support_calibration.py [--threads 1] [--n 150]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmrag.bm25 import _import_bm25s, tokenize  # noqa: E402
from bmrag.qa.attribution import split_sentences  # noqa: E402
from bmrag.qa.support import support  # noqa: E402

TARGET = 0.8


def _curve(scores: np.ndarray, right: np.ndarray, grid: np.ndarray) -> list[dict[str, float]]:
    out = []
    for t in grid:
        cited = scores >= t
        out.append({"threshold": float(t), "cited_share": float(cited.mean()),
                    "precision": float(right[cited].mean()) if cited.any() else 1.0})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("BMRAG_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--results", type=Path, default=REPO / "evals" / "results")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from bmrag.hardware import describe_cpu
    from bmrag.index.open import load_embedding

    rng = random.Random(21)
    root = args.data / "bioasq-snippets"
    with gzip.open(root / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        corpus = {r["_id"]: f"{r['title']} {r['text']}".strip() for r in map(json.loads, handle)}
    ids = list(corpus)
    qrels: dict[str, set[str]] = {}
    with (root / "qrels" / "train.tsv").open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            q, d, _ = line.rstrip("\n").split("\t")
            qrels.setdefault(q, set()).add(d)
    with gzip.open(args.data / "bioasq-qa" / "taskb_golden_7b-11b.jsonl.gz", "rt", encoding="utf-8") as handle:
        qa = {r["id"]: r for r in map(json.loads, handle)}
    bm25 = _import_bm25s().BM25(k1=0.9, b=0.4, method="lucene")
    bm25.index([tokenize(corpus[i]) or ["\x00"] for i in ids], show_progress=False)
    embed = load_embedding("all-MiniLM-L6-v2")
    dense_scores, overlap_scores, dense_right, overlap_right = [], [], [], []
    picked = rng.sample(sorted(q for q in qrels if q in qa and qa[q].get("ideal_answer")), args.n)
    for qid in tqdm(picked, desc="questions", unit="q"):
        rec = qa[qid]
        gold = [d for d in sorted(qrels[qid]) if d in corpus][:2]
        if not gold:
            continue
        scores = bm25.get_scores(tokenize(rec["body"]))
        negatives = [ids[i] for i in np.argsort(-scores)[:20] if ids[i] not in qrels[qid]][: 5 - len(gold)]
        chosen = gold + negatives
        rng.shuffle(chosen)
        ideal = rec["ideal_answer"][0] if isinstance(rec["ideal_answer"], list) else rec["ideal_answer"]
        sentences = [s for s in split_sentences(ideal) if len(set(tokenize(s))) >= 3]
        for row in support(sentences, [corpus[d] for d in chosen], embed):
            dense_scores.append(row.dense)
            dense_right.append(chosen[row.best - 1] in gold)
            # Word overlap as bmrag.qa.attribution scores it: share of content words, best passage.
            words = set(tokenize(row.sentence))
            shares = [len(words & set(tokenize(corpus[d]))) / len(words) for d in chosen]
            best = max(range(len(chosen)), key=lambda n: (shares[n], -n))
            overlap_scores.append(shares[best])
            overlap_right.append(chosen[best] in gold)
    dense_scores, overlap_scores = np.asarray(dense_scores), np.asarray(overlap_scores)
    dense_right, overlap_right = np.asarray(dense_right), np.asarray(overlap_right)
    grid = np.round(np.arange(0.0, 1.0001, 0.05), 2)
    curves = {"dense": _curve(dense_scores, dense_right, grid), "overlap": _curve(overlap_scores, overlap_right, grid)}

    def lowest(curve: list[dict[str, float]]) -> dict[str, float] | None:
        ok = [c for c in curve if c["precision"] >= TARGET and c["cited_share"] > 0]
        return min(ok, key=lambda c: c["threshold"]) if ok else None

    result = {"command": f"BMRAG_DATA=<shared data> python evals/support_calibration.py --threads {args.threads} "
                         f"--n {args.n}", "cpu": describe_cpu(), "sentences": int(len(dense_scores)),
              "target_precision": TARGET, "curves": curves,
              "lowest_threshold_at_target": {k: lowest(v) for k, v in curves.items()},
              "overlap_at_attribution_default_0.5": next(c for c in curves["overlap"] if c["threshold"] == 0.5),
              "precision_all_sentences": {"dense": float(dense_right.mean()), "overlap": float(overlap_right.mean())}}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "support.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    lines = ["# Citation support: dense sentence support vs word overlap (held-in BioASQ train)", "",
             f"Command: `{result['command']}`  ", f"CPU: {result['cpu']}", "",
             f"{result['sentences']} ideal-answer sentences, 5 passages each (gold + BM25 hard negatives).", "",
             "| threshold | dense precision | dense cited | overlap precision | overlap cited |",
             "|---|---|---|---|---|"]
    for d, o in zip(curves["dense"], curves["overlap"]):
        lines.append(f"| {d['threshold']:.2f} | {d['precision']:.3f} | {d['cited_share']:.3f} | "
                     f"{o['precision']:.3f} | {o['cited_share']:.3f} |")
    (args.results / "support.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("sentences", "lowest_threshold_at_target", "precision_all_sentences",
                                             "overlap_at_attribution_default_0.5")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
