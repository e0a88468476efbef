"""Word-overlap attribution of answer sentences to the evidence (pure functions, no model)."""

from __future__ import annotations

import pytest

from bmrag.qa.answer import cited_sources
from bmrag.qa.attribution import MIN_SUPPORT, attribute, split_sentences
from bmrag.qa.chain import QAChain
from bmrag.qa.citations import validate_citations
from bmrag.qa.evidence import Evidence
from bmrag.qa.grounding import supported_sentences

PASSAGES = [
    "Metformin in type 2 diabetes. Metformin lowers hepatic glucose production and is first-line therapy.",
    "Aspirin and platelets. Aspirin irreversibly inhibits cyclooxygenase-1 in platelets.",
]


def test_a_sentence_gets_the_passage_that_holds_its_words_before_its_full_stop():
    result = attribute("Aspirin irreversibly inhibits platelet cyclooxygenase-1. Metformin lowers hepatic glucose "
                       "production!", PASSAGES)
    assert result.text == ("Aspirin irreversibly inhibits platelet cyclooxygenase-1 [2]. Metformin lowers hepatic "
                           "glucose production [1]!")
    assert result.added == [2, 1] and result.unsupported == []
    first = result.sentences[0]
    assert first.best == 2 and first.attributed and first.support == pytest.approx(5 / 6)  # "platelet" != "platelets"


def test_a_sentence_no_passage_supports_is_flagged_and_left_uncited():
    result = attribute("Renal hypouricemia is caused by a lack of AMPK kinase.", PASSAGES)
    assert result.text == "Renal hypouricemia is caused by a lack of AMPK kinase."
    assert result.added == [] and result.unsupported == ["Renal hypouricemia is caused by a lack of AMPK kinase."]
    assert result.sentences[0].support < MIN_SUPPORT


def test_the_model_s_own_citation_is_kept_and_its_support_reported():
    result = attribute("Aspirin irreversibly inhibits cyclooxygenase-1 [1].", PASSAGES)
    assert result.text == "Aspirin irreversibly inhibits cyclooxygenase-1 [1]."  # not rewritten to [2]
    row = result.sentences[0]
    assert row.cited == [1] and not row.attributed and row.best == 2 and row.support == 1.0


def test_short_sentences_are_left_alone_and_a_cut_off_one_is_scored_and_marked():
    result = attribute("Yes. Metformin lowers hepatic glucose production. Aspirin irreversibly inhibits", PASSAGES)
    assert result.text == "Yes. Metformin lowers hepatic glucose production [1]. Aspirin irreversibly inhibits [2]"
    short, whole, cut = result.sentences
    assert short.best is None and not short.unsupported and not short.incomplete
    assert not whole.incomplete and cut.incomplete and cut.attributed


def test_ties_go_to_the_higher_ranked_passage_and_decimals_do_not_split_sentences():
    assert split_sentences("The dose was 1.5 mg daily. It worked.") == ["The dose was 1.5 mg daily.", "It worked."]
    same = ["Aspirin inhibits platelets.", "Aspirin inhibits platelets."]
    assert attribute("Aspirin inhibits platelets.", same).text == "Aspirin inhibits platelets [1]."


def test_threshold_and_empty_inputs():
    assert attribute("Aspirin inhibits platelets.", []).text == "Aspirin inhibits platelets."
    assert attribute("", PASSAGES).sentences == []
    strict = attribute("Aspirin irreversibly inhibits platelet cyclooxygenase-1.", PASSAGES, min_support=0.9)
    assert strict.added == [] and len(strict.unsupported) == 1
    with pytest.raises(ValueError, match="min_support must be between 0 and 1, got 1.5"):
        attribute("x", PASSAGES, min_support=1.5)
    with pytest.raises(ValueError, match=r"min_support must be between 0 and 1 \(or None: no attribution\)"):
        QAChain(None, None, None, generator_error="none", min_support=-0.1)  # type: ignore[arg-type]


def test_the_chain_step_keeps_supported_sentences_marks_added_citations_and_removes_the_rest():
    evidence = [Evidence(number=n, node_id=f"d{n}#0", doc_id=f"d{n}", title=title, text=text, score=0.9,
                            first_stage_score=0.9)
                for n, (title, text) in enumerate([p.split(". ", 1) for p in PASSAGES], start=1)]
    check = validate_citations("Metformin lowers hepatic glucose production [1]. Aspirin irreversibly inhibits "
                               "cyclooxygenase-1 in platelets. Vitamin K reverses warfarin [7].", 2)
    written = list(check.cited)
    checked = supported_sentences(check, evidence, [e.text for e in evidence], MIN_SUPPORT)
    assert checked.check.cited == [1, 2] and "[7]" not in checked.check.text
    assert checked.check.text == ("Metformin lowers hepatic glucose production [1]. Aspirin irreversibly inhibits "
                                  "cyclooxygenase-1 in platelets [2].")
    sources = cited_sources(checked.check, evidence, written)
    assert [(s["doc_id"], s["attributed"]) for s in sources] == [("d1", False), ("d2", True)]
    # The sentence no passage supports is removed from the answer and listed, not shown as an answer.
    assert checked.unsupported == ["Vitamin K reverses warfarin."]
    assert any("added the citation(s) [2]" in n for n in checked.notes)
    assert any("removed 1 generated sentence(s) that none of the sources supports" in n for n in checked.notes)
    assert checked.attribution.to_dict()["min_support"] == MIN_SUPPORT
