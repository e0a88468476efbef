"""Encoder throughput: bmrag (fp32, bf16) against sentence-transformers (last-token pooling) on the same weights.

Every configuration embeds the same SciFact passages (formatted with the BMRetriever passage template) with the
same batch size. Configurations run round-robin (the order rotates each round) so that load from other processes
on a shared machine hits all of them alike; the median over rounds is reported, together with the load average
before and after. Speed is reported as ratios against sentence-transformers measured in the same run, and as model
FLOP utilisation (MFU) against the matmul peak measured in the same run with the same thread count.

FLOPs counted per text of ``L`` real (non-pad) tokens::

    2 * P * L                      every non-embedding weight is one multiply-add per token
    + 4 * n_layers * L**2 * d_attn  attention scores (Q K^T) and the weighted sum (A V), full L x L per layer

``P`` = parameters minus the input embedding table (a lookup, no matmul); ``d_attn`` = heads x head_dim (the
hidden size for Llama / GPT-NeoX; 1024 for Gemma-3-270M, whose hidden size is 640). Pad tokens and the causal
half of the attention matrix are computed by the kernels but not counted: MFU is useful work per second.

Usage::

    python evals/bench_encode.py                                   # SmolLM2-135M-Instruct, 64 docs, 2 rounds
    python evals/bench_encode.py --model gemma-3-270m --n-docs 0   # all 5,183 SciFact docs (long: fp32 ~1 h)
    python evals/bench_encode.py --configs bmrag-bf16 st-bf16 --batch-size 16

Writes ``bench_encode.json``, ``bench_encode.md`` and ``bench_encode.png`` under ``--out-dir``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from bmrag import hardware as bmrag_hardware
from bmrag.encoder import BMRetrieverEncoder
from bmrag.evaluation.report import portable
from bmrag.index.readers import load_corpus
from bmrag.loading import dtype_name

logger = logging.getLogger("bench_encode")

ConfigName = Literal["bmrag-fp32", "bmrag-bf16", "st-fp32", "st-bf16", "bmrag-bf16-compiled", "bmrag-fp32-compiled"]
CONFIGS: tuple[str, ...] = get_args(ConfigName)
DEFAULT_CONFIGS = (("bmrag-fp32", "bmrag-bf16", "st-fp32", "st-bf16") if bmrag_hardware.cpu_has_bf16_matmul()
                   else ("bmrag-fp32", "st-fp32"))
"""bf16 configurations only where the CPU has native bf16 matmuls: elsewhere bf16 is emulated (~50x slower than
fp32) and is neither bmrag's default nor worth timing. The ``-compiled`` configurations
(``from_pretrained(torch_compile=True)``) are opt-in: compiling takes minutes on 2 cores."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EMULATED_PEAK_SIZE = (512, 2)
"""Matmul size and repeats for a dtype the CPU only emulates (bf16 without AMX/AVX512-BF16): 2048^3 x 20 would
take ~10 minutes at ~1 GFLOP/s; 512^3 x 2 shows the order of magnitude in a second."""

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_N_DOCS = 64
"""Two length-sorted batches of 32 (~20k SmolLM2 tokens): two rounds of the four default configurations take
~10 minutes on the reference 2-core machine while other jobs load it (the fp32 runs dominate at ~200 tokens/s)."""

TARGET_SPEEDUP = 1.5
TARGET_MFU = 0.40


# ------------------------------------------------------------------------------------------------ inputs
Selection = Literal["batches", "quantiles", "random"]


