"""DDP, proven: ``torchrun --nproc_per_node 2`` (gloo, CPU) against one process over the union batch.

One ``torchrun`` launch (``tests/dist_worker.py``) trains the tiny random Llama of ``tests/conftest.py``
through the real path (``build_encoder`` + ``BiEncoderModel`` + ``TrainCollator`` + ``RetrieverTrainer``,
in-batch negatives gathered across the two ranks) for 4 steps of 2 groups per rank; this process trains the
same groups for 4 steps of 4 groups. In fp32 the logged losses, the all-reduced gradients of every step and
the final weights agree within 1e-5; a 2-process run stopped at step 2 and resumed from its checkpoint ends
where the uninterrupted one does; the GradCache path gives the plain path's losses and gradients, on one
process and across two (the 2-rank GradCache run also collates in a data-loader worker process). The groups
make cross-rank false negatives (a hard negative equal to another group's positive), so the global mask is
exercised too. The ranks embed disjoint halves of each global batch, also when the groups are read from the
memory-mapped Arrow file (``retriever_training/arrow_data.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_training import GLOBAL_BATCH, STEPS, build_trainer, make_groups, trainable

from retriever_training.arrow_data import convert_to_arrow
from retriever_training.data import write_groups

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TOL = 1e-5


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def _assert_same_run(run: dict, ref: dict, what: str) -> None:
    assert len(run["losses"]) == len(ref["losses"]) == STEPS, what
    for step, (x, y) in enumerate(zip(run["losses"], ref["losses"]), start=1):
        assert abs(x - y) < TOL, f"{what}: loss at step {step} {x} != {y}"
    for step, (g, h) in enumerate(zip(run["grads"], ref["grads"]), start=1):
        # relative to the largest gradient entry (~2 here): fp32 sums in another order differ by up to ~5e-6 of it
        scale = max(float(v.abs().max()) for v in h.values())
        assert _max_diff(g, h) / scale < TOL, f"{what}: gradient at step {step} differs by {_max_diff(g, h)}"
    assert _max_diff(run["weights"], ref["weights"]) < TOL, what


@pytest.fixture(scope="module")
def groups():
    return make_groups(24, seed=11)


@pytest.fixture(scope="module")
def single(tiny_llama_dir, groups, tmp_path_factory):
    """One process, global batch 4: the plain and the GradCache run."""
    torch.set_num_threads(1)
    out = {}
    for name, overrides in (("plain", {}), ("cached", {"cache_chunk_size": 1})):
        trainer, model, recorder = build_trainer(tiny_llama_dir, tmp_path_factory.mktemp(name), groups,
                                                 per_device_batch=GLOBAL_BATCH, **overrides)
        trainer.train()
        out[name] = {"losses": recorder.losses, "grads": recorder.grads, "weights": trainable(model),
                     "collator": vars(trainer.data_collator.stats), "ids": recorder.ids}
    return out


@pytest.fixture(scope="module")
def ddp(tiny_llama_dir, groups, tmp_path_factory):
    """The ``torchrun --nproc_per_node 2`` run; returns ``{scenario: [rank0, rank1]}``."""
    work = tmp_path_factory.mktemp("ddp")
    data = work / "groups.jsonl"
    write_groups(data, groups)
    convert_to_arrow([data], work / "groups.arrow", progress=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS / "dist_worker.py"), str(tiny_llama_dir), str(data), str(work / "groups.arrow"), str(work)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return {name: [torch.load(work / f"{name}.rank{r}.pt") for r in range(2)]
            for name in ("plain", "arrow", "cached", "stop", "resume")}


def test_ddp_two_ranks_equal_one_process_over_the_union_batch(single, ddp):
    rank0, rank1 = ddp["plain"]
    assert _max_diff(rank0["weights"], rank1["weights"]) == 0.0  # DDP keeps the replicas identical
    _assert_same_run(rank0, single["plain"], "2 ranks vs 1 process")
    # the groups were built to collide: some negative was masked across the global batch on every rank
    assert single["plain"]["collator"]["negatives_masked"] > 0
    assert rank0["collator"]["negatives_masked"] == single["plain"]["collator"]["negatives_masked"]
    assert max(single["plain"]["losses"]) - min(single["plain"]["losses"]) > 1e-3  # the loss moved: real steps


def test_ddp_resume_from_checkpoint_continues_identically(ddp):
    straight, stopped, resumed = ddp["plain"][0], ddp["stop"][0], ddp["resume"][0]
    assert stopped["global_step"] == 2 and resumed["global_step"] == STEPS
    assert stopped["losses"] == pytest.approx(straight["losses"][:2], abs=TOL)
    assert resumed["losses"] == pytest.approx(straight["losses"][2:], abs=TOL)  # only the steps it trained
    assert _max_diff(resumed["weights"], straight["weights"]) < TOL
    assert _max_diff(resumed["weights"], ddp["resume"][1]["weights"]) == 0.0
    assert _max_diff(stopped["weights"], straight["weights"]) > 1e-4  # steps 3-4 changed the weights


def test_gradcache_equals_the_plain_path_on_one_process_and_across_two(single, ddp):
    _assert_same_run(single["cached"], single["plain"], "GradCache vs plain, 1 process")
    _assert_same_run(ddp["cached"][0], single["plain"], "GradCache on 2 ranks vs plain, 1 process")
    assert _max_diff(ddp["cached"][0]["weights"], ddp["cached"][1]["weights"]) == 0.0


@pytest.mark.parametrize("source", ["plain", "arrow"])
def test_ranks_embed_disjoint_halves_of_the_single_process_batches(single, ddp, source):
    """Sharding: in every step the two ranks embed disjoint groups whose union (rank 0 first) is exactly the
    batch one process trains on; no group repeats within the epoch. Same from the memory-mapped Arrow file."""
    rank0, rank1 = (run["ids"][:STEPS] for run in ddp[source])
    reference = single["plain"]["ids"][:STEPS]
    for step, (a, b, ref) in enumerate(zip(rank0, rank1, reference), start=1):
        assert len(a) == len(b) == GLOBAL_BATCH // 2 and not set(a) & set(b), step
        assert a + b == ref, step
    seen = [i for batch in reference for i in batch]
    assert len(seen) == len(set(seen)) == STEPS * GLOBAL_BATCH


def test_ddp_from_memory_mapped_arrow_equals_ddp_from_memory(ddp):
    _assert_same_run(ddp["arrow"][0], ddp["plain"][0], "2 ranks from Arrow vs 2 ranks from a list of groups")
