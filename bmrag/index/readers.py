"""Readers for retrieval data: BEIR folders (``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``).

Every reader names the file and line of a malformed record, and never silently drops data: records
that cannot be used raise :class:`DataError` unless the caller asks to skip them, in which case they
are counted in :class:`ReadReport`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file (and line)."""


@dataclass
class ReadReport:
    """What a reader skipped, so callers can report it instead of losing it silently."""

    read: int = 0
    skipped_empty: list[str] = field(default_factory=list)
    skipped_bad: list[str] = field(default_factory=list)  # "file:line: reason"
    duplicate_ids: list[str] = field(default_factory=list)


def _find(folder: Path, *names: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: missing {' or '.join(names)}")


def open_text(path: Path) -> io.TextIOBase:
    """Open a UTF-8 text file, gzip-compressed when the name ends in ``.gz``.

    Bytes that are not UTF-8 raise a :class:`UnicodeDecodeError` naming the position; callers wrap it.
    """
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_lines(path: Path) -> Iterator[tuple[int, str | UnicodeDecodeError]]:
    """Yield ``(line_number, text)`` of a (gzipped) file, decoding UTF-8 one line at a time.

    A line that is not UTF-8 yields its ``UnicodeDecodeError`` instead of text, so callers can name the
    line and go on. (A text wrapper decodes 8 KiB chunks ahead of ``readline``: it blames the wrong line
    and cannot resume after a bad byte.)
    """
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield lineno, err


def iter_jsonl(path: str | os.PathLike[str], *, skip_bad: bool = False,
               report: ReadReport | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` from a JSONL(.gz) file; blank lines are ignored.

    Raises:
        DataError: On invalid JSON, a non-object line or a non-UTF-8 line (file and line named),
            unless ``skip_bad`` (then the line is recorded in ``report.skipped_bad``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    for lineno, line in iter_lines(path):
        if isinstance(line, UnicodeDecodeError):
            problem = f"{path}:{lineno}: not valid UTF-8 ({line.reason} at byte {line.start} of the line)"
            if not skip_bad:
                raise DataError(problem) from line
            if report is not None:
                report.skipped_bad.append(problem)
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        except ValueError as err:
            problem = f"{path}:{lineno}: malformed record ({err})"
            if not skip_bad:
                raise DataError(problem) from err
            if report is not None:
                report.skipped_bad.append(problem)
            continue
        yield lineno, record


def load_corpus(folder: str | os.PathLike[str], *, skip_bad: bool = False,
                report: ReadReport | None = None) -> dict[str, dict[str, str]]:
    """Read a BEIR corpus: ``{doc_id: {"title", "text", "metadata"}}``.

    Args:
        folder: A BEIR folder (holding ``corpus.jsonl.gz`` or ``corpus.jsonl``) or such a file itself.
        skip_bad: Count malformed records in ``report`` instead of raising.
        report: Receives counts of read, empty (skipped) and bad records.

    Raises:
        DataError: Missing file, malformed line, a record without ``_id``/``text``, or a duplicate id.
    """
    report = report if report is not None else ReadReport()
    folder = Path(folder)
    if folder.is_file():
        path = folder
    elif folder.is_dir():
        path = _find(folder, "corpus.jsonl.gz", "corpus.jsonl")
    else:
        raise DataError(f"{folder}: no such corpus (a BEIR folder or a .jsonl/.jsonl.gz file)")
    corpus: dict[str, dict[str, str]] = {}
    for lineno, record in iter_jsonl(path, skip_bad=skip_bad, report=report):
        problem = None
        if "_id" not in record or "text" not in record:
            problem = f"missing field {'_id' if '_id' not in record else 'text'!r}"
        elif not isinstance(record.get("text", ""), str) or not isinstance(record.get("title", "") or "", str):
            problem = "fields 'title' and 'text' must be strings"
        elif str(record["_id"]) in corpus:
            problem = f"duplicate _id {record['_id']!r}"
            report.duplicate_ids.append(str(record["_id"]))
        if problem:
            if not skip_bad:
                raise DataError(f"{path}:{lineno}: {problem}")
            report.skipped_bad.append(f"{path}:{lineno}: {problem}")
            continue
        doc_id = str(record["_id"])
        title, text = record.get("title") or "", record.get("text") or ""
        if not (title.strip() or text.strip()):
            report.skipped_empty.append(doc_id)
            continue
        corpus[doc_id] = {"title": title, "text": text, "metadata": record.get("metadata") or {}}
        report.read += 1
    return corpus


def load_queries(folder: str | os.PathLike[str]) -> dict[str, str]:
    """Read BEIR ``queries.jsonl``: ``{query_id: text}``."""
    path = _find(Path(folder), "queries.jsonl", "queries.jsonl.gz")
    queries: dict[str, str] = {}
    for lineno, record in iter_jsonl(path):
        if "_id" not in record or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{lineno}: a query needs '_id' and a string 'text'")
        qid = str(record["_id"])
        if not record["text"].strip():
            # Caught here, before a retriever spends minutes encoding the corpus.
            raise DataError(f"{path}:{lineno}: query {qid!r} has an empty 'text'")
        if qid in queries:
            raise DataError(f"{path}:{lineno}: duplicate query _id {qid!r}")
        queries[qid] = record["text"]
    return queries


def load_qrels(folder: str | os.PathLike[str], split: str = "test") -> dict[str, dict[str, int]]:
    """Read BEIR ``qrels/<split>.tsv`` (header ``query-id corpus-id score``): ``{qid: {doc_id: grade}}``."""
    path = Path(folder) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        available = sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))
        raise DataError(f"{path}: file not found (splits available: {', '.join(available) or 'none'})")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in iter_lines(path):
        if isinstance(line, UnicodeDecodeError):
            problem = f"not valid UTF-8 ({line.reason} at byte {line.start} of the line)"
            raise DataError(f"{path}:{lineno}: {problem}") from line
        row = next(csv.reader([line], delimiter="\t"), [])
        if lineno == 1 and row and row[0] == "query-id":
            continue
        if not row:
            continue
        if len(row) != 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(row)}")
        try:
            grade = int(float(row[2]))
        except ValueError as err:
            raise DataError(f"{path}:{lineno}: score {row[2]!r} is not a number") from err
        qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels
