"""InfoNCE over in-batch and hard negatives, and its cached (GradCache-style) twin.

Layout of a batch of ``B`` groups with ``G`` passages each (``G = train_group_size``: one positive
followed by ``G - 1`` hard negatives)::

    queries   q: (B, D)
    passages  p: (B * G, D)   rows i*G .. i*G+G-1 belong to query i; row i*G is its positive

Every query is scored against *all* ``B * G`` passages: its own positive is the target, the other
queries' positives and every hard negative are negatives. Scores are ``q @ p.T / temperature``, so
``temperature`` equals ``1 / scale`` in sentence-transformers terms (temperature 0.02 = scale 50;
sentence-transformers' default scale 20 = temperature 0.05). ``mask`` (B, B*G), when given, marks
passages that must not count as negatives for a query (the same text as one of its positives).

Across devices, :func:`gather` is the one place that all-gathers with gradients; the loss is then
computed over the global batch on every rank. It is *not* multiplied by the world size: the backward of
``torch.distributed.nn.functional.all_gather`` already sums the gradient of every rank's (identical)
loss into each rank's own vectors (world x the single-process gradient), and DDP's average over ranks
divides that back, so the parameters get exactly the gradient of the single-process loss over the union
batch (tests/test_training_dist.py). Tevatron-style code that multiplies by the world size uses a gather
*without* gradients for the other ranks' slices; with a differentiable gather that factor doubles the
gradient on 2 ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather ``tensor`` (n, ...) from every rank along dim 0, keeping gradients; identity when not distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    if torch.distributed.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)  # (world * n, ...)


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def info_nce(q: torch.Tensor, p: torch.Tensor, temperature: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE loss of queries against all passages of the (global) batch.

    Args:
        q: (B, D) query vectors.
        p: (B * G, D) passage vectors, ``G`` per query, positive first.
        temperature: Softmax temperature (``scale = 1 / temperature``).
        mask: Optional (B, B * G) bool, True where a passage must not count as a negative.

    Returns:
        Scalar loss (mean over queries).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, group = q.shape[0], p.shape[0] // q.shape[0]
    if group * batch != p.shape[0]:
        raise ValueError(f"{p.shape[0]} passages do not split into {batch} groups of equal size")
    scores = q.float() @ p.float().T / temperature  # (B, B*G)
    targets = torch.arange(batch, device=q.device) * group  # (B,) column of each query's positive
    if mask is not None:
        mask = mask.to(scores.device).clone()  # (B, B*G)
        mask[torch.arange(batch, device=q.device), targets] = False  # the target itself is never masked
        scores = scores.masked_fill(mask, float("-inf"))
    return F.cross_entropy(scores, targets)


def distributed_info_nce(q: torch.Tensor, p: torch.Tensor, temperature: float,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`info_nce` over the batch gathered from all ranks (in-batch negatives from every device).

    ``mask`` is this rank's rows: either ``(B, world * B * G)``, columns over the *global* passages in rank
    order (what :class:`~retriever_training.collator.TrainCollator` builds from the global batch, so the
    result equals a single process over the union batch), or ``(B, B * G)`` over the local passages only
    (placed on the rank's diagonal block; duplicates across ranks are then not masked).
    """
    world = world_size()
    if world == 1:
        return info_nce(q, p, temperature, mask)
    global_mask = None
    if mask is not None or _any_rank(mask is not None):
        rows, cols = q.shape[0], p.shape[0]
        local = torch.zeros((rows, cols * world), dtype=torch.bool, device=q.device)  # this rank's global rows
        if mask is not None and mask.shape[1] == cols * world:  # columns already global
            local |= mask.to(q.device)
        elif mask is not None and mask.shape[1] == cols:  # local columns: the rank's own diagonal block
            rank = torch.distributed.get_rank()
            local[:, rank * cols:(rank + 1) * cols] = mask.to(q.device)
        elif mask is not None:
            raise ValueError(f"mask has {mask.shape[1]} columns; expected {cols} (local passages) or "
                             f"{cols * world} (global passages)")
        global_mask = torch.cat(_all_gather_plain(local), dim=0)  # (world * B, world * B * G)
    return info_nce(gather(q), gather(p), temperature, global_mask)


