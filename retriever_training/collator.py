"""Turn a batch of groups into model inputs with the encoder's own formatting and tokenisation.

Queries go through ``BMRetrieverEncoder.format_query`` (the query template + the group's instruction),
passages through ``format_document`` (the passage template, ``title + " " + text``), and both through
``tokenize`` (truncate, append EOS) and ``collate`` (pad): training embeds exactly like inference.
Only the token budget may differ from inference (``query_max_length`` / ``passage_max_length``), which
is a training-cost knob; the saved recipe keeps the inference ``max_length``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from bmrag.encoder import BMRetrieverEncoder
from retriever_training.data import Group, normalize_text, passage_text


@dataclass
class CollatorStats:
    """Counts since the collator was made (logged by the trainer)."""

    batches: int = 0
    negatives_avoided: int = 0  # a negative equal to a positive in the batch, replaced by another negative
    negatives_masked: int = 0  # no replacement left: the duplicate stays but is masked out of the loss
    passages_truncated: int = 0
    queries_truncated: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def tokenizer_view(encoder: BMRetrieverEncoder, max_length: int | None) -> BMRetrieverEncoder:
    """An encoder sharing ``encoder``'s model and tokenizer whose recipe truncates at ``max_length``.

    Only ``tokenize``/``collate``/``format_*`` of the view are used; the model stays in its current mode.
    """
    if max_length is None or max_length == encoder.recipe.max_length:
        return encoder
    training = encoder.model.training
    view = BMRetrieverEncoder(encoder.model, encoder.tokenizer, replace(encoder.recipe, max_length=max_length),
                              source=encoder.source, default_instruction=encoder.default_instruction)
    encoder.model.train(training)  # BMRetrieverEncoder.__init__ switches to eval mode
    return view


class TrainCollator:
    """Collate ``(epoch, index, Group)`` items into ``{"query", "passage", "mask"}``.

    Each group contributes one positive and ``group_size - 1`` negatives, drawn with a random generator
    seeded by ``(seed, epoch, index)`` so a batch is the same after resuming. A negative whose text equals
    a positive of any group in the batch is replaced by another of the group's negatives when possible;
    otherwise it stays and ``mask`` removes it from that query's softmax. Under DDP the items are the global
    batch (the same on every rank): choices and mask cover all of it, and each rank tokenizes its own slice
    and returns its mask rows over the global passages.

    Args:
        encoder: The encoder being trained (its model, tokenizer and recipe are used).
        group_size: Passages per query (1 = in-batch negatives only).
        query_max_length: Training-time token budget of queries (None: the recipe's).
        passage_max_length: Training-time token budget of passages (None: the recipe's).
        seed: Seed of the positive/negative draws.
    """

    def __init__(self, encoder: BMRetrieverEncoder, group_size: int = 2, query_max_length: int | None = None,
                 passage_max_length: int | None = None, seed: int = 0) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.queries = tokenizer_view(encoder, query_max_length)
        self.passages = tokenizer_view(encoder, passage_max_length)
        self.group_size = group_size
        self.seed = seed
        self.stats = CollatorStats()
        self.local_ids: list[str] = []  # ids (or indices) of the groups this process embedded in the last batch
        # (rank, world size) under DDP, set by RetrieverTrainer: data-loader worker processes have no process
        # group to ask. None: ask the default process group (one process when there is none).
        self.shard: tuple[int, int] | None = None

    def choose(self, items: Sequence[tuple[int, int, Group]]) -> tuple[list[str], list[list], list[set[str]]]:
        """Pick passages: returns query texts, per-group [positive, negatives...], per-group positive keys."""
        positive_keys = [{normalize_text(passage_text(p)) for p in g.positives} for _, _, g in items]
        batch_positive = set().union(*positive_keys)
        queries, chosen = [], []
        for epoch, index, group in items:
            rng = random.Random(f"{self.seed}:{epoch}:{index}")
            positive = rng.choice(group.positives)
            negatives = list(group.negatives)
            rng.shuffle(negatives)
            clean = [n for n in negatives if normalize_text(passage_text(n)) not in batch_positive]
            need = self.group_size - 1
            picked = clean[:need]
            self.stats.negatives_avoided += min(need, len(negatives)) - min(need, len(clean))
            if len(picked) < need:
                dirty = [n for n in negatives if n not in picked]
                picked += dirty[: need - len(picked)]
            if len(picked) < need:
                raise ValueError(f"group {group.id or index} has {len(group.negatives)} negatives; "
                                 f"train_group_size={self.group_size} needs {need}")
            queries.append(self.queries.format_query(group.query, instruction=group.instruction or None))
            chosen.append([positive, *picked])
        return queries, chosen, positive_keys

    def __call__(self, items: Sequence[tuple[int, int, Group]]) -> dict[str, object]:
        queries, chosen, positive_keys = self.choose(items)
        passages = [self.passages.format_document(p) for row in chosen for p in row]  # B*G, group-major
        keys = [normalize_text(passage_text(p)) for row in chosen for p in row]
        mask = torch.zeros((len(items), len(passages)), dtype=torch.bool)  # (B, B*G)
        for i, own in enumerate(positive_keys):
            for j, key in enumerate(keys):
                if key in own and j != i * self.group_size:
                    mask[i, j] = True
        self.stats.negatives_masked += int(mask.sum())
        rank, world = self.shard or _rank_world()
        if world > 1:
            # ``items`` is the *global* batch (every rank collates the same one, so negatives are chosen and
            # masked against all of it, as one process would); this rank embeds its slice and keeps its mask
            # rows over all global passages (loss.distributed_info_nce gathers them).
            if len(items) % world:
                raise ValueError(f"a global batch of {len(items)} groups does not split over {world} ranks")
            rows = len(items) // world
            self.local_ids = [group.id or str(index) for _, index, group in items[rank * rows:(rank + 1) * rows]]
            queries = queries[rank * rows:(rank + 1) * rows]
            passages = passages[rank * rows * self.group_size:(rank + 1) * rows * self.group_size]
            any_masked = bool(mask.any())  # the same on every rank (same global batch)
            mask = mask[rank * rows:(rank + 1) * rows]  # (B / world, B * G)
            return {**self._tokens(queries, passages), "mask": mask if any_masked else None}
        self.local_ids = [group.id or str(index) for _, index, group in items]
        return {**self._tokens(queries, passages), "mask": mask if mask.any() else None}

    def _tokens(self, queries: list[str], passages: list[str]) -> dict[str, object]:
        q_ids = self.queries.tokenize(queries)
        p_ids = self.passages.tokenize(passages)
        self.stats.queries_truncated += sum(len(r) >= self.queries.recipe.max_length for r in q_ids)
        self.stats.passages_truncated += sum(len(r) >= self.passages.recipe.max_length for r in p_ids)
        self.stats.batches += 1
        return {"query": self.queries.collate(q_ids), "passage": self.passages.collate(p_ids)}


def _rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
