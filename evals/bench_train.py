"""Training throughput: tokens/s and MFU per training step of the real trainer (SmolLM2-135M, LoRA and full).

Each configuration trains the offline ``SmolLM2-135M-Instruct`` (``bmrag/models.py``) through the real path
(``build_encoder`` + ``BiEncoderModel`` + ``TrainCollator`` + ``RetrieverTrainer``) on synthetic groups: group
size 2 (1 positive + 1 hard negative), passages cut at exactly 160 tokens (``passage_max_length``), queries
~30 tokens. The first ``--warmup`` steps are not timed (kernel selection, optimizer state); the next ``--steps``
are, one by one (``on_step_begin`` -> ``on_step_end``).

FLOPs of one step, from the forward FLOPs of ``evals/bench_encode.py``'s ``FlopModel`` (``2*P*L +
4*n_layers*d_attn*L^2`` per text of ``L`` real tokens, ``P`` the non-embedding parameters)::

    full fine-tuning: 3 x forward   (forward, input gradients, weight gradients)
    LoRA:             2 x forward   (forward, input gradients; the frozen base computes no weight gradients;
                                     the adapters' own FLOPs, <1 % at r=16, are not counted)

MFU = those FLOPs per second over the matmul peak of the training dtype measured in the same process with the
same threads (``measure_matmul_peak``). On a shared CPU both numerator and peak are what the machine gave.

    python evals/bench_train.py                     # LoRA (bf16 base where the CPU has bf16) + full (fp32)
    python evals/bench_train.py --configs lora --steps 5 --batch 8
    python evals/bench_train.py --device cuda --batch 64 --steps 5     # on a GPU machine (not run here: none)

Writes ``bench_train.json`` and ``bench_train.md`` under ``--out-dir`` (default ``evals/results``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encode import FlopModel, measure_matmul_peak  # noqa: E402

from bmrag.hardware import describe_cpu  # noqa: E402
from bmrag.loading import default_dtype  # noqa: E402
from retriever_training.data import Group  # noqa: E402

logger = logging.getLogger("bench_train")

ConfigName = Literal["lora", "full"]
CONFIGS: tuple[str, ...] = get_args(ConfigName)
WORDS = ("patients with type 2 diabetes mellitus received metformin or placebo and the primary outcome was "
         "glycated haemoglobin at twelve weeks secondary outcomes included insulin resistance lipid profile "
         "inflammatory cytokines renal function and adverse events such as lactic acidosis hypoglycaemia "
         "gastrointestinal symptoms in a randomised double blind multicentre trial").split()


def synthetic_groups(n: int, seed: int = 0) -> list[Group]:
    """``n`` groups of a ~25-word query and two ~300-word passages (cut at 160 tokens by the collator)."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [Group(query=text(25) + f" {i}?", positives=[{"title": f"Trial {i}", "text": text(300)}],
                  negatives=[text(300)], instruction="Given a medical question, retrieve passages that answer it",
                  id=f"b{i}") for i in range(n)]


def matmul_peak(dtype: torch.dtype, size: int, repeats: int = 10, device: str = "cpu") -> dict[str, Any]:
    """``measure_matmul_peak`` plus the same matmul's best TFLOP per *CPU*-second (``time.process_time``): on a
    shared CPU the wall-clock peak is depressed by waiting for a core, so CPU-time MFU needs a CPU-time peak."""
    peak = measure_matmul_peak(dtype, device, size=size, repeats=repeats)
    if device != "cpu":
        return peak
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    cpu = []
    for _ in range(repeats):
        start = time.process_time()
        torch.mm(a, b, out=out)
        cpu.append(time.process_time() - start)
    peak["tflops_per_cpu_s"] = 2.0 * size**3 / max(min(cpu), 1e-9) / 1e12
    return peak


