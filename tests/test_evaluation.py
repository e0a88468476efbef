"""Evaluation harness: metrics (pytrec_eval), search, loaders and their errors, registry, BM25, leaderboard.

Fast and model-free; tests that load a real encoder are in test_evaluation_models.py.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from shared_data import SHARED_DATA

from bmrag.bm25 import BM25Baseline, bm25_pair_scores, tokenize
from bmrag.evaluation import datasets as ds
from bmrag.evaluation.leaderboard import build_leaderboard, load_results, render_readme
from bmrag.evaluation.metrics import evaluate_run, filter_identical_ids, top_k
from bmrag.evaluation.run import evaluate_retrieval, evaluate_sts, result_filename
from bmrag.evaluation.search import exact_search
from bmrag.evaluation.sts import correlations
from bmrag.index.readers import DataError

DOCS = {
    "d1": ("Aspirin and colorectal cancer", "Regular aspirin use lowers the risk of colorectal cancer in adults."),
    "d2": ("Insulin", "Insulin is a hormone made by the pancreas that regulates blood glucose."),
    "d3": ("COVID-19 vaccines", "mRNA vaccines against SARS-CoV-2 reduce hospital admission for COVID-19."),
    "d4": ("Statins", "Statins lower LDL cholesterol and reduce cardiovascular events."),
    "d5": ("Malaria", "Malaria is transmitted by Anopheles mosquitoes and caused by Plasmodium parasites."),
    "d6": ("Vitamin D", "Vitamin D supplementation improves bone mineral density in elderly women."),
    "d7": ("Smoking", "Cigarette smoking is the leading cause of lung cancer."),
    "d8": ("Asthma", "Inhaled corticosteroids control airway inflammation in asthma."),
}
QUERIES = {
    "q1": "Does aspirin prevent colorectal cancer?",
    "q2": "Which hormone regulates blood glucose?",
    "q3": "Do COVID-19 vaccines reduce hospital admission?",
    "q4": "How is malaria transmitted?",
    "q9": "A query that is not judged",
}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d5": 1}}


def write_beir(folder: Path, docs=DOCS, queries=QUERIES, qrels=QRELS, *, gz: bool = False, split: str = "test"
               ) -> Path:
    """A tiny BEIR folder: corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in docs.items())
    if gz:
        with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        (folder / "corpus.jsonl").write_text(lines, encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n"
                                                  for q, t in queries.items()), encoding="utf-8")
    (folder / "qrels").mkdir(exist_ok=True)
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, docs_ in qrels.items() for d, g in docs_.items()]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------- metrics
def test_perfect_run_scores_one():
    run = {"q1": {"d1": 3.0, "d2": 1.0}, "q2": {"d2": 2.0, "d1": 1.0}}
    scores = evaluate_run({"q1": {"d1": 1}, "q2": {"d2": 1}}, run)
    assert scores.mean == {"ndcg@10": 1.0, "recall@100": 1.0, "map@10": 1.0, "mrr@10": 1.0}
    assert scores.per_query["q2"]["ndcg@10"] == 1.0


def test_reversed_run_matches_hand_computed_values():
    # q1: the only relevant doc is ranked 3rd of 3.
    #   nDCG@10 = (1/log2(4)) / (1/log2(2)) = 0.5; AP = P@3 = 1/3; RR = 1/3; recall@100 = 1.
    # q2: graded {a: 2, b: 1}, ranking b, c, a. trec_eval uses linear gains:
    #   DCG = 1/log2(2) + 0 + 2/log2(4) = 2; IDCG = 2/log2(2) + 1/log2(3); AP = (1/1 + 2/3) / 2 = 5/6.
    qrels = {"q1": {"d1": 1}, "q2": {"a": 2, "b": 1}}
    run = {"q1": {"d3": 3.0, "d2": 2.0, "d1": 1.0}, "q2": {"b": 3.0, "c": 2.0, "a": 1.0}}
    scores = evaluate_run(qrels, run)
    q1, q2 = scores.per_query["q1"], scores.per_query["q2"]
    assert q1["ndcg@10"] == pytest.approx(0.5)
    assert q1["map@10"] == pytest.approx(1 / 3)
    assert q1["mrr@10"] == pytest.approx(1 / 3)
    assert q1["recall@100"] == pytest.approx(1.0)
    assert q2["ndcg@10"] == pytest.approx(2 / (2 + 1 / math.log2(3)))
    assert q2["map@10"] == pytest.approx(5 / 6)
    assert q2["mrr@10"] == pytest.approx(1.0)
    assert scores.mean["ndcg@10"] == pytest.approx((0.5 + 2 / (2 + 1 / math.log2(3))) / 2)


