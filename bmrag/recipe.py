"""The recipe: everything besides the weights that decides what vector a text gets.

Saved next to trained weights (``bmrag_config.json``, see :mod:`bmrag.loading`) and recorded in every index
manifest, so a model is always queried the way its documents were embedded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch

from bmrag import prompts
from bmrag.validation import reject_unknown_kwargs

Pooling = Literal["last", "mean", "cls"]
PaddingSide = Literal["left", "right"]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what vector a text gets, besides the weights.

    Attributes:
        query_template: Format string with ``{instruction}`` and ``{query}``.
        passage_template: Format string with ``{passage}``.
        pooling: ``"last"`` (EOS/last-token, BMRetriever), ``"mean"`` or ``"cls"``.
        normalize: L2-normalise vectors (then dot product = cosine).
        max_length: Token budget per text, including the appended EOS.
        append_eos: Append ``eos_token_id`` after truncating to ``max_length - 1``.
        padding_side: Where pad tokens go; embeddings do not depend on it (positions come from the mask).
    """

    query_template: str = prompts.QUERY_TEMPLATE
    passage_template: str = prompts.PASSAGE_TEMPLATE
    pooling: Pooling = "last"
    normalize: bool = False
    max_length: int = 512
    append_eos: bool = True
    padding_side: PaddingSide = "left"

    def __post_init__(self) -> None:
        if self.pooling not in ("last", "mean", "cls"):
            raise ValueError(f"pooling must be one of 'last', 'mean', 'cls', got {self.pooling!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {self.max_length!r}")
        if "{query}" not in self.query_template or "{passage}" not in self.passage_template:
            raise ValueError("query_template needs '{query}' and passage_template needs '{passage}'")

    @property
    def similarity(self) -> Literal["dot", "cosine"]:
        """The score the vectors are meant for: dot product, or cosine when normalised."""
        return "cosine" if self.normalize else "dot"

    @property
    def needs_instruction(self) -> bool:
        return "{instruction}" in self.query_template

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "similarity": self.similarity}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys are rejected (a typo would otherwise change nothing)."""
        names = [f.name for f in fields(cls)]
        reject_unknown_kwargs({k: v for k, v in data.items() if k not in names and k != "similarity"}, names,
                              "Recipe.from_dict()")
        return cls(**{k: v for k, v in data.items() if k in names})


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last non-pad token of each row (the EOS in the BMRetriever recipe).

    Works for left and right padding because it reads the mask, not the sequence end.

    Args:
        hidden: (batch, seq, dim) final-layer hidden states.
        attention_mask: (batch, seq) 1 for tokens, 0 for padding.

    Returns:
        (batch, dim) pooled vectors.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (seq,)
    last = (attention_mask.long() * positions).argmax(dim=1)  # (batch,) highest index with mask 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (batch, dim)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over non-pad tokens, in fp32. Shapes as :func:`last_token_pool`."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)  # (batch, seq, 1)
    return (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (batch, dim)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Apply the named pooling; returns (batch, dim) in fp32."""
    if pooling == "last":
        return last_token_pool(hidden, attention_mask).float()
    if pooling == "mean":
        return mean_pool(hidden, attention_mask)
    if pooling == "cls":
        # CLS is the first real token; with left padding that is not index 0.
        first = attention_mask.long().argmax(dim=1)  # (batch,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first].float()
    raise ValueError(f"unknown pooling {pooling!r}")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so a left-padded text sees the positions it has alone.

    Without them Hugging Face decoders number pad tokens too, and a text's embedding would depend on
    the longest text in its batch (see docs/bugs-and-fixes.md).
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (batch, seq)
