"""The bundled demo corpus and the ``bmrag index | search | demo`` commands, end to end (real model, real Chroma)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from shared_data import SHARED_DATA

from bmrag import cli
from bmrag.index.open import default_index_dir
from bmrag.index.readers import DataError
from bmrag.index.sample import DEMO_CORPUS, DEMO_QUESTIONS, STARTUP_DOCUMENTS, priority_order
from bmrag.index.sources import read_documents
from bmrag.models import model_note

REPO = Path(__file__).resolve().parents[1]
MODEL_LINE = ("Retriever model: all-MiniLM-L6-v2 (offline default: stronger than the shipped bmrag-mini; "
              "use --model BMRetriever/BMRetriever-410M online)")

STROKE = {"medquad-8-0000124-6", "medquad-6-0000261-1", "medquad-7-0000066-15"}
ASTHMA = {"medquad-8-0000010-4", "medquad-2-0000491-2", "medquad-4-0000065-1"}
STATINS_AF = "pubmedqa-21881325"


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_demo_corpus", REPO / "tools" / "build_demo_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """The demo's answer documents plus 16 distractors from the bundled corpus, as a .jsonl.gz file."""
    corpus, _ = read_documents(None)
    ids = list(corpus)
    wanted = STROKE | ASTHMA | {STATINS_AF, "pubmedqa-11340218"}
    keep = [i for i in ids if i in wanted] + [i for i in ids if i not in wanted][::20][:16]
    path = tmp_path_factory.mktemp("corpus") / "small.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for doc_id in keep:
            handle.write(json.dumps({"_id": doc_id, **corpus[doc_id]}) + "\n")
    return path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, small_corpus):
    """Run ``bmrag demo`` twice on the same index; returns (index dir, first output, second output)."""
    index = tmp_path_factory.mktemp("demo_index")
    outputs = []
    for _ in range(2):
        capture = _Capture()
        with capture:
            code = cli.main(["demo", "--terminal", "--index", str(index), "--corpus", str(small_corpus),
                             "--no-progress"])
        assert code == 0, capture.err
        outputs.append(capture.out)
    return index, outputs[0], outputs[1]


class _Capture:
    """Capture stdout/stderr around a CLI call (capsys cannot be module-scoped)."""

    def __enter__(self):
        import contextlib
        import io

        self._out, self._err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self._out))
        self._stack.enter_context(contextlib.redirect_stderr(self._err))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        self.out, self.err = self._out.getvalue(), self._err.getvalue()
        return False


def _first_hits(output: str) -> list[str]:
    """Node id of the first passage printed under each question."""
    firsts, after_question = [], False
    for line in output.splitlines():
        if line.startswith("Q") and ". " in line:
            after_question = True
        elif after_question and line.strip().startswith("1. ["):
            firsts.append(line.split("[", 1)[1].split("]", 1)[0])
            after_question = False
    return firsts


def test_demo_prints_the_model_and_answers_the_questions(demo_run):
    _, first, _ = demo_run
    assert MODEL_LINE in first
    for number, question in enumerate(DEMO_QUESTIONS, start=1):
        assert f"Q{number}. {question}" in first
    firsts = [hit.split("#")[0] for hit in _first_hits(first)]
    assert len(firsts) == 3
    assert firsts[0] in STROKE and firsts[1] in ASTHMA and firsts[2] == STATINS_AF
    assert "docs/s" in first
    assert "Scores are cosine similarities" in first


def test_demo_rerun_adds_nothing(demo_run):
    _, first, second = demo_run
    assert "0 added" in second and "docs/s" not in second
    assert _first_hits(first) == _first_hits(second)


