"""Read shards of a corpus for parallel indexing: planned on the driver, read by workers with bmrag's readers.

Every source ``bmrag index`` reads is cut into independent shards: a range of lines of a BEIR ``.jsonl[.gz]``, a
group of text files, or one PubMed/MEDLINE XML file. A worker reads its shard with the same parsers and the same
file:line errors as the single-process path (:mod:`bmrag.index.sources`).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

ShardKind = Literal["beir", "text", "pubmed"]
LINES_PER_SHARD = 2000
"""BEIR jsonl lines per read shard (a gzipped file is decompressed up to each shard's start)."""
TEXT_FILES_PER_SHARD = 256


@dataclass(frozen=True)
class Shard:
    """One unit of reading: a file, a group of text files, or a line range of a jsonl file.

    Attributes:
        kind: Which reader. path: The file (pubmed, beir) or the text source's root. index: Position in the plan.
        files: Text files of this shard (text only). start_line/stop_line: 1-based, stop exclusive (beir only).
        start_byte: Offset of ``start_line`` in the (decompressed) file (beir only).
    """

    kind: ShardKind
    path: str
    index: int
    files: tuple[str, ...] = ()
    start_line: int = 1
    stop_line: int = 0
    start_byte: int = 0


def plan_shards(source: str | os.PathLike[str], *, lines_per_shard: int = LINES_PER_SHARD,
                files_per_shard: int = TEXT_FILES_PER_SHARD) -> list[Shard]:
    """Split what ``bmrag index --corpus`` reads into shards, without parsing records.

    Raises:
        bmrag.index.readers.DataError: As :func:`bmrag.index.sources.detect_source` (nothing there, unsupported type).
    """
    from bmrag.index.readers import _find
    from bmrag.index.sources import TEXT_SUFFIXES, XML_SUFFIXES, _files_under, detect_source

    path = Path(source).expanduser()
    kind = detect_source(path)
    if kind == "pubmed":
        files = [path] if path.is_file() else _files_under(path, XML_SUFFIXES)
        return [Shard("pubmed", str(f), i) for i, f in enumerate(files)]
    if kind == "text":
        files = [path] if path.is_file() else _files_under(path, TEXT_SUFFIXES)
        groups = [files[i:i + files_per_shard] for i in range(0, len(files), files_per_shard)]
        return [Shard("text", str(path), i, files=tuple(str(f) for f in g)) for i, g in enumerate(groups)]
    file = path if path.is_file() else _find(path, "corpus.jsonl.gz", "corpus.jsonl")
    shards: list[Shard] = []
    offset, lineno, start_line, start_byte = 0, 0, 1, 0
    with _open_binary(file) as handle:
        for raw in handle:
            lineno += 1
            if lineno - start_line == lines_per_shard:
                shards.append(Shard("beir", str(file), len(shards), start_line=start_line, stop_line=lineno,
                                    start_byte=start_byte))
                start_line, start_byte = lineno, offset
            offset += len(raw)
    shards.append(Shard("beir", str(file), len(shards), start_line=start_line, stop_line=lineno + 1,
                        start_byte=start_byte))
    return shards


def _open_binary(path: Path) -> IO[bytes]:

    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


# ------------------------------------------------------------------------------------------------- read
def shard_records(shard: Shard, skip_bad: bool, problems: list[str]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """``(doc_id, record, where)`` of one shard, with the single-process readers' rules and messages."""
    from bmrag.index.readers import DataError
    from bmrag.index.sources import SourceReport, _decode, _title_and_body, iter_pubmed_xml

    report = SourceReport()
    if shard.kind == "pubmed":
        yield from iter_pubmed_xml(shard.path, report, skip_bad=skip_bad)
    elif shard.kind == "text":
        root = Path(shard.path)
        for name in shard.files:
            file = Path(name)
            rel = file.name if file == root else file.relative_to(root).as_posix()
            text = _decode(file.read_bytes(), rel, report)
            title, body = _title_and_body(text, markdown=file.suffix.lower() == ".md")
            if title or body:
                yield rel[: -len(file.suffix)], {"title": title, "text": body, "metadata": {"source": rel}}, str(file)
    else:
        path = Path(shard.path)
        with _open_binary(path) as handle:
            if path.suffix == ".gz":
                for _ in range(shard.start_line - 1):
                    handle.readline()
            else:
                handle.seek(shard.start_byte)
            for lineno in range(shard.start_line, shard.stop_line):
                raw = handle.readline()
                problem, record = _beir_record(raw, path, lineno)
                if problem:
                    if not skip_bad:
                        raise DataError(problem)
                    problems.append(problem)
                    continue
                if record is not None:
                    title, text = record.get("title") or "", record.get("text") or ""
                    if title.strip() or text.strip():
                        yield str(record["_id"]), {"title": title, "text": text,
                                                   "metadata": record.get("metadata") or {}}, f"{path}:{lineno}"
    problems.extend(report.skipped_bad)


def _beir_record(raw: bytes, path: Path, lineno: int) -> tuple[str | None, dict[str, Any] | None]:
    # The checks and messages of bmrag.index.readers.iter_jsonl / load_corpus, for one line.
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start} of the line)", None
    if not line.strip():
        return None, None
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    except ValueError as err:
        return f"{path}:{lineno}: malformed record ({err})", None
    if "_id" not in record or "text" not in record:
        return f"{path}:{lineno}: missing field {'_id' if '_id' not in record else 'text'!r}", None
    if not isinstance(record.get("text", ""), str) or not isinstance(record.get("title", "") or "", str):
        return f"{path}:{lineno}: fields 'title' and 'text' must be strings", None
    return None, record
