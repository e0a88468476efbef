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


# ------------------------------------------------------------------------------------------ grounded answers
def test_abstention_scores_count_abstentions_on_unanswerable_questions_as_hits():
    from bmrag.evaluation.rag_metrics import abstention_scores

    # 3 answerable (one wrongly abstained), 4 unanswerable (three abstained).
    scores = abstention_scores([False, False, False, True, True, True, True],
                               [True, False, False, True, True, False, True])
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (3, 1, 1, 2)
    assert scores["abstention_precision"] == 0.75 and scores["abstention_recall"] == 0.75
    assert scores["false_abstention_rate"] == pytest.approx(1 / 3)
    none = abstention_scores([True, False], [False, False])  # never abstained: precision undefined
    assert none["abstention_precision"] is None and none["abstention_recall"] == 0.0
    with pytest.raises(ValueError, match="2 labels for 1 abstention decisions"):
        abstention_scores([True, False], [True])


def test_latency_summary_interpolates_percentiles():
    from bmrag.evaluation.rag_metrics import latency_summary

    lat = latency_summary([float(v) for v in range(20, 0, -1)])  # 1..20 s, unordered
    # rank (n - 1) * q: p50 -> 9.5 -> 10.5 s, p95 -> 18.05 -> 19.05 s
    assert lat["p50_s"] == pytest.approx(10.5) and lat["p95_s"] == pytest.approx(19.05)
    assert lat["n"] == 20 and lat["max_s"] == 20.0 and lat["mean_s"] == pytest.approx(10.5)
    assert latency_summary([])["p95_s"] is None
    with pytest.raises(ValueError, match="finite and >= 0"):
        latency_summary([0.1, -1.0])


def test_not_verbatim_checks_each_quote_against_the_passage_it_cites():
    from bmrag.evaluation.rag_metrics import not_verbatim

    passages = {1: "Aspirin inhibits\n COX-1. It is old.", 2: "Metformin lowers glucose."}
    assert not_verbatim([("Aspirin inhibits COX-1.", 1), ("Metformin lowers glucose.", 2)], passages) == []
    # in passage 2, cited as [1]; a paraphrase; a passage number that was never given
    assert not_verbatim([("Metformin lowers glucose.", 1), ("Aspirin blocks COX-1.", 1), ("It is old.", 3)],
                        passages) == ["Metformin lowers glucose.", "Aspirin blocks COX-1.", "It is old."]


def test_answer_mode_defaults_to_generative_with_a_generator_and_refuses_contradictions():
    from bmrag.evaluation.rag_grounded import resolve_answer_mode

    assert resolve_answer_mode(None, "local") == "generative" and resolve_answer_mode(None, None) is None
    assert resolve_answer_mode("extractive", None) == "extractive"
    with pytest.raises(ValueError, match="loads no generator"):
        resolve_answer_mode("extractive", "local")
    with pytest.raises(ValueError, match="needs a generator"):
        resolve_answer_mode("generative", None)
    with pytest.raises(ValueError, match="answer mode must be one of extractive, generative"):
        resolve_answer_mode("abstractive", None)


def test_sentence_support_refuses_an_extractive_answer_that_is_not_verbatim():
    from types import SimpleNamespace

    from bmrag.evaluation.rag_grounded import sentence_support

    evidence = [SimpleNamespace(number=1, text="Aspirin inhibits COX-1. It is old.")]
    good = SimpleNamespace(question="q", status="answered", evidence=evidence,
                           quotes={"sentences": [{"text": "Aspirin inhibits COX-1.", "passage": 1}]})
    assert sentence_support(good, "extractive") == (1, 0)
    bad = SimpleNamespace(**{**vars(good), "quotes": {"sentences": [{"text": "Aspirin cures pain.", "passage": 1}]}})
    with pytest.raises(RuntimeError, match="not verbatim in its passage: 'Aspirin cures pain.'"):
        sentence_support(bad, "extractive")
    assert sentence_support(SimpleNamespace(**{**vars(good), "status": "abstained"}), "extractive") is None
    generated = SimpleNamespace(attribution={"sentences": [{}, {}, {}]}, unsupported=["x"])
    assert sentence_support(generated, "generative") == (3, 1)