def test_search_uses_the_model_recorded_in_the_index(demo_run, capsys):
    index, _, _ = demo_run
    assert cli.main(["search", "wheezing and chest tightness at night", "--index", str(index), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "Retriever model: all-MiniLM-L6-v2 (recorded in the index manifest" in out
    hits = [line for line in out.splitlines() if line.strip().startswith(("1. [", "2. [", "3. ["))]
    assert len(hits) == 2 and hits[0].split("[", 1)[1].split("#")[0] in ASTHMA


def test_demo_refuses_an_index_built_with_another_model(demo_run, small_corpus, tiny_llama_dir, capsys):
    index, _, _ = demo_run
    code = cli.main(["demo", "--terminal", "--index", str(index), "--corpus", str(small_corpus), "--model",
                     str(tiny_llama_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "was built with model 'all-MiniLM-L6-v2'" in err and str(tiny_llama_dir) in err


def test_index_command_with_another_model_and_search_reloads_its_recipe(tmp_path, tiny_llama_dir, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = [{"_id": f"d{i}", "title": f"Paper {i}", "text": text}
            for i, text in enumerate(["Aspirin reduces colorectal cancer risk.", "Insulin resistance predicts "
                                      "type 2 diabetes.", "Sepsis worsens renal failure in intensive care units."])]
    (corpus / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    args = ["index", "--corpus", str(corpus), "--index", str(tmp_path / "idx"), "--model", str(tiny_llama_dir),
            "--no-progress"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"Retriever model: {tiny_llama_dir} (chosen with --model)" in out
    assert "Indexed 3 documents (3 passages)" in out and "docs/s" in out
    assert cli.main(args) == 0
    assert "all 3 documents already indexed, 0 added" in capsys.readouterr().out
    assert cli.main(["search", "Aspirin reduces colorectal cancer risk.", "--index", str(tmp_path / "idx"),
                     "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert f"Retriever model: {tiny_llama_dir} (recorded in the index manifest" in out
    assert "Scores are dot products" in out
    assert sum(line.strip().startswith(("1. [", "2. [", "3. [")) for line in out.splitlines()) == 3


def test_search_without_an_index_fails_clearly(tmp_path, capsys):
    assert cli.main(["search", "anything", "--index", str(tmp_path / "none")]) == 2
    assert "no index directory here" in capsys.readouterr().err


def test_bundled_corpus_covers_consumer_and_clinical_questions_with_titles_and_licences():
    assert DEMO_CORPUS.stat().st_size < 12_000_000
    corpus, label = read_documents(None)
    assert label == "the bundled sample corpus" and len(corpus) == 35_443
    sources = {}
    for doc in corpus.values():
        source = doc["metadata"]["source"].split("/")[0]
        sources[source] = sources.get(source, 0) + 1
        assert doc["metadata"]["license"] in {"MIT", "CC-BY-4.0", "ODC-By-1.0", "CC-BY-2.5 (BioASQ terms of use)"}
        assert doc["text"].strip() or source == "BioASQ" and doc["title"].strip()  # 529 BioASQ snippets are titles
        assert doc["title"].strip() or doc["metadata"].get("display_title", "").strip()  # no "no title" cards
    assert sources == {"PubMedQA": 1_000, "MedQuAD": 15_811, "BioASQ": 13_449, "SciFact": 5_183}
    assert STROKE | ASTHMA | {STATINS_AF} <= set(corpus)
    # The startup documents of `bmrag demo` hold the sample questions' answers and every source.
    order = priority_order(corpus)
    assert sorted(order) == sorted(corpus)
    first = order[:STARTUP_DOCUMENTS]
    assert STROKE | ASTHMA | {STATINS_AF} <= set(first)
    assert {corpus[d]["metadata"]["source"].split("/")[0] for d in first} == set(sources)
    pubmedqa = [corpus[i]["metadata"] for i in corpus if i.startswith("pubmedqa-")]
    assert all(meta["pmid"].isdigit() for meta in pubmedqa)
    assert all(1900 < meta["year"] < 2030 for meta in pubmedqa if "year" in meta)  # year only when known


@pytest.mark.skipif(not (SHARED_DATA / "medquad").is_dir(), reason="needs the shared data folder")
def test_rebuilding_the_corpus_reproduces_the_recorded_file(tmp_path):
    # The new full corpus is not bundled until its prebuilt vectors ship (issue 13); its bytes are pinned.
    builder = _load_builder()
    out = tmp_path / "demo.jsonl.gz"
    assert builder.main(["--data", str(SHARED_DATA), "--out", str(out)]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == builder.EXPECTED_SHA256


def test_corpus_files_are_validated_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "fine"}\n{"_id": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'text'"):
        read_documents(bad)
    with pytest.raises(DataError, match="no such corpus"):
        read_documents(tmp_path / "missing.jsonl.gz")


def test_model_note_and_default_index_dir(monkeypatch, tmp_path):
    assert "untrained decoder" in model_note("gemma-3-270m", "option")
    assert "far weaker than all-MiniLM-L6-v2" in model_note("bmrag-mini", "option")
    assert model_note("BMRetriever/BMRetriever-410M", "option").endswith("(chosen with --model)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_index_dir() == tmp_path / "bmrag" / "index" / "demo"


@pytest.mark.slow
def test_full_demo_on_the_bundled_corpus(tmp_path, capsys):
    """The command users run: all 350 bundled documents (~1-2 min on 2 CPU cores)."""
    assert cli.main(["demo", "--terminal", "--index", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert MODEL_LINE in out and "Indexed 350 documents" in out
    firsts = [hit.split("#")[0] for hit in _first_hits(out)]
    assert firsts[0] in STROKE and firsts[1] in ASTHMA and firsts[2] == STATINS_AF
