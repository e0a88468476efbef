"""Abstention (bmrag.qa.abstention): the logistic model against scikit-learn, the shipped calibration, errors.

The end-to-end check runs the real all-MiniLM-L6-v2 and the shipped calibration on a tiny evidence set.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bmrag.qa import abstention as ab
from bmrag.qa.extractive import ExtractiveAnswer, Passage, extract_answer, make_scorer


def _signals(**kw) -> ab.Signals:
    base = {"top_score": 0.5, "margin": 0.1, "best_sentence": 0.5, "sentence_coverage": 0.5, "passage_coverage": 0.5}
    return ab.Signals(**{**base, **kw})


def test_fit_logistic_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = (x @ np.array([1.5, -2.0, 0.5]) + 0.3 + rng.logistic(size=300) > 0).astype(float)
    l2 = 0.01
    weights, bias = ab.fit_logistic(x, y, l2=l2)
    # Same objective: mean log-loss + l2/2 |w|^2  <=>  |w|^2/2 + C * sum log-loss with C = 1 / (l2 n).
    ref = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(weights, ref.coef_[0], atol=1e-4)
    assert bias == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_precision_recall_counts_abstentions_on_unanswerable_questions():
    p = np.array([0.9, 0.8, 0.4, 0.2, 0.7])
    y = np.array([1, 0, 1, 0, 1])
    assert ab.precision_recall(p, y, 0.7) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert ab.precision_recall(p, y, 0.95) == (1.0, 0.0, 0)  # no abstention: precision is vacuous


def test_model_probability_is_the_standardised_logistic():
    model = ab.AbstentionModel("r", ("top_score", "margin"), (0.5, 0.0), (0.1, 1.0), (-2.0, 1.0), 0.25, 0.6)
    s = _signals(top_score=0.3, margin=0.2)
    z = -2.0 * (0.3 - 0.5) / 0.1 + 1.0 * 0.2 + 0.25
    assert model.probability(s) == pytest.approx(1 / (1 + np.exp(-z)))
    decision = model.decide(s)
    assert decision.abstain and decision.threshold == 0.6 and decision.retriever == "r"
    assert not model.decide(_signals(top_score=0.9, margin=0.2)).abstain


def test_signals_from_ranked_passages():
    answer = ExtractiveAnswer([], "mix", 3, best_dense=0.61, best_lexical_coverage=0.75)
    s = ab.signals_from("vitamin D fractures", [0.8, 0.6, 0.4], ["Vitamin D and falls.", "b", "c"], answer)
    assert s.top_score == 0.8 and s.margin == pytest.approx(0.3) and s.best_sentence == 0.61
    assert s.sentence_coverage == 0.75 and s.passage_coverage == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="need one score per passage and at least one passage, got 2 scores for 1"):
        ab.signals_from("q", [0.1, 0.2], ["a"], answer)


def test_round_trip_and_bad_files_name_the_entry(tmp_path):
    model = ab.AbstentionModel("m", ("top_score",), (0.5,), (0.1,), (-1.0,), 0.0, 0.5, recipe={"k": 5})
    path = tmp_path / "abst.json"
    ab.write_models([model], path)
    assert ab.model_for("m", path) == model
    with pytest.raises(ab.UncalibratedRetriever, match=r"no abstention calibration for retriever 'x' .*\['m'\]"):
        ab.model_for("x", path)
    data = json.loads(path.read_text())
    data["retrievers"][0]["weights"] = [1.0, 2.0]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"abst.json: retrievers\[0\]|need the same non-zero length"):
        ab.load_models(path)
    data["retrievers"][0]["extra"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"abst.json: retrievers\[0\]: unknown fields \['extra'\]"):
        ab.load_models(path)
    with pytest.raises(ValueError, match="unknown signals"):
        ab.AbstentionModel("m", ("rerank",), (0.0,), (1.0,), (1.0,), 0.0, 0.5)
    with pytest.raises(FileNotFoundError, match="no abstention calibration file"):
        ab.load_models(tmp_path / "missing.json")


def test_shipped_calibration_covers_the_default_retriever_and_meets_its_recorded_point():
    models = ab.load_models()
    model = models["all-MiniLM-L6-v2"]
    held = model.chosen_point["held_out"]
    assert held["n"] > 100 and 0.0 < model.threshold < 1.0
    assert model.built["script"] == "evals/abstention_calibration.py"


def test_default_retriever_abstains_off_topic_and_answers_on_topic():
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    embed = BMRetrieverEmbedding(model_name="all-MiniLM-L6-v2")
    model = ab.model_for("all-MiniLM-L6-v2")
    texts = ["Asthma: symptoms Common asthma symptoms include coughing, wheezing, chest tightness and shortness "
             "of breath. Symptoms often get worse at night or early in the morning.",
             "Stroke: information A stroke happens when blood flow to part of the brain is blocked.",
             "Methotrexate is a folate antagonist used in rheumatoid arthritis."]
    scorer = make_scorer("mix", embed)

    def decide(question: str) -> ab.Decision:
        q = np.asarray(embed.get_query_embedding(question))
        vectors = np.asarray(embed.get_text_embedding_batch(texts))
        scores = vectors @ q / np.linalg.norm(vectors, axis=1) / np.linalg.norm(q)
        order = np.argsort(-scores)
        ranked = [texts[i] for i in order]
        answer = extract_answer(question, [Passage(i + 1, t) for i, t in enumerate(ranked)], scorer)
        return model.decide(ab.signals_from(question, scores[order].tolist(), ranked, answer))

    on_topic, off_topic = decide("What are the symptoms of asthma?"), decide("How do I bake sourdough bread?")
    assert not on_topic.abstain and off_topic.abstain
    assert on_topic.p_unanswerable < off_topic.p_unanswerable
