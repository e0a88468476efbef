"""Document frequencies of question words (bmrag.qa.specificity) and the abstention signal built on them."""

from __future__ import annotations

import gzip
import json

import pytest

from bmrag.qa import abstention as ab
from bmrag.qa import specificity
from bmrag.qa.extractive import ExtractiveAnswer


def test_the_shipped_table_is_what_the_tool_builds_from_the_bundled_corpus(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "df.json.gz"
    run = subprocess.run([sys.executable, "tools/build_term_df.py", "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == specificity.DF_FILE.read_bytes()  # byte for byte: no timestamp, sorted keys
    shipped = specificity.shipped()
    assert shipped.documents == 35443 and shipped.source == "demo_corpus.jsonl.gz"


def test_rare_clinical_words_are_rarer_than_question_phrasing():
    rarity = specificity.shipped().rarity
    # Names of conditions and proteins > disease words > words questions are phrased with.
    assert rarity("harlequin") > rarity("dementia") > rarity("children") > rarity("treatments")
    assert rarity("tenascin") > 0.85 and rarity("treatments") < 0.2
    assert rarity("Treatment") == rarity("treatments")  # lower-cased, counted by 5-letter stem
    assert rarity("zzzqxj") == pytest.approx(1 - 0.6931 / 10.4757, abs=1e-3)  # unseen: as if in one document


def test_counting_is_per_document_and_bad_records_name_file_and_line(tmp_path):
    counted = specificity.count_document_frequencies(["Insulin and insulin resistance", "insulin pump", "asthma"],
                                                     source="three", min_df=1)
    assert counted.documents == 3 and counted.df["insul"] == 2 and counted.df["asthm"] == 1
    assert "and" not in counted.df  # stop words are not counted
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "a", "title": "T", "text": "x"}) + "\n" + json.dumps({"_id": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"corpus.jsonl, line 2: not a corpus record with a 'text' field"):
        list(specificity.corpus_texts(corpus))
    with pytest.raises(ValueError, match="no documents to count in empty"):
        specificity.count_document_frequencies([], source="empty")
    bad = tmp_path / "df.json.gz"
    bad.write_bytes(gzip.compress(b'{"documents": 3}'))
    with pytest.raises(ValueError, match="df.json.gz: not a bmrag document-frequency file"):
        specificity.load_document_frequencies(bad)


def test_abstention_signal_is_the_rarity_of_the_rarest_unmentioned_word():
    answer = ExtractiveAnswer([], "lexical", 3, best_dense=None, best_lexical_coverage=0.5)
    lamellar = ["Lamellar ichthyosis: symptoms. Lamellar ichthyosis is a condition of the skin present at birth."]
    near = ab.signals_from("How many people are affected by harlequin ichthyosis?", [0.7], lamellar, answer)
    assert near.unmentioned_rarity == pytest.approx(specificity.shipped().rarity("harlequin"))
    on_topic = ab.signals_from("What are the symptoms of lamellar ichthyosis?", [0.8], lamellar, answer)
    assert on_topic.unmentioned_rarity == 0.0