def test_cutoffs_are_applied():
    # Relevant doc at rank 11: invisible to @10 metrics, found by recall@100.
    run = {"q": {f"x{i:02d}": 100.0 - i for i in range(10)} | {"rel": 50.0}}
    scores = evaluate_run({"q": {"rel": 1}}, run)
    assert scores.mean["ndcg@10"] == 0.0
    assert scores.mean["mrr@10"] == 0.0
    assert scores.mean["map@10"] == 0.0
    assert scores.mean["recall@100"] == 1.0
    assert evaluate_run({"q": {"rel": 1}}, run, metrics=["mrr@11"]).mean["mrr@11"] == pytest.approx(1 / 11)


def test_queries_without_hits_count_as_zero():
    scores = evaluate_run({"q1": {"d1": 1}, "q2": {"d2": 1}}, {"q1": {"d1": 1.0}})
    assert scores.mean["ndcg@10"] == pytest.approx(0.5)
    assert scores.n_queries == 2 and scores.n_queries_without_hits == 1


def test_identical_id_filter_is_explicit_and_does_not_mutate():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 5.0, "d1": 1.0}}
    before = copy.deepcopy(run)
    kept = evaluate_run(qrels, run, ignore_identical_ids=False)
    dropped = evaluate_run(qrels, run, ignore_identical_ids=True)
    assert kept.mean["ndcg@10"] == pytest.approx(1 / math.log2(3))  # the self-hit pushes d1 to rank 2
    assert dropped.mean["ndcg@10"] == 1.0
    assert dropped.ignore_identical_ids and not kept.ignore_identical_ids
    assert run == before
    filtered = filter_identical_ids(run)
    assert filtered == {"q1": {"d1": 1.0}} and run == before


def test_top_k_uses_trec_eval_tie_order():
    assert list(top_k({"q": {"a": 1.0, "b": 1.0, "c": 2.0}}, 2)["q"]) == ["c", "b"]


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match=r"unknown metric 'ndcg10'.*ndcg@K"):
        evaluate_run({"q": {"d": 1}}, {"q": {"d": 1.0}}, metrics=["ndcg10"])


# ---------------------------------------------------------------------------------------------- search
def test_exact_search_equals_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    queries, docs = rng.normal(size=(7, 16)).astype(np.float32), rng.normal(size=(53, 16)).astype(np.float32)
    qids, dids = [f"q{i}" for i in range(7)], [f"d{i}" for i in range(53)]
    run = exact_search(queries, docs, qids, dids, top_k=5, query_chunk=3, doc_chunk=7)
    scores = queries @ docs.T
    for i, qid in enumerate(qids):
        expected = [dids[j] for j in np.argsort(-scores[i])[:5]]
        assert list(run[qid]) == expected
        assert run[qid][expected[0]] == pytest.approx(float(scores[i].max()), rel=1e-5)


def test_exact_search_cosine_ignores_vector_length():
    docs = np.array([[1.0, 0.0], [10.0, 10.0]], dtype=np.float32)
    query = np.array([[1.0, 0.2]], dtype=np.float32)
    assert list(exact_search(query, docs, ["q"], ["a", "b"], score="dot")["q"])[0] == "b"
    assert list(exact_search(query, docs, ["q"], ["a", "b"], score="cosine")["q"])[0] == "a"
    with pytest.raises(ValueError, match="score must be 'dot' or 'cosine'"):
        exact_search(query, docs, ["q"], ["a", "b"], score="l2")


# ------------------------------------------------------------------------------------- loaders, errors
def test_load_retrieval_dataset_restricts_to_judged_queries_and_hashes(tmp_path):
    folder = write_beir(tmp_path / "tiny", gz=True)
    data = ds.load_retrieval_dataset(data=folder)
    assert data.name == "tiny" and data.spec is None
    assert set(data.queries) == set(QRELS)  # q9 has no judgement
    assert data.stats["n_docs"] == len(DOCS)
    assert data.hashes["corpus"] == hashlib.sha256((folder / "corpus.jsonl.gz").read_bytes()).hexdigest()


def test_missing_qrels_names_the_file(tmp_path):
    folder = write_beir(tmp_path / "tiny", split="train")
    with pytest.raises(DataError, match=r"qrels/test\.tsv: file not found \(splits available: train\)"):
        ds.load_retrieval_dataset(data=folder)


def test_missing_corpus_of_a_beir_set_says_how_to_get_it(tmp_path):
    folder = tmp_path / "root" / "nfcorpus"
    write_beir(folder)
    (folder / "corpus.jsonl").unlink()
    url = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/nfcorpus.zip"
    with pytest.raises(DataError, match=rf"nfcorpus: corpus\.jsonl\(\.gz\) not found in .*nfcorpus; "
                                        rf"download {url} \(needs network\) and pass --data"):
        ds.load_retrieval_dataset("nfcorpus", tmp_path / "root")


