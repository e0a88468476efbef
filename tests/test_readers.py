"""BEIR readers on small folders written per test, plus one read of the real SciFact folder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from shared_data import SHARED_DATA

from bmrag.index.readers import DataError, ReadReport, iter_jsonl, load_corpus, load_qrels, load_queries

SCIFACT = SHARED_DATA / "scifact"

DOCS = [
    {"_id": "d1", "title": "Aspirin", "text": "Aspirin reduces colorectal cancer risk.", "metadata": {"year": 2020}},
    {"_id": 2, "title": "", "text": "Sepsis outcomes in intensive care."},  # numeric id becomes "2"
    {"_id": "d3", "text": "No title field: statins and stroke."},
    {"_id": "d4", "title": "Ünïcödé — β-blockers", "text": "Résumé of β-blocker trials."},
]


def _jsonl(records: list[object]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


EXPECTED = {
    "d1": {"title": "Aspirin", "text": "Aspirin reduces colorectal cancer risk.", "metadata": {"year": 2020}},
    "2": {"title": "", "text": "Sepsis outcomes in intensive care.", "metadata": {}},
    "d3": {"title": "", "text": "No title field: statins and stroke.", "metadata": {}},
    "d4": {"title": "Ünïcödé — β-blockers", "text": "Résumé of β-blocker trials.", "metadata": {}},
}


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_load_corpus_plain_and_gzip(name, tmp_path):
    _write(tmp_path / name, _jsonl(DOCS) + "\n   \n")  # blank lines are ignored
    report = ReadReport()
    assert load_corpus(tmp_path, report=report) == EXPECTED
    assert report.read == 4 and not report.skipped_bad and not report.skipped_empty


def test_gzip_is_preferred_when_both_exist(tmp_path):
    _write(tmp_path / "corpus.jsonl.gz", _jsonl(DOCS[:1]))
    _write(tmp_path / "corpus.jsonl", _jsonl(DOCS))
    assert list(load_corpus(tmp_path)) == ["d1"]


def test_missing_corpus_names_the_folder_and_files(tmp_path):
    with pytest.raises(DataError, match=r"missing corpus\.jsonl\.gz or corpus\.jsonl"):
        load_corpus(tmp_path)


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_malformed_json_names_file_and_line(name, tmp_path):
    _write(tmp_path / name, _jsonl(DOCS[:2]) + '{"_id": "d9", "text": "unterminated\n' + _jsonl(DOCS[2:]))
    with pytest.raises(DataError, match=rf"{name.replace('.', r'[.]')}:3: malformed record"):
        load_corpus(tmp_path)


def test_a_json_value_that_is_not_an_object(tmp_path):
    _write(tmp_path / "corpus.jsonl", _jsonl(DOCS[:1]) + "[1, 2]\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: malformed record \(expected a JSON object, got list\)"):
        load_corpus(tmp_path)


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"title": "t", "text": "no id"}, r"corpus\.jsonl:2: missing field '_id'"),
        ({"_id": "x", "title": "t", "text": 5}, r"corpus\.jsonl:2: fields 'title' and 'text' must be strings"),
        ({"_id": "d1", "text": "again"}, r"corpus\.jsonl:2: duplicate _id 'd1'"),
    ],
)
def test_bad_records_name_file_line_and_problem(record, match, tmp_path):
    _write(tmp_path / "corpus.jsonl", _jsonl([DOCS[0], record]))
    with pytest.raises(DataError, match=match):
        load_corpus(tmp_path)


def test_skip_bad_counts_what_it_skipped(tmp_path):
    lines = _jsonl(DOCS[:2]) + "not json\n" + _jsonl([
        {"_id": "d1", "text": "duplicate"},
        {"title": "", "text": "no id"},
        {"_id": "empty", "title": " ", "text": "  "},
    ]) + _jsonl(DOCS[2:])
    _write(tmp_path / "corpus.jsonl", lines)
    report = ReadReport()
    corpus = load_corpus(tmp_path, skip_bad=True, report=report)
    assert corpus == EXPECTED  # the first d1 wins; everything valid is kept
    assert report.read == 4
    assert report.duplicate_ids == ["d1"]
    assert report.skipped_empty == ["empty"]
    assert [entry.split(": ", 1)[0].rsplit(":", 1)[1] for entry in report.skipped_bad] == ["3", "4", "5"]
    assert "malformed record" in report.skipped_bad[0] and "duplicate _id 'd1'" in report.skipped_bad[1]


def test_non_utf8_bytes_raise_a_data_error(tmp_path):
    _write(tmp_path / "corpus.jsonl", b'{"_id": "d1", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl:1: not valid UTF-8"):
        load_corpus(tmp_path)


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_non_utf8_error_names_the_bad_line(name, tmp_path):
    _write(tmp_path / name,
           _jsonl(DOCS[:2]).encode() + b'{"_id": "d9", "text": "caf\xe9"}\n' + _jsonl(DOCS[2:]).encode())
    with pytest.raises(DataError, match=r"corpus\.jsonl(\.gz)?:3: not valid UTF-8"):
        load_corpus(tmp_path)


def test_skip_bad_skips_only_the_non_utf8_line(tmp_path):
    _write(tmp_path / "corpus.jsonl",
           _jsonl(DOCS[:2]).encode() + b'{"_id": "d9", "text": "caf\xe9"}\n' + _jsonl(DOCS[2:]).encode())
    report = ReadReport()
    assert load_corpus(tmp_path, skip_bad=True, report=report) == EXPECTED
    assert len(report.skipped_bad) == 1 and ":3: not valid UTF-8" in report.skipped_bad[0]


def test_iter_jsonl_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))


def test_iter_jsonl_yields_line_numbers(tmp_path):
    path = _write(tmp_path / "x.jsonl", '{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]


# ---------------------------------------------------------------------------------------------- queries
def test_load_queries(tmp_path):
    _write(tmp_path / "queries.jsonl", _jsonl([{"_id": 1, "text": "Does aspirin help?"}, {"_id": "q2", "text": "β?"}]))
    assert load_queries(tmp_path) == {"1": "Does aspirin help?", "q2": "β?"}


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}], r"queries\.jsonl:2: duplicate query _id 'q1'"),
        ([{"_id": "q1"}], r"queries\.jsonl:1: a query needs '_id' and a string 'text'"),
        ([{"text": "no id"}], r"queries\.jsonl:1: a query needs '_id'"),
    ],
)
def test_bad_queries(records, match, tmp_path):
    _write(tmp_path / "queries.jsonl", _jsonl(records))
    with pytest.raises(DataError, match=match):
        load_queries(tmp_path)


# ------------------------------------------------------------------------------------------------ qrels
def test_load_qrels_with_header_and_grades(tmp_path):
    _write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq2\td1\t0\n\n")
    assert load_qrels(tmp_path) == {"q1": {"d1": 1, "d2": 2}, "q2": {"d1": 0}}


def test_missing_qrels_split_names_the_path_and_the_splits_available(tmp_path):
    _write(tmp_path / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\n")
    _write(tmp_path / "qrels" / "dev.tsv", "query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataError, match=r"qrels/test\.tsv: file not found \(splits available: dev, train\)"):
        load_qrels(tmp_path, "test")


def test_missing_qrels_folder(tmp_path):
    with pytest.raises(DataError, match=r"qrels/test\.tsv: file not found \(splits available: none\)"):
        load_qrels(tmp_path)


def test_non_utf8_qrels_raise_a_data_error_naming_the_line(tmp_path):
    _write(tmp_path / "qrels" / "test.tsv", b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td\xe92\t1\n")
    with pytest.raises(DataError, match=r"test\.tsv:3: not valid UTF-8"):
        load_qrels(tmp_path)


@pytest.mark.parametrize(
    ("row", "match"),
    [("q1\td1\n", r"test\.tsv:2: expected 3 tab-separated fields, got 2"),
     ("q1\td1\thigh\n", r"test\.tsv:2: score 'high' is not a number")],
)
def test_bad_qrels_rows(row, match, tmp_path):
    _write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n" + row)
    with pytest.raises(DataError, match=match):
        load_qrels(tmp_path)


# ------------------------------------------------------------------------------------------ real SciFact
@pytest.mark.skipif(not SCIFACT.is_dir(), reason="shared SciFact data not present")
def test_real_scifact_counts():
    report = ReadReport()
    corpus = load_corpus(SCIFACT, report=report)
    queries = load_queries(SCIFACT)
    qrels = load_qrels(SCIFACT, "test")
    # Official BEIR counts (shared/data/README.md): 5,183 docs, 1,109 queries, 300 test queries / 339 pairs.
    assert len(corpus) == report.read == 5183 and not report.skipped_bad
    assert len(queries) == 1109
    assert len(qrels) == 300 and sum(len(d) for d in qrels.values()) == 339
    assert set(qrels) <= set(queries) and {d for docs in qrels.values() for d in docs} <= set(corpus)