def test_grounding_metrics_pool_sentences_and_score_abstention_per_kind():
    from types import SimpleNamespace

    from bmrag.evaluation.rag_grounded import UnanswerableRecord, grounding_metrics

    records = [SimpleNamespace(status="answered", metrics={"sentences_judged": 3, "sentences_unsupported": 1,
                                                           "rouge_l": 0.5}, timings={"total": 1.0}, unmentioned=[]),
               SimpleNamespace(status="partially_supported", timings={"total": 3.0}, unmentioned=["children"],
                               metrics={"sentences_judged": 1, "sentences_unsupported": 1, "rouge_l": 0.1}),
               SimpleNamespace(status="abstained", metrics={"rouge_l": 0.0}, timings={"total": 2.0}, unmentioned=[])]
    unanswerable = [UnanswerableRecord("a", "q", "gold_removed", "abstained", "extractive", None, [], 1, 0.9),
                    UnanswerableRecord("b", "q", "gold_removed", "answered", "extractive", "x", [], 1, 0.1,
                                       ["dementia"]),
                    UnanswerableRecord("c", "q", "other_domain", "abstained", "extractive", None, [], 0, 0.99)]
    g = grounding_metrics(records, unanswerable)
    assert g["unsupported_sentence_rate"] == 0.5 and g["sentences_judged"] == 4  # 2 of 4, not mean(1/3, 1)
    assert g["rouge_l_answered"] == pytest.approx(0.3)  # the abstention's 0.0 is left out
    a = g["abstention"]
    assert (a["tp"], a["fp"], a["fn"]) == (2, 1, 1) and a["abstention_precision"] == pytest.approx(2 / 3)
    assert a["recall_gold_removed"] == 0.5 and a["recall_other_domain"] == 1.0 and a["n_other_domain"] == 1
    assert g["latency"]["p50_s"] == 2.0 and g["unanswerable_status_counts"] == {"abstained": 2, "answered": 1}
    assert "abstention" not in grounding_metrics(records, None)
    # Of the answers given: 1 of 2 answerable flagged, 1 of 1 gold-removed, no other-domain answer to judge.
    assert g["unmentioned_flagged"] == {"answerable": {"answered": 2, "flagged": 1, "rate": 0.5},
                                        "gold_removed": {"answered": 1, "flagged": 1, "rate": 1.0},
                                        "other_domain": {"answered": 0, "flagged": 0, "rate": None}}
    assert list(grounding_metrics(records, None)["unmentioned_flagged"]) == ["answerable"]


MEDQUAD = [  # (uid, focus, qtype, question, answer)
    ("1_CancerGov_QA/0000001#1", "Topic A", "information", "What is (are) Topic A ?", "Topic A is a rash."),
    ("1_CancerGov_QA/0000001#2", "Topic A", "symptoms", "What are the symptoms of Topic A ?", "It itches."),
    ("2_GARD_QA/0000009#1", "topic a", "information", "What is Topic A ?", "Topic A is a skin rash."),
    ("2_GARD_QA/0000009#2", "Topic A", "treatment", "How to treat Topic A ?", "It itches."),  # repeated answer
    ("10_MPlus_ADAM_QA/0000002#1", "Topic A", "information", "What is (are) Topic A ?", ""),  # no answer text
]


def _medquad_root(tmp_path, extra_topics):
    root = tmp_path / "data"
    (root / "medquad").mkdir(parents=True)
    rows = list(MEDQUAD) + [(f"3_GHR_QA/{i:07d}#1", focus, "information", f"What is {focus} ?", f"{focus} is rare.")
                            for i, focus in enumerate(extra_topics)]
    with gzip.open(root / "medquad" / "medquad.jsonl.gz", "wt", encoding="utf-8") as handle:
        for uid, focus, qtype, question, answer in rows:
            handle.write(json.dumps({"uid": uid, "focus": focus, "qtype": qtype, "question": question,
                                     "answer": answer, "source": uid.split("_")[1], "url": ""}) + "\n")
    return root


def _calibration_bucket(focus):  # the rule in evals/abstention_calibration.py, written out independently
    import hashlib

    return int(hashlib.sha256(focus.lower().encode()).hexdigest()[:12], 16) % 10


def test_medquad_uses_only_topics_the_calibration_never_sees(tmp_path):
    from bmrag.evaluation import rag_splits

    topics = [f"Disease {i}" for i in range(40)]
    root = _medquad_root(tmp_path, topics)
    questions, split = rag_splits.load_medquad(root)
    held = {t for t in topics + ["Topic A"] if _calibration_bucket(t) >= 7}
    assert 0 < len(held) < 41 and {q.focus.lower() for q in questions} == {t.lower() for t in held}
    assert all(rag_splits.medquad_topic_is_held_out(d["metadata"]["focus"]) for d in split.corpus.values())
    assert [q.id for q in questions] == sorted(q.id for q in questions)
    assert split.stats["answered_pairs"] == len(topics) + 3  # empty and repeated answers dropped


def test_medquad_question_relevance_and_removal_follow_the_topic(tmp_path, monkeypatch):
    from bmrag.evaluation import rag_splits

    monkeypatch.setattr(rag_splits, "medquad_topic_is_held_out", lambda focus: True)
    questions, split = rag_splits.load_medquad(_medquad_root(tmp_path, []))
    assert sorted(split.corpus) == ["medquad-1-0000001-1", "medquad-1-0000001-2", "medquad-2-0000009-1"]
    (q,) = questions  # one question per topic ("Topic A" and "topic a" are one topic)
    assert q.remove_ids == sorted(split.corpus)  # the unanswerable variant loses every page of the topic
    qtype = split.corpus[q.relevant_ids[0]]["metadata"]["qtype"]
    assert all(split.corpus[d]["metadata"]["qtype"] == qtype for d in q.relevant_ids)
    page = min(q.remove_ids, key=rag_splits._h)  # the question is asked from one page of the topic
    assert page in q.relevant_ids and q.reference_answer == split.corpus[page]["text"]
    assert q.question == split.corpus[page]["metadata"]["question"]
    assert split.corpus["medquad-1-0000001-1"]["title"] == "Topic A: information"


