"""Write N synthetic training groups (JSONL, the ``read_groups`` format) for scale tests; the data is not committed.

Text is seeded word salad over a generated biomedical-looking vocabulary: what matters for the loader
benchmark (``evals/bench_train_data.py``) is the size and shape of each group (query, 1 positive with a title,
``--negatives`` hard negatives), not the meaning. Queries and positives are unique (they carry the group
number), so the duplicate-free sampler keeps every group.

    python scripts/make_synthetic_groups.py --n 1000000 --out /tmp/synthetic_1m.jsonl   # ~2.5 GB, ~2 min
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

PREFIXES = ("cardio", "neuro", "hepato", "nephro", "onco", "immuno", "endo", "myo", "osteo", "derma", "gastro",
            "pulmo", "haemo", "lipo", "glyco", "proto", "cyto", "angio", "arthro", "broncho")
STEMS = ("kin", "gen", "lys", "path", "plas", "troph", "stat", "cyt", "mer", "phag", "sarc", "carcin", "toxic",
         "vascul", "fibr", "leuk", "lymph", "thromb", "insul", "glomer", "myel", "encephal", "recept", "ligand")
SUFFIXES = ("ase", "in", "osis", "itis", "oma", "ic", "emia", "ide", "ine", "al", "ous", "ation", "ism", "ity")
COMMON = ("patients", "trial", "cohort", "risk", "dose", "therapy", "mice", "levels", "increased", "reduced",
          "associated", "with", "in", "of", "the", "and", "after", "treatment", "expression", "response")


def vocabulary() -> np.ndarray:
    """~6,700 words: every prefix+stem+suffix plus common words (so the word mix is not uniform)."""
    words = [p + s + x for p in PREFIXES for s in STEMS for x in SUFFIXES]
    return np.array(words + list(COMMON) * 40, dtype=object)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--n", type=int, required=True, help="number of groups")
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("--negatives", type=int, default=2, help="hard negatives per group")
    parser.add_argument("--query-words", type=int, default=14)
    parser.add_argument("--passage-words", type=int, default=48, help="~100-150 tokens of this vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1 or args.negatives < 0:
        parser.error("--n must be >= 1 and --negatives >= 0")
    words = vocabulary()
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chunk = 10_000
    per_group = args.query_words + (2 + args.negatives) * args.passage_words  # query, title+text, negatives
    with open(out, "w", encoding="utf-8") as handle, tqdm(total=args.n, unit=" groups", desc=out.name) as bar:
        for start in range(0, args.n, chunk):
            count = min(chunk, args.n - start)
            draws = words[rng.integers(0, len(words), size=(count, per_group))]
            lines = []
            for row, i in enumerate(range(start, start + count)):
                w = draws[row]
                q, rest = args.query_words, w[args.query_words:]
                passages = [" ".join(rest[k * args.passage_words:(k + 1) * args.passage_words])
                            for k in range(2 + args.negatives)]
                lines.append(json.dumps({
                    "query": " ".join(w[:q]).capitalize() + f" (case {i})?",
                    "positives": [{"title": " ".join(rest[:8]).capitalize() + f" {i}", "text": passages[1] + "."}],
                    "negatives": [p + "." for p in passages[2:]],
                    "instruction": "Given a biomedical question, retrieve passages that answer it",
                    "task": "synthetic", "source": "synthetic", "id": f"synthetic:{i}",
                }))
            handle.write("\n".join(lines) + "\n")
            bar.update(count)
    print(f"wrote {args.n} groups to {out} ({out.stat().st_size / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