def _all_gather_plain(tensor: torch.Tensor) -> list[torch.Tensor]:
    """All-gather without gradients (masks); every rank must pass the same shape."""
    out = [torch.zeros_like(tensor) for _ in range(world_size())]
    torch.distributed.all_gather(out, tensor.contiguous())
    return out


def _any_rank(flag: bool) -> bool:
    """True when ``flag`` holds on any rank (all ranks must agree before a collective)."""
    value = torch.tensor([int(flag)], device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


Inputs = Mapping[str, torch.Tensor]


def _split(inputs: Inputs, size: int) -> list[dict[str, torch.Tensor]]:
    """Cut collated inputs (each value (n, seq)) into row chunks of at most ``size``."""
    n = next(iter(inputs.values())).shape[0]
    return [{k: v[i:i + size] for k, v in inputs.items()} for i in range(0, n, size)]


class _RngState:
    """CPU (and CUDA) random state captured before a chunk's first forward, so the recomputation sees the
    same dropout masks (GradCache's RandContext)."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda = torch.cuda.get_rng_state_all() if cuda_ready else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def cached_info_nce_backward(
    embed: Callable[[Inputs], torch.Tensor],
    query_inputs: Inputs,
    passage_inputs: Inputs,
    temperature: float,
    chunk_size: int,
    mask: torch.Tensor | None = None,
    loss_scale: float = 1.0,
    no_sync: Callable[[], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Compute the InfoNCE loss of a large batch and back-propagate it chunk by chunk (GradCache).

    1. Embed all texts in chunks without autograd (activation memory of one chunk only).
    2. Compute the loss on those vectors as leaves and back-propagate to get d loss / d vector.
    3. Re-embed each chunk with autograd (same random state) and back-propagate
       ``(vector * cached_grad).sum()``, which gives the parameters exactly the gradient of the full loss.

    Args:
        embed: Maps collated inputs (n, seq) to vectors (n, D) with autograd (e.g. the model's encoder).
        query_inputs: Collated queries, B rows.
        passage_inputs: Collated passages, B * G rows.
        temperature: As in :func:`info_nce`.
        chunk_size: Rows per forward pass.
        mask: As in :func:`info_nce`.
        loss_scale: Multiplies the loss before back-propagation (e.g. ``1 / gradient_accumulation_steps``).
        no_sync: Under DDP, the wrapped model's ``no_sync``: every chunk's backward but the last runs inside it,
            so gradients are all-reduced once per step instead of once per chunk (the result is the same).

    Returns:
        The (unscaled) loss, detached. Parameter ``.grad`` fields hold the accumulated gradients.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    reps, states = {}, {}
    for side, inputs in (("q", query_inputs), ("p", passage_inputs)):
        chunks, rngs = [], []
        for chunk in _split(inputs, chunk_size):
            rngs.append(_RngState())
            with torch.no_grad():
                chunks.append(embed(chunk))  # (chunk, D)
        reps[side] = torch.cat(chunks).detach().requires_grad_(True)  # (n, D) leaf
        states[side] = rngs
    loss = distributed_info_nce(reps["q"], reps["p"], temperature, mask)
    (loss * loss_scale).backward()  # fills reps[side].grad: (n, D)
    work = [(chunk, rng, grad) for side, inputs in (("q", query_inputs), ("p", passage_inputs))
            for chunk, rng, grad in zip(_split(inputs, chunk_size), states[side],
                                        reps[side].grad.split(chunk_size))]  # grads: chunks of (chunk, D)
    for i, (chunk, rng, grad) in enumerate(work):
        last = i == len(work) - 1
        with nullcontext() if no_sync is None or last else no_sync():
            current = _RngState()
            rng.restore()
            vectors = embed(chunk)  # (chunk, D) with autograd
            current.restore()
            torch.dot(vectors.flatten().float(), grad.flatten()).backward()
    return loss.detach()
