"""Extra RAG evaluation splits: MedQuAD held-out topics, other-domain questions, and indexes without gold passages.

* **MedQuAD held-out topics** (:func:`load_medquad`): every MedQuAD pair with an answer text (the NIH
  consumer-health pages; repeated answers kept once, first occurrence, as in the demo corpus) whose topic
  (``focus``) falls in the held-out buckets of the calibration's topic split: the abstention calibration
  (``evals/abstention_calibration.py``) may use a topic when ``sha256(focus.lower())[:12] % 10 < 7``, so
  evaluation uses exactly the complementary topics (``>= 7``) and never a topic calibration saw. The corpus is
  every page of the held-out topics; one question per topic (its page chosen by a hash of the page id),
  relevant pages = the pages of the same topic and question type, reference answer = the page's answer.
* **Other-domain questions** (:func:`other_domain_questions`): SCIDOCS queries (computer-science paper titles),
  the first ``n`` in order of ``sha256(query id)``; only their text is used, no SCIDOCS label.
* **Indexes without gold passages** (:func:`index_without`): a copy of the evaluation index with given documents
  deleted (no re-embedding), for the unanswerable split "the same questions, their gold passages not indexed".
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEDQUAD_CALIBRATION_BUCKETS = 7
"""Topics with ``sha256(focus.lower())[:12] % 10`` below this belong to the abstention calibration."""

MEDQUAD_FILE = Path("medquad") / "medquad.jsonl.gz"
SCIDOCS_QUERIES = Path("scidocs") / "queries.jsonl"


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


def medquad_topic_bucket(focus: str) -> int:
    """The topic's bucket 0-9 (the calibration's hash: ``sha256(focus.lower())`` first 12 hex digits, mod 10)."""
    return _h(focus.lower()) % 10


def medquad_topic_is_held_out(focus: str) -> bool:
    """True for topics the abstention calibration never uses (buckets 7-9, 30% of topics)."""
    return medquad_topic_bucket(focus) >= MEDQUAD_CALIBRATION_BUCKETS


def medquad_id(uid: str) -> str:
    """``"8_NHLBI_QA_XML/0000124#6"`` -> ``"medquad-8-0000124-6"`` (the demo corpus's id scheme)."""
    collection, _, rest = uid.partition("/")
    doc, _, pair = rest.partition("#")
    return f"medquad-{collection.split('_', 1)[0]}-{doc}-{pair}"


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


@dataclass
class SplitSet:
    """A corpus and what it was built from (the part of ``RetrievalDataset`` that ``evaluate_rag`` uses).

    Attributes:
        name: Set name.
        path: The file read.
        corpus: ``{doc_id: {"title", "text", "metadata"}}``.
        file_sha256: Hash of the source file.
        stats: Counts worth recording.
    """

    name: str
    path: Path
    corpus: dict[str, dict[str, Any]]
    file_sha256: str
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """Changes when the source file or the split rule changes (keys the cached index)."""
        rule = f"held-out buckets >= {MEDQUAD_CALIBRATION_BUCKETS}"
        return hashlib.sha256(f"{self.file_sha256}|{rule}".encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-able record for result files."""
        return {"name": self.name, "path": str(self.path), "split": "held-out topics",
                "content_hash": self.content_hash, "file_sha256": {self.path.name: self.file_sha256}, **self.stats}


@dataclass
class MedQuADQuestion:
    """One held-out MedQuAD question (turned into a ``RagQuestion`` by :mod:`bmrag.evaluation.rag_data`)."""

    id: str
    question: str
    relevant_ids: list[str]
    reference_answer: str
    qtype: str
    focus: str
    remove_ids: list[str]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_medquad(root: str | os.PathLike[str]) -> tuple[list[MedQuADQuestion], SplitSet]:
    """Held-out MedQuAD questions (sorted by id) and the corpus of the held-out topics (see the module docstring).

    Args:
        root: The data root holding ``medquad/medquad.jsonl.gz``.

    Raises:
        FileNotFoundError: The file is missing.
        ValueError: A line that is not JSON or lacks ``uid``/``question``, named by file and line.
    """
    path = Path(root).expanduser() / MEDQUAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"medquad: {path} not found (MedQuAD question/answer pairs)")
    corpus: dict[str, dict[str, Any]] = {}
    by_focus: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    answered = 0
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            try:
                rec = json.loads(line)
                uid, question = rec["uid"], rec["question"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: not a MedQuAD record with uid and question ({err})") from err
            answer = _clean(rec.get("answer"))
            # The MedlinePlus A.D.A.M./Drugs/Herbs subsets ship without answers (removed for copyright).
            if not answer or answer in seen:
                continue
            seen.add(answer)
            answered += 1
            focus = _clean(rec.get("focus")) or _clean(question)
            if not medquad_topic_is_held_out(focus):
                continue
            doc_id = medquad_id(uid)
            qtype = rec.get("qtype") or ""
            corpus[doc_id] = {"title": f"{focus}: {qtype}" if qtype else focus, "text": answer,
                              "metadata": {"source": f"MedQuAD/{rec.get('source', '')}", "url": rec.get("url") or "",
                                           "focus": focus, "qtype": qtype, "question": _clean(question)}}
            by_focus[focus.lower()].append(doc_id)
    questions = []
    for pages in by_focus.values():
        # One question per topic: sibling questions of a topic are near-duplicate templates.
        doc_id = min(pages, key=_h)
        doc = corpus[doc_id]
        meta = doc["metadata"]
        same_type = sorted(p for p in pages if corpus[p]["metadata"]["qtype"] == meta["qtype"])
        questions.append(MedQuADQuestion(f"mq-{_h(doc_id):012x}", meta["question"], same_type, doc["text"],
                                         meta["qtype"], meta["focus"], sorted(pages)))
    questions.sort(key=lambda q: q.id)
    stats = {"answered_pairs": answered, "documents": len(corpus), "held_out_topics": len(by_focus),
             "questions": len(questions)}
    return questions, SplitSet("medquad", path, corpus, _sha256_file(path), stats)


def other_domain_questions(root: str | os.PathLike[str], n: int) -> list[tuple[str, str]]:
    """``n`` SCIDOCS queries ``(id, text)`` in order of ``sha256(id)``: questions no biomedical source answers.

    Raises:
        FileNotFoundError: ``scidocs/queries.jsonl`` is missing.
        ValueError: Fewer than ``n`` queries, or a bad line (file and line named).
    """
    if n < 0:
        raise ValueError(f"the number of other-domain questions must be >= 0, got {n}")
    if n == 0:
        return []
    path = Path(root).expanduser() / SCIDOCS_QUERIES
    if not path.is_file():
        raise FileNotFoundError(f"other-domain questions: {path} not found (SCIDOCS queries)")
    queries = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                queries.append((str(rec["_id"]), _clean(rec["text"])))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: not a BEIR query with _id and text ({err})") from err
    if len(queries) < n:
        raise ValueError(f"{path}: {len(queries)} queries, fewer than the {n} other-domain questions asked for")
    return sorted(queries, key=lambda q: _h(q[0]))[:n]


@contextlib.contextmanager
def index_lock(index_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock beside ``index_dir`` while it is built or copied.

    Two ``eval rag`` runs writing one Chroma folder at once (or one copying it while the other writes) leave an
    index that crashes the process that opens it; with the lock, the second run waits and then reuses the index.
    """
    import fcntl

    path = Path(index_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def index_without(index_dir: str | os.PathLike[str], remove: Iterable[str], embed_model: Any) -> tuple[Path, int]:
    """A copy of the index at ``index_dir`` with every node of the documents ``remove`` deleted.

    The copy sits beside the index (``<name>__without-<hash of the removed ids>``) and is reused when it exists;
    it is built in a temporary folder and renamed, so an interrupted build leaves nothing half-made.

    Returns:
        ``(folder, nodes_deleted)``; ``nodes_deleted`` is -1 when an existing copy was reused.

    Raises:
        ValueError: None of the documents was in the index (the split would not be unanswerable).
    """
    from bmrag.index.store import open_store

    index_dir = Path(index_dir)
    removed = sorted(set(remove))
    key = hashlib.sha256("\n".join(removed).encode()).hexdigest()[:12]
    target = index_dir.with_name(f"{index_dir.name}__without-{key}")
    if target.is_dir():
        return target, -1
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")  # per process: two runs may build it at once
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(index_dir, tmp)
    store = open_store(tmp, embed_model)
    try:
        before = store.count()
        for start in range(0, len(removed), 500):
            store.client.delete(where={"doc_id": {"$in": removed[start:start + 500]}})
        deleted = before - store.count()
    finally:
        store.close()
    if removed and deleted == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"none of the {len(removed)} documents to remove is in {index_dir}")
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another run built the same copy first: use it
    return target, deleted
