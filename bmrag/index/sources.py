"""Document sources for ``bmrag index``: BEIR corpora, folders of ``.txt``/``.md`` files, PubMed/MEDLINE XML.

Every source becomes the same BEIR-style records, ``{doc_id: {"title", "text", "metadata"}}`` (what
:func:`bmrag.index.readers.load_corpus` returns and :func:`bmrag.index.build.corpus_to_nodes` takes), and a
:class:`SourceReport` saying what was read, skipped and repaired. :func:`read_source` picks the reader
from what the path is.

PubMed/MEDLINE XML (``PubmedArticleSet``, the format of the PubMed baseline and update files, ``.xml``
or ``.xml.gz``) is parsed as a stream, one ``PubmedArticle`` at a time, so a 30,000-article baseline
file never sits in memory as a tree. Metadata values are flat scalars (Chroma and LlamaIndex reject
lists): ``pmid`` (str), ``source`` (``"PubMed"``), ``journal``, ``year`` (int), ``pub_type`` (one
lower-case type, the field ``bmrag ask --pub-type`` filters on; see :data:`PUB_TYPE_PRECEDENCE`), the
flags ``is_rct``, ``is_systematic_review``, ``is_meta_analysis``, ``is_guideline``, ``is_review`` (1 or 0),
``publication_types`` and ``mesh_terms`` (``"; "``-joined), ``doi`` when known and ``file``.

Example:
    >>> records, report = read_source("pubmed25n0001.xml.gz")
    >>> print(report.summary())
"""

from __future__ import annotations

import gzip
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bmrag.index.readers import DataError, ReadReport, load_corpus
from bmrag.index.sample import DEMO_CORPUS

SourceKind = Literal["beir", "text", "pubmed"]
Record = dict[str, Any]
"""``{"title": str, "text": str, "metadata": {flat scalars}}``."""