def test_medquad_bad_line_names_file_and_line(tmp_path):
    from bmrag.evaluation import rag_splits

    root = _medquad_root(tmp_path, [])
    with gzip.open(root / "medquad" / "medquad.jsonl.gz", "at", encoding="utf-8") as handle:
        handle.write('{"question": "no uid"}\n')
    with pytest.raises(ValueError, match=r"medquad\.jsonl\.gz:6: not a MedQuAD record"):
        rag_splits.load_medquad(root)
    with pytest.raises(FileNotFoundError, match="MedQuAD question/answer pairs"):
        rag_splits.load_medquad(tmp_path / "nowhere")


def test_other_domain_questions_are_a_hash_ordered_prefix(tmp_path):
    from bmrag.evaluation import rag_splits

    (tmp_path / "scidocs").mkdir()
    (tmp_path / "scidocs" / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"s{i}", "text": f"Paper {i}"}) + "\n" for i in range(10)))
    three = rag_splits.other_domain_questions(tmp_path, 3)
    assert three == rag_splits.other_domain_questions(tmp_path, 5)[:3]
    assert [q[0] for q in three] == sorted((f"s{i}" for i in range(10)), key=rag_splits._h)[:3]
    assert rag_splits.other_domain_questions(tmp_path, 0) == []
    with pytest.raises(ValueError, match="10 queries, fewer than the 11"):
        rag_splits.other_domain_questions(tmp_path, 11)


def test_extractive_run_scores_grounding_and_the_unanswerable_split(data_root, tmp_path, no_network, capsys):
    from bmrag.cli import main

    (data_root / "scidocs").mkdir(exist_ok=True)
    (data_root / "scidocs" / "queries.jsonl").write_text(
        json.dumps({"_id": "cs1", "text": "A lock-free hash table for multicore processors"}) + "\n")
    code = main(["eval", "rag", "--dataset", "bioasq", "--data", str(data_root), "-k", "2", "--other-domain", "1",
                 "--index-dir", str(tmp_path / "index"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "rag__bioasq__all-MiniLM-L6-v2__extractive.json").read_text())
    assert result["chain"]["answer"] == "extractive" and result["chain"]["generator"] is None
    g = result["grounding"]
    answered = [r for r in result["per_question"] if r["status"] == "answered"]
    assert answered and g["unsupported_sentence_rate"] == 0.0  # verbatim quotes, checked per sentence
    assert g["sentences_judged"] == sum(r["metrics"]["sentences_judged"] for r in answered)
    assert all(r["metrics"]["citation_precision"] is not None for r in answered)
    rows = g["unanswerable_per_question"]
    assert [r["kind"] for r in rows] == ["gold_removed", "gold_removed", "other_domain"]
    relevant = {r["id"]: set(r["relevant_ids"]) for r in result["per_question"]}
    for row in rows[:2]:  # the copy of the index holds none of the evaluated questions' gold documents
        assert not set(row["given_ids"]) & set().union(*relevant.values())
    a = g["abstention"]
    assert a["n"] == 5 and a["n_gold_removed"] == 2 and a["n_other_domain"] == 1
    assert a["tp"] == sum(r["status"] == "abstained" for r in rows)
    assert g["latency"]["n"] == 2 and g["latency"]["p95_s"] >= g["latency"]["p50_s"] > 0
    # Each row says which question words its answer's sources leave out; the split summary counts those rows.
    for split, split_rows in (("answerable", result["per_question"]), ("gold_removed", rows[:2])):
        given = [r for r in split_rows if r["status"] in ("answered", "partially_supported")]
        assert g["unmentioned_flagged"][split] == {
            "answered": len(given), "flagged": sum(bool(r["unmentioned"]) for r in given),
            "rate": sum(bool(r["unmentioned"]) for r in given) / len(given) if given else None}
    assert all(r["unmentioned"] == [] for r in result["per_question"] if r["status"] == "abstained")
    assert result["environment"]["cpu"] and no_network == []
    assert "Grounding (extractive answers" in (tmp_path / "out" / "rag__bioasq__all-MiniLM-L6-v2__extractive.md"
                                               ).read_text()
    # A contradiction is refused before anything runs.
    assert main(["eval", "rag", "--dataset", "bioasq", "--data", str(data_root), "--answer", "extractive",
                 "--generator", "local"]) == 2
    assert "--answer extractive quotes the passages and loads no generator" in capsys.readouterr().err
