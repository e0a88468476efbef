"""One rank of the ``torchrun --nproc_per_node 2`` run in ``tests/test_training_dist.py`` (gloo, CPU).

Usage: ``torchrun --standalone --nproc_per_node 2 tests/dist_worker.py MODEL_DIR GROUPS_JSONL GROUPS_ARROW OUT``.
Runs, one after the other in the same process group, the scenarios the test compares and writes
``OUT_DIR/<scenario>.rank<r>.pt`` (losses, per-step gradients, final trainable weights):

* ``plain``: 4 steps, 2 groups per rank (global batch 4);
* ``arrow``: ``plain`` with the same groups read from the memory-mapped Arrow file;
* ``cached``: the same through the GradCache path (``cache_chunk_size 1``), collated in a data-loader worker
  process (which has no process group: the trainer tells the collator its slice);
* ``stop``: 2 of the 4 steps with a checkpoint at step 2; ``resume``: a fresh trainer resumed from it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dist_training import GLOBAL_BATCH, build_trainer, trainable  # noqa: E402

from retriever_training.data import read_groups  # noqa: E402


def main(model_dir: str, groups_file: str, arrow_file: str, out: str) -> None:
    torch.set_num_threads(1)
    groups = read_groups(groups_file)
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    per_device = GLOBAL_BATCH // world
    out_dir = Path(out)

    def run(name: str, run_dir: str, resume: str | None = None, **overrides: object) -> None:
        trainer, model, recorder = build_trainer(model_dir, out_dir / run_dir, groups, per_device_batch=per_device,
                                                 **overrides)
        assert trainer.args.world_size == world and torch.distributed.get_world_size() == world
        trainer.train(resume_from_checkpoint=resume)
        torch.save({"losses": recorder.losses, "grads": recorder.grads, "weights": trainable(model),
                    "ids": recorder.ids, "global_step": trainer.state.global_step,
                    "collator": vars(trainer.data_collator.stats)},
                   out_dir / f"{name}.rank{rank}.pt")

    run("plain", "plain")
    run("arrow", "arrow", arrow_file=arrow_file)
    run("cached", "cached", cache_chunk_size=1, dataloader_num_workers=1)  # collation in a worker process
    run("stop", "stopped", max_steps=2, save_strategy="steps", save_steps=2)
    run("resume", "stopped", resume=str(out_dir / "stopped" / "checkpoint-2"))


if __name__ == "__main__":
    main(*sys.argv[1:5])
