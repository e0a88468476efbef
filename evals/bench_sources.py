"""Benchmark: stream a 30,000-article MEDLINE ``.xml.gz`` through :func:`bmrag.index.sources.read_source`.

The file repeats the four articles of the test fixture (``tests/test_sources.py``) with new PMIDs; one in four
has neither title nor abstract, so it is skipped. Writes ``evals/results/sources_xml_stream.{json,md}``.

Run from the repository root: ``nice -n 19 python evals/bench_sources.py``.
"""

from __future__ import annotations

import gzip
import json
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, "tests")
from test_sources import MEDLINE_XML  # noqa: E402 (the fixture lives in the tests)

from bmrag.index.sources import read_source  # noqa: E402

COPIES = 7500
RESULTS = Path("evals/results")


def main() -> None:
    head, rest = MEDLINE_XML.split("<PubmedArticleSet>\n")
    articles = rest.split("  <DeleteCitation>")[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "medline.xml.gz"
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(head + "<PubmedArticleSet>\n")
            for i in range(COPIES):
                handle.write(re.sub(r'<PMID Version="1">(\d+)</PMID>',
                                    lambda m, i=i: f'<PMID Version="1">{i}{m.group(1)}</PMID>', articles))
            handle.write("</PubmedArticleSet>\n")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        _, report = read_source(path)
        seconds = time.perf_counter() - start
        rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    total = 4 * COPIES
    out = {"articles_in_file": total, "read": report.read, "skipped_empty": len(report.skipped_empty),
           "seconds": round(seconds, 2), "articles_per_s": round(total / seconds),
           "peak_rss_growth_mb": round(rss_growth),
           "note": "the records of all articles read stay in memory (bmrag index needs them); the parse tree is "
                   "cleared after each article",
           "command": "nice -n 19 python evals/bench_sources.py"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sources_xml_stream.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "sources_xml_stream.md").write_text(
        "# Streaming PubMed/MEDLINE XML (bmrag.index.sources)\n\n"
        f"`{out['command']}` (2 shared cores while a training job ran):\n\n"
        "| articles | read | empty skipped | seconds | articles/s | peak RSS growth |\n|---|---|---|---|---|---|\n"
        f"| {total} | {report.read} | {len(report.skipped_empty)} | {out['seconds']} | {out['articles_per_s']} | "
        f"{out['peak_rss_growth_mb']} MB |\n\nNote: {out['note']}.\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
