"""An independent re-implementation of BMRetriever's official encoding recipe, for equivalence tests.

Written from ``../shared/reference/bmretriever.md`` (the official ``eval.py``), deliberately without
importing anything from :mod:`bmrag`: if production code drifts from the recipe, the tests comparing
against this module fail. It is slow on purpose (one text at a time, no padding, no attention mask),
which is the simplest computation the recipe defines.

It also holds the generated test texts (:func:`biomedical_sentences`), shared by ``conftest.py`` (tokenizer
training data) and the tests.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

MAX_TOKENS_BEFORE_EOS = 511
"""eval.py truncates to 511 tokens, then appends EOS: at most 512 tokens."""

OFFICIAL_INSTRUCTIONS = {
    # Copied verbatim from the reference doc's table (prompt.py of github.com/ritaranx/BMRetriever).
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


def query_text(query: str, instruction: str) -> str:
    """Step 1: ``"{instruction}\\nQuery: {query}"``."""
    return f"{instruction}\nQuery: {query}"


def passage_text(document: str | Mapping[str, Any]) -> str:
    """Step 2: ``"Represent this passage\\npassage: {passage}"`` with ``passage = (title + " " + text).strip()``."""
    if isinstance(document, Mapping):
        passage = (document.get("title", "") + " " + document["text"]).strip()
    else:
        passage = document.strip()
    return f"Represent this passage\npassage: {passage}"


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """Steps 3-4: default special tokens, truncation to 511, no padding, then the EOS id appended."""
    ids = tokenizer(text, truncation=True, max_length=MAX_TOKENS_BEFORE_EOS)["input_ids"]
    return list(ids) + [tokenizer.eos_token_id]


@torch.no_grad()
def embed_texts(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Steps 5-7 without padding: each text alone, final hidden state at the last (EOS) position.

    No normalisation. Returns (n, dim) float32.
    """
    vectors = []
    for text in texts:
        ids = torch.tensor([token_ids(tokenizer, text)], device=next(model.parameters()).device)
        hidden = model(input_ids=ids).last_hidden_state  # (1, seq, dim)
        vectors.append(hidden[0, -1].float().cpu())
    return torch.stack(vectors).numpy()


class ReferenceEncoder:
    """The recipe over a model directory loaded with plain ``AutoTokenizer`` / ``AutoModel`` in fp32."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_dir(cls, path: Any) -> ReferenceEncoder:
        from transformers import AutoModel, AutoTokenizer

        return cls(AutoModel.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path))

    def encode_queries(self, queries: Sequence[str], instruction: str) -> np.ndarray:
        return embed_texts(self.model, self.tokenizer, [query_text(q, instruction) for q in queries])

    def encode_documents(self, documents: Sequence[str | Mapping[str, Any]]) -> np.ndarray:
        return embed_texts(self.model, self.tokenizer, [passage_text(d) for d in documents])

    def score(self, queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
        """Step 7: dot product of unnormalised vectors."""
        return queries @ documents.T


# ----------------------------------------------------------------------------- test texts
_SUBJECTS = [
    "Aspirin", "Metformin", "Statin therapy", "Vitamin D supplementation", "The BRCA1 mutation", "Insulin resistance",
    "Chronic inflammation", "The spike protein", "Interleukin-6", "Tumour necrosis factor", "Hypertension",
    "Gut microbiota", "The p53 pathway", "Beta blockers", "SARS-CoV-2 infection", "Mitochondrial dysfunction",
    "Amyloid beta", "Tau phosphorylation", "Regular exercise", "Smoking cessation", "Obesity", "Sepsis",
    "Antibiotic resistance", "CRISPR editing", "Dexamethasone",
]
_VERBS = [
    "reduces", "increases", "is associated with", "does not affect", "predicts", "prevents", "worsens",
    "modulates", "is required for", "protects against", "correlates with", "triggers",
]
_OBJECTS = [
    "colorectal cancer risk", "all-cause mortality", "type 2 diabetes", "cardiovascular events",
    "breast cancer incidence", "hospital admissions", "viral replication in vitro", "neuronal apoptosis",
    "bone mineral density", "the immune response", "blood pressure in adults", "Alzheimer's disease progression",
    "insulin secretion", "stroke recurrence", "tumour growth in mice", "lung function in COPD patients",
    "septic shock outcomes", "renal failure", "hepatic steatosis", "cytokine release",
]
_CONTEXTS = [
    "in a randomised controlled trial", "in a prospective cohort", "in elderly patients", "in children",
    "according to a meta-analysis", "in a mouse model", "after 12 weeks of treatment", "in a case-control study",
    "in intensive care units", "in a double-blind study",
]


def biomedical_sentences(n: int = 400, seed: int = 0) -> list[str]:
    """``n`` distinct biomedical-sounding sentences, deterministic for a seed (tokenizer training data)."""
    combos = list(itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _CONTEXTS))
    rng = random.Random(seed)
    rng.shuffle(combos)
    return [f"{s} {v} {o} {c}." for s, v, o, c in combos[:n]]
