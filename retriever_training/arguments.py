"""Training configuration as dataclasses parsed by ``HfArgumentParser`` (a YAML file plus command-line overrides).

A YAML config maps field names to values (see ``retriever_training/configs/``); any ``--field value``
given on the command line after it wins. Every field has help text (``bmrag-train finetune --help``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser, TrainingArguments


@dataclass
class ModelArguments:
    """Which decoder to train and how (LoRA or full)."""

    model_name_or_path: str = field(metadata={
        "help": "Base decoder: an offline alias (SmolLM2-135M-Instruct, gemma-3-270m), a local HF dir, a .gguf file, "
                "or a Hub id. Recorded as base_model in bmrag_config.json."})
    dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={
        "help": "Dtype of the frozen base weights. auto: bfloat16 on GPUs and on CPUs with native bf16 matmuls "
                "(AMX/AVX512-BF16), float32 on other CPUs, where bf16 is emulated and ~50x slower "
                "(bmrag.loading.default_dtype). LoRA adapters always train in float32. Use float32 for full "
                "fine-tuning."})
    lora: bool = field(default=True, metadata={"help": "Train LoRA adapters (True) or every weight (False)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_targets: Literal["attention", "attention_mlp"] = field(default="attention_mlp", metadata={
        "help": "Which projections get adapters, mapped per architecture (llama/mistral/gemma: "
                "q,k,v,o(+gate,up,down); gpt_neox: query_key_value,dense(+dense_h_to_4h,dense_4h_to_h))."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Explicit module names; overrides lora_targets (for architectures without a mapping)."})
    init_adapter: str | None = field(default=None, metadata={
        "help": "Continue training this saved adapter (e.g. the Stage I output for Stage II)."})
    adapter_dtype: Literal["float32", "bfloat16"] = field(default="bfloat16", metadata={
        "help": "Dtype of the final saved adapter (checkpoints are always float32 for an exact resume)."})
    normalize: bool = field(default=True, metadata={
        "help": "L2-normalise vectors in training and record normalize=True (cosine) in the saved recipe. InfoNCE "
                "with a temperature of 0.01-0.05 needs unit vectors: raw last-token states of a decoder have norms "
                "in the hundreds. False trains raw dot products (as the released checkpoints are scored); then raise "
                "the temperature accordingly."})
    default_instruction: str | None = field(default=None, metadata={
        "help": "Instruction recorded in bmrag_config.json, used when a caller gives none."})

    def __post_init__(self) -> None:
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ValueError(f"lora_r and lora_alpha must be >= 1, got {self.lora_r}, {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.init_adapter and not self.lora:
            raise ValueError("init_adapter needs lora=True")


@dataclass
class DataArguments:
    """What to train on and how batches are built."""

    train_files: list[str] = field(metadata={
        "help": "JSONL files of groups (query, positives, negatives, instruction), or .arrow files converted from "
                "them with `bmrag-train arrow` (memory-mapped: flat memory for millions of groups)."})
    max_groups: int | None = field(default=None, metadata={"help": "Use at most this many groups per file (first N)."})
    train_group_size: int = field(default=2, metadata={
        "help": "Passages per query: 1 positive + (train_group_size - 1) hard negatives; 1 = in-batch only."})
    query_max_length: int = field(default=64, metadata={
        "help": "Training-time token budget of a query including EOS (the saved recipe keeps the inference 512)."})
    passage_max_length: int = field(default=160, metadata={
        "help": "Training-time token budget of a passage including EOS."})
    dedupe_batches: bool = field(default=True, metadata={
        "help": "Build batches in which no query text or positive passage occurs twice (avoids false negatives)."})

    def __post_init__(self) -> None:
        if not self.train_files:
            raise ValueError("train_files is empty")
        missing = [f for f in self.train_files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"train_files not found: {missing}")
        if self.train_group_size < 1:
            raise ValueError(f"train_group_size must be >= 1, got {self.train_group_size}")
        for name in ("query_max_length", "passage_max_length"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2 (room for one token and the EOS)")


@dataclass
class RetrieverTrainingArguments(TrainingArguments):
    """``transformers.TrainingArguments`` plus the contrastive-loss knobs."""

    temperature: float = field(default=0.02, metadata={
        "help": "InfoNCE temperature; scores are q.p / temperature, i.e. scale = 1 / temperature (0.02 = scale 50)."})
    cache_chunk_size: int = field(default=0, metadata={
        "help": "GradCache: embed in chunks of this many texts and back-propagate chunk-wise, so large batches of "
                "in-batch negatives fit in memory. 0 = plain loss."})
    save_every_minutes: float | None = field(default=None, metadata={
        "help": "Also save a checkpoint whenever this many minutes passed since the last one."})
    max_minutes: float | None = field(default=None, metadata={
        "help": "Stop (and save) after this many minutes of training in this session, even before max_steps; "
                "for fixed wall-time budgets on shared CPUs. The learning-rate schedule still follows max_steps."})
    resume: bool = field(default=False, metadata={
        "help": "Resume from the last checkpoint-* in output_dir (model, optimizer, scheduler, RNG, data order)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False (inputs are nested)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.cache_chunk_size < 0:
            raise ValueError(f"cache_chunk_size must be >= 0, got {self.cache_chunk_size}")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False for the retriever trainer")
        for name in ("save_every_minutes", "max_minutes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")


ARGUMENT_CLASSES = (ModelArguments, DataArguments, RetrieverTrainingArguments)


def yaml_to_argv(path: str | os.PathLike[str]) -> list[str]:
    """Turn a YAML mapping into ``--key value`` arguments (lists become several values).

    Raises:
        ValueError: If the file is not a mapping, naming the file.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values, got {type(data).__name__}")
    argv: list[str] = []
    for key, value in data.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, list):
            argv.extend(str(v) for v in value)
        elif isinstance(value, bool):
            argv.append(str(value).lower())
        else:
            argv.append(str(value))
    return argv


def parse_training_args(argv: list[str], config: str | None = None) -> tuple[ModelArguments, DataArguments,
                                                                            RetrieverTrainingArguments]:
    """Parse ``config`` (YAML, optional) then ``argv``; the command line wins.

    Raises:
        ValueError: Unknown keys (named, with the valid ones), or a failed ``__post_init__`` check.
    """
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    full = (yaml_to_argv(config) if config else []) + list(argv)
    model_args, data_args, training_args, rest = parser.parse_args_into_dataclasses(
        args=full, return_remaining_strings=True)
    if rest:
        valid = sorted(a.dest for a in parser._actions if a.dest != "help")
        unknown = [r for r in rest if r.startswith("--")] or rest
        where = "command line" + (f" or {config}" if config else "")
        raise ValueError(f"unknown training argument(s) {unknown} ({where}); valid: {', '.join(valid)}")
    return model_args, data_args, training_args