def run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from transformers import TrainerCallback

    from retriever_training.arguments import parse_training_args
    from retriever_training.collator import TrainCollator
    from retriever_training.data import GroupDataset
    from retriever_training.model import BiEncoderModel, build_encoder
    from retriever_training.trainer import RetrieverTrainer

    lora = name == "lora"
    # full fine-tuning keeps fp32 weights (AdamW on bf16 weights drifts); LoRA holds the frozen base in the default
    dtype = default_dtype(args.device) if lora else "float32"
    torch.manual_seed(0)
    started = time.perf_counter()
    encoder = build_encoder(args.model, dtype=dtype, device=args.device, lora=lora, lora_r=16, lora_alpha=32)
    load_s = time.perf_counter() - started
    model = BiEncoderModel(encoder, temperature=0.02, base_model=args.model)
    base = encoder.model.get_base_model() if lora else encoder.model
    flop_model = FlopModel.of(base)
    collator = TrainCollator(encoder, group_size=2, query_max_length=64, passage_max_length=160, seed=0)
    n_steps = args.warmup + args.steps
    groups = synthetic_groups(args.batch * n_steps + args.batch, seed=1)

    tokens: list[tuple[list[int], list[int]]] = []  # real token counts of queries and passages per collated batch

    def counting(items: list) -> dict:
        batch = collator(items)
        tokens.append(([int(x) for x in batch["query"]["attention_mask"].sum(1)],
                       [int(x) for x in batch["passage"]["attention_mask"].sum(1)]))
        return batch

    times: list[float] = []
    cpu_times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kwargs):  # noqa: ANN001 (HF callback signature)
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kwargs):  # noqa: ANN001
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)
            cpu_times.append(time.process_time() - self.c)

    with tempfile.TemporaryDirectory() as out:
        targs = parse_training_args(["--model_name_or_path", args.model, "--train_files", __file__, "--output_dir",
                                     out, "--use_cpu", str(args.device == "cpu").lower(),
                                     "--per_device_train_batch_size", str(args.batch),
                                     "--max_steps", str(n_steps), "--save_strategy", "no", "--disable_tqdm", "true",
                                     "--report_to", "none", "--logging_steps", "1000", "--learning_rate", "1e-5"])[2]
        trainer = RetrieverTrainer(model=model, args=targs, train_dataset=GroupDataset(groups, min_negatives=1),
                                   data_collator=counting, callbacks=[Clock()])
        trainer.train()
    peak = matmul_peak(getattr(torch, dtype), size=args.peak_size, device=args.device)
    multiplier = 2.0 if lora else 3.0
    steps = []
    for i in range(args.warmup, n_steps):
        q, p = tokens[i]
        fwd = flop_model.flops(q) + flop_model.flops(p)
        steps.append({"seconds": round(times[i], 3), "cpu_seconds": round(cpu_times[i], 3), "tokens": sum(q) + sum(p),
                      "train_tflop": multiplier * fwd / 1e12, "tokens_per_s": round((sum(q) + sum(p)) / times[i], 1),
                      "tokens_per_cpu_s": round((sum(q) + sum(p)) / cpu_times[i], 1),
                      "mfu": multiplier * fwd / times[i] / (peak["tflops"] * 1e12),
                      "mfu_cpu_time": (multiplier * fwd / cpu_times[i] / (peak["tflops_per_cpu_s"] * 1e12)
                                       if "tflops_per_cpu_s" in peak else None)})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    passages = [n for q, p in tokens[args.warmup:n_steps] for n in p]
    return {
        "config": name, "dtype_base": dtype, "trainable_params": trainable, "load_s": round(load_s, 1),
        "batch_groups": args.batch, "group_size": 2, "texts_per_step": args.batch * 3,
        "passage_tokens_mean": round(statistics.mean(passages), 1),
        "flop_multiplier": multiplier, "flop_model": flop_model.to_dict(), "matmul_peak": peak,
        "steps": steps, "median_s": round(statistics.median(s["seconds"] for s in steps), 2),
        "median_tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in steps), 1),
        "median_mfu": statistics.median(s["mfu"] for s in steps),
        "median_tokens_per_cpu_s": round(statistics.median(s["tokens_per_cpu_s"] for s in steps), 1),
        "median_mfu_cpu_time": (statistics.median(s["mfu_cpu_time"] for s in steps)
                                if args.device == "cpu" else None),
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [
        "# Training throughput per step (real trainer, SmolLM2-135M-Instruct)",
        "",
        f"CPU: {result['cpu']}; {result['date']}; torch threads {result['threads']}; load average "
        f"{result['load_before']} before, {result['load_after']} after (a shared machine: other jobs ran).",
        "",
        f"Command: `{result['command']}`. Device: {result['device']}.",
        "",
        "Per step: batch of groups x (query + positive + 1 hard negative), passages cut at 160 tokens. FLOPs = "
        "forward FLOPs x 3 (full) or x 2 (LoRA: no weight gradients for the frozen base); MFU against the matmul "
        "peak of the training dtype measured in the same run, same threads. On a shared CPU the wall clock includes "
        "time the process waited for a core; the *per CPU-second* columns (process CPU time of the step, and the "
        "same matmul peak per CPU-second) are the figures that compare across loads.",
        "",
        "| config | base dtype | trainable params | groups/step | texts/step | tokens/step | s/step (median) "
        "| tokens/s (median) | TFLOP/s | MFU (median) | tokens per CPU-s | MFU per CPU time | matmul peak TFLOP/s "
        "(wall; per CPU-s) | steps timed: wall s (CPU s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        tok = statistics.median(s["tokens"] for s in run["steps"])
        tflops = statistics.median(s["train_tflop"] / s["seconds"] for s in run["steps"])
        timed = ", ".join(f"{s['seconds']} ({s['cpu_seconds']})" for s in run["steps"])
        cpu_mfu = "-" if run["median_mfu_cpu_time"] is None else f"{100 * run['median_mfu_cpu_time']:.1f}%"
        cpu_peak = f"{run['matmul_peak']['tflops_per_cpu_s']:.3f}" if "tflops_per_cpu_s" in run["matmul_peak"] else "-"
        lines.append(
            f"| {run['config']} | {run['dtype_base']} | {run['trainable_params']:,} | {run['batch_groups']} | "
            f"{run['texts_per_step']} | {tok:,.0f} | {run['median_s']} | {run['median_tokens_per_s']:,} | "
            f"{tflops:.3f} | {100 * run['median_mfu']:.1f}% | {run['median_tokens_per_cpu_s']:,} | "
            f"{cpu_mfu} | {run['matmul_peak']['tflops']:.3f}; {cpu_peak} | "
            f"{timed} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="offline alias or path")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=4, help="groups per step")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPU is shared)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (CUDA must be present: no fallback)")
    parser.add_argument("--peak-size", type=int, default=1024, help="matmul size for the peak measurement")
    parser.add_argument("--out-dir", default=str(ROOT / "evals" / "results"))
    args = parser.parse_args(argv)
    if min(args.batch, args.steps, args.threads) < 1 or args.warmup < 0:
        parser.error("--batch, --steps and --threads must be >= 1, --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    load_before = round(os.getloadavg()[0], 1)
    runs = []
    for name in args.configs:
        run = run_config(name, args)
        logger.info("%s: %s s/step, %s tokens/s, MFU %.1f%%", name, run["median_s"], run["median_tokens_per_s"],
                    100 * run["median_mfu"])
        runs.append(run)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU (no GPU used)"
    result = {"cpu": describe_cpu(), "device": device, "platform": platform.platform(), "torch": torch.__version__,
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "threads": args.threads,
              "command": " ".join(["python evals/bench_train.py",
                                   shlex.join(list(argv) if argv is not None else sys.argv[1:])]).strip(),
              "load_before": load_before, "load_after": round(os.getloadavg()[0], 1), "runs": runs}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_markdown(result, out / "bench_train.md")
    print((out / "bench_train.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
