"""Build ``bmrag/data/term_df.json.gz``: stem document frequencies of the bundled demo corpus.

Used by the abstention signal ``unmentioned_rarity`` (:mod:`bmrag.qa.specificity`). Re-running it reproduces
the file byte for byte (``tests/test_specificity.py`` checks that the shipped file is what this builds).

Usage::

    python tools/build_term_df.py [--corpus bmrag/data/demo_corpus.jsonl.gz] [--out bmrag/data/term_df.json.gz]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmrag.qa import specificity  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--corpus", type=Path, default=REPO / "bmrag" / "data" / "demo_corpus.jsonl.gz")
    parser.add_argument("--out", type=Path, default=specificity.DF_FILE)
    args = parser.parse_args(argv)
    counted = specificity.count_document_frequencies(specificity.corpus_texts(args.corpus), source=args.corpus.name)
    args.out.write_bytes(counted.to_json_bytes())
    print(f"wrote {args.out}: {len(counted.df)} stems over {counted.documents} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
