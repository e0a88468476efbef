"""A small ``transformers.Trainer`` subclass for the bi-encoder: loss, batches, saving, resuming.

What it changes, and why:

* ``get_train_dataloader``: batches come from :class:`~retriever_training.data.NoDuplicateBatchSampler`
  (no shared query/positive inside a batch; deterministic in seed + epoch, so ``--resume`` skips
  exactly the batches already trained).
* ``compute_loss``: the model returns an :class:`~retriever_training.model.EncoderOutput` with the loss.
* ``training_step``: with ``cache_chunk_size > 0`` the GradCache path
  (:func:`~retriever_training.loss.cached_info_nce_backward`) replaces forward + backward.
* ``_save`` / ``_load_from_checkpoint``: write and read the adapter plus ``bmrag_config.json``
  (checkpoints in float32, the final save in ``adapter_dtype``).
* :class:`TimedCheckpoint`: a checkpoint every ``save_every_minutes`` as well as every ``save_steps``;
  :class:`TimeBudget`: stop and save after ``max_minutes`` (fixed wall-time budgets on shared CPUs).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from retriever_training.data import GroupDataset, NoDuplicateBatchSampler
from retriever_training.loss import cached_info_nce_backward

logger = logging.getLogger(__name__)


class TimedCheckpoint(TrainerCallback):
    """Ask for a checkpoint whenever ``minutes`` passed since the last one (wall clock)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (HF callback signature)
        if time.monotonic() - self.last >= self.seconds:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        self.last = time.monotonic()
        return control