TEXT_SUFFIXES = (".txt", ".md")
XML_SUFFIXES = (".xml", ".xml.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
EXAMPLES_KEPT = 5
"""How many file:line examples a report keeps per kind of problem (the counts are always complete)."""

PUB_TYPE_FLAGS: dict[str, tuple[str, ...]] = {
    "is_rct": ("Randomized Controlled Trial", "Randomized Controlled Trial, Veterinary"),
    "is_systematic_review": ("Systematic Review",),
    "is_meta_analysis": ("Meta-Analysis", "Network Meta-Analysis"),
    "is_guideline": ("Guideline", "Practice Guideline"),
    "is_review": ("Review",),
}
"""Metadata flag -> the MEDLINE ``PublicationType`` names that set it."""

PUB_TYPE_PRECEDENCE: tuple[tuple[str, str], ...] = (
    ("is_guideline", "guideline"),
    ("is_meta_analysis", "meta-analysis"),
    ("is_systematic_review", "systematic-review"),
    ("is_rct", "rct"),
    ("is_review", "review"),
)
"""``pub_type`` (the single field ``bmrag ask --pub-type`` matches) is the first of these whose flag is set,
so an article tagged both "Systematic Review" and "Meta-Analysis" has ``pub_type == "meta-analysis"``;
ask for ``--pub-type systematic-review meta-analysis`` to get both kinds, or filter on the ``is_*`` flags.
Articles with none of these types have no ``pub_type``."""

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_YEAR = re.compile(r"\b(\d{4})\b")
_WS = re.compile(r"\s+")


@dataclass
class SourceReport(ReadReport):
    """What :func:`read_source` read and skipped; the lists hold the first few examples, the counts all.

    Inherits ``read``, ``skipped_empty`` (ids or files), ``skipped_bad`` (``"file:line: reason"``) and
    ``duplicate_ids`` from :class:`bmrag.index.readers.ReadReport`.
    """

    kind: str = ""
    files: int = 0
    decode_replacements: int = 0  # undecodable bytes replaced by U+FFFD
    files_with_replacements: list[str] = field(default_factory=list)
    ignored: int = 0  # PubmedBookArticle / DeleteCitation entries, files of other types in a folder

    def summary(self) -> str:
        """One line of counts for the end of ``bmrag index``."""
        parts = [f"{self.read} documents read from {self.files} file{'s' if self.files != 1 else ''} ({self.kind})",
                 f"{len(self.skipped_empty)} empty skipped", f"{len(self.skipped_bad)} malformed skipped"]
        if self.duplicate_ids:
            shown = ", ".join(self.duplicate_ids[:EXAMPLES_KEPT])
            more = " ..." if len(self.duplicate_ids) > EXAMPLES_KEPT else ""
            parts.append(f"{len(self.duplicate_ids)} duplicate ids, first occurrence kept ({shown}{more})")
        else:
            parts.append("0 duplicate ids")
        if self.decode_replacements:
            files = ", ".join(self.files_with_replacements[:EXAMPLES_KEPT])
            parts.append(f"{self.decode_replacements} non-UTF-8 bytes replaced by U+FFFD (in {files})")
        if self.ignored:
            parts.append(f"{self.ignored} other entries ignored")
        line = "Sources: " + "; ".join(parts) + "."
        if self.skipped_bad:
            line += "\n  malformed: " + "\n  malformed: ".join(self.skipped_bad[:EXAMPLES_KEPT])
            if len(self.skipped_bad) > EXAMPLES_KEPT:
                line += f"\n  ... and {len(self.skipped_bad) - EXAMPLES_KEPT} more"
        return line


# ----------------------------------------------------------------------------------------- text folders
def _decode(raw: bytes, where: str, report: SourceReport) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace").removeprefix("\ufeff")
        # U+FFFD characters that were really in the file (encoded as EF BF BD) are not replacements.
        replaced = text.count("\ufffd") - raw.count(b"\xef\xbf\xbd")
        report.decode_replacements += replaced
        report.files_with_replacements.append(where)
        return text


def _title_and_body(text: str, markdown: bool) -> tuple[str, str]:
    lines = text.splitlines()
    index = None
    if markdown:
        index = next((i for i, line in enumerate(lines) if _HEADING.match(line)), None)
    if index is None:
        index = next((i for i, line in enumerate(lines) if line.strip()), None)
    if index is None:
        return "", ""
    heading = _HEADING.match(lines[index]) if markdown else None
    title = (heading.group(1) if heading else lines[index]).strip()
    body = "\n".join(lines[:index] + lines[index + 1:]).strip()
    return title, body


def iter_text_files(root: str | os.PathLike[str], report: SourceReport) -> Iterator[tuple[str, Record, str]]:
    """Yield ``(doc_id, record, where)`` for each ``.txt``/``.md`` file under ``root`` (recursive, sorted).

    The id is the path relative to ``root`` without its suffix (``notes/asthma``), or the file's stem
    when ``root`` is one file. The title is the first Markdown heading (``.md``) or the first non-empty
    line, and is removed from the text. Bytes that are not UTF-8 are replaced by U+FFFD and counted;
    empty files are skipped and counted. Hidden files and folders (``.git``) are not read.
    """
    root = Path(root)
    files = [root] if root.is_file() else _files_under(root, TEXT_SUFFIXES)
    for path in files:
        rel = path.name if path == root else path.relative_to(root).as_posix()
        doc_id = rel[: -len(path.suffix)]
        report.files += 1
        text = _decode(path.read_bytes(), rel, report)
        title, body = _title_and_body(text, markdown=path.suffix.lower() == ".md")
        if not (title or body):
            report.skipped_empty.append(rel)
            continue
        yield doc_id, {"title": title, "text": body, "metadata": {"source": rel}}, str(path)


# ------------------------------------------------------------------------------------------ PubMed XML
def _text(elem: ET.Element | None) -> str:
    # itertext keeps the words inside inline markup (<i>, <sup>, <sub>, MathML) that .text would drop.
    return _WS.sub(" ", "".join(elem.itertext())).strip() if elem is not None else ""


def pubmed_record(article: ET.Element, file: str = "") -> tuple[str, Record]:
    """``(pmid, record)`` of one ``PubmedArticle`` element (see the module docstring for the metadata).

    Raises:
        ValueError: The article has no ``MedlineCitation/PMID``.
    """
    citation = article.find("MedlineCitation")
    pmid = _text(citation.find("PMID")) if citation is not None else ""
    if not pmid:
        raise ValueError("PubmedArticle without MedlineCitation/PMID")
    art = citation.find("Article")
    art = art if art is not None else ET.Element("Article")
    sections = []
    for part in art.iterfind("Abstract/AbstractText"):
        body = _text(part)
        if body:
            label = (part.get("Label") or "").strip()
            sections.append(f"{label}: {body}" if label else body)
    metadata: dict[str, Any] = {"source": "PubMed", "pmid": pmid}
    journal = _text(art.find("Journal/Title"))
    if journal:
        metadata["journal"] = journal
    pub_date = art.find("Journal/JournalIssue/PubDate")
    if pub_date is not None:
        year = _text(pub_date.find("Year")) or next(iter(_YEAR.findall(_text(pub_date.find("MedlineDate")))), "")
        if year.isdigit():
            metadata["year"] = int(year)
    types = [_text(t) for t in art.iterfind("PublicationTypeList/PublicationType")]
    for flag, names in PUB_TYPE_FLAGS.items():
        # 0/1, not bool: LlamaIndex's MetadataFilter rejects bool values, so bools could not be filtered on.
        metadata[flag] = int(any(t in names for t in types))
    pub_type = next((name for flag, name in PUB_TYPE_PRECEDENCE if metadata[flag]), None)
    if pub_type:
        metadata["pub_type"] = pub_type
    metadata["publication_types"] = "; ".join(t for t in types if t)
    mesh = [_text(d) for d in citation.iterfind("MeshHeadingList/MeshHeading/DescriptorName")]
    metadata["mesh_terms"] = "; ".join(m for m in mesh if m)
    doi = next((_text(e) for e in art.iterfind("ELocationID") if e.get("EIdType") == "doi"), "") or next(
        (_text(e) for e in article.iterfind("PubmedData/ArticleIdList/ArticleId") if e.get("IdType") == "doi"), "")
    if doi:
        metadata["doi"] = doi
    if file:
        metadata["file"] = file
    return pmid, {"title": _text(art.find("ArticleTitle")), "text": "\n".join(sections), "metadata": metadata}


def iter_pubmed_xml(path: str | os.PathLike[str], report: SourceReport, *,
                    skip_bad: bool = False) -> Iterator[tuple[str, Record, str]]:
    """Yield ``(pmid, record, "file:line")`` for each ``PubmedArticle`` of a (gzipped) MEDLINE XML file.

    Streaming: the file is fed to an ``XMLPullParser`` (what ``ElementTree.iterparse`` is built on) one
    line at a time, so every article's line is known, and each article is cleared once read. Articles
    with neither title nor abstract are skipped and counted; ``PubmedBookArticle`` and ``DeleteCitation``
    entries are counted in ``report.ignored``.

    Raises:
        DataError: Malformed XML or an article without PMID, naming the file and line, unless
            ``skip_bad``; then a bad article is counted, and malformed XML ends the file (XML cannot be
            resumed after a syntax error) with what was read so far kept and the problem recorded.
    """
    path = Path(path)
    name = path.name
    report.files += 1
    parser = ET.XMLPullParser(events=("start", "end"))
    depth = 0
    root = ET.Element("")
    start_line = 0
    lineno = 0
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                parser.feed(raw)
                for event, elem in parser.read_events():
                    if event == "start":
                        depth += 1
                        if depth == 1:
                            root = elem
                        if depth == 1 and elem.tag != "PubmedArticleSet":
                            raise DataError(f"{path}:{lineno}: not PubMed/MEDLINE XML (root element <{elem.tag}>, "
                                            "expected <PubmedArticleSet>)")
                        if depth == 2:
                            start_line = lineno
                        continue
                    depth -= 1
                    if depth != 1:
                        continue
                    where = f"{path}:{start_line}"
                    if elem.tag == "PubmedArticle":
                        try:
                            pmid, record = pubmed_record(elem, name)
                        except ValueError as err:
                            if not skip_bad:
                                raise DataError(f"{where}: {err}") from err
                            report.skipped_bad.append(f"{where}: {err}")
                        else:
                            if record["title"] or record["text"]:
                                yield pmid, record, where
                            else:
                                report.skipped_empty.append(pmid)
                    else:
                        report.ignored += 1
                    root.clear()  # the article is read: drop it so memory stays flat
            parser.close()
    except ET.ParseError as err:
        line = err.position[0]
        problem = f"{path}:{line}: malformed XML ({err})"
        if not skip_bad:
            raise DataError(problem) from err
        report.skipped_bad.append(problem + "; the rest of this file was not read")
    except (OSError, EOFError) as err:  # a truncated or corrupt .gz
        problem = f"{path}:{lineno}: cannot read ({err})"
        if not skip_bad:
            raise DataError(problem) from err
        report.skipped_bad.append(problem + "; the rest of this file was not read")


# -------------------------------------------------------------------------------------------- dispatch
def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def _files_under(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames)
                     if not f.startswith(".") and f.lower().endswith(suffixes))
    return sorted(found)


