"""bmrag's BMRetriever training recipe: Stage I pseudo pairs, Stage II instruction fine-tuning, LoRA.

Modules, one concern each (tevatron's layout): ``arguments`` (HfArgumentParser dataclasses), ``data``
(group format, converters, leakage checks, batching), ``pairs`` (Stage I), ``synth`` (E5-Mistral-style
synthetic data from an OpenAI-compatible server), ``mining`` (hard negatives), ``collator``, ``loss``
(InfoNCE + GradCache), ``model`` (LoRA bi-encoder over ``bmrag.encoder``), ``trainer`` (HF Trainer
subclass), ``cli`` (``bmrag-train``). Evaluation is ``bmrag eval`` (``bmrag.evaluation``).

Embedding goes through ``bmrag.encoder.BMRetrieverEncoder`` (templates, EOS, last-token pooling), so a
trained adapter loads with ``BMRetrieverEncoder.from_pretrained(output_dir)`` and embeds as trained.
"""

from __future__ import annotations

__all__ = ["Group", "info_nce", "mine_hard_negatives", "read_groups", "write_groups"]

from retriever_training.data import Group, read_groups, write_groups
from retriever_training.loss import info_nce
from retriever_training.mining import mine_hard_negatives
