"""Training-data loader at scale: peak memory and time to the first step, in-memory JSONL vs memory-mapped Arrow.

Both paths run the real trainer (``RetrieverTrainer`` with the duplicate-free sampler, ``TrainCollator``,
group size 2) on a tiny random Llama (the ``tests/conftest.py`` builder), so the model costs almost nothing and
what is measured is the data path:

* ``jsonl``: ``read_groups`` -> ``GroupDataset`` -> ``NoDuplicateBatchSampler`` (every group and its dedupe
  keys as Python objects; the path before issue 15);
* ``arrow``: ``ArrowGroupDataset`` over a file from ``convert_to_arrow`` (memory-mapped) ->
  ``ArrowNoDuplicateBatchSampler`` (hashed keys).

Each (path, size) runs in a fresh process. Reported per run: seconds from the start of data loading to the end of
the first optimizer step; RSS before the data (imports + model), after each step, and the process's peak RSS
(``ru_maxrss``). The one-off conversion (time, file size, peak RSS) is measured too. Generate the data first
(not committed)::

    python scripts/make_synthetic_groups.py --n 1000000 --out /tmp/bmrag_scale/synthetic_1m.jsonl
    python evals/bench_train_data.py --data /tmp/bmrag_scale/synthetic_1m.jsonl --sizes 10000 100000 1000000

Writes ``bench_train_data.json`` and ``bench_train_data.md`` under ``--out-dir`` (default ``evals/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    """Current resident set size (MiB) from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_split_mib() -> tuple[float, float]:
    """(anonymous, file-backed) resident MiB from /proc/self/status. File-backed pages of a memory map are page
    cache: shared by every process mapping the file and dropped by the kernel under memory pressure."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values["RssAnon"], values["RssFile"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------------------------------ child
def child(mode: str, data: str, size: int, steps: int, batch: int, model_dir: str) -> dict[str, Any]:
    """One measured run in this (fresh) process; returns the figures."""
    import torch
    from transformers import TrainerCallback

    from retriever_training.arguments import parse_training_args
    from retriever_training.collator import TrainCollator
    from retriever_training.model import BiEncoderModel, build_encoder
    from retriever_training.trainer import RetrieverTrainer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = build_encoder(model_dir, dtype="float32", device="cpu", lora_r=4, lora_alpha=8)
    model = BiEncoderModel(encoder, temperature=0.02)
    collator = TrainCollator(encoder, group_size=2, query_max_length=64, passage_max_length=160, seed=0)
    before_data = rss_mib()
    anon_before = rss_split_mib()[0]
    marks: dict[str, Any] = {"step_s": [], "step_rss_mib": [], "step_anon_mib": [], "step_file_mib": []}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (HF callback signature)
            marks["step_s"].append(round(time.perf_counter() - start, 2))
            marks["step_rss_mib"].append(round(rss_mib(), 1))
            anon, file = rss_split_mib()
            marks["step_anon_mib"].append(round(anon, 1))
            marks["step_file_mib"].append(round(file, 1))

    start = time.perf_counter()
    if mode == "jsonl":
        from retriever_training.data import GroupDataset, read_groups

        dataset = GroupDataset(read_groups(data, limit=size), min_negatives=1)
    else:
        from retriever_training.arrow_data import ArrowGroupDataset

        dataset = ArrowGroupDataset(data, min_negatives=1, limit_per_file=size)
    loaded_s = time.perf_counter() - start
    loaded_rss = rss_mib()
    with tempfile.TemporaryDirectory() as out:
        args = parse_training_args(["--model_name_or_path", "unused", "--train_files", __file__, "--output_dir", out,
                                    "--use_cpu", "true", "--per_device_train_batch_size", str(batch),
                                    "--max_steps", str(steps), "--save_strategy", "no", "--disable_tqdm", "true",
                                    "--report_to", "none", "--logging_steps", "1000"])[2]
        trainer = RetrieverTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                   callbacks=[Clock()])
        trainer.train()
    return {"mode": mode, "groups": len(dataset), "load_s": round(loaded_s, 2),
            "first_step_s": marks["step_s"][0], "step_s": marks["step_s"],
            "rss_before_data_mib": round(before_data, 1), "rss_after_load_mib": round(loaded_rss, 1),
            "step_rss_mib": marks["step_rss_mib"], "anon_before_data_mib": round(anon_before, 1),
            "step_anon_mib": marks["step_anon_mib"], "step_file_mib": marks["step_file_mib"],
            "data_anon_mib": round(max(marks["step_anon_mib"]) - anon_before, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1), "data_peak_mib": round(peak_rss_mib() - before_data, 1)}


def child_convert(data: str, out: str) -> dict[str, Any]:
    from retriever_training.arrow_data import convert_to_arrow

    start = time.perf_counter()
    report = convert_to_arrow([data], out, progress=False)
    return {"groups": report.groups, "seconds": round(time.perf_counter() - start, 1),
            "arrow_mib": round(report.bytes / 2**20, 1), "jsonl_mib": round(Path(data).stat().st_size / 2**20, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1)}


# ----------------------------------------------------------------------------------------------- parent
def run_child(argv: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {argv} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_markdown(result: dict[str, Any], path: Path) -> None:
    conv = result["conversion"]
    lines = [
        "# Training data at scale: in-memory JSONL vs memory-mapped Arrow",
        "",
        f"CPU: {result['cpu']}; {result['date']}; torch threads 1; load average {result['load_before']} before, "
        f"{result['load_after']} after (a shared machine).",
        "",
        f"Command: `{result['command']}` (data: `{result['generator']}`).",
        "",
        f"Data: {conv['groups']:,} synthetic groups (1 positive + 2 hard negatives, ~50-word passages), "
        f"JSONL {conv['jsonl_mib']:,} MiB. One-off conversion to Arrow (`bmrag-train arrow`): {conv['seconds']} s, "
        f"{conv['arrow_mib']:,} MiB file, peak RSS {conv['peak_rss_mib']:,} MiB.",
        "",
        f"Each run: the real `RetrieverTrainer` (duplicate-free sampler, group size 2, batch {result['batch']}) on a "
        f"tiny random Llama for {result['steps']} steps, in a fresh process. *Time to first step* counts from the "
        "start of data loading to the end of the first optimizer step; *data peak* is the peak RSS minus the RSS "
        "before the data (imports + model); *data, private* is the anonymous (process-private) RSS after the steps "
        "minus the same before the data. The rest of the Arrow path's RSS is file-backed: pages of the memory map "
        "(kernel read-ahead around each row read), i.e. page cache shared by all ranks mapping the file and dropped "
        "under memory pressure, not memory the process holds.",
        "",
        "| path | groups | time to first step (s) | load (s) | RSS before data (MiB) | peak RSS (MiB) "
        "| data peak (MiB) | data, private (MiB) | RSS after each step: private + file-backed (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        per_step = ", ".join(f"{a:,.0f} + {f:,.0f}" for a, f in zip(run["step_anon_mib"], run["step_file_mib"]))
        lines.append(f"| {run['mode']} | {run['groups']:,} | {run['first_step_s']} | {run['load_s']} | "
                     f"{run['rss_before_data_mib']:,} | {run['peak_rss_mib']:,} | {run['data_peak_mib']:,} | "
                     f"{run['data_anon_mib']:,} | {per_step} |")
    lines += ["", result.get("summary", ""), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--data", help="JSONL of groups (scripts/make_synthetic_groups.py); required")
    parser.add_argument("--arrow", default=None, help="its Arrow file (default: DATA with .arrow; made if missing)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000], help="first N groups per run")
    parser.add_argument("--modes", nargs="+", choices=["jsonl", "arrow"], default=["jsonl", "arrow"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out-dir", default=str(ROOT / "evals" / "results"))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = child_convert(*rest) if kind == "convert" else child(kind, rest[0], int(rest[1]), args.steps,
                                                                       args.batch, rest[2])
        print(json.dumps(result))
        return 0
    if not args.data:
        parser.error("--data is required")

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from conftest import build_tiny_model

    from bmrag.hardware import describe_cpu

    arrow = args.arrow or str(Path(args.data).with_suffix(".arrow"))
    load_before = os.getloadavg()[0]
    conversion = run_child(["--child", "convert", args.data, arrow])  # always re-made: the timing is reported
    print("conversion", conversion, flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model("llama", Path(tmp) / "tiny"))
        for size in args.sizes:
            for mode in args.modes:
                run = run_child(["--steps", str(args.steps), "--batch", str(args.batch), "--child", mode,
                                 args.data if mode == "jsonl" else arrow, str(size), model_dir])
                print(run, flush=True)
                runs.append(run)
    result = {"cpu": describe_cpu(), "platform": platform.platform(),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python evals/bench_train_data.py " + shlex.join(
                  [a if not a.startswith("/") else Path(a).name for a in (argv or sys.argv[1:])]),
              "generator": f"python scripts/make_synthetic_groups.py --n {conversion['groups']} --out "
                           f"{Path(args.data).name}",
              "load_before": round(load_before, 1), "load_after": round(os.getloadavg()[0], 1),
              "steps": args.steps, "batch": args.batch, "conversion": conversion, "runs": runs}
    by = {(r["mode"], r["groups"]): r for r in runs}
    biggest = max(r["groups"] for r in runs)
    if ("jsonl", biggest) in by and ("arrow", biggest) in by:
        j, a = by[("jsonl", biggest)], by[("arrow", biggest)]
        ratio = j["data_peak_mib"] / max(a["data_peak_mib"], 1)
        private = j["data_anon_mib"] / max(a["data_anon_mib"], 1)
        result["summary"] = (f"At {biggest:,} groups: data peak RSS {j['data_peak_mib']:,} MiB (JSONL in memory) vs "
                             f"{a['data_peak_mib']:,} MiB (Arrow), {ratio:.0f}x less; process-private data memory "
                             f"{j['data_anon_mib']:,} vs {a['data_anon_mib']:,} MiB ({private:.0f}x); time to first "
                             f"step {j['first_step_s']} s vs {a['first_step_s']} s "
                             f"({j['first_step_s'] / a['first_step_s']:.0f}x).")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train_data.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_markdown(result, out / "bench_train_data.md")
    print(result.get("summary", ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
