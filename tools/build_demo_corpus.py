"""Build the bundled demo corpus ``bmrag/data/demo_corpus.jsonl.gz`` from the shared data folder.

Only sources whose licences allow redistribution are used:

* PubMedQA PQA-L abstracts (MIT): ``pubmedqa/ori_pqal.json``
* MedQuAD answered question/answer pairs (CC BY 4.0): ``medquad/medquad.jsonl.gz``
* SciFact abstracts (S2ORC, ODC-By 1.0): ``scifact/corpus.jsonl.gz``

The selection is deterministic (documents the demo questions need, then the rest ordered by a SHA-256 of
their id) and the gzip header carries no timestamp, so re-running this script reproduces the file byte for byte.

Usage::

    python tools/build_demo_corpus.py [--data ../shared/data] [--out bmrag/data/demo_corpus.jsonl.gz]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "bmrag" / "data" / "demo_corpus.jsonl.gz"

N_PUBMEDQA = 150
N_MEDQUAD = 100
N_SCIFACT = 100
MEDQUAD_MIN_CHARS, MEDQUAD_MAX_CHARS = 200, 2500  # keep FAQ answers a passage long, and the file small
MAX_BYTES = 1_000_000

# Documents the built-in demo questions (bmrag/demo.py) are answered from; always included.
PINNED_PUBMEDQA = ("21881325", "11340218")  # statins before CABG -> atrial fibrillation; statins and stroke
PINNED_MEDQUAD = (
    "8_NHLBI_QA_XML/0000124#6",  # symptoms of stroke
    "6_NINDS_QA/0000261#1",  # what is stroke
    "7_SeniorHealth_QA/0000066#15",  # symptoms of stroke
    "8_NHLBI_QA_XML/0000010#4",  # symptoms of asthma
    "2_GARD_QA/0000491#2",  # symptoms of asthma
    "4_MPlus_Health_Topics_QA/0000065#1",  # what is asthma
)

LICENSES = {"pubmedqa": "MIT", "medquad": "CC-BY-4.0", "scifact": "ODC-By-1.0"}


def _rank(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _pick(candidates: dict[str, dict[str, Any]], pinned: Iterable[str], n: int, what: str) -> list[dict[str, Any]]:
    pinned = list(pinned)
    missing = [key for key in pinned if key not in candidates]
    if missing:
        raise SystemExit(f"{what}: pinned records not found (or filtered out): {missing}")
    rest = sorted((key for key in candidates if key not in set(pinned)), key=_rank)
    chosen = pinned + rest[: n - len(pinned)]
    if len(chosen) < n:
        raise SystemExit(f"{what}: only {len(chosen)} usable records, wanted {n}")
    return [candidates[key] for key in chosen]


def pubmedqa_docs(data: Path) -> list[dict[str, Any]]:
    path = data / "pubmedqa" / "ori_pqal.json"
    items = json.loads(path.read_text(encoding="utf-8"))
    candidates = {}
    for pmid, item in items.items():
        # Same text as pubmedqa-retrieval: the context paragraphs, without the conclusion (LONG_ANSWER).
        text = " ".join(part.strip() for part in item["CONTEXTS"]).strip()
        if not text:
            continue
        metadata = {"source": "PubMedQA", "pmid": str(pmid), "license": LICENSES["pubmedqa"]}
        if str(item.get("YEAR") or "").isdigit():
            metadata["year"] = int(item["YEAR"])
        candidates[str(pmid)] = {"_id": f"pubmedqa-{pmid}", "title": "", "text": text, "metadata": metadata}
    return _pick(candidates, PINNED_PUBMEDQA, N_PUBMEDQA, str(path))


def _medquad_id(uid: str) -> str:
    collection, _, rest = uid.partition("/")
    doc, _, pair = rest.partition("#")
    return f"medquad-{collection.split('_', 1)[0]}-{doc}-{pair}"


def medquad_docs(data: Path) -> list[dict[str, Any]]:
    path = data / "medquad" / "medquad.jsonl.gz"
    pinned = set(PINNED_MEDQUAD)
    candidates: dict[str, dict[str, Any]] = {}
    seen_answers: set[str] = set()
    seen_docs: set[tuple[str, str]] = set()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            rec = json.loads(line)
            answer = (rec.get("answer") or "").strip()
            # The MedlinePlus A.D.A.M./Drugs/Herbs subsets ship without answers (removed for copyright).
            if not answer or answer in seen_answers:
                continue
            uid = rec["uid"]
            if uid not in pinned:
                if not MEDQUAD_MIN_CHARS <= len(answer) <= MEDQUAD_MAX_CHARS:
                    continue
                # One pair per source document (topic) outside the pinned ones, for variety.
                if (rec["collection"], rec["doc_id"]) in seen_docs:
                    continue
                seen_docs.add((rec["collection"], rec["doc_id"]))
            seen_answers.add(answer)
            metadata = {"source": f"MedQuAD/{rec['source']}", "url": rec.get("url") or "",
                        "focus": rec.get("focus") or "", "license": LICENSES["medquad"]}
            candidates[uid] = {"_id": _medquad_id(uid), "title": rec["question"].strip(), "text": answer,
                               "metadata": metadata}
    return _pick(candidates, PINNED_MEDQUAD, N_MEDQUAD, str(path))


def scifact_docs(data: Path) -> list[dict[str, Any]]:
    path = data / "scifact" / "corpus.jsonl.gz"
    candidates = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            rec = json.loads(line)
            if not (rec.get("text") or "").strip():
                continue
            metadata = {"source": "SciFact", "license": LICENSES["scifact"]}
            candidates[str(rec["_id"])] = {"_id": f"scifact-{rec['_id']}", "title": (rec.get("title") or "").strip(),
                                           "text": rec["text"].strip(), "metadata": metadata}
    return _pick(candidates, (), N_SCIFACT, str(path))


def build(data: Path) -> list[dict[str, Any]]:
    """All selected documents, PubMedQA then MedQuAD then SciFact; ids are unique."""
    docs = pubmedqa_docs(data) + medquad_docs(data) + scifact_docs(data)
    ids = [doc["_id"] for doc in docs]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate ids in the selection")
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
    counts: dict[str, int] = {}
    for doc in docs:
        key = doc["_id"].split("-", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    sha = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out}: {len(docs)} documents {counts}, {size} bytes, sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