class TimeBudget(TrainerCallback):
    """Stop training (with a final save) once ``minutes`` of wall time passed since training began."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.start = time.monotonic()
        self.stopped_early = False

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.start = time.monotonic()
        return control

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if time.monotonic() - self.start >= self.seconds and state.global_step < state.max_steps:
            logger.warning("time budget of %.1f min reached at step %d of %d: stopping", self.seconds / 60,
                           state.global_step, state.max_steps)
            self.stopped_early = True
            control.should_training_stop = True
            control.should_save = True
        return control


class RandomBatchSampler(torch.utils.data.Sampler):
    """Shuffled fixed-size batches (last partial batch dropped), deterministic in seed + epoch; no dedupe."""

    def __init__(self, size: int, batch_size: int, seed: int = 0) -> None:
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        for start in range(0, self.size - self.batch_size + 1, self.batch_size):
            yield [(self.epoch, i) for i in order[start:start + self.batch_size]]

    def __len__(self) -> int:
        return self.size // self.batch_size


class RetrieverTrainer(Trainer):
    """``Trainer`` for :class:`~retriever_training.model.BiEncoderModel` (see the module docstring).

    Args:
        dedupe_batches: Use the duplicate-free batch sampler.
        adapter_dtype: Dtype of the final adapter save.
        run_info: Extra fields for ``bmrag_config.json`` (e.g. data and steps).
        *args, **kwargs: As ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, dedupe_batches: bool = True, adapter_dtype: str = "float32",
                 run_info: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dedupe_batches = dedupe_batches
        self.adapter_dtype = adapter_dtype
        self.run_info = run_info or {}
        self._in_checkpoint = False
        if self.args.save_every_minutes:
            self.add_callback(TimedCheckpoint(self.args.save_every_minutes))
        self.time_budget = TimeBudget(self.args.max_minutes) if self.args.max_minutes else None
        if self.time_budget:
            self.add_callback(self.time_budget)

    # -------------------------------------------------------------------------------------------- data
    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        from retriever_training.arrow_data import ArrowGroupDataset, ArrowNoDuplicateBatchSampler

        dataset = self.train_dataset
        if not isinstance(dataset, (GroupDataset, ArrowGroupDataset)):
            raise TypeError(f"train_dataset must be a GroupDataset or an ArrowGroupDataset, got "
                            f"{type(dataset).__name__}")
        # Batches are *global* (per-device size x world size): every rank draws the same duplicate-free batch
        # and the collator embeds this rank's slice, so a DDP run sees exactly the batches one process would
        # with the union batch size (ranks never overlap; tests/test_training_dist.py).
        world = self.args.world_size
        global_batch = self._train_batch_size * world
        if self.dedupe_batches:
            sampler = (ArrowNoDuplicateBatchSampler(dataset, global_batch, seed=self.args.seed)
                       if isinstance(dataset, ArrowGroupDataset)
                       else NoDuplicateBatchSampler(dataset.groups, global_batch, seed=self.args.seed))
            batches = len(sampler)
            logger.info("duplicate-free batches: %d of %d groups in %d batches (%d deferred, %d left over)",
                        batches * global_batch, len(dataset), batches, sampler.deferred, sampler.unused)
        else:
            sampler = RandomBatchSampler(len(dataset), global_batch, seed=self.args.seed)
        if hasattr(self.data_collator, "shard"):  # tells the collator its slice, also inside data-loader workers
            self.data_collator.shard = (self.args.process_index, world)
        elif world > 1:
            raise TypeError(f"under DDP the data collator must take a (rank, world) shard, as TrainCollator does; "
                            f"got {type(self.data_collator).__name__}")
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                                             num_workers=self.args.dataloader_num_workers)
        prepared = self.accelerator.prepare(loader)
        if world > 1:
            # accelerate would hand rank r every world-th global batch; make its shard wrapper a passthrough
            # (as transformers does for its rank-aware BatchRebalanceSampler): the collator slices instead.
            shard = getattr(prepared, "batch_sampler", None)
            if shard is None or getattr(shard, "batch_sampler", None) is not sampler:
                raise RuntimeError(f"unexpected data loader from accelerate: {type(prepared).__name__}")
            shard.num_processes, shard.process_index = 1, 0
        return prepared

    # -------------------------------------------------------------------------------------------- loss
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if not self.args.cache_chunk_size:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        with self.compute_loss_context_manager():
            loss = cached_info_nce_backward(
                lambda chunk: model(embed=chunk).reps, inputs["query"], inputs["passage"], unwrapped.temperature,
                self.args.cache_chunk_size, mask=inputs.get("mask"),
                loss_scale=1.0 / self.current_gradient_accumulation_steps, no_sync=getattr(model, "no_sync", None))
        return loss / self.current_gradient_accumulation_steps

    # ------------------------------------------------------------------------------------------ saving
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        self._in_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._in_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        dtype = "float32" if self._in_checkpoint else self.adapter_dtype
        info = {**self.run_info, "global_step": self.state.global_step}
        model.save(output_dir, adapter_dtype=dtype, extra={"training": info})
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        logger.info("saved %s (%s) to %s", "checkpoint" if self._in_checkpoint else "model", dtype, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = self.accelerator.unwrap_model(model or self.model)
        target.load_adapter_weights(resume_from_checkpoint)
        logger.info("resumed weights from %s", resume_from_checkpoint)


def train(model_args, data_args, training_args) -> dict[str, Any]:
    """Build the encoder, data and trainer from parsed arguments; train; save; return a run summary.

    ``training_args.resume`` continues from the last ``checkpoint-*`` in ``output_dir``. Without it,
    an ``output_dir`` that already holds checkpoints is refused (nothing is overwritten silently).
    """
    import json
    from pathlib import Path

    from transformers.trainer_utils import get_last_checkpoint

    from retriever_training.collator import TrainCollator
    from retriever_training.data import read_groups
    from retriever_training.model import BiEncoderModel, build_encoder

    out = Path(training_args.output_dir)
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if training_args.resume and last is None:
        raise FileNotFoundError(f"--resume: no checkpoint-* folder in {out}")
    if not training_args.resume and last is not None:
        raise FileExistsError(f"{out} already holds {Path(last).name}; pass --resume true to continue it, "
                              "or choose another output_dir")
    from transformers import set_seed

    started = time.time()
    set_seed(training_args.seed)  # the LoRA initialisation is random; a run must be reproducible from its seed
    arrow = [str(path).endswith(".arrow") for path in data_args.train_files]
    if any(arrow) and not all(arrow):
        raise ValueError(f"train_files mixes .arrow and JSONL files {data_args.train_files}; convert the JSONL "
                         "ones with `bmrag-train arrow` (or pass JSONL only)")
    if all(arrow):  # memory-mapped: flat memory however many groups (retriever_training/arrow_data.py)
        from retriever_training.arrow_data import ArrowGroupDataset

        dataset = ArrowGroupDataset(data_args.train_files, min_negatives=data_args.train_group_size - 1,
                                    limit_per_file=data_args.max_groups)
        per_file = dataset.per_file
    else:
        groups = []
        per_file = {}
        for path in data_args.train_files:
            loaded = read_groups(path, limit=data_args.max_groups)
            per_file[path] = len(loaded)
            groups.extend(loaded)
        dataset = GroupDataset(groups, min_negatives=data_args.train_group_size - 1)
    encoder = build_encoder(
        model_args.model_name_or_path, dtype=model_args.dtype, lora=model_args.lora, lora_r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout, lora_targets=model_args.lora_targets,
        lora_target_modules_=model_args.lora_target_modules, init_adapter=model_args.init_adapter,
        gradient_checkpointing=training_args.gradient_checkpointing, normalize=model_args.normalize,
        default_instruction=model_args.default_instruction,
        device="cpu" if training_args.use_cpu or not torch.cuda.is_available() else None,
    )
    if training_args.gradient_checkpointing:
        training_args.gradient_checkpointing = False  # already enabled on the base (peft wraps it)
    model = BiEncoderModel(encoder, temperature=training_args.temperature, base_model=model_args.model_name_or_path)
    collator = TrainCollator(encoder, group_size=data_args.train_group_size,
                             query_max_length=data_args.query_max_length,
                             passage_max_length=data_args.passage_max_length, seed=training_args.seed)
    run_info = {"train_files": per_file, "groups_used": len(dataset), "groups_dropped_short": dataset.dropped_short,
                "train_group_size": data_args.train_group_size, "query_max_length": data_args.query_max_length,
                "passage_max_length": data_args.passage_max_length, "temperature": training_args.temperature,
                "batch_size": training_args.per_device_train_batch_size, "world_size": training_args.world_size,
                "global_batch_size": training_args.per_device_train_batch_size * training_args.world_size,
                "learning_rate": training_args.learning_rate,
                "init_adapter": model_args.init_adapter, "normalize": model_args.normalize,
                "lora": _lora_record(encoder.model)}
    trainer = RetrieverTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                               dedupe_batches=data_args.dedupe_batches, adapter_dtype=model_args.adapter_dtype,
                               run_info=run_info)
    result = trainer.train(resume_from_checkpoint=last if training_args.resume else None)
    trainer.save_model(str(out))
    summary = {**run_info, "global_step": trainer.state.global_step, "train_loss": result.training_loss,
               "train_runtime_s": result.metrics.get("train_runtime"), "wall_s": round(time.time() - started, 1),
               "resumed_from": last if training_args.resume else None, "max_steps": training_args.max_steps,
               "stopped_by_time_budget": bool(trainer.time_budget and trainer.time_budget.stopped_early),
               "collator": {k: v for k, v in vars(collator.stats).items() if k != "extra"},
               "torch_threads": torch.get_num_threads()}
    if training_args.should_save:
        (out / "run.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("training done: %s", summary)
    return summary


def _lora_record(model: nn.Module) -> dict[str, Any] | None:
    """Rank, alpha and modules of the adapter actually trained (a continued adapter keeps its own)."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return None
    return {"r": config.r, "alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
