"""Training data: the JSONL group format, converters from the shared training splits, leakage checks, batching.

One training example is a *group*::

    {"query": str, "positives": [passage, ...], "negatives": [passage, ...],
     "instruction": str, "task": str, "source": str, "id": str}

where a passage is a string or ``{"title": str, "text": str}`` (rendered with the passage template by
``bmrag.encoder``). ``negatives`` may be empty (Stage I uses in-batch negatives only).

Converters read the *training* splits under the data root (``$BMRAG_DATA``, else ``../shared/data``) and
refuse test data: a training query whose id is in a test qrels file raises, a training query whose text equals
any evaluation query (SciFact, BioASQ, PubMedQA, NFCorpus, TREC-COVID, SCIDOCS test sets) is dropped and counted,
and documents judged in a test qrels file are never used as negatives. Each converter returns a
:class:`ConvertReport` with those counts.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import torch

from bmrag import prompts
from bmrag.index.readers import DataError, iter_jsonl, load_corpus, load_qrels, load_queries, open_text

logger = logging.getLogger(__name__)

Passage = Union[str, dict[str, str]]  # noqa: UP007 (runtime alias, py3.10 compatible)
Source = Literal["scifact", "bioasq", "pubmedqa", "medquad", "mqp"]
SOURCES: tuple[str, ...] = ("scifact", "bioasq", "pubmedqa", "medquad", "mqp")

# Test query sets used by bmrag's evaluations; no training query may repeat one of them.
EVAL_QUERY_SETS: tuple[str, ...] = ("scifact", "bioasq-snippets", "bioasq-beir", "pubmedqa-retrieval", "nfcorpus",
                                    "trec-covid", "scidocs")


@dataclass
class Group:
    """One query with its positive passages and (optional) hard negatives.

    Attributes:
        query: The query text, without instruction.
        positives: At least one relevant passage (string or ``{"title", "text"}``).
        negatives: Hard negatives (may be empty).
        instruction: The query instruction used in training (rendered with the query template).
        task: Registry key of the instruction or a free label.
        source: Which converter or generator made the group.
        id: Stable identifier (e.g. ``"scifact:13"``).
        positive_ids: Document ids of the positives, when known (used by mining to exclude them).
    """

    query: str
    positives: list[Passage]
    negatives: list[Passage] = field(default_factory=list)
    instruction: str = ""
    task: str = ""
    source: str = ""
    id: str = ""
    positive_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check_passage(value: Any, where: str) -> Passage:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty passage")
        return value
    if isinstance(value, Mapping):
        text, title = value.get("text"), value.get("title", "")
        if not isinstance(text, str) or not isinstance(title or "", str):
            raise DataError(f"{where}: a passage mapping needs string 'text' (and optional 'title')")
        if not (text.strip() or (title or "").strip()):
            raise DataError(f"{where}: empty passage")
        return {"title": title or "", "text": text}
    raise DataError(f"{where}: a passage must be a string or {{'title', 'text'}}, got {type(value).__name__}")


def group_from_json(record: Mapping[str, Any], where: str) -> Group:
    """Validate one JSON record as a :class:`Group`; ``where`` (``file:line``) is named in errors."""
    known = {"query", "positives", "negatives", "instruction", "task", "source", "id", "positive_ids"}
    unknown = sorted(set(record) - known)
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}; valid: {sorted(known)}")
    query = record.get("query")
    if not isinstance(query, str) or not query.strip():
        raise DataError(f"{where}: field 'query' must be a non-empty string")
    positives = record.get("positives")
    if not isinstance(positives, list) or not positives:
        raise DataError(f"{where}: field 'positives' must be a non-empty list")
    negatives = record.get("negatives") or []
    if not isinstance(negatives, list):
        raise DataError(f"{where}: field 'negatives' must be a list")
    instruction = record.get("instruction") or ""
    if not isinstance(instruction, str):
        raise DataError(f"{where}: field 'instruction' must be a string")
    return Group(
        query=query,
        positives=[_check_passage(p, f"{where}: positives[{i}]") for i, p in enumerate(positives)],
        negatives=[_check_passage(n, f"{where}: negatives[{i}]") for i, n in enumerate(negatives)],
        instruction=instruction,
        task=str(record.get("task") or ""),
        source=str(record.get("source") or ""),
        id=str(record.get("id") or ""),
        positive_ids=[str(x) for x in record.get("positive_ids") or []],
    )


def read_groups(path: str | os.PathLike[str], limit: int | None = None) -> list[Group]:
    """Read and validate a JSONL file of groups; errors name the file and line."""
    groups = []
    for lineno, record in iter_jsonl(path):
        groups.append(group_from_json(record, f"{path}:{lineno}"))
        if limit is not None and len(groups) >= limit:
            break
    if not groups:
        raise DataError(f"{path}: no training groups")
    return groups


def write_groups(path: str | os.PathLike[str], groups: Iterable[Group]) -> int:
    """Write groups as JSONL (parent folders are created); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for group in groups:
            handle.write(json.dumps(group.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def passage_text(passage: Passage) -> str:
    """The passage as one string (``title + " " + text``), the identity used for de-duplication."""
    if isinstance(passage, str):
        return passage.strip()
    return prompts.join_title(passage.get("text", ""), passage.get("title", ""))


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace and strip trailing punctuation: the key for leakage and dedupe checks."""
    return re.sub(r"\s+", " ", text.lower()).strip().rstrip("?.! ")


# ------------------------------------------------------------------------------------------ converters
@dataclass
class ConvertReport:
    """What a converter read, kept, and refused (reported, never silent)."""

    source: str
    train_queries: int = 0
    groups: int = 0
    positives: int = 0
    dropped_same_text_as_eval_query: int = 0
    dropped_no_positive_text: int = 0
    test_queries_checked: int = 0
    test_docs_excluded_from_negatives: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        split = (f"checked against its {self.test_queries_checked} test queries: no test query id in training; "
                 f"{self.test_docs_excluded_from_negatives} test-judged docs barred from negatives"
                 if self.test_queries_checked else "the source has no test split")
        return (f"{self.source}: {self.groups} groups from {self.train_queries} training queries, "
                f"{self.positives} positives; {self.dropped_same_text_as_eval_query} dropped (text equals an "
                f"evaluation query), {self.dropped_no_positive_text} dropped (no positive text); {split}")


def eval_query_texts(data_dir: str | os.PathLike[str]) -> set[str]:
    """Normalised texts of every evaluation (test-split) query under ``data_dir``."""
    texts: set[str] = set()
    root = Path(data_dir)
    for name in EVAL_QUERY_SETS:
        folder = root / name
        if not (folder / "qrels" / "test.tsv").is_file():
            continue
        queries = load_queries(folder)
        texts.update(normalize_text(queries[q]) for q in load_qrels(folder, "test") if q in queries)
    return texts


@dataclass
class ConvertedSource:
    """Groups of one source plus what mining needs: the document pool and the docs barred from negatives."""

    groups: list[Group]
    corpus: dict[str, Passage]
    barred_doc_ids: set[str]
    report: ConvertReport


def _beir_source(folder: Path, source: str, task: str, eval_texts: set[str]) -> ConvertedSource:
    """Convert a BEIR folder's ``qrels/train.tsv`` into groups, refusing any test query."""
    report = ConvertReport(source=source)
    corpus_raw = load_corpus(folder)
    queries = load_queries(folder)
    train = load_qrels(folder, "train")
    test = load_qrels(folder, "test") if (folder / "qrels" / "test.tsv").is_file() else {}
    report.test_queries_checked = len(test)
    leaked = sorted(set(train) & set(test))
    if leaked:
        raise DataError(f"{folder}/qrels/train.tsv: {len(leaked)} query id(s) also in qrels/test.tsv, e.g. "
                        f"{leaked[:3]}; refusing to train on test queries")
    barred = {doc for docs in test.values() for doc in docs}
    report.test_docs_excluded_from_negatives = len(barred)
    instruction = prompts.get_instruction(task)
    corpus: dict[str, Passage] = {d: {"title": r["title"], "text": r["text"]} for d, r in corpus_raw.items()}
    groups = []
    for qid, docs in train.items():
        report.train_queries += 1
        if qid not in queries:
            raise DataError(f"{folder}/qrels/train.tsv: query id {qid!r} is not in queries.jsonl")
        text = queries[qid]
        if normalize_text(text) in eval_texts:
            report.dropped_same_text_as_eval_query += 1
            continue
        pos_ids = [d for d, grade in docs.items() if grade > 0 and d in corpus]
        if not pos_ids:
            report.dropped_no_positive_text += 1
            continue
        groups.append(Group(query=text, positives=[corpus[d] for d in pos_ids], instruction=instruction, task=task,
                            source=source, id=f"{source}:{qid}", positive_ids=pos_ids))
        report.positives += len(pos_ids)
    report.groups = len(groups)
    return ConvertedSource(groups, corpus, barred, report)


def convert_scifact(data_dir: str | os.PathLike[str], eval_texts: set[str] | None = None) -> ConvertedSource:
    """SciFact train claims (809) -> cited abstracts, with the official SciFact instruction."""
    eval_texts = eval_query_texts(data_dir) if eval_texts is None else eval_texts
    return _beir_source(Path(data_dir) / "scifact", "scifact", "scifact", eval_texts)


def convert_bioasq(data_dir: str | os.PathLike[str], eval_texts: set[str] | None = None) -> ConvertedSource:
    """BioASQ 7B/9B/10B/11B questions (``bioasq-snippets`` train qrels) -> their gold-snippet documents.

    The 8B questions are the test split (= BEIR BioASQ) and are refused; questions repeated across
    years with the same text as an 8B question are dropped.
    """
    eval_texts = eval_query_texts(data_dir) if eval_texts is None else eval_texts
    return _beir_source(Path(data_dir) / "bioasq-snippets", "bioasq", "bioasq", eval_texts)


def convert_pubmedqa(data_dir: str | os.PathLike[str], eval_texts: set[str] | None = None) -> ConvertedSource:
    """PubMedQA PQA-L train half (500 questions) -> own abstract (``pubmedqa-retrieval`` train qrels)."""
    eval_texts = eval_query_texts(data_dir) if eval_texts is None else eval_texts
    return _beir_source(Path(data_dir) / "pubmedqa-retrieval", "pubmedqa", "pubmedqa", eval_texts)


def convert_medquad(data_dir: str | os.PathLike[str], eval_texts: set[str] | None = None) -> ConvertedSource:
    """MedQuAD answered pairs (16,407; the MedlinePlus subsets have no answers) -> question -> answer.

    MedQuAD has no test split; its questions are still checked against the evaluation queries.
    The document pool is all answers; mining excludes the group's own answer (same ``uid``).
    """
    eval_texts = eval_query_texts(data_dir) if eval_texts is None else eval_texts
    path = Path(data_dir) / "medquad" / "medquad.jsonl.gz"
    report = ConvertReport(source="medquad", notes=["no test split exists; questions checked against eval queries"])
    instruction = prompts.get_instruction("medical_qa")
    groups, corpus = [], {}
    seen_answers: set[str] = set()
    for lineno, record in iter_jsonl(path):
        question, answer = record.get("question"), record.get("answer") or ""
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{path}:{lineno}: missing 'question'")
        if not answer.strip():
            continue  # MedlinePlus subsets: answers removed upstream for copyright reasons
        report.train_queries += 1
        if normalize_text(question) in eval_texts:
            report.dropped_same_text_as_eval_query += 1
            continue
        uid = str(record["uid"])
        corpus[uid] = answer
        key = normalize_text(answer)
        if key in seen_answers:
            report.notes.append(f"{path}:{lineno}: answer repeated; kept (the query differs)")
        seen_answers.add(key)
        groups.append(Group(query=question, positives=[answer], instruction=instruction, task="medical_qa",
                            source="medquad", id=f"medquad:{uid}", positive_ids=[uid]))
        report.positives += 1
    report.groups = len(groups)
    report.notes = report.notes[:5] + ([f"... {len(report.notes) - 5} more"] if len(report.notes) > 5 else [])
    return ConvertedSource(groups, corpus, set(), report)


def convert_mqp(data_dir: str | os.PathLike[str], eval_texts: set[str] | None = None) -> ConvertedSource:
    """Curai medical question pairs: ``label 1`` pairs are positives, the same question's ``label 0`` partner
    is its hard negative (the dataset was written that way: one similar and one different rewrite).
    """
    eval_texts = eval_query_texts(data_dir) if eval_texts is None else eval_texts
    path = Path(data_dir) / "medical-question-pairs" / "mqp.csv"
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    report = ConvertReport(source="mqp", notes=["no test split exists; questions checked against eval queries"])
    pos: dict[str, list[str]] = {}
    neg: dict[str, list[str]] = {}
    with open_text(path) as handle:
        for lineno, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 4 or row[3] not in ("0", "1"):
                raise DataError(f"{path}:{lineno}: expected 4 fields 'dr_id,question_1,question_2,label(0|1)'")
            (pos if row[3] == "1" else neg).setdefault(row[1], []).append(row[2])
    instruction = prompts.get_instruction("medical_question_pairs")
    groups = []
    for i, (question, positives) in enumerate(pos.items()):
        report.train_queries += 1
        if normalize_text(question) in eval_texts:
            report.dropped_same_text_as_eval_query += 1
            continue
        groups.append(Group(query=question, positives=list(positives), negatives=list(neg.get(question, [])),
                            instruction=instruction, task="medical_question_pairs", source="mqp", id=f"mqp:{i}"))
        report.positives += len(positives)
    report.groups = len(groups)
    return ConvertedSource(groups, {}, set(), report)


CONVERTERS = {"scifact": convert_scifact, "bioasq": convert_bioasq, "pubmedqa": convert_pubmedqa,
              "medquad": convert_medquad, "mqp": convert_mqp}


def convert(source: str, data_dir: str | os.PathLike[str], eval_texts: set[str] | None = None) -> ConvertedSource:
    """Run the converter named ``source`` (one of :data:`SOURCES`)."""
    if source not in CONVERTERS:
        raise ValueError(f"unknown training source {source!r}; valid: {', '.join(SOURCES)}")
    return CONVERTERS[source](data_dir, eval_texts)


# ----------------------------------------------------------------------------------------- torch data
class GroupDataset(torch.utils.data.Dataset):
    """Groups indexed by ``(epoch, index)`` so the collator can draw a fresh positive/negatives per epoch.

    A plain integer index means epoch 0.
    """

    def __init__(self, groups: Sequence[Group], min_negatives: int = 0) -> None:
        kept = [g for g in groups if len(g.negatives) >= min_negatives]
        self.dropped_short = len(groups) - len(kept)
        if self.dropped_short:
            logger.warning("%d of %d groups have fewer than %d negatives and are not used (mine more, or lower "
                           "train_group_size)", self.dropped_short, len(groups), min_negatives)
        if not kept:
            raise DataError(f"no group has the {min_negatives} negatives that train_group_size needs")
        self.groups = list(kept)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[int, int, Group]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return epoch, index, self.groups[index]


def group_keys(group: Group) -> set[str]:
    """Texts that must not appear twice in one batch: the query and every positive."""
    return {"q:" + normalize_text(group.query)} | {"p:" + normalize_text(passage_text(p)) for p in group.positives}


class NoDuplicateBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches in which no two groups share a query text or a positive passage.

    A shared positive would be scored as a negative for the other query (a false negative). Groups
    that collide with the batch being filled wait for the next batch; the order is a pure function of
    ``seed`` and the epoch, so resuming from a checkpoint skips exactly the batches already seen.
    The last incomplete batch is dropped (in-batch negatives need full batches).

    Yields lists of ``(epoch, index)`` keys for :class:`GroupDataset`.
    """

    def __init__(self, groups: Sequence[Group], batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(groups) < batch_size:
            raise ValueError(f"{len(groups)} groups cannot fill one batch of {batch_size}")
        self.keys = [group_keys(g) for g in groups]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.deferred = 0  # groups moved to a later batch to avoid a duplicate (last computed epoch)
        self.unused = 0  # groups left over at the end of the epoch
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        order = list(range(len(self.keys)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        batches: list[list[int]] = []
        waiting: list[int] = []  # groups that collided with an earlier batch, placed first in the next one
        stream = iter(order)
        deferred = 0
        while True:
            batch: list[int] = []
            used: set[str] = set()
            still: list[int] = []
            for i in waiting:
                if len(batch) < self.batch_size and not (self.keys[i] & used):
                    batch.append(i)
                    used |= self.keys[i]
                else:
                    still.append(i)
            waiting = still
            for i in stream:
                if self.keys[i] & used:
                    waiting.append(i)
                    deferred += 1
                    continue
                batch.append(i)
                used |= self.keys[i]
                if len(batch) == self.batch_size:
                    break
            if len(batch) < self.batch_size:
                break  # the remainder cannot fill a batch without duplicates
            batches.append(batch)
        self.deferred = deferred
        self.unused = len(batch) + len(waiting)
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self._batches():
            yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self._batches())
