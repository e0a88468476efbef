"""Prompt templates and the query-instruction registry of BMRetriever.

The templates and the 14 official instructions are copied from the released evaluation code
(``eval.py`` / ``prompt.py`` of github.com/ritaranx/BMRetriever), whose wording follows E5-Mistral.
Instructions for BIOSSES and the QA applications were never published; the ones marked
``official=False`` below are bmrag's documented choices.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

QUERY_TEMPLATE = "{instruction}\nQuery: {query}"
"""Query side of the official recipe (no ``Instruct:`` prefix: that was an early README bug)."""

PASSAGE_TEMPLATE = "Represent this passage\npassage: {passage}"
"""Passage side of the official recipe; ``passage`` is ``(title + " " + text).strip()``."""

PLAIN_QUERY_TEMPLATE = "{query}"
PLAIN_PASSAGE_TEMPLATE = "{passage}"
"""Templates for encoders trained without instructions (e.g. sentence-transformers baselines)."""


@dataclass(frozen=True)
class Instruction:
    """A query instruction for one retrieval task.

    Attributes:
        task: Registry key, e.g. ``"scifact"``.
        text: The instruction placed before ``\\nQuery: {query}``.
        official: True when the string comes from BMRetriever's released ``prompt.py``.
        note: Why a non-official instruction was chosen.
    """

    task: str
    text: str
    official: bool = True
    note: str = ""


_OFFICIAL = {
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "nfcorpus": "Given a question, retrieve relevant documents that best answer the question",
    "trec-covid": "Given a query on COVID-19, retrieve documents that answer the query",
    "scidocs": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "msmarco": "Given a web search query, retrieve relevant passages that answer the query",
    "msmarco_doc": "Given a web search query, retrieve relevant documents that answer the query",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "squad": "Given a question, retrieve Wikipedia passages that answer the question",
    "gooaq": "Given a question, retrieve relevant passages that answer the question",
    "eli5": "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum",
    "nli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "quora": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "hotpotqa": "Given a multi-hop question, retrieve documents that can help answer the question",
}

_BMRAG_CHOICES = {
    "biosses": (
        "Retrieve semantically similar text",
        "BIOSSES is symmetric sentence similarity: both sentences are encoded as queries with this "
        "instruction (E5-Mistral's STS wording), score = cosine.",
    ),
    "pubmedqa": (
        "Given a biomedical question, retrieve PubMed abstracts that answer the question",
        "PubMedQA application (question -> its abstract); wording follows the official QA instructions.",
    ),
    "bioasq": (
        "Given a biomedical question, retrieve PubMed abstracts that answer the question",
        "BioASQ questions are answered from PubMed abstracts, like PubMedQA.",
    ),
    "medical_qa": (
        "Given a medical question, retrieve relevant passages that answer the question",
        "Default for the clinical QA chain: free-text medical questions over mixed passages.",
    ),
    "medical_question_pairs": (
        "Given a medical question, retrieve questions that are semantically equivalent to the given question",
        "Curai medical question pairs; wording follows the official quora instruction.",
    ),
}

INSTRUCTIONS: dict[str, Instruction] = {
    **{task: Instruction(task, text) for task, text in _OFFICIAL.items()},
    **{task: Instruction(task, text, official=False, note=note) for task, (text, note) in _BMRAG_CHOICES.items()},
}
"""All known tasks. ``INSTRUCTIONS[task].official`` tells published strings from bmrag's choices."""

DEFAULT_TASK = "medical_qa"
"""Task used by the LlamaIndex components and the QA chain when neither task nor instruction is given."""


def get_instruction(task: str) -> str:
    """Return the query instruction registered for ``task``.

    Args:
        task: A key of :data:`INSTRUCTIONS` such as ``"scifact"`` or ``"trec-covid"``.

    Raises:
        KeyError: If the task is unknown; the message lists close matches and all known tasks.
    """
    if task in INSTRUCTIONS:
        return INSTRUCTIONS[task].text
    close = difflib.get_close_matches(task, INSTRUCTIONS, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"unknown task {task!r}.{hint} Known tasks: {', '.join(sorted(INSTRUCTIONS))}")


