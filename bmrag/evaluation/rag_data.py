"""RAG evaluation sets: questions with their gold passages, reference answers and decisions, and the corpus."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmrag.evaluation import datasets as ds


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
}
"""The two RAG evaluation sets (``bmrag eval rag --dataset``)."""


@dataclass
class RagQuestion:
    """One question with what it is scored against."""

    id: str
    question: str
    relevant_ids: list[str]
    reference_answer: str | None
    decision: str | None
    qtype: str | None = None


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
                       ) -> tuple[list[RagQuestion], ds.RetrievalDataset]:
    """Questions (sorted by id), with relevant doc ids, reference answers and decisions, and the corpus.

    Args:
        dataset: ``"pubmedqa"`` or ``"bioasq"``.
        data: The data root (holding ``pubmedqa-retrieval/``, ``pubmedqa/``, ``bioasq-snippets/``,
            ``bioasq-qa/``); default ``$BMRAG_DATA``.
    """
    if dataset not in RAG_DATASETS:
        raise KeyError(f"unknown RAG dataset {dataset!r}; known: {', '.join(RAG_DATASETS)}")
    spec = RAG_DATASETS[dataset]
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


# ------------------------------------------------------------------------------------------------ decisions
