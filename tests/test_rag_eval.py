"""``bmrag eval rag``: decision parser, RAGAS ID-based context metrics, the no-OpenAI guard, tiny end-to-end runs.

The end-to-end runs use a tiny data root written in the real file formats (BEIR folders, PubMedQA's
``ori_pqal.json``, BioASQ's golden jsonl.gz), the real all-MiniLM-L6-v2 retriever, a real Chroma index and
the real chain; the local-generator run uses the embedded SmolLM2-135M-Instruct (slow marker).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import socket

import pytest

from bmrag.evaluation import rag

DOCS = {
    "1001": "Statins given before cardiac surgery reduced postoperative atrial fibrillation in randomised patients.",
    "1002": "Vitamin C deficiency causes scurvy, with bleeding gums and poor wound healing.",
    "1003": "Metformin lowers hepatic glucose production in type 2 diabetes.",
    "1004": "Aspirin irreversibly inhibits platelet cyclooxygenase-1.",
    "1005": "Smoking cessation lowers the risk of lung cancer over ten years.",
    "1006": "Hand washing reduces hospital-acquired infections.",
}
PUBMEDQA = {  # question, reference long answer, final decision
    "1001": ("Do statins before heart surgery prevent atrial fibrillation?",
             "Preoperative statins reduce postoperative atrial fibrillation.", "yes"),
    "1002": ("Is scurvy caused by vitamin C deficiency?", "Scurvy results from a lack of vitamin C.", "yes"),
}
BIOASQ = {  # id: (type, question, relevant PMIDs, ideal answer, exact answer)
    "5e0000000000000000000001": ("yesno", "Does aspirin inhibit cyclooxygenase-1?", ["1004"],
                                 "Yes, aspirin irreversibly inhibits COX-1.", "yes"),
    "5e0000000000000000000002": ("factoid", "Which drug lowers hepatic glucose production?", ["1003", "1006"],
                                 "Metformin.", [["metformin"]]),
}


def _write_beir(folder, queries, qrels):
    folder.mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as handle:
        for doc_id, text in DOCS.items():
            handle.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    lines = [json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()]
    (folder / "queries.jsonl").write_text("".join(lines))
    (folder / "qrels").mkdir()
    rows = [f"{q}\t{d}\t1" for q, docs in qrels.items() for d in docs]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag-data")
    _write_beir(root / "pubmedqa-retrieval", {f"q{p}": q for p, (q, _, _) in PUBMEDQA.items()},
                {f"q{p}": [p] for p in PUBMEDQA})
    (root / "pubmedqa").mkdir()
    (root / "pubmedqa" / "ori_pqal.json").write_text(json.dumps(
        {p: {"QUESTION": q, "LONG_ANSWER": a, "final_decision": d} for p, (q, a, d) in PUBMEDQA.items()}))
    _write_beir(root / "bioasq-snippets", {i: v[1] for i, v in BIOASQ.items()}, {i: v[2] for i, v in BIOASQ.items()})
    (root / "bioasq-qa").mkdir()
    with gzip.open(root / "bioasq-qa" / "taskb_golden_7b-11b.jsonl.gz", "wt", encoding="utf-8") as handle:
        for qid, (qtype, body, _, ideal, exact) in BIOASQ.items():
            handle.write(json.dumps({"id": qid, "type": qtype, "body": body, "ideal_answer": [ideal],
                                     "exact_answer": exact, "task": "8B"}) + "\n")
    return root


# ------------------------------------------------------------------------------------------ pure parts
@pytest.mark.parametrize("answer, expected", [
    ("Yes, statins reduce atrial fibrillation [1].", "yes"),
    ("no.", "no"),
    ("**Maybe**: the evidence is mixed [2].", "maybe"),
    ("Answer: No, it does not [1].", "no"),
    ('"Yes" [1]', "yes"),
    ("The answer is yes, according to [1]. No other source disagrees.", "yes"),  # first sentence only
    ("Statins reduce atrial fibrillation after surgery [1].", None),
    ("It is not clear whether yes or no [1].", None),  # two decision words: ambiguous
    ("I cannot answer this question from the given sources.", None),
    ("", None),
    (None, None),
    ("Yesterday's trial was negative.", None),  # whole words only
])
def test_parse_decision(answer, expected):
    assert rag.parse_decision(answer) == expected


def test_decision_scores_count_unparseable_as_wrong_and_report_the_majority_baseline():
    scores = rag.decision_scores(["yes", "yes", "no", "maybe"], ["yes", None, "yes", "maybe"])
    assert scores["accuracy"] == 0.5 and scores["accuracy_parseable"] == pytest.approx(2 / 3)
    assert scores["unparseable"] == 1 and scores["majority_class"] == "yes" and scores["majority_baseline"] == 0.5
    assert scores["predicted"] == {"yes": 2, "unparseable": 1, "maybe": 1}
    with pytest.raises(ValueError, match="2 gold labels for 1 predictions"):
        rag.decision_scores(["yes", "no"], ["yes"])


def test_id_based_context_precision_and_recall_follow_the_definition():
    # retrieved {a, b, c} (a repeated: distinct ids count once), relevant {a, d}: 1 hit.
    precision, recall = rag.id_context_scores(["a", "b", "a", "c"], ["a", "d"])
    assert precision == pytest.approx(1 / 3) and recall == pytest.approx(1 / 2)
    assert rag.id_context_scores(["d", "a"], ["a", "d"]) == (1.0, 1.0)
    assert rag.id_context_scores(["x"], ["a"]) == (0.0, 0.0)
    precision, recall = rag.id_context_scores([], ["a"])
    assert math.isnan(precision) and recall == 0.0  # nothing given: precision undefined, recall 0
    with pytest.raises(ValueError, match="without relevant ids"):
        rag.id_context_scores(["a"], [])


def test_citation_scores_compare_the_cited_passages_with_the_gold_and_the_cite_first_baseline():
    # evidence [1]=b, [2]=a; gold {a}: citing [2] is right, the always-[1] citer would be wrong.
    assert rag.citation_scores(["a"], ["b", "a"], ["a"]) == {
        "citation_rate": 1.0, "citation_precision": 1.0, "citation_precision_first_passage": 0.0}
    scores = rag.citation_scores(["b", "a"], ["b", "a"], ["a"])
    assert scores["citation_precision"] == 0.5 and scores["citation_precision_first_passage"] == 0.0
    assert rag.citation_scores([], ["a"], ["a"]) == {
        "citation_rate": 0.0, "citation_precision": None, "citation_precision_first_passage": None}


def test_result_file_names_say_when_attribution_was_off():
    base = {"dataset": {"name": "pubmedqa"}, "index": {"retriever": "all-MiniLM-L6-v2"},
            "chain": {"retrieval_mode": "dense", "min_support": 0.5,
                      "generator": {"backend": "local", "model": "SmolLM2-135M-Instruct"}}}
    assert rag.result_stem(base) == "rag__pubmedqa__all-MiniLM-L6-v2__local-SmolLM2-135M-Instruct"
    base["chain"]["min_support"] = None
    assert rag.result_stem(base).endswith("local-SmolLM2-135M-Instruct__no-attribution")
    base["chain"]["generator"] = None  # retrieval only: attribution does not apply
    assert rag.result_stem(base) == "rag__pubmedqa__all-MiniLM-L6-v2__none"


def test_openai_guard_refuses_clients_without_a_judge_and_restores_the_environment():
    import openai

    before = {k: os.environ.get(k) for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    with rag.openai_guard() as created:
        assert os.environ["OPENAI_API_KEY"] == "bmrag-no-openai-key"
        with pytest.raises(RuntimeError, match="RAGAS must not reach OpenAI"):
            openai.AsyncOpenAI()
        with pytest.raises(RuntimeError, match="no judge configured"):
            openai.OpenAI(base_url="http://127.0.0.1:8000/v1")
    assert len(created) == 2
    assert {k: os.environ.get(k) for k in before} == before
    openai.OpenAI(api_key="x", base_url="http://127.0.0.1:1/v1")  # restored: no guard outside

    with rag.openai_guard(["http://127.0.0.1:8000/v1"]):
        openai.AsyncOpenAI(base_url="http://127.0.0.1:8000/v1", api_key="EMPTY")  # the judge: allowed
        with pytest.raises(RuntimeError, match="api.openai.com"):
            openai.AsyncOpenAI(base_url="https://api.openai.com/v1", api_key="sk-x")


def test_questions_load_with_references_and_decisions(data_root):
    questions, retrieval = rag.load_rag_questions("pubmedqa", data_root)
    assert [q.id for q in questions] == ["q1001", "q1002"] and questions[0].relevant_ids == ["1001"]
    assert questions[0].decision == "yes" and questions[0].reference_answer.startswith("Preoperative statins")
    questions, _ = rag.load_rag_questions("bioasq", data_root)
    assert [q.decision for q in questions] == ["yes", None]  # only yes/no questions carry a decision
    assert questions[1].relevant_ids == ["1003", "1006"] and questions[1].reference_answer == "Metformin."
    with pytest.raises(KeyError, match="unknown RAG dataset"):
        rag.load_rag_questions("medqa", data_root)


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) every socket connection: the retrieval-only run must open none."""
    attempts = []
    original = socket.socket.connect

    def connect(self, address):
        if self.family == socket.AF_UNIX:
            return original(self, address)
        attempts.append(address)
        raise OSError(f"network blocked by the test: {address}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_retrieval_only_run_without_judge_writes_valid_json_and_opens_no_connection(data_root, tmp_path, no_network,
                                                                                    capsys):
    from bmrag.cli import main

    code = main(["eval", "rag", "--dataset", "bioasq", "--data", str(data_root), "--no-generate", "-k", "2",
                 "--index-dir", str(tmp_path / "index"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    path = tmp_path / "out" / "rag__bioasq__all-MiniLM-L6-v2__none.json"
    result = json.loads(path.read_text())
    assert (tmp_path / "out" / "rag__bioasq__all-MiniLM-L6-v2__none.md").is_file()
    assert result["schema"] == "bmrag.rag/1" and result["dataset"]["questions_evaluated"] == 2
    m = result["metrics"]
    assert m["faithfulness"] == m["answer_relevancy"] == rag.NO_JUDGE == "not run: no judge configured"
    assert result["judge"] == rag.NO_JUDGE and result["openai_clients_created"] == []
    assert "rouge_l" not in m and "decision" not in m  # nothing generated, nothing to score
    assert no_network == []
    rows = {r["id"]: r for r in result["per_question"]}
    aspirin = rows["5e0000000000000000000001"]
    assert aspirin["given_ids"][0] == "1004"  # the one relevant abstract comes first
    assert aspirin["metrics"]["context_recall_given"] == 1.0
    assert aspirin["metrics"]["context_precision_given"] == pytest.approx(1 / len(aspirin["given_ids"]))
    means = [r["metrics"]["context_recall_top_k"] for r in rows.values()]
    assert m["context_recall_top_k"] == pytest.approx(sum(means) / 2)
    assert result["command"][:3] == ["bmrag", "eval", "rag"] and "--no-generate" in result["command"]


@pytest.mark.slow
def test_local_generator_run_scores_answers_and_decisions(data_root, tmp_path):
    result = rag.evaluate_rag("pubmedqa", data=data_root, generator="local", k=2, limit=1, threads=1,
                              max_new_tokens=24, index_dir=tmp_path / "index", show_progress=False)
    assert result["dataset"]["questions_evaluated"] == 1 and result["chain"]["generator"]["backend"] == "local"
    m = result["metrics"]
    assert 0.0 <= m["rouge_l"] <= 1.0 and 0.0 <= m["string_similarity"] <= 1.0
    assert m["decision"]["n"] == 1 and m["decision"]["majority_baseline"] == 1.0
    row = result["per_question"][0]
    assert row["answer"] and row["decision_predicted"] == rag.parse_decision(row["answer"])
    assert set(row["cited_ids"]) <= set(row["given_ids"]) and m["citation_rate"] == float(bool(row["cited_ids"]))
    json.dumps(result)  # JSON-serialisable
    out, md = rag.write_rag_result(result, tmp_path / "out")
    assert out.name == "rag__pubmedqa__all-MiniLM-L6-v2__local-SmolLM2-135M-Instruct.json" and md.is_file()
