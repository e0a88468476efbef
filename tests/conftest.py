"""Shared fixtures: tiny random decoders of each BMRetriever family, built once per test run.

Other test files use ``tiny_model_dirs`` (architecture -> saved model directory) and ``tiny_llama_dir``.
Every directory loads with ``BMRetrieverEncoder.from_pretrained(dir, dtype="float32")`` and with plain
``AutoModel`` / ``AutoTokenizer``. The tokenizer is a byte-level BPE (~800 tokens) trained in-process
on generated biomedical sentences, so nothing is downloaded.

Tests parametrised over the three architectures take the ``tiny_arch`` fixture. Helpers live in
``reference_recipe.py`` (importable as ``reference_recipe``), not here: a test module that imports
``conftest`` breaks as soon as a sub-folder adds its own conftest. The variants differ where real
checkpoints differ:

=========  =========================  ==========  ===========  ======================
key        family (checkpoints)       pad token   BOS added    HF class
=========  =========================  ==========  ===========  ======================
gpt_neox   Pythia (410M, 1B)          none (EOS)  no           GPTNeoXModel
llama      Mistral-7B, SmolLM2        "<pad>"     yes          LlamaModel
gemma      Gemma (2B)                 "<pad>"     yes          GemmaModel
=========  =========================  ==========  ===========  ======================
"""

from __future__ import annotations

import os

# Set before transformers / huggingface_hub are imported anywhere: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["RAGAS_DO_NOT_TRACK"] = "true"

from pathlib import Path

import pytest
import torch
from reference_recipe import biomedical_sentences  # also re-exported: older tests import it from conftest

torch.manual_seed(0)

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>"]
TINY_VOCAB_SIZE = 800
TINY_ARCHS = ("gpt_neox", "llama", "gemma")


def _train_tokenizer(bos: bool) -> object:
    """A byte-level BPE with the special tokens, optionally prefixing ``<bos>`` like Llama/Gemma tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(biomedical_sentences(), trainer=trainer)
    if bos:
        bos_id = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                           special_tokens=[("<bos>", bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _hf_tokenizer(bos: bool, pad: bool):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(bos),
        eos_token="<eos>",
        bos_token="<bos>",
        pad_token="<pad>" if pad else None,
        model_max_length=4096,
    )
    return tokenizer


def _config(arch: str, tokenizer):
    from transformers import GemmaConfig, GPTNeoXConfig, LlamaConfig

    common = dict(vocab_size=len(tokenizer), num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=64, intermediate_size=128, rotary_pct=0.25, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_key_value_heads=2, **common)
    if arch == "gemma":
        return GemmaConfig(hidden_size=64, intermediate_size=128, num_key_value_heads=1, head_dim=16, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; known: {TINY_ARCHS}")


def build_tiny_model(arch: str, path: Path, *, seed: int = 0) -> Path:
    """Save a tiny random ``arch`` decoder (fp32) and its tokenizer to ``path``; returns ``path``.

    Public so tests that need a fresh, writable copy can build one without re-training anything slow
    (the tokenizer trains in well under a second).
    """
    from transformers import AutoModel

    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: {TINY_ARCHS}")
    tokenizer = _hf_tokenizer(bos=arch != "gpt_neox", pad=arch != "gpt_neox")
    torch.manual_seed(seed)
    model = AutoModel.from_config(_config(arch, tokenizer), dtype=torch.float32)
    # The default init (std 0.02, unit norm weights) gives near-identical vectors for every text and
    # norms of exactly sqrt(hidden); wider weights and jittered norm scales/biases make vectors depend on
    # the text, so equivalence tests can tell a wrong position, token or pad from a right one.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.2)
            else:
                param.add_(torch.randn_like(param) * 0.3)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"gpt_neox": dir, "llama": dir, "gemma": dir}``: tiny random decoders saved once per run.

    Treat the directories as read-only (they are shared); copy one with ``shutil.copytree`` to modify it.
    """
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_tiny_model(arch, root / arch) for arch in TINY_ARCHS}


@pytest.fixture(params=TINY_ARCHS)
def tiny_arch(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over the tiny architectures (``"gpt_neox"``, ``"llama"``, ``"gemma"``)."""
    return request.param


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dirs: dict[str, Path]) -> Path:
    """The tiny Llama-family decoder (has a pad token, tokenizer adds BOS)."""
    return tiny_model_dirs["llama"]