def _visible_files(folder: Path) -> list[Path]:
    return _files_under(folder, ("",))


ACCEPTED = ("a BEIR folder (corpus.jsonl[.gz]), a .jsonl/.jsonl.gz corpus file, a PubMed/MEDLINE .xml/.xml.gz "
            "file or a folder of them, or a folder of .txt/.md files")


def detect_source(path: str | os.PathLike[str]) -> SourceKind:
    """Which reader :func:`read_source` uses for ``path``.

    Raises:
        DataError: Nothing there, an unsupported file type, a folder with no readable files, or a folder
            mixing XML and text files.
    """
    path = Path(path)
    if path.is_file():
        if _has_suffix(path, JSONL_SUFFIXES):
            return "beir"
        if _has_suffix(path, XML_SUFFIXES):
            return "pubmed"
        if _has_suffix(path, TEXT_SUFFIXES):
            return "text"
        raise DataError(f"{path}: unsupported file type; expected {ACCEPTED}")
    if not path.is_dir():
        raise DataError(f"{path}: no such corpus (expected {ACCEPTED})")
    if (path / "corpus.jsonl.gz").is_file() or (path / "corpus.jsonl").is_file():
        return "beir"
    has_xml = bool(_files_under(path, XML_SUFFIXES))
    has_text = bool(_files_under(path, TEXT_SUFFIXES))
    if has_xml and has_text:
        raise DataError(f"{path}: holds both XML and .txt/.md files; point --corpus at a folder of one kind")
    if has_xml:
        return "pubmed"
    if has_text:
        return "text"
    raise DataError(f"{path}: no corpus.jsonl[.gz], .xml[.gz], .txt or .md files here (expected {ACCEPTED})")


