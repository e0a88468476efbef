"""Build the bundled demo corpus ``bmrag/data/demo_corpus.jsonl.gz`` from the shared data folder.

The corpus covers common consumer and clinical questions: every source text of the shared data that may be
redistributed, each with its licence in ``metadata.license``:

* MedQuAD (CC BY 4.0): every answered question/answer pair (NIH consumer-health pages; repeated answers once).
  Title ``"<focus>: <question type>"`` (e.g. ``"Asthma: symptoms"``), link = the NIH page.
* PubMedQA PQA-L (MIT): all 1,000 abstracts (context paragraphs; the conclusion is left out as in
  ``pubmedqa-retrieval``). The source has no article title; PubMedQA's question is derived from it, so it is
  kept as ``metadata.display_title`` for the card, not embedded (it would make the question trivially match).
* BioASQ gold snippets (CC BY 2.5, BioASQ terms of use): every document of ``bioasq-snippets`` (partial
  abstracts). Title = the title snippet where BioASQ has one; otherwise ``display_title`` names the PMID.
* SciFact (S2ORC abstracts, ODC-By 1.0): every abstract with its paper title.

PubMed items carry ``metadata.pmid`` so they link. Every document has a non-empty ``title`` or
``metadata.display_title``. Order: source, then source order; the gzip header carries no timestamp, so
re-running this script reproduces the file byte for byte.

Usage::

    python tools/build_demo_corpus.py [--data $BMRAG_DATA] [--out bmrag/data/demo_corpus.jsonl.gz]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ["BMRAG_DATA"]) if os.environ.get("BMRAG_DATA") else REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "bmrag" / "data" / "demo_corpus.jsonl.gz"

MAX_BYTES = 16_000_000
EXPECTED_SHA256 = "253dc9870fd663b7010d307b2fb999a936d38e59244bf62705c62ceb5492fffa"
"""SHA-256 of the file this script writes from the shared data (35,443 documents, 10,131,450 bytes)."""

LICENSES = {"pubmedqa": "MIT", "medquad": "CC-BY-4.0", "scifact": "ODC-By-1.0",
            "bioasq": "CC-BY-2.5 (BioASQ terms of use)"}

# Documents the built-in demo questions (bmrag/demo.py) are answered from; the build fails if one is missing.
REQUIRED = ("pubmedqa-21881325", "pubmedqa-11340218", "medquad-8-0000124-6", "medquad-6-0000261-1",
            "medquad-7-0000066-15", "medquad-8-0000010-4", "medquad-2-0000491-2", "medquad-4-0000065-1")


def _clean(text: str) -> str:
    return " ".join((text or "").split())


def pubmedqa_docs(data: Path) -> list[dict[str, Any]]:
    items = json.loads((data / "pubmedqa" / "ori_pqal.json").read_text(encoding="utf-8"))
    out = []
    for pmid, item in items.items():
        text = " ".join(part.strip() for part in item["CONTEXTS"]).strip()
        if not text:
            continue
        metadata: dict[str, Any] = {"source": "PubMedQA", "pmid": str(pmid), "license": LICENSES["pubmedqa"],
                                    "display_title": _clean(item["QUESTION"])}
        if str(item.get("YEAR") or "").isdigit():
            metadata["year"] = int(item["YEAR"])
        out.append({"_id": f"pubmedqa-{pmid}", "title": "", "text": text, "metadata": metadata})
    return out


def medquad_id(uid: str) -> str:
    """``"8_NHLBI_QA_XML/0000124#6"`` -> ``"medquad-8-0000124-6"`` (the bundled corpus's id scheme)."""
    collection, _, rest = uid.partition("/")
    doc, _, pair = rest.partition("#")
    return f"medquad-{collection.split('_', 1)[0]}-{doc}-{pair}"


def medquad_docs(data: Path) -> list[dict[str, Any]]:
    out = []
    seen: set[str] = set()
    with gzip.open(data / "medquad" / "medquad.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            rec = json.loads(line)
            answer = (rec.get("answer") or "").strip()
            # The MedlinePlus A.D.A.M./Drugs/Herbs subsets ship without answers (removed for copyright).
            if not answer or answer in seen:
                continue
            seen.add(answer)
            focus = _clean(rec.get("focus") or "") or _clean(rec["question"])
            metadata = {"source": f"MedQuAD/{rec['source']}", "url": rec.get("url") or "", "focus": focus,
                        "qtype": rec.get("qtype") or "", "question": _clean(rec["question"]),
                        "license": LICENSES["medquad"]}
            title = f"{focus}: {rec['qtype']}" if rec.get("qtype") else focus
            out.append({"_id": medquad_id(rec["uid"]), "title": title, "text": answer, "metadata": metadata})
    return out


def bioasq_docs(data: Path) -> list[dict[str, Any]]:
    out = []
    with gzip.open(data / "bioasq-snippets" / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            rec = json.loads(line)
            text, title = (rec.get("text") or "").strip(), _clean(rec.get("title") or "")
            if not text and not title:
                continue
            pmid = str(rec["_id"])
            metadata = {"source": "BioASQ", "pmid": pmid, "license": LICENSES["bioasq"]}
            if not title:
                metadata["display_title"] = f"PubMed {pmid} (abstract excerpt)"
            out.append({"_id": f"bioasq-{pmid}", "title": title, "text": text, "metadata": metadata})
    return out


def scifact_docs(data: Path) -> list[dict[str, Any]]:
    out = []
    with gzip.open(data / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            rec = json.loads(line)
            if not (rec.get("text") or "").strip():
                continue
            title = _clean(rec.get("title") or "")
            metadata = {"source": "SciFact", "license": LICENSES["scifact"]}
            if not title:
                metadata["display_title"] = f"SciFact abstract {rec['_id']}"
            out.append({"_id": f"scifact-{rec['_id']}", "title": title, "text": rec["text"].strip(),
                        "metadata": metadata})
    return out


def build(data: Path) -> list[dict[str, Any]]:
    """All documents, MedQuAD then PubMedQA then BioASQ then SciFact; ids are unique, titles present."""
    docs = medquad_docs(data) + pubmedqa_docs(data) + bioasq_docs(data) + scifact_docs(data)
    ids = [doc["_id"] for doc in docs]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        raise SystemExit(f"duplicate ids in the corpus, e.g. {dupes[:5]}")
    missing = sorted(set(REQUIRED) - set(ids))
    if missing:
        raise SystemExit(f"documents the demo questions need are missing: {missing}")
    untitled = [d["_id"] for d in docs if not d["title"] and not d["metadata"].get("display_title")]
    if untitled:
        raise SystemExit(f"documents without a title or display_title, e.g. {untitled[:5]}")
    return docs


def _lines(docs: list[dict[str, Any]]) -> Iterator[bytes]:
    for doc in docs:
        yield (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")


def write(docs: list[dict[str, Any]], out: Path) -> int:
    """Write gzip without a filename or timestamp in the header (reproducible bytes); returns the size."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        for line in _lines(docs):
            gz.write(line)
    payload = buffer.getvalue()
    if len(payload) > MAX_BYTES:
        raise SystemExit(f"{out}: {len(payload)} bytes exceeds the {MAX_BYTES} byte budget")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(payload)
    return len(payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (BEIR layout)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .jsonl.gz file")
    args = parser.parse_args(argv)
    docs = build(args.data)
    size = write(docs, args.out)
    counts = Counter(doc["_id"].split("-", 1)[0] for doc in docs)
    sha = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out}: {len(docs)} documents {dict(counts)}, {size} bytes, sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
