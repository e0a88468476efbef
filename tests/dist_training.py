"""Helpers shared by ``tests/test_training_dist.py`` and the worker it launches with ``torchrun``.

Not a test module (pytest collects ``test_*.py`` only). The same :func:`build_trainer` builds the
single-process reference in the pytest process and every rank of the ``torchrun`` run, so the two differ
only in the process count and the per-device batch size.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from retriever_training.arguments import parse_training_args
from retriever_training.arrow_data import ArrowGroupDataset
from retriever_training.collator import TrainCollator
from retriever_training.data import Group, GroupDataset
from retriever_training.model import BiEncoderModel, build_encoder
from retriever_training.trainer import RetrieverTrainer

INSTRUCTION = "Given a claim, retrieve documents that support or refute the claim"
WORDS = ("aspirin statin insulin tumour cytokine sepsis kidney liver neuron amyloid vitamin cohort trial mice "
         "patients mortality risk therapy dose infection protein receptor pathway gene").split()
GLOBAL_BATCH = 4
STEPS = 4


def make_groups(n: int, seed: int = 0) -> list[Group]:
    """``n`` groups with one positive and two negatives; every third group's first negative is the *next*
    group's positive, so batches that hold both must mask (or replace) it, also when the two groups sit on
    different ranks."""
    rng = random.Random(seed)

    def sentence(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    groups = [Group(query=sentence(6) + f" {i}", positives=[{"title": f"Doc {i}", "text": sentence(9)}],
                    negatives=[sentence(9), sentence(9)], instruction=INSTRUCTION, id=f"g{i}") for i in range(n)]
    for i in range(0, n - 1, 3):
        groups[i].negatives = [dict(groups[i + 1].positives[0])]  # only this negative: masked, not replaced
    return groups


class IdLog:
    """Wraps the collator and logs, per collated batch, the ids of the groups this process embedded (read from
    ``TrainCollator.local_ids``). The log runs a batch ahead of the steps (accelerate prefetches one)."""

    def __init__(self, collator: TrainCollator) -> None:
        self.collator = collator
        self.ids: list[list[str]] = []

    def __call__(self, items: list) -> dict:
        batch = self.collator(items)
        self.ids.append(list(self.collator.local_ids))
        return batch

    @property
    def stats(self) -> Any:
        return self.collator.stats

    @property
    def shard(self) -> tuple[int, int] | None:
        return self.collator.shard

    @shard.setter
    def shard(self, value: tuple[int, int] | None) -> None:
        self.collator.shard = value


class Recorder(TrainerCallback):
    """Logged losses and, before each optimizer step, the (all-reduced) gradient of every trainable weight."""

    def __init__(self, log: IdLog) -> None:
        self.log = log
        self.losses: list[float] = []
        self.grads: list[dict[str, torch.Tensor]] = []

    @property
    def ids(self) -> list[list[str]]:
        return self.log.ids

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (HF callback signature)
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad})


def build_trainer(model_dir: str | Path, out: str | Path, groups: list[Group], *, per_device_batch: int,
                  arrow_file: str | Path | None = None,
                  **overrides: Any) -> tuple[RetrieverTrainer, BiEncoderModel, Recorder]:
    """The real training path (``build_encoder`` + ``BiEncoderModel`` + ``TrainCollator`` + ``RetrieverTrainer``),
    from ``groups`` in memory or from ``arrow_file`` holding the same groups, in fp32 with LoRA r=4, a constant
    learning rate, a loss logged every step and no gradient clipping (the recorded gradients are the raw ones)."""
    torch.manual_seed(0)  # the LoRA A matrices are initialised randomly (identically on every rank)
    encoder = build_encoder(str(model_dir), dtype="float32", device="cpu", lora_r=4, lora_alpha=8)
    model = BiEncoderModel(encoder, temperature=0.05, base_model=str(model_dir))
    argv = ["--model_name_or_path", "unused", "--train_files", __file__, "--output_dir", str(out),
            "--use_cpu", "true", "--per_device_train_batch_size", str(per_device_batch), "--learning_rate", "5e-3",
            "--max_steps", str(STEPS), "--lr_scheduler_type", "constant", "--logging_steps", "1",
            "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0", "--max_grad_norm", "0",
            "--report_to", "none"]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    args = parse_training_args(argv)[2]
    collator = TrainCollator(encoder, group_size=2, passage_max_length=48, seed=0)
    recorder = Recorder(IdLog(collator))
    dataset = (GroupDataset(groups, min_negatives=1) if arrow_file is None
               else ArrowGroupDataset(arrow_file, min_negatives=1))  # the same groups, memory-mapped
    trainer = RetrieverTrainer(model=model, args=args, train_dataset=dataset, data_collator=recorder.log,
                               adapter_dtype="float32", callbacks=[recorder])
    return trainer, model, recorder


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable weights, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
