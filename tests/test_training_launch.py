"""The launch recipes of docs/training.md, each run for real at tiny scale on CPU (gloo), all ending with the same
adapter as one process over the same global batch.

* single process: ``python -m retriever_training.cli finetune --config C --per_device_train_batch_size 4``;
* ``torchrun --standalone --nproc_per_node 2 -m retriever_training.cli finetune ... 2``;
* multi-node: two ``torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT``
  launchers started side by side (two "nodes" on one machine, c10d rendezvous);
* ``accelerate launch --multi_gpu --num_processes 2 -m retriever_training.cli finetune ...`` (``use_cpu: true``
  in the config makes the processes use gloo on CPU).

Each launch costs ~15-40 s of start-up on a shared 2-core CPU, so the module is ``slow``: ``make test-dist``
(called by ``.ci/run`` after ``make test``) runs it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dist_training import make_groups
from safetensors.torch import load_file

from retriever_training.data import write_groups

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODULE = ["-m", "retriever_training.cli", "finetune"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _run(cmds: list[list[str]]) -> None:
    """Start every command at once (the nodes of one job), wait for all, fail with their output."""
    procs = [subprocess.Popen(c, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for cmd, proc, out in zip(cmds, procs, outputs):
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{out[-5000:]}"


@pytest.fixture(scope="module")
def job(tiny_llama_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("launch")
    write_groups(work / "groups.jsonl", make_groups(24, seed=3))
    config = work / "tiny.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_llama_dir}\ndtype: float32\nlora_r: 4\nlora_alpha: 8\nadapter_dtype: float32\n"
        f"train_files: [{work / 'groups.jsonl'}]\ntrain_group_size: 2\npassage_max_length: 48\nmax_steps: 3\n"
        "save_strategy: 'no'\nlogging_steps: 1\nlearning_rate: 0.005\nlr_scheduler_type: constant\n"
        "max_grad_norm: 0\ndisable_tqdm: true\nuse_cpu: true\nreport_to: none\ntemperature: 0.05\n")
    return work, config


def _result(out: Path) -> tuple[dict, dict]:
    return json.loads((out / "run.json").read_text()), load_file(str(out / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def single(job):
    work, config = job
    out = work / "single"
    _run([[sys.executable, *MODULE, "--config", str(config), "--output_dir", str(out),
           "--per_device_train_batch_size", "4"]])
    return _result(out)


def _assert_same(run: tuple[dict, dict], ref: tuple[dict, dict]) -> None:
    (info, weights), (ref_info, ref_weights) = run, ref
    assert (info["world_size"], info["global_batch_size"], info["global_step"]) == (2, 4, 3)
    assert (ref_info["world_size"], ref_info["global_batch_size"]) == (1, 4)
    assert info["train_loss"] == pytest.approx(ref_info["train_loss"], abs=1e-5)
    assert weights.keys() == ref_weights.keys()
    assert max(float((weights[k] - ref_weights[k]).abs().max()) for k in weights) < 1e-5


def test_torchrun_single_node(job, single):
    work, config = job
    out = work / "torchrun"
    _run([[str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", *MODULE, "--config", str(config),
           "--output_dir", str(out), "--per_device_train_batch_size", "2"]])
    _assert_same(_result(out), single)


def test_torchrun_two_nodes_c10d_rendezvous(job, single):
    work, config = job
    out, port = work / "multinode", _free_port()
    node = [str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "bmrag-test"]
    train = [*MODULE, "--config", str(config), "--output_dir", str(out), "--per_device_train_batch_size", "2"]
    _run([node + train, node + train])  # two launchers = two nodes; the rendezvous assigns the ranks
    _assert_same(_result(out), single)


def test_accelerate_launch(job, single):
    work, config = job
    out = work / "accelerate"
    _run([[str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *MODULE,
           "--config", str(config), "--output_dir", str(out), "--per_device_train_batch_size", "2"]])
    _assert_same(_result(out), single)
