"""The clinical QA app's handlers (bmrag.app) and a gradio_client smoke test of the served app.

Real retrieval (all-MiniLM-L6-v2, real Chroma index of 24 bundled documents), real chain and citation check.
Most tests use a labelled test double for the LLM (tests/ui_helpers.py: fast, and it always cites [1], so the
panels can be checked exactly); the embedded SmolLM2-135M-Instruct answers for real in
``test_the_embedded_generator_streams_a_cited_answer``, and the generator-down tests point the real vLLM
backend at a closed local port.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from ui_helpers import ASTHMA, STATINS_AF, STATINS_QUESTION, STROKE, free_port, small_index, stand_in_generator

from bmrag import loading
from bmrag.app.config import AppConfig
from bmrag.app.gradio_app import EXAMPLE_QUESTIONS, launch
from bmrag.app.render import EvidenceRow, render_evidence
from bmrag.app.service import MAX_QUESTION_CHARS, DemoService, truncate_question
from bmrag.models import DEFAULT_API_BASE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return small_index(tmp_path_factory.mktemp("ui_index"))


@pytest.fixture(scope="module")
def service(index_dir):
    svc = DemoService(AppConfig(index_dir=index_dir, answer="generative"), generator=stand_in_generator())
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def down_service(index_dir):
    """The real vLLM backend pointed at a local port where nothing listens."""
    svc = DemoService(AppConfig(index_dir=index_dir, backend="vllm", api_base=f"http://127.0.0.1:{free_port()}/v1"))
    yield svc
    svc.close()


def _final(views):
    views = list(views)
    assert views[-1].final and all(not v.final for v in views[:-1])
    return views


def test_status_line_names_retriever_generator_and_chunks(service):
    line = service.status_line()
    assert "all-MiniLM-L6-v2" in line and "citing-stand-in (test double)" in line and "local backend" in line
    assert f"({service.chunks} chunks)" in line and service.chunks >= 24
    assert service.years is not None and service.pub_types == []


def test_answer_streams_then_cites_and_fills_the_evidence_panel(service):
    views = _final(service.ask(STATINS_QUESTION, top_k=3))
    streamed = [v.answer for v in views if v.status == "working" and v.answer.endswith("▌")]
    assert len(streamed) >= 3 and len(streamed[-1]) > len(streamed[0])  # grew token by token
    final = views[-1]
    assert final.status == "answered" and "[1]" in final.answer
    assert [row.number for row in final.evidence] == [1, 2, 3]
    first = final.evidence[0]
    assert first.cited and not any(row.cited for row in final.evidence[1:])
    assert first.source_id == f"PMID {STATINS_AF.split('-')[1]}"
    assert first.url == "https://pubmed.ncbi.nlm.nih.gov/21881325/"
    assert first.year == 2011 and first.corpus == "PubMedQA" and first.pub_type is None
    assert 0.35 <= first.score <= 1.0 and first.text
    panel = final.outputs()[1]
    assert 'href="https://pubmed.ncbi.nlm.nih.gov/21881325/"' in panel and 'data-cited="true"' in panel
    assert final.details["status"] == "answered" and final.details["sources"][0]["number"] == 1


def test_settings_reach_the_chain(service):
    final = _final(service.ask("What are the warning signs of a stroke?", top_k=2, year_min="2000", year_max=" "))[-1]
    # The stroke passages (MedQuAD) have no year: the year filter leaves only dated PubMedQA passages.
    assert final.details["retrieval"]["filters"] == "year >= 2000"
    assert final.details["retrieval"]["k"] == 2 and len(final.evidence) <= 2
    assert all(row.year is not None and row.year >= 2000 for row in final.evidence)
    final = _final(service.ask("What are the symptoms of asthma?", top_k=1, rerank=True))[-1]
    assert final.details["reranker"]["model"] == "all-MiniLM-L6-v2"
    assert final.evidence[0].source_id in ASTHMA
    final = _final(service.ask("What are the symptoms of asthma?", top_k=2, hybrid=True))[-1]
    assert final.details["retrieval"]["mode"].startswith("hybrid") and "retrieval: hybrid" in final.run_status
    assert final.status == "answered" and final.evidence[0].source_id in ASTHMA


def test_filters_that_match_nothing_say_why(service):
    final = _final(service.ask("What are the symptoms of asthma?", pub_types=["rct"]))[-1]
    assert final.status == "no_passages" and not final.evidence
    assert "no 'pub_type' metadata" in final.message


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"year_min": 2010, "year_max": 2000}, "year_min (2010) is after year_max (2000)"),
    ({"year_min": 2010.5}, "year from must be a whole year"),
    ({"year_max": "last year"}, "year to must be a year"),
    ({"top_k": 50}, "top-k must be between 1 and 10"),
])
def test_invalid_settings_are_messages(service, kwargs, expected):
    final = _final(service.ask("asthma", **kwargs))[-1]
    assert final.status == "bad_input" and expected in final.message and "Traceback" not in final.message


def test_empty_question_is_a_message(service):
    assert _final(service.ask("   "))[-1].message == "Type a question first."


def test_over_long_input_is_truncated_with_a_notice(service):
    long = "What are the warning signs of a stroke? " + "Please explain in detail. " * 300
    text, notice = truncate_question(long)
    assert len(text) <= MAX_QUESTION_CHARS and long.startswith(text) and not text.endswith(" ")
    assert f"only the first {len(text)} were used (limit {MAX_QUESTION_CHARS})" in notice
    assert truncate_question("short question") == ("short question", None)
    final = _final(service.ask(long))[-1]
    # The padded question may be answered or abstained on; either way the notice is shown with the evidence.
    assert final.status in ("answered", "abstained") and "only the first" in final.message
    assert final.details["ui"]["truncated"] and len(final.details["question"]) <= MAX_QUESTION_CHARS
    assert final.evidence[0].source_id in STROKE


def test_generator_down_shows_evidence_only_with_a_message(down_service):
    assert down_service.generator is None and "no LLM server answered" in down_service.generator_error
    assert "unavailable" in down_service.status_line()
    final = _final(down_service.ask("What are the warning signs of a stroke?"))[-1]
    assert final.status == "generator_unavailable"
    assert "No answer generated" in final.answer and "Generator unavailable" in final.message
    assert down_service.config.api_base in final.message and "bmrag serve-llm" in final.message
    assert final.evidence and final.evidence[0].source_id in STROKE and not final.evidence[0].cited


def test_empty_and_missing_index_say_how_to_build_one(tmp_path):
    from bmrag.index.open import load_embedding
    from bmrag.index.store import open_store

    open_store(tmp_path / "empty", load_embedding("all-MiniLM-L6-v2")).close()
    for where, expected in ((tmp_path / "empty", "is empty"), (tmp_path / "missing", "no index directory")):
        svc = DemoService(AppConfig(index_dir=where), generator=stand_in_generator())
        assert expected in svc.index_error and f"bmrag index --index {where}" in svc.index_error
        final = _final(svc.ask("What are the symptoms of asthma?"))[-1]
        assert final.status == "no_index" and f"bmrag index --index {where}" in final.message
        svc.close()


def test_evidence_html_is_escaped():
    row = EvidenceRow(number=1, cited=True, title="<script>x</script>", source_id="d1", url=None,
                      text="a < b & c", score=0.5)
    panel = render_evidence([row])
    assert "<script>" not in panel and "&lt;script&gt;" in panel and "a &lt; b &amp; c" in panel
    assert "year n/a" in panel and "type n/a" in panel


def test_concurrent_questions_all_answer(service):
    results: list[str] = []

    def one(question: str) -> None:
        results.append(list(service.ask(question))[-1].status)

    threads = [threading.Thread(target=one, args=(q,)) for q in EXAMPLE_QUESTIONS[:3] * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == ["answered"] * 6


def test_gradio_client_smoke(service):
    from gradio_client import Client

    port = free_port()
    app, url = launch(service, port=port, block=False, quiet=True)
    try:
        assert url.startswith(f"http://127.0.0.1:{port}")
        client = Client(url, verbose=False)
        answer, evidence, message, details, run_status, status = client.predict(
            STATINS_QUESTION, 3, False, False, "", "", [], api_name="/ask")
        assert "[1]" in answer and details["status"] == "answered"
        assert 'data-cited="true"' in evidence and "pubmed.ncbi.nlm.nih.gov/21881325" in evidence
        assert "chunks" in status and "Status: answered" in run_status
    finally:
        app.close()


def test_launcher_smoke_mode_exit_status(index_dir):
    """apps/clinical_qa.py --smoke, as CI runs it, with the generator down: evidence printed, exit 3."""
    port = free_port()
    proc = subprocess.run([sys.executable, str(REPO / "apps" / "clinical_qa.py"), "--index", str(index_dir),
                           "--backend", "vllm", "--api-base", f"http://127.0.0.1:{port}/v1",
                           "--smoke", "What are the symptoms of asthma?"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "status: generator_unavailable" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert any(doc in proc.stdout for doc in ASTHMA)


def test_app_defaults_match_the_library_and_building_the_cli_stays_light():
    from bmrag import generators

    assert DEFAULT_API_BASE == generators.DEFAULT_API_BASE
    code = "import sys, bmrag.cli; bmrag.cli.build_parser(); print('llama_index.core' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr  # `bmrag --help` must not import the generation stack


def test_the_embedded_generator_streams_a_cited_answer(index_dir):
    import torch

    from bmrag import generators

    threads = torch.get_num_threads()
    svc = DemoService(AppConfig(index_dir=index_dir, answer="generative"),
                      generator=generators.load_generator("local", max_new_tokens=40, threads=1))
    try:
        assert f"(greedy, {loading.default_dtype('cpu')}, up to 40 tokens)" in svc.status_line()
        views = _final(svc.ask("What are the symptoms of asthma?", top_k=3))
        final = views[-1]
        # Every shown sentence is supported; unsupported ones are listed apart (then the status says so).
        assert final.status in ("answered", "partially_supported"), final.details
        assert (final.status == "partially_supported") == bool(final.details["unsupported"])
        assert any(v.status == "working" and v.answer.endswith("▌") for v in views)  # it streamed
        cited = [row for row in final.evidence if row.cited]
        assert cited, final.answer  # SmolLM2 alone cited nothing in 12 of 12 benchmark answers: attribution did
        assert {row.source_id for row in cited} <= ASTHMA, final.answer
        assert {row.number: row.attributed for row in cited} == {
            s["number"]: s["attributed"] for s in final.details["sources"]}
        badges = final.outputs()[1].count("cited (word overlap)")
        assert badges == sum(row.attributed for row in cited)
    finally:
        svc.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quoting_service(index_dir):
    """The offline default: extractive answers, no generator loaded."""
    svc = DemoService(AppConfig(index_dir=index_dir))
    yield svc
    svc.close()


def test_extractive_default_quotes_the_evidence_and_shows_it_before_the_answer(quoting_service):
    assert quoting_service.config.answer == "extractive" and quoting_service.generator is None
    assert "sentences quoted from the sources" in quoting_service.status_line()
    views = _final(quoting_service.ask("What are the warning signs of a stroke?", top_k=3))
    early = [v for v in views if not v.final and v.evidence]
    assert early and early[0].answer == "_Checking the evidence..._"  # evidence shown before the answer is ready
    final = views[-1]
    assert final.status == "answered" and final.details["answer_mode"] == "extractive"
    by_number = {row.number: row for row in final.evidence}
    quoted = final.details["quotes"]["sentences"]
    assert 1 <= len(quoted) <= 4
    for sentence in quoted:  # every quoted sentence is verbatim in the passage it cites, and the answer shows it
        assert sentence["text"] in by_number[sentence["passage"]].text
        assert f"\u201c{sentence['text']}\u201d [{sentence['passage']}]" in final.answer
    assert {row.number for row in final.evidence if row.cited} == {s["passage"] for s in quoted}


def test_off_topic_question_abstains_and_still_shows_the_nearest_passages(quoting_service):
    final = _final(quoting_service.ask("What is the capital of France?", top_k=3))[-1]
    assert final.status == "abstained"
    assert "don't answer this question" in final.answer
    assert final.evidence and not any(row.cited for row in final.evidence)
