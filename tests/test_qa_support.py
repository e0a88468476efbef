"""Dense per-sentence support (bmrag.qa.support) with the real all-MiniLM-L6-v2, against word overlap."""

from __future__ import annotations

import numpy as np
import pytest

from bmrag.qa.support import support

GENERAL = ("Dietary supplements: vitamin D, calcium, fish oil and multivitamins are sold as supplements. Many "
           "adults take supplements for bone health and to avoid fractures.")
TRIAL = ("In a randomized trial of 25,000 older adults, daily vitamin D3 did not lower fracture incidence compared "
         "with placebo.")
CLAIM = "Vitamin D supplements did not reduce the number of fractures in older adults."


@pytest.fixture(scope="module")
def embed_model():
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    return BMRetrieverEmbedding(model_name="all-MiniLM-L6-v2")


def test_dense_support_cites_the_trial_where_word_overlap_picks_the_general_page(embed_model):
    from bmrag.qa.attribution import attribute

    assert attribute(CLAIM, [GENERAL, TRIAL]).sentences[0].best == 1  # word overlap: the general page
    row = support([CLAIM], [GENERAL, TRIAL], embed_model)[0]
    assert row.best == 2 and row.per_passage[1] > row.per_passage[0]
    # Support is the best cosine with one of the passage's sentences, computed with the retriever's vectors.
    c = np.asarray(embed_model.get_text_embedding(CLAIM))
    t = np.asarray(embed_model.get_text_embedding(TRIAL))
    assert row.dense == pytest.approx(float(c @ t / np.linalg.norm(c) / np.linalg.norm(t)), abs=1e-4)


def test_unrelated_sentence_is_unsupported(embed_model):
    row = support(["The Eiffel Tower is in Paris."], [GENERAL, TRIAL], embed_model)[0]
    assert not row.supported and row.dense < 0.3


def test_bad_input_is_rejected(embed_model):
    with pytest.raises(ValueError, match="need at least one passage"):
        support(["a claim"], [], embed_model)
    with pytest.raises(ValueError, match="min_dense must be between -1 and 1, got 2"):
        support(["a claim"], ["p"], embed_model, min_dense=2)
    assert support([], ["p"], embed_model) == []


def test_unmentioned_terms_name_what_the_sources_never_say():
    from bmrag.qa.support import unmentioned_terms

    pressure = ("High Blood Pressure: susceptibility Genetic causes of this condition are why family history is a "
                "risk factor for this condition.")
    assert unmentioned_terms("Is high blood pressure a risk factor for dementia?", [pressure]) == ["dementia"]
    assert unmentioned_terms("Is high blood pressure a risk factor for dementia?",
                             [pressure, "Dementia: causes Vascular dementia follows strokes."]) == []
    # Plurals and derived forms share a stem; lay words match their clinical stems; phrasing words are ignored.
    assert unmentioned_terms("What are the treatments for glaucoma?", ["Glaucoma: treatment with drops."]) == []
    assert unmentioned_terms("Do statins taken before heart surgery prevent atrial fibrillation?",
                             ["Preoperative statins and atrial fibrillation preventive effects after cardiac "
                              "surgery."]) == []
    assert unmentioned_terms("Does vitamin D supplementation prevent fractures?",
                             ["Vitamin D deficiency increases the risk of skeletal fractures."]) == \
        ["supplementation", "prevent"]
    assert unmentioned_terms("how do I know if my child has ADHD", ["ADHD in adults"]) == ["child"]
