"""Citation parsing and validation: only citations of evidence that was actually given survive."""

from __future__ import annotations

import pytest

from bmrag.qa.citations import MAX_RANGE, parse_citations, pmid_of, source_url, validate_citations


def test_valid_single_citations_are_kept_in_first_appearance_order():
    check = validate_citations("Statins reduce AF [2]. Aspirin inhibits COX-1 [1]. Again [2].", n_evidence=3)
    assert check.text == "Statins reduce AF [2]. Aspirin inhibits COX-1 [1]. Again [2]."
    assert check.cited == [2, 1]
    assert check.invalid == []
    assert check.has_citations


def test_out_of_range_citation_is_removed_and_reported():
    check = validate_citations("Aspirin inhibits COX-1 [1][7].", n_evidence=5)
    assert check.text == "Aspirin inhibits COX-1 [1]."
    assert check.cited == [1]
    assert [(c.marker, c.number) for c in check.invalid] == [("[7]", 7)]
    assert "only 5 evidence passage(s)" in check.invalid[0].reason


def test_zero_is_never_a_valid_citation():
    check = validate_citations("It works [0].", n_evidence=3)
    assert check.text == "It works."
    assert check.cited == []
    assert check.invalid[0].number == 0
    assert "numbered from 1" in check.invalid[0].reason


def test_list_citation_keeps_valid_members_only():
    check = validate_citations("Both agree [2,3] and [2; 9].", n_evidence=3)
    assert check.text == "Both agree [2, 3] and [2]."
    assert check.cited == [2, 3]
    assert [(c.marker, c.number) for c in check.invalid] == [("[2; 9]", 9)]


@pytest.mark.parametrize("marker", ["[2-4]", "[2–4]", "[2 - 4]"])
def test_range_expands_and_out_of_range_tail_is_removed(marker):
    check = validate_citations(f"Shown in {marker}.", n_evidence=3)
    assert check.cited == [2, 3]
    assert check.text == "Shown in [2, 3]."
    assert [c.number for c in check.invalid] == [4]


def test_reversed_or_huge_ranges_are_invalid_as_a_whole():
    check = validate_citations(f"A [4-2] b [1-{MAX_RANGE + 5}] c [1].", n_evidence=30)
    assert check.text == "A b c [1]."
    assert check.cited == [1]
    assert [c.marker for c in check.invalid] == ["[4-2]", f"[1-{MAX_RANGE + 5}]"]


def test_repeated_citations_are_counted_once_and_duplicates_inside_a_marker_collapse():
    check = validate_citations("X [1] [1] [1, 1] [2].", n_evidence=2)
    assert check.cited == [1, 2]
    assert check.text == "X [1] [1] [1] [2]."


def test_answer_without_citations_is_unchanged():
    text = "Metformin is first-line therapy for type 2 diabetes."
    check = validate_citations(text, n_evidence=4)
    assert check.text == text
    assert check.cited == [] and check.invalid == []
    assert not check.has_citations


def test_brackets_that_are_not_citations_are_left_alone():
    text = "IL-6 [a] and ratio [2.5] and [see above]"
    assert validate_citations(text, n_evidence=3).text == text
    assert parse_citations(text) == []


def test_every_citation_invalid_when_no_evidence_was_given():
    check = validate_citations("Answer [1].", n_evidence=0)
    assert check.text == "Answer."
    assert check.cited == [] and len(check.invalid) == 1


def test_negative_evidence_count_is_rejected():
    with pytest.raises(ValueError, match="n_evidence must be >= 0"):
        validate_citations("x", n_evidence=-1)


def test_parse_reports_numbers_per_marker():
    assert parse_citations("a [3] b [1, 4-5] c [9-2]") == [("[3]", [3]), ("[1, 4-5]", [1, 4, 5]), ("[9-2]", None)]


def test_check_serialises():
    data = validate_citations("x [1] [6]", n_evidence=1).to_dict()
    assert data["cited"] == [1]
    assert data["invalid"][0]["marker"] == "[6]"


@pytest.mark.parametrize(("doc_id", "metadata", "pmid"), [
    ("pubmedqa-21881325", {"pmid": "21881325"}, "21881325"),
    ("PMID:123456", {}, "123456"),
    ("pubmed_42", None, "42"),
    ("4983", {}, None),  # SciFact ids are numeric but are not PMIDs
    ("4983", {"id_type": "pmid"}, "4983"),
    ("medquad-1", {"pmid": ""}, None),
    ("x", {"pmid": "not-a-number"}, None),
])
def test_pmid_detection(doc_id, metadata, pmid):
    assert pmid_of(doc_id, metadata) == pmid


def test_source_url_prefers_explicit_url_then_pubmed():
    assert source_url("a", {"url": "https://medlineplus.gov/x.html", "pmid": "1"}) == "https://medlineplus.gov/x.html"
    assert source_url("a", {"pmid": "21881325"}) == "https://pubmed.ncbi.nlm.nih.gov/21881325/"
    assert source_url("scifact-4983", {}) is None
    assert source_url("a", {"url": "javascript:alert(1)"}) is None
