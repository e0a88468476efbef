"""The generator's prompt: rules, one worked example, the numbered sources, the question; trimmed to fit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llama_index.core.base.llms.types import ChatMessage, MessageRole

from bmrag.qa.evidence import Evidence

if TYPE_CHECKING:
    from bmrag.generators import Generator

CANNOT_ANSWER = "I cannot answer this question from the given sources."
"""What the chain says (and asks the model to say) when the evidence does not answer the question."""

SYSTEM_PROMPT = (
    "You are a biomedical assistant. Answer the question in at most three sentences, using only the numbered "
    "sources. Cite the source number in square brackets after each claim, for example [2]. "
    f"If the sources do not contain the answer, reply: {CANNOT_ANSWER}"
)

# One worked example teaches a 135M model the citation format far better than instructions alone; the
# answer is in source [2] so the model does not learn to always cite [1].
_EXAMPLE = (
    "Sources:\n[1] The liver stores glucose as glycogen.\n[2] Insulin is produced by the beta cells of the "
    "pancreatic islets.\n\nQuestion: Which cells produce insulin?",
    "Insulin is produced by the beta cells of the pancreas [2].",
)


def _passage(item: Evidence, text: str) -> str:
    body = " ".join(text.split())
    title = " ".join(item.title.split())
    return f"[{item.number}] {title}. {body}" if title and not body.startswith(title) else f"[{item.number}] {body}"


def build_messages(question: str, evidence: Sequence[Evidence],
                   texts: Sequence[str] | None = None) -> list[ChatMessage]:
    """The chat prompt: system rules, one worked example, then the numbered sources and the question.

    Args:
        question: The user's question.
        evidence: Passages numbered ``1..k`` (see :func:`select_evidence`).
        texts: Optional trimmed passage texts (same order); defaults to each passage's full text.
    """
    if not question.strip():
        raise ValueError("the question is empty")
    if texts is None:
        texts = [item.text for item in evidence]
    if len(texts) != len(evidence):
        raise ValueError(f"got {len(texts)} texts for {len(evidence)} evidence passages")
    for expected, item in enumerate(evidence, start=1):
        if item.number != expected:
            raise ValueError(f"evidence must be numbered 1..k in order; passage {item.node_id} has number "
                             f"{item.number}, expected {expected}")
    sources = "\n".join(_passage(item, text) for item, text in zip(evidence, texts))
    return [
        ChatMessage(role=MessageRole.SYSTEM, content=SYSTEM_PROMPT),
        ChatMessage(role=MessageRole.USER, content=_EXAMPLE[0]),
        ChatMessage(role=MessageRole.ASSISTANT, content=_EXAMPLE[1]),
        ChatMessage(role=MessageRole.USER, content=f"Sources:\n{sources}\n\nQuestion: {' '.join(question.split())}"),
    ]


def fit_texts(question: str, evidence: Sequence[Evidence], generator: Generator) -> list[str]:
    """Trim passages (tail first, evenly) so prompt + answer fit the generator's context window."""
    if not evidence:
        return []
    overhead = sum(generator.count_tokens(m.content or "") + 8 for m in build_messages(question, [], []))
    budget = generator.context_window - generator.max_new_tokens - overhead - 16 * len(evidence)
    per_passage = max(budget // len(evidence), 32)
    texts = []
    for item in evidence:
        text = " ".join(item.text.split())
        if generator.count_tokens(text) > per_passage:
            text = generator.truncate(text, per_passage) + " ..."
        texts.append(text)
    return texts