def select_documents(lengths: Mapping[str, int], n_docs: int, *, selection: Selection = "batches",
                     batch_size: int = 32) -> list[str]:
    """Pick ``n_docs`` document ids whose token lengths follow the corpus' length distribution; deterministic.

    The corpus is ranked by token length (ties by id) and cut into equal strata: ``"batches"`` takes the
    ``batch_size`` consecutive documents at the centre of each of ``n_docs / batch_size`` strata, i.e. whole
    batches of the kind a length-sorted full-corpus run executes (nearly pad-free); ``"quantiles"`` takes the
    document at the centre of each of ``n_docs`` strata, which puts very different lengths in one batch, so
    on small subsets padding rather than the encoder dominates; ``"random"`` is a uniform sample (seed 0), which
    each library then sorts and batches its own way, as it would the whole corpus (so padding differences count).

    Args:
        lengths: Token count of every document, by id.
        n_docs: How many to pick; 0 or more than the corpus = all.
        selection: ``"batches"`` or ``"quantiles"`` (see above).
        batch_size: Batch size of the run (the block size for ``"batches"``).

    Returns:
        Document ids, shortest first.
    """
    ranked = sorted(lengths, key=lambda doc_id: (lengths[doc_id], doc_id))
    if n_docs <= 0 or n_docs >= len(ranked):
        return ranked
    if selection == "quantiles":
        return [ranked[int((i + 0.5) * len(ranked) / n_docs)] for i in range(n_docs)]
    if selection == "random":
        chosen = set(random.Random(0).sample(ranked, n_docs))
        return [doc_id for doc_id in ranked if doc_id in chosen]
    if selection != "batches":
        raise ValueError(f"selection must be 'batches', 'quantiles' or 'random', got {selection!r}")
    blocks = max(1, round(n_docs / batch_size))
    size = n_docs // blocks
    chosen: list[str] = []
    for i in range(blocks):
        centre = int((i + 0.5) * len(ranked) / blocks)
        start = min(max(0, centre - size // 2), len(ranked) - size)
        chosen += ranked[start:start + size]
    return chosen


def padding_efficiency(lengths: Sequence[int], sort_keys: Sequence[int], batch_size: int) -> float:
    """Real tokens / padded tokens when texts are sorted by ``sort_keys`` and chunked into batches."""
    shapes = batch_shapes(lengths, sort_keys, batch_size)
    return sum(lengths) / sum(rows * width for rows, width in shapes)


# ------------------------------------------------------------------------------------------------ FLOPs
@dataclass(frozen=True)
class FlopModel:
    """What the FLOP count needs from a model (see the module docstring for the formula)."""

    non_embedding_params: int
    n_layers: int
    attn_dim: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> FlopModel:
        config = model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(text.num_attention_heads)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        total = sum(p.numel() for p in model.parameters())
        embedding = model.get_input_embeddings().weight.numel()
        return cls(non_embedding_params=total - embedding, n_layers=int(text.num_hidden_layers),
                   attn_dim=heads * int(head_dim))

    def flops(self, lengths: Sequence[int]) -> float:
        """Useful forward FLOPs for texts of the given real token counts."""
        lengths = np.asarray(lengths, dtype=np.float64)
        return float((2.0 * self.non_embedding_params * lengths
                      + 4.0 * self.n_layers * self.attn_dim * lengths**2).sum())

    def padded_flops(self, shapes: Sequence[tuple[int, int]]) -> float:
        """FLOPs the kernels execute for batches of ``(rows, padded width)``: pads and full attention included."""
        return float(sum(rows * (2.0 * self.non_embedding_params * width + 4.0 * self.n_layers * self.attn_dim
                                 * width**2) for rows, width in shapes))

    def to_dict(self) -> dict[str, Any]:
        return {"non_embedding_params": self.non_embedding_params, "n_layers": self.n_layers,
                "attn_dim": self.attn_dim,
                "formula": "sum over texts of 2*P*L + 4*n_layers*d_attn*L^2 (L = real tokens, pads not counted)"}


def measure_matmul_peak(dtype: torch.dtype, device: str, size: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """Best-of-``repeats`` TFLOP/s of one ``size`` x ``size`` matmul (the peak that MFU is measured against)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):  # oneDNN/MKL pick and cache their kernels on the first calls
        torch.mm(a, b, out=out)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        times.append(time.perf_counter() - start)
    flops = 2.0 * size**3
    return {"dtype": dtype_name(dtype), "size": size, "repeats": repeats,
            "best_s": min(times), "median_s": statistics.median(times), "tflops": flops / min(times) / 1e12,
            "tflops_median": flops / statistics.median(times) / 1e12}


# ------------------------------------------------------------------------------------------------ configs
@dataclass
class Runner:
    """One configuration: how it embeds a list of texts, the texts it is fed, and their real token counts."""

    name: str
    library: str
    dtype: str
    embed: Callable[[list[str]], np.ndarray]
    texts: list[str]
    lengths: list[int]
    note: str = ""
    times: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    vectors: np.ndarray | None = None
    token_ids: list[list[int]] | None = None
    shapes: list[tuple[int, int]] = field(default_factory=list)
    warmup_s: float = 0.0


def batch_shapes(lengths: Sequence[int], sort_keys: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """(rows, padded width) of each batch when texts are sorted by ``sort_keys`` (descending) and chunked."""
    order = sorted(range(len(lengths)), key=lambda i: -sort_keys[i])
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [(len(chunk), max(lengths[i] for i in chunk)) for chunk in chunks]


def bmrag_runner(base: BMRetrieverEncoder, dtype: str, texts: list[str], batch_size: int,
                 compiled: bool = False) -> Runner:
    """bmrag's own encode path on a copy of the weights in ``dtype`` (what ``from_pretrained(dtype=)`` gives).

    ``compiled`` uses ``BMRetrieverEncoder.compile()`` (what ``from_pretrained(torch_compile=True)`` does); the
    compile happens during warm-up and is reported as warm-up time.
    """
    model = base.model if base.dtype == DTYPES[dtype] and not compiled else copy.deepcopy(base.model).to(DTYPES[dtype])
    enc = BMRetrieverEncoder(model, base.tokenizer, base.recipe, source=base.source,
                             default_instruction=base.default_instruction)
    if compiled:
        enc.compile()
    token_ids = enc.tokenize(texts)

    def embed(batch: list[str]) -> np.ndarray:
        return enc.encode(batch, batch_size=batch_size)

    lengths = [len(r) for r in token_ids]
    name, note = f"bmrag-{dtype}", "bmrag encode(): recipe + EOS"
    if compiled:
        name, note = f"{name}-compiled", note + "; torch_compile=True (torch.compile(dynamic=True))"
    return Runner(name, "bmrag", dtype, embed, texts, lengths, note=note, token_ids=token_ids,
                  shapes=batch_shapes(lengths, lengths, batch_size))


def st_runner(model_dir: Path, dtype: str, texts: list[str], batch_size: int, max_length: int,
              device: str, note: str) -> Runner:
    """sentence-transformers on the saved weights: Transformer + last-token Pooling, nothing else.

    sentence-transformers >= 6 renders plain strings through the tokenizer's chat template when it has one
    (SmolLM2-Instruct's adds a system prompt: ~26 extra tokens per text); the text modality is pinned so it
    embeds the passage exactly as given, like bmrag.
    """
    import inspect

    try:  # sentence-transformers >= 6 moved the modules; same classes
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer
    from sentence_transformers import SentenceTransformer

    kwargs: dict[str, Any] = {"max_seq_length": max_length, "model_kwargs": {"dtype": DTYPES[dtype]}}
    if "modality_config" in inspect.signature(Transformer.__init__).parameters:
        kwargs["modality_config"] = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
        kwargs["module_output_name"] = "token_embeddings"
    transformer = Transformer(str(model_dir), **kwargs)
    getter = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    st = SentenceTransformer(modules=[transformer, Pooling(getter(), pooling_mode="lasttoken")], device=device)
    features = (st.preprocess if hasattr(st, "preprocess") else st.tokenize)(texts)
    mask = features["attention_mask"].bool()
    token_ids = [row[m].tolist() for row, m in zip(features["input_ids"], mask)]

    def embed(batch: list[str]) -> np.ndarray:
        return st.encode(batch, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    lengths = [len(r) for r in token_ids]
    # sentence-transformers sorts by character length, not token length
    shapes = batch_shapes(lengths, [len(t) for t in texts], batch_size)
    return Runner(f"st-{dtype}", "sentence-transformers", dtype, embed, texts, lengths, note=note,
                  token_ids=token_ids, shapes=shapes)


def st_texts(enc: BMRetrieverEncoder, texts: list[str], append_eos: bool) -> tuple[list[str], str]:
    """The passages sentence-transformers gets, and a note on how they differ from bmrag's input.

    sentence-transformers never appends EOS; bmrag does (the BMRetriever recipe). Appending the EOS token's
    string gives both the same token ids when the tokenizer maps that string to ``eos_token_id``.
    """
    if not enc.recipe.append_eos:
        return texts, "no EOS on either side (the recipe does not append one)"
    eos, eos_id = enc.tokenizer.eos_token, enc.tokenizer.eos_token_id
    if not append_eos:
        return texts, f"EOS not appended: sentence-transformers pools the last text token, bmrag the EOS ({eos!r})"
    ids = enc.tokenizer(eos, add_special_tokens=False)["input_ids"]
    if ids != [eos_id]:
        return texts, (f"EOS string {eos!r} tokenizes to {ids}, not [{eos_id}]: fed without EOS, so sentence-"
                       "transformers pools the last text token")
    return [t + eos for t in texts], (f"EOS string {eos!r} appended (tokenizes to eos_token_id {eos_id}); "
                                      "truncation to max_length may cut it from the longest passages")


# ------------------------------------------------------------------------------------------------ run
def run_rounds(runners: Sequence[Runner], rounds: int, between: Callable[[], None] = lambda: None) -> None:
    """Time every runner ``rounds`` times, rotating the order each round so contention is spread evenly.

    ``between`` runs before the first round and after every round (the matmul peak is sampled there).
    """
    between()
    for r in range(rounds):
        shift = r % len(runners)
        for runner in list(runners[shift:]) + list(runners[:shift]):
            runner.loads.append(round(os.getloadavg()[0], 2))
            start = time.perf_counter()
            vectors = runner.embed(runner.texts)
            runner.times.append(time.perf_counter() - start)
            runner.vectors = np.asarray(vectors, dtype=np.float32)
            logger.info("round %d %-11s %7.1f s  %6.0f tok/s  (load %.2f)", r + 1, runner.name, runner.times[-1],
                        sum(runner.lengths) / runner.times[-1], runner.loads[-1])
        between()


def st_without_eos(bmrag_fp32: Runner, st_fp32: Runner, texts: list[str], n: int = 8) -> dict[str, Any]:
    """Cosine between bmrag and sentence-transformers when ST is fed the passages without the EOS string.

    Run on the ``n`` shortest passages only (cheap): it shows what the EOS difference alone does to the vectors.
    """
    rows = sorted(range(len(texts)), key=lambda i: bmrag_fp32.lengths[i])[:n]
    theirs = np.asarray(st_fp32.embed([texts[i] for i in rows]), dtype=np.float32)
    mask = np.ones(len(rows), dtype=bool)
    return {"shortest": compare(bmrag_fp32.vectors[rows], theirs, mask)}


def summarise(runner: Runner, flop_model: FlopModel, peaks: Mapping[str, float]) -> dict[str, Any]:
    median = statistics.median(runner.times)
    n_tokens = sum(runner.lengths)
    flops = flop_model.flops(runner.lengths)
    achieved = flops / median / 1e12
    padded_tokens = sum(rows * width for rows, width in runner.shapes)
    executed = flop_model.padded_flops(runner.shapes) / median / 1e12
    return {
        "library": runner.library, "dtype": runner.dtype, "note": runner.note, "warmup_s": round(runner.warmup_s, 1),
        "times_s": [round(t, 3) for t in runner.times], "load1_at_start": runner.loads, "median_s": round(median, 3),
        "docs": len(runner.lengths), "tokens": n_tokens,
        "docs_per_s": len(runner.lengths) / median, "tokens_per_s": n_tokens / median,
        "tflops_achieved": achieved, "gflop_total": flops / 1e9,
        "mfu_vs_bf16_peak": achieved / peaks["bf16"] if "bf16" in peaks else None,
        "mfu_vs_best_peak": achieved / max(peaks.values()),
        "mfu_vs_fp32_peak": achieved / peaks["fp32"] if "fp32" in peaks else None,
        "padded_tokens": padded_tokens, "padding_efficiency": n_tokens / padded_tokens,
        "tflops_executed_incl_pads": executed,
        "hfu_vs_peak_of_dtype": executed / peaks[runner.dtype] if runner.dtype in peaks else None,
    }


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
    return (a * b).sum(axis=1)


def compare(a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    if not rows.any():
        return {"n": 0}
    cos = cosine_rows(a[rows], b[rows])
    diff = np.abs(a[rows] - b[rows])
    scale = np.abs(a[rows]).max()
    return {"n": int(rows.sum()), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(diff.max()), "max_abs_diff_rel": float(diff.max() / scale)}


def parity(runners: Mapping[str, Runner], max_length: int, no_eos: dict[str, Any] | None) -> dict[str, Any]:
    """How far apart the vectors of the configurations are (bmrag vs sentence-transformers, bf16 vs fp32)."""
    out: dict[str, Any] = {}
    for dtype in DTYPES:
        ours, theirs = runners.get(f"bmrag-{dtype}"), runners.get(f"st-{dtype}")
        if ours is None or theirs is None:
            continue
        lengths = np.asarray(ours.lengths)
        full = lengths < max_length  # not truncated: the EOS is the last token for both libraries
        out[f"bmrag-{dtype} vs st-{dtype}"] = {
            "same_token_ids": sum(a == b for a, b in zip(ours.token_ids, theirs.token_ids)),
            "n": len(lengths),
            "not_truncated": compare(ours.vectors, theirs.vectors, full),
            "truncated": compare(ours.vectors, theirs.vectors, ~full),
        }
    for ours, ref in (("bmrag-bf16", "bmrag-fp32"), ("bmrag-bf16-compiled", "bmrag-fp32"),
                      ("bmrag-bf16-compiled", "bmrag-bf16"), ("bmrag-fp32-compiled", "bmrag-fp32")):
        if ours in runners and ref in runners:
            all_rows = np.ones(len(runners[ref].lengths), dtype=bool)
            out[f"{ours} vs {ref}"] = {"all": compare(runners[ours].vectors, runners[ref].vectors, all_rows)}
    if no_eos is not None:
        out["bmrag-fp32 vs st-fp32 without EOS"] = no_eos
    return out


# ------------------------------------------------------------------------------------------------ records
def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512_fp16"}
    return sorted(wanted & bmrag_hardware.cpu_flags())


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "sentence-transformers", "bmrag", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def hardware(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "cpu_flags": cpu_flags(),
        "native_bf16": bmrag_hardware.cpu_has_bf16_matmul(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(), "device": device,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                                                "KMP_BLOCKTIME", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)},
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_markdown(path: Path, result: Mapping[str, Any]) -> None:
    res, hw, peak = result["configs"], result["hardware"], result["peak"]
    lines = [
        "# Encoder throughput: bmrag vs sentence-transformers",
        "",
        f"Model **{result['model']['model']}** ({result['model']['kind']}, dim {result['model']['dim']}, "
        f"{result['flop_model']['non_embedding_params'] / 1e6:.1f}M non-embedding parameters), "
        f"{result['corpus']['n_docs']} of {result['corpus']['n_corpus']} SciFact passages (selection "
        f"`{result['corpus']['selection']}`, mean {result['corpus']['mean_tokens_subset']:.0f} tokens vs "
        f"{result['corpus']['mean_tokens_corpus']:.0f} in the corpus), batch size "
        f"{result['batch_size']}, {result['rounds']} interleaved rounds, median reported. "
        f"Run {result['created']}.",
        "",
        "| config | dtype | median s | runs (s) | docs/s | tokens/s | TFLOP/s | MFU vs bf16 peak | "
        "MFU vs fp32 peak | MFU vs best peak | real/padded tokens | executed incl. pads vs own-dtype peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        fp32_mfu = f"{r['mfu_vs_fp32_peak']:.0%}" if r["dtype"] == "fp32" and r["mfu_vs_fp32_peak"] else "-"
        # Against an emulated bf16 peak (~1 GFLOP/s without AMX/AVX512-BF16) the ratio is meaningless.
        bf16_mfu = f"{r['mfu_vs_bf16_peak']:.1%}" if hw.get("native_bf16", True) or hw["device"] != "cpu" else "-"
        lines.append(f"| {name} | {r['dtype']} | {r['median_s']:.1f} | {', '.join(f'{t:.1f}' for t in r['times_s'])}"
                     f" | {r['docs_per_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['tflops_achieved']:.3f} | "
                     f"{bf16_mfu} | {fp32_mfu} | {r['mfu_vs_best_peak']:.1%} | "
                     f"{r['padding_efficiency']:.0%} | "
                     f"{r['hfu_vs_peak_of_dtype']:.0%} |")
    lines += ["", "## Headline ratios (docs/s; same passages, same batch size, same run)", "",
              "| ratio | value | target |", "|---|---|---|"]
    for name, ratio in result["ratios"].items():
        target = result["targets"]["speedup"].get(name)
        verdict = f">= {TARGET_SPEEDUP}x: {'met' if target['met'] else 'missed'}" if target else "(no target)"
        lines.append(f"| {name} | **{ratio:.2f}x** | {verdict} |")
    for name, t in result["targets"]["mfu"].items():
        lines.append(f"| {name} MFU vs the fastest matmul peak ({t['peak_dtype']}) | **{t['value']:.1%}** | "
                     f">= {TARGET_MFU:.0%}: {'met' if t['met'] else 'missed'} |")
    samples = result["peak_samples_tflops"]
    lines += ["", "## Matmul peak (measured in this run, same threads)", "",
              f"Sampled {len(samples)} times (before, between and after the rounds); the best sample is the MFU "
              "denominator. On a loaded machine it stays below the uncontended peak, so MFU here is relative to "
              "what the machine delivered during the run.", "",
              "| dtype | size | best TFLOP/s | median of best sample | all samples (best each) |",
              "|---|---|---|---|---|"]
    for key, p in peak.items():
        lines.append(f"| {p['dtype']} | {p['size']}^3 x{p['repeats']} | {p['tflops']:.3f} | "
                     f"{p['tflops_median']:.3f} | {', '.join(f'{s[key]:.3f}' for s in samples)} |")
    lines += ["", "FLOPs per text of L real tokens: `2 * P * L + 4 * n_layers * d_attn * L^2` with P = "
              f"{result['flop_model']['non_embedding_params']:,} non-embedding parameters, n_layers = "
              f"{result['flop_model']['n_layers']}, d_attn = {result['flop_model']['attn_dim']}; pad tokens and "
              "the masked half of causal attention are not counted. MFU = achieved FLOP/s / measured peak.", "",
              "## Vector parity", ""]
    for name, entry in result["parity"].items():
        if "same_token_ids" in entry:
            lines.append(f"- {name}: identical token ids for {entry['same_token_ids']} of {entry['n']} passages")
        for subset, stats in entry.items():
            if not isinstance(stats, dict) or not stats.get("n"):
                continue
            lines.append(f"- {name}, {subset} (n={stats['n']}): min cosine {stats['min_cosine']:.6f}, "
                         f"max |diff| {stats['max_abs_diff']:.3g} ({stats['max_abs_diff_rel']:.2g} of max |x|)")
    lines += [f"- sentence-transformers input: {result['st_input']}", "",
              "## Padding on the whole corpus at this batch size (real / padded tokens)", ""]
    for name, eff in result["corpus"]["full_corpus_padding_efficiency"].items():
        lines.append(f"- {name}: {eff:.1%}")
    lines += ["", "Computed from the token counts of all passages, not timed. sentence-transformers sorts texts by "
              "characters, bmrag by tokens; the `real/padded tokens` column above is the same quantity for the "
              "subset that was timed.", "",
              "## Machine", "",
              f"- CPU: {hw['cpu_model']}, {hw['logical_cpus']} logical CPUs, flags {', '.join(hw['cpu_flags'])}; "
              f"native bf16 matmuls: {'yes' if hw.get('native_bf16') else 'no (bf16 is emulated)'}",
              f"- torch threads {hw['torch_threads']} (interop {hw['torch_interop_threads']}), "
              f"capability {hw['cpu_capability']}, device {hw['device']}" + (f" ({hw['gpu']})" if "gpu" in hw else "")
              + f", threading environment {hw['env'] or 'unset (defaults)'}",
              f"- versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}",
              f"- load average (1, 5, 15 min) before {result['load']['before']}, after {result['load']['after']} "
              "(other jobs shared the machine; configurations were interleaved so they shared the load alike)",
              f"- wall time of the whole benchmark: {result['wall_s']:.0f} s", "",
              "## Reproduce", "", "```", result["command"], "```", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_plot(path: Path, result: Mapping[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed; no plot written")
        return False
    names = list(result["configs"])
    values = [result["configs"][n]["tokens_per_s"] for n in names]
    colours = ["#1f77b4" if n.startswith("bmrag") else "#999999" for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    bars = ax.bar(names, values, color=colours)
    for bar, name in zip(bars, names):
        mfu = result["configs"][name]["mfu_vs_best_peak"]
        ax.annotate(f"{bar.get_height():,.0f}\nMFU {mfu:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("tokens / s")
    ax.set_ylim(0, max(values) * 1.3)
    ax.set_title(f"{result['model']['model']}, {result['corpus']['n_docs']} SciFact docs, "
                 f"{result['hardware']['torch_threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct",
                        help="offline alias (SmolLM2-135M-Instruct, gemma-3-270m) or a model path")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR folder holding corpus.jsonl(.gz)")
    parser.add_argument("--n-docs", type=int, default=DEFAULT_N_DOCS,
                        help="passages to embed, chosen to follow the corpus length mix; 0 = the whole corpus")
    parser.add_argument("--selection", choices=get_args(Selection), default="batches",
                        help="how the subset is drawn: whole length-sorted batches at equal strata, or one passage "
                             "per quantile")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass, for every config")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats per configuration")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(DEFAULT_CONFIGS), metavar="CONFIG",
                        help=f"configurations to run, from {', '.join(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice, the number of cores)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, or cuda[:N] (the cuda path is written but was not run: no GPU here)")
    parser.add_argument("--st-append-eos", action=argparse.BooleanOptionalAction, default=True,
                        help="append the EOS token string to sentence-transformers' input so both libraries pool "
                             "the same token")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak measurement")
    parser.add_argument("--peak-repeats", type=int, default=20,
                        help="timed matmuls per dtype per sample (sampled before, between and after the rounds; "
                             "the best is kept)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where the JSON, markdown and PNG go")
    parser.add_argument("--tag", default="bench_encode", help="file name stem of the outputs")
    args = parser.parse_args(argv)
    for name in ("batch_size", "rounds", "peak_size", "peak_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.n_docs < 0:
        parser.error(f"--n-docs must be >= 0 (0 = all), got {args.n_docs}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    args.configs = list(dict.fromkeys(args.configs))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "sentence_transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]

    logger.info("loading %s (fp32) on %s", args.model, args.device)
    base = BMRetrieverEncoder.from_pretrained(args.model, dtype="float32", device=args.device)
    corpus = load_corpus(args.data)
    formatted = {doc_id: base.format_document(doc) for doc_id, doc in corpus.items()}
    corpus_lengths = dict(zip(formatted, (len(row) for row in base.tokenize(list(formatted.values())))))
    doc_ids = select_documents(corpus_lengths, args.n_docs, selection=args.selection, batch_size=args.batch_size)
    texts = [formatted[doc_id] for doc_id in doc_ids]
    all_lengths = list(corpus_lengths.values())
    full_corpus_padding = {  # what each library's sort order costs on the whole corpus, at this batch size
        "bmrag (token-length sort)": padding_efficiency(all_lengths, all_lengths, args.batch_size),
        "sentence-transformers (character-length sort)": padding_efficiency(
            all_lengths, [len(t) for t in formatted.values()], args.batch_size),
    }
    logger.info("%d of %d passages from %s (%s)", len(texts), len(corpus), args.data, args.selection)

    runners: dict[str, Runner] = {}
    st_input = "sentence-transformers not run"
    no_eos: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench_encode_") as tmp:
        for name in args.configs:
            library, dtype, *extra = name.split("-")
            if library == "bmrag":
                runners[name] = bmrag_runner(base, dtype, texts, args.batch_size, compiled=extra == ["compiled"])
        st_wanted = [n for n in args.configs if n.startswith("st-")]
        if st_wanted:
            model_dir = Path(tmp) / "model"
            base.model.save_pretrained(model_dir)
            base.tokenizer.save_pretrained(model_dir)
            fed, st_input = st_texts(base, texts, args.st_append_eos)
            for name in st_wanted:
                runners[name] = st_runner(model_dir, name.split("-")[1], fed, args.batch_size,
                                          base.recipe.max_length, args.device, st_input)
        ordered = [runners[n] for n in args.configs]

        # First calls build oneDNN kernels and thread pools; the 8 shortest passages are enough to pay for that.
        for runner in ordered:
            start = time.perf_counter()
            runner.embed(runner.texts[:8])
            runner.warmup_s = time.perf_counter() - start
            logger.info("warm-up %-11s %6.1f s", runner.name, runner.warmup_s)
        peak_samples: list[dict[str, Any]] = []

        def sample_peak() -> None:
            sample = {}
            for key, dtype in DTYPES.items():
                emulated = (args.device == "cpu" and dtype == torch.bfloat16
                            and not bmrag_hardware.cpu_has_bf16_matmul())
                size, repeats = EMULATED_PEAK_SIZE if emulated else (args.peak_size, args.peak_repeats)
                sample[key] = measure_matmul_peak(dtype, args.device, size, repeats)
            peak_samples.append(sample)
            logger.info("matmul peak: %s", ", ".join(f"{k} {v['tflops']:.3f} TFLOP/s" for k, v in sample.items()))

        run_rounds(ordered, args.rounds, between=sample_peak)
        if {"bmrag-fp32", "st-fp32"} <= set(runners) and runners["st-fp32"].texts is not texts:
            no_eos = st_without_eos(runners["bmrag-fp32"], runners["st-fp32"], texts)

    # The best sample is the closest to the uncontended peak: the conservative MFU denominator.
    peak = {k: max((sample[k] for sample in peak_samples), key=lambda p: p["tflops"]) for k in DTYPES}
    peak_values = {k: v["tflops"] for k, v in peak.items()}
    flop_model = FlopModel.of(base.model)
    configs = {name: summarise(runners[name], flop_model, peak_values) for name in args.configs}

    ratios: dict[str, float] = {}
    for ours, theirs in (("bmrag-bf16", "st-fp32"), ("bmrag-bf16", "st-bf16"), ("bmrag-fp32", "st-fp32"),
                         ("bmrag-bf16-compiled", "st-bf16"), ("bmrag-bf16-compiled", "bmrag-bf16"),
                         ("bmrag-fp32-compiled", "st-fp32"), ("bmrag-fp32-compiled", "bmrag-fp32")):
        if ours in configs and theirs in configs:
            ratios[f"{ours} / {theirs}"] = configs[ours]["docs_per_s"] / configs[theirs]["docs_per_s"]
    targets: dict[str, Any] = {"speedup": {k: {"value": v, "target": TARGET_SPEEDUP, "met": v >= TARGET_SPEEDUP}
                                           for k, v in ratios.items() if " / st-" in k}}
    # The MFU target is against the machine's fastest matmul: bf16 with AMX/AVX512-BF16, fp32 where bf16 is emulated.
    best_dtype = max(peak_values, key=peak_values.get)
    targets["mfu"] = {name: {"value": configs[name]["mfu_vs_best_peak"], "target": TARGET_MFU,
                             "peak_dtype": best_dtype, "met": configs[name]["mfu_vs_best_peak"] >= TARGET_MFU}
                      for name in configs if name.startswith(f"bmrag-{best_dtype}")}

    result = {
        "benchmark": "bench_encode",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python evals/bench_encode.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "model": base.describe(),
        "corpus": {"path": str(args.data), "n_docs": len(texts), "n_corpus": len(corpus),
                   "selection": "all" if len(texts) == len(corpus) else args.selection,
                   "tokens_bmrag": sum(corpus_lengths[i] for i in doc_ids),
                   "truncated_bmrag": sum(corpus_lengths[i] >= base.recipe.max_length for i in doc_ids),
                   "mean_tokens_subset": sum(corpus_lengths[i] for i in doc_ids) / len(doc_ids),
                   "mean_tokens_corpus": sum(all_lengths) / len(all_lengths),
                   "full_corpus_padding_efficiency": full_corpus_padding,
                   "doc_ids": doc_ids},
        "batch_size": args.batch_size, "rounds": args.rounds,
        "st_input": st_input,
        "flop_model": flop_model.to_dict(),
        "peak": peak, "peak_samples_tflops": [{k: round(v["tflops"], 4) for k, v in sample.items()}
                                              for sample in peak_samples],
        "configs": configs, "ratios": ratios, "targets": targets,
        "parity": parity(runners, base.recipe.max_length, no_eos),
        "hardware": hardware(args.device), "versions": versions(),
        "load": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "wall_s": time.perf_counter() - wall,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / f"{args.tag}.json"
    result = portable(result)
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_markdown(args.out_dir / f"{args.tag}.md", result)
    plotted = write_plot(args.out_dir / f"{args.tag}.png", result)
    logger.info("wrote %s, %s%s", json_path, args.out_dir / f"{args.tag}.md",
                f", {args.out_dir / f'{args.tag}.png'}" if plotted else "")
    for name, r in configs.items():
        print(f"{name:11s} {r['tokens_per_s']:8,.0f} tok/s {r['docs_per_s']:7.2f} docs/s  "
              f"MFU(best peak, {best_dtype}) {r['mfu_vs_best_peak']:.1%}")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
