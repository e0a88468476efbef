"""RAG evaluation sets: questions with their gold passages, reference answers and decisions, and the corpus."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmrag.evaluation import datasets as ds
from bmrag.evaluation.rag_splits import SplitSet, load_medquad


@dataclass(frozen=True)
class RagDatasetSpec:
    """Where a RAG evaluation set's questions, corpus and reference answers live.

    Attributes:
        name: Key of :data:`RAG_DATASETS`.
        retrieval: Registry key (:data:`bmrag.evaluation.datasets.DATASETS`) of the corpus + questions + qrels.
        split: Qrels split whose questions are asked.
        answers: Folder under the data root holding the reference answers.
        note: What the set is.
    """

    name: str
    retrieval: str
    split: str
    answers: str
    note: str


RAG_DATASETS: dict[str, RagDatasetSpec] = {
    "pubmedqa": RagDatasetSpec(
        "pubmedqa", "pubmedqa-retrieval", "test", "pubmedqa",
        "PubMedQA PQA-L test (500 questions) against the 1,000 PQA-L contexts; reference answer = LONG_ANSWER, "
        "decision = final_decision (yes/no/maybe)."),
    "bioasq": RagDatasetSpec(
        "bioasq", "bioasq-snippets", "test", "bioasq-qa",
        "BioASQ Task 8B (500 questions) against the bioasq-snippets pool (13,449 PMIDs); reference answer = the "
        "first ideal_answer, decision = exact_answer for yes/no questions."),
    "medquad": RagDatasetSpec(
        "medquad", "medquad", "held-out topics", "medquad",
        "MedQuAD held-out topics (the 30% of topics the abstention calibration never uses; see "
        "bmrag.evaluation.rag_splits): one question per topic against every page of those topics; reference "
        "answer = the page's NIH answer (also the gold passage), relevant = pages of the same topic and question "
        "type; no decision."),
}
"""The RAG evaluation sets (``bmrag eval rag --dataset``)."""


@dataclass
class RagQuestion:
    """One question with what it is scored against."""

    id: str
    question: str
    relevant_ids: list[str]
    reference_answer: str | None
    decision: str | None
    qtype: str | None = None
    remove_ids: list[str] | None = None
    """Documents left out of the index for this question's unanswerable variant (default: ``relevant_ids``;
    MedQuAD: every page of the topic, since sibling pages answer it too)."""


def _pubmedqa_answers(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / "ori_pqal.json"
    if not path.is_file():
        raise FileNotFoundError(f"pubmedqa: {path} not found (reference answers)")
    return json.loads(path.read_text(encoding="utf-8"))


def _bioasq_answers(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / "taskb_golden_7b-11b.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"bioasq: {path} not found (reference answers)")
    out = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            out[str(record["id"])] = record
    return out


def load_rag_questions(dataset: str, data: str | os.PathLike[str] | None = None
                       ) -> tuple[list[RagQuestion], ds.RetrievalDataset | SplitSet]:
    """Questions (sorted by id), with relevant doc ids, reference answers and decisions, and the corpus.

    Args:
        dataset: ``"pubmedqa"`` or ``"bioasq"``.
        data: The data root (holding ``pubmedqa-retrieval/``, ``pubmedqa/``, ``bioasq-snippets/``,
            ``bioasq-qa/``); default ``$BMRAG_DATA``.
    """
    if dataset not in RAG_DATASETS:
        raise KeyError(f"unknown RAG dataset {dataset!r}; known: {', '.join(RAG_DATASETS)}")
    spec = RAG_DATASETS[dataset]
    if dataset == "medquad":
        return _medquad_questions(data)
    retrieval = ds.load_retrieval_dataset(spec.retrieval, data, split=spec.split)
    root = retrieval.path.parent
    questions = []
    if dataset == "pubmedqa":
        answers = _pubmedqa_answers(root / spec.answers)
        for qid in sorted(retrieval.queries):
            pmid = qid.removeprefix("q")
            record = answers.get(pmid)
            if record is None:
                raise ValueError(f"pubmedqa: question {qid} has no entry {pmid} in ori_pqal.json")
            questions.append(RagQuestion(qid, retrieval.queries[qid], sorted(retrieval.qrels[qid]),
                                         record.get("LONG_ANSWER"), record.get("final_decision"), "yes/no/maybe"))
    else:
        answers = _bioasq_answers(root / spec.answers)
        for qid in sorted(retrieval.queries):
            record = answers.get(qid)
            if record is None:
                raise ValueError(f"bioasq: question {qid} is not in taskb_golden_7b-11b.jsonl.gz")
            ideal = record.get("ideal_answer") or []
            reference = " ".join((ideal[0] if isinstance(ideal, list) else str(ideal)).split()) or None
            decision = record.get("exact_answer") if record.get("type") == "yesno" else None
            decision = decision.strip().lower() if isinstance(decision, str) else None
            relevant = sorted(doc for doc, grade in retrieval.qrels[qid].items() if grade > 0)
            questions.append(RagQuestion(qid, retrieval.queries[qid], relevant, reference, decision,
                                         record.get("type")))
    return questions, retrieval


def _medquad_questions(data: str | os.PathLike[str] | None) -> tuple[list[RagQuestion], SplitSet]:
    from bmrag.loading import DATA_ENV, data_root

    root = Path(data).expanduser() if data is not None else data_root()
    if root is None:
        raise ValueError(f"medquad: no data location: pass --data (the data root) or set ${DATA_ENV}")
    questions, split = load_medquad(root)
    return [RagQuestion(q.id, q.question, q.relevant_ids, q.reference_answer, None, q.qtype, q.remove_ids)
            for q in questions], split


# ------------------------------------------------------------------------------------------------ decisions