@pytest.mark.skipif(not (SHARED_DATA / "nfcorpus").is_dir(), reason="shared data not present")
def test_shared_nfcorpus_has_no_corpus_and_says_so():
    with pytest.raises(DataError, match=r"nfcorpus: corpus\.jsonl\(\.gz\) not found .*nfcorpus\.zip"):
        ds.load_retrieval_dataset("nfcorpus", SHARED_DATA)


def test_malformed_corpus_line_names_file_and_line(tmp_path):
    folder = write_beir(tmp_path / "tiny")
    lines = (folder / "corpus.jsonl").read_text().splitlines()
    lines[1] = '{"_id": "d2", "title": broken'
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: malformed record"):
        ds.load_retrieval_dataset(data=folder)


def test_judged_query_missing_from_queries_file_is_an_error(tmp_path):
    folder = write_beir(tmp_path / "tiny", qrels={**QRELS, "q404": {"d1": 1}})
    with pytest.raises(DataError, match=r"test\.tsv: 1 judged queries are not in queries\.jsonl \(first: q404\)"):
        ds.load_retrieval_dataset(data=folder)


def test_resolve_dataset_from_root_env_and_errors(tmp_path, monkeypatch):
    write_beir(tmp_path / "root" / "scifact")
    folder, spec = ds.resolve_dataset("scifact", tmp_path / "root")
    assert folder == tmp_path / "root" / "scifact" and spec.task == "scifact"
    monkeypatch.setenv("BMRAG_DATA", str(tmp_path / "root"))
    assert ds.resolve_dataset("scifact")[0] == folder
    monkeypatch.delenv("BMRAG_DATA")
    # Without the variable the root is ../shared/data beside the repository; where that is missing, say so.
    from bmrag import loading

    assert loading.data_root() == (loading.REPOSITORY_DATA if loading.REPOSITORY_DATA.is_dir() else None)
    monkeypatch.setattr(loading, "REPOSITORY_DATA", tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"pass --data DIR .* set \$BMRAG_DATA \(default: .*nowhere, which does not"):
        ds.resolve_dataset("scifact")
    with pytest.raises(KeyError, match=r"unknown dataset 'scifakt'. Did you mean 'scifact'"):
        ds.get_dataset("scifakt")
    with pytest.raises(FileNotFoundError, match=r"trec-covid: folder .* not found; download .*trec-covid\.zip"):
        ds.resolve_dataset("trec-covid", tmp_path / "root")


def test_registry_instructions_and_published_numbers_are_consistent():
    from bmrag.prompts import INSTRUCTIONS

    for spec in ds.DATASETS.values():
        assert spec.task in INSTRUCTIONS, spec.name
        assert bool(spec.published) != spec.derived, spec.name  # paper sets have numbers, derived sets none
    assert ds.DATASETS["scifact"].published["BMRetriever/BMRetriever-2B"] == 0.760
    assert ds.DATASETS["pubmedqa-retrieval"].task == "pubmedqa"
    assert ds.DATASETS["bioasq-snippets"].task == "bioasq"


def test_download_beir_checks_md5_and_unzips(tmp_path):
    source = write_beir(tmp_path / "src" / "scifact")
    archive = tmp_path / "scifact.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in source.rglob("*"):
            if path.is_file():
                zipped.write(path, path.relative_to(tmp_path / "src"))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(OSError, match=r"md5 .* does not match the published 0+; not extracting"):
        ds.download_beir("scifact", tmp_path / "bad", url=archive.as_uri(), md5="0" * 32)
    target = ds.download_beir("scifact", tmp_path / "dest", url=archive.as_uri(), md5=md5)
    assert target == tmp_path / "dest" / "scifact"
    assert ds.load_retrieval_dataset(data=target).stats["n_docs"] == len(DOCS)


# ------------------------------------------------------------------------------------------------ BM25
def test_bm25_tokenizer():
    assert tokenize("The p53 Pathway, and IL-6!") == ["p53", "pathway", "il", "6"]


def test_bm25_ranks_the_matching_document_first(tmp_path):
    retriever = BM25Baseline()
    retriever.index({d: {"title": t, "text": x} for d, (t, x) in DOCS.items()})
    run = retriever.search(QUERIES)
    for qid, docs in QRELS.items():
        assert next(iter(run[qid])) == next(iter(docs)), qid
    assert all(score > 0 for hits in run.values() for score in hits.values())