@dataclass(frozen=True)
class InstructionChoice:
    """The query instruction a component will use, and why (logged once, recorded in results).

    Attributes:
        text: The instruction, or None when there is none to use.
        task: The task whose registered instruction it is (None for an explicit or recorded instruction).
        origin: Which rule chose it, e.g. ``"instruction="``, ``"task 'scifact'"``, ``"dataset default task
            'scifact'"``, ``"the model's recorded default"``, ``"default task 'medical_qa'"``.
    """

    text: str | None
    task: str | None
    origin: str


def choose_instruction(instruction: str | None = None, task: str | None = None, *, dataset_task: str | None = None,
                       model_default: str | None = None, fallback_task: str | None = None) -> InstructionChoice:
    """The one instruction rule: explicit ``instruction`` > ``task`` > dataset default > model default > fallback.

    Every component that embeds queries (the encoder, the LlamaIndex embedding, the evaluation harness) asks
    this function, so the same arguments pick the same instruction everywhere.

    Args:
        instruction: An explicit instruction string.
        task: A key of :data:`INSTRUCTIONS`. Given together with ``instruction`` only when both agree (a
            config saved by a component carries both).
        dataset_task: The evaluated dataset's registered task (evaluation only).
        model_default: The default instruction recorded next to the model's weights (``bmrag_config.json``).
        fallback_task: Task used when nothing else applies (the LlamaIndex components use :data:`DEFAULT_TASK`).

    Raises:
        ValueError: ``instruction`` and ``task`` both given and disagreeing, or an empty instruction.
        KeyError: An unknown task (the message lists close matches).
    """
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
    if instruction is not None and task is not None:
        if task not in INSTRUCTIONS or INSTRUCTIONS[task].text != instruction:
            raise ValueError("pass either instruction= or task=, not both "
                             f"(task {task!r} does not have the instruction {instruction!r})")
        return InstructionChoice(instruction, task, f"task {task!r}")
    if instruction is not None:
        return InstructionChoice(instruction, None, "instruction=")
    if task is not None:
        return InstructionChoice(get_instruction(task), task, f"task {task!r}")
    if dataset_task is not None:
        return InstructionChoice(get_instruction(dataset_task), dataset_task, f"dataset default task {dataset_task!r}")
    if model_default:
        return InstructionChoice(model_default, None, "the model's recorded default")
    if fallback_task is not None:
        return InstructionChoice(get_instruction(fallback_task), fallback_task, f"default task {fallback_task!r}")
    return InstructionChoice(None, None, "none given")


def resolve_instruction(instruction: str | None = None, task: str | None = None) -> str | None:
    """The instruction text :func:`choose_instruction` picks from an explicit string or a task name alone."""
    return choose_instruction(instruction, task).text


def format_query(query: str, instruction: str | None, template: str = QUERY_TEMPLATE) -> str:
    """Render a query exactly as it is embedded: ``"{instruction}\\nQuery: {query}"`` by default."""
    if "{instruction}" in template and instruction is None:
        raise ValueError(
            "this model's query template needs an instruction: pass instruction='...' or task='...' "
            f"(known tasks: {', '.join(sorted(INSTRUCTIONS))})"
        )
    return template.format(instruction=instruction, query=query)


def join_title(text: str, title: str | None = None) -> str:
    """BEIR/BMRetriever passage text: ``(title + " " + text).strip()``."""
    return f"{title or ''} {text}".strip()


def format_passage(passage: str, template: str = PASSAGE_TEMPLATE) -> str:
    """Render a passage exactly as it is embedded: ``"Represent this passage\\npassage: {passage}"``."""
    return template.format(passage=passage)
