"""The new demo corpus builder (tools/build_demo_corpus.py): coverage, titles, licences, PubMed links."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
from shared_data import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (SHARED_DATA / "medquad").is_dir(), reason="needs the shared data folder")


@pytest.fixture(scope="module")
def docs():
    spec = importlib.util.spec_from_file_location("build_demo_corpus", REPO / "tools" / "build_demo_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(SHARED_DATA)


def test_every_source_text_is_in_with_its_licence(docs):
    counts = Counter(d["_id"].split("-", 1)[0] for d in docs)
    # Every answered MedQuAD pair (16,407, of which 596 repeat an answer word for word), all PQA-L abstracts,
    # every BioASQ snippet document, every SciFact abstract.
    assert counts == {"medquad": 15811, "pubmedqa": 1000, "bioasq": 13449, "scifact": 5183}
    licences = {(d["_id"].split("-", 1)[0], d["metadata"]["license"]) for d in docs}
    assert licences == {("medquad", "CC-BY-4.0"), ("pubmedqa", "MIT"), ("scifact", "ODC-By-1.0"),
                        ("bioasq", "CC-BY-2.5 (BioASQ terms of use)")}


def test_no_card_lacks_a_title_and_pubmed_items_carry_their_pmid(docs):
    assert all(d["title"] or d["metadata"].get("display_title") for d in docs)
    pubmed = [d for d in docs if d["_id"].startswith(("pubmedqa-", "bioasq-"))]
    assert all(d["metadata"]["pmid"].isdigit() and d["_id"].endswith(d["metadata"]["pmid"]) for d in pubmed)
    by_id = {d["_id"]: d for d in docs}
    assert by_id["medquad-8-0000010-4"]["title"] == "Asthma: symptoms"
    assert by_id["medquad-8-0000010-4"]["metadata"]["url"].startswith("http")
    # PubMedQA has no article title: the question derived from it is shown, never embedded.
    assert by_id["pubmedqa-21881325"]["title"] == "" and by_id["pubmedqa-21881325"]["metadata"]["display_title"]