def test_bm25_end_to_end_writes_a_result(tmp_path):
    folder = write_beir(tmp_path / "tiny")
    result = evaluate_retrieval("bm25", data=folder, out=tmp_path / "out.json", show_progress_bar=False)
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["metrics"] == result["metrics"] and saved["metrics"]["ndcg@10"] == 1.0
    assert saved["model"]["k1"] == 0.9 and saved["model"]["b"] == 0.4 and "bm25s" in saved["model"]["implementation"]
    assert saved["search"]["ignore_identical_ids"] is True
    assert result_filename(saved) == "tiny__bm25__na.json"


def test_unknown_keyword_arguments_are_rejected_with_the_valid_names(tmp_path):
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) 'topk' \(did you mean 'top_k'\?\); valid: "
                                        r"dataset, data, split"):
        evaluate_retrieval("bm25", data=tmp_path, topk=10)
    with pytest.raises(TypeError, match=r"evaluate_sts\(\) got unknown keyword argument\(s\) 'normalise'"):
        evaluate_sts("bm25", normalise=True)


def test_bm25_pair_scores_follow_word_overlap():
    pairs = [("aspirin lowers cancer risk", "aspirin lowers cancer risk"),
             ("aspirin lowers cancer risk", "aspirin raises blood pressure"),
             ("aspirin lowers cancer risk", "malaria mosquitoes bite")]
    scores = bm25_pair_scores(pairs)
    assert scores[0] > scores[1] > scores[2] == 0.0


# ------------------------------------------------------------------------------------------------- STS
def test_correlations_match_definitions():
    gold = [0.0, 1.0, 2.0, 3.0]
    assert correlations([0.1, 0.2, 0.3, 0.9], gold).spearman == pytest.approx(1.0)
    assert correlations([0.1, 0.2, 0.3, 0.9], gold).pearson == pytest.approx(float(np.corrcoef([0.1, 0.2, 0.3, 0.9],
                                                                                              gold)[0, 1]))
    assert correlations([4, 3, 2, 1], gold).spearman == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="constant input"):
        correlations([1, 1, 1, 1], gold)


def write_sts(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "biosses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def test_sts_loader_names_file_and_line(tmp_path):
    folder = write_sts(tmp_path / "biosses", [{"id": 1, "sentence1": "a", "sentence2": "b", "score": 1},
                                              {"id": 2, "sentence1": "a", "sentence2": "b"}])
    with pytest.raises(DataError, match=r"biosses\.jsonl:2: missing field 'score'"):
        ds.load_sts_dataset("biosses", folder)


def test_sts_bm25_result(tmp_path):
    rows = [{"id": i, "sentence1": s1, "sentence2": s2, "score": g} for i, (s1, s2, g) in enumerate([
        ("aspirin lowers cancer risk", "aspirin lowers cancer risk in adults", 4.0),
        ("aspirin lowers cancer risk", "aspirin raises blood pressure", 2.0),
        ("aspirin lowers cancer risk", "malaria mosquitoes bite at night", 0.0)])]
    folder = write_sts(tmp_path / "biosses", rows)
    result = evaluate_sts("bm25", data=folder, show_progress_bar=False)
    assert result["metrics"]["spearman"] == pytest.approx(1.0)
    assert result["dataset"]["name"] == "biosses" and len(result["per_pair"]) == 3


# ---------------------------------------------------------------------------------------- leaderboard
def test_leaderboard_separates_ours_from_published_and_is_reproducible(tmp_path):
    folder = write_beir(tmp_path / "data" / "scifact")
    results = tmp_path / "results"
    evaluate_retrieval("bm25", data=folder, out=results / "scifact__bm25__na.json", show_progress_bar=False)
    (results / "bench_encode.json").write_text('{"not": "a result"}')
    readme, plot = build_leaderboard(results)
    text = readme.read_text()
    ours, published = text.index("## Our runs"), text.index("## Published numbers")
    assert ours < published
    row = next(line for line in text.splitlines() if line.startswith("| BM25 (k1=0.9, b=0.4) |"))
    assert row.split("|")[2].strip() == "1.000"  # the tiny set is solved
    assert "| BMRetriever/BMRetriever-7B | 0.364 | 0.778 |" in text[published:]
    assert "BMRetriever-7B" not in text[ours:published]
    gate = "| bm25 on scifact ndcg@10 | `scifact__bm25__na.json` | 1.0000 | 0.6650 | +0.3350 | 0.01 | **no** |"
    assert gate in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(load_results(results)) == 1  # bench_encode.json is not a result
    from bmrag.cli import main

    assert main(["eval", "leaderboard", "--results", str(results)]) == 0  # the command `make eval` runs
    assert readme.read_text() == text
    assert render_readme([]).count("No results yet.") == 1


def test_leaderboard_reports_invalid_json(tmp_path):
    (tmp_path / "broken.json").write_text('{\n "schema": \n')
    with pytest.raises(ValueError, match=r"broken\.json:3: invalid JSON"):
        load_results(tmp_path)
