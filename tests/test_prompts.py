"""The instruction registry and templates against the strings of BMRetriever's released prompt.py / eval.py."""

from __future__ import annotations

import pytest
from reference_recipe import OFFICIAL_INSTRUCTIONS, passage_text, query_text

from bmrag import prompts


def test_the_14_official_instructions_are_verbatim():
    official = {task: ins.text for task, ins in prompts.INSTRUCTIONS.items() if ins.official}
    assert official == OFFICIAL_INSTRUCTIONS
    assert len(official) == 14


@pytest.mark.parametrize("task", sorted(OFFICIAL_INSTRUCTIONS))
def test_get_instruction_returns_the_official_string(task):
    assert prompts.get_instruction(task) == OFFICIAL_INSTRUCTIONS[task]


def test_bmrag_choices_are_marked_and_explained():
    own = {task: ins for task, ins in prompts.INSTRUCTIONS.items() if not ins.official}
    assert {"biosses", "pubmedqa", "medical_qa"} <= set(own)
    for task, ins in own.items():
        assert ins.task == task
        assert ins.text.strip() and ins.note.strip(), f"{task}: a non-official instruction needs a note"


def test_default_task_is_registered():
    assert prompts.DEFAULT_TASK in prompts.INSTRUCTIONS


def test_templates_are_the_official_ones():
    # No "Instruct: " prefix (an early README bug); newline-separated, as in eval.py.
    assert prompts.QUERY_TEMPLATE == "{instruction}\nQuery: {query}"
    assert prompts.PASSAGE_TEMPLATE == "Represent this passage\npassage: {passage}"


def test_format_query_exact_rendering():
    rendered = prompts.format_query("q", prompts.get_instruction("scifact"))
    assert rendered == "Given a scientific claim, retrieve documents that support or refute the claim\nQuery: q"
    assert rendered == query_text("q", OFFICIAL_INSTRUCTIONS["scifact"])


def test_format_query_keeps_braces_in_the_text():
    assert prompts.format_query("IL-6 {serum} levels", "Find {x}") == "Find {x}\nQuery: IL-6 {serum} levels"


def test_format_query_needs_an_instruction_for_instruction_templates():
    with pytest.raises(ValueError, match=r"needs an instruction.*known tasks: .*scifact"):
        prompts.format_query("q", None)
    assert prompts.format_query("q", None, prompts.PLAIN_QUERY_TEMPLATE) == "q"


@pytest.mark.parametrize(
    ("title", "text", "expected"),
    [
        ("Aspirin", "reduces risk.", "Aspirin reduces risk."),
        ("", "reduces risk.", "reduces risk."),
        (None, "reduces risk.", "reduces risk."),
        ("Aspirin", "", "Aspirin"),
        ("  Aspirin ", " reduces risk.  ", "Aspirin   reduces risk."),  # only the ends are stripped
    ],
)
def test_join_title(title, text, expected):
    assert prompts.join_title(text, title) == expected
    assert prompts.format_passage(prompts.join_title(text, title)) == passage_text({"title": title or "",
                                                                                    "text": text})


@pytest.mark.parametrize(
    ("bad", "close"),
    [("scifcat", "'scifact'"), ("trec_covid", "'trec-covid'"), ("NFCorpus", "'nfcorpus'")],
)
def test_unknown_task_suggests_close_matches(bad, close):
    with pytest.raises(KeyError, match=rf"unknown task '{bad}'\. Did you mean .*{close}.*Known tasks: "):
        prompts.get_instruction(bad)


def test_unknown_task_without_a_close_match_lists_all_tasks():
    with pytest.raises(KeyError, match=r"unknown task 'zzzz'\. Known tasks: bioasq, biosses, .*trec-covid"):
        prompts.get_instruction("zzzz")


def test_resolve_instruction():
    assert prompts.resolve_instruction() is None
    assert prompts.resolve_instruction("Find it") == "Find it"
    assert prompts.resolve_instruction(task="fever") == OFFICIAL_INSTRUCTIONS["fever"]
    with pytest.raises(ValueError, match=r"either instruction= or task=, not both"):
        prompts.resolve_instruction("Find it", "fever")
    with pytest.raises(ValueError, match=r"instruction must be a non-empty string, got ' '"):
        prompts.resolve_instruction(" ")
    with pytest.raises(ValueError, match=r"instruction must be a non-empty string, got 3"):
        prompts.resolve_instruction(3)