def read_source(path: str | os.PathLike[str], *, skip_bad: bool = False,
                report: SourceReport | None = None) -> tuple[dict[str, Record], SourceReport]:
    """Read documents from whatever ``path`` is (see :func:`detect_source`).

    Args:
        path: A BEIR folder or ``.jsonl[.gz]`` file, a MEDLINE ``.xml[.gz]`` file or folder of them, or a
            folder (or single file) of ``.txt``/``.md``.
        skip_bad: Count and report malformed records instead of raising.
        report: Filled in place when given (a new one is returned otherwise).

    Returns:
        ``({doc_id: {"title", "text", "metadata"}}, report)``. Duplicate ids in XML and text sources
        keep the first occurrence and are listed in ``report.duplicate_ids``; in a BEIR file a duplicate
        ``_id`` is a malformed record (:func:`bmrag.index.readers.load_corpus`).

    Raises:
        DataError: Naming the file (and line) of the problem, see :func:`detect_source`,
            :func:`iter_pubmed_xml` and :func:`bmrag.index.readers.load_corpus`.
    """
    path = Path(path).expanduser()
    report = report if report is not None else SourceReport()
    kind = detect_source(path)
    if kind == "beir":
        report.kind = "BEIR jsonl"
        report.files += 1
        return load_corpus(path, skip_bad=skip_bad, report=report), report
    records: dict[str, Record] = {}
    if kind == "text":
        report.kind = "text files"
        items = iter_text_files(path, report)
        if path.is_dir():
            report.ignored += len(_visible_files(path)) - len(_files_under(path, TEXT_SUFFIXES))
    else:
        report.kind = "PubMed XML"
        files = [path] if path.is_file() else _files_under(path, XML_SUFFIXES)
        if path.is_dir():
            report.ignored += len(_visible_files(path)) - len(files)
        items = (item for file in files for item in iter_pubmed_xml(file, report, skip_bad=skip_bad))
    for doc_id, record, _where in items:
        if doc_id in records:
            report.duplicate_ids.append(doc_id)
            continue
        records[doc_id] = record
        report.read += 1
    return records, report


def read_documents(source: str | os.PathLike[str] | None, *, skip_bad: bool = False,
                   report: SourceReport | None = None) -> tuple[dict[str, dict[str, Any]], str]:
    """Documents from any source :func:`read_source` reads, or the bundled sample (None).

    Sources: a BEIR folder or ``.jsonl``/``.jsonl.gz`` corpus file, PubMed/MEDLINE ``.xml[.gz]`` files,
    or a folder of ``.txt``/``.md`` files.

    Args:
        source: The path, or None for the bundled sample corpus.
        skip_bad: Count malformed records in ``report`` instead of raising.
        report: Filled with what was read and skipped (see :class:`SourceReport`).

    Returns:
        ``({doc_id: {"title", "text", "metadata"}}, description)``.

    Raises:
        bmrag.index.readers.DataError: Missing file, malformed record (file and line named), unsupported source.
    """
    path = DEMO_CORPUS if source is None else Path(source).expanduser()
    corpus, report = read_source(path, skip_bad=skip_bad, report=report)
    label = "the bundled sample corpus" if source is None else f"{path} ({report.kind})"
    return corpus, label
