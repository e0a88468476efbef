"""The trainable bi-encoder: a ``BMRetrieverEncoder`` whose decoder carries LoRA adapters (or is fully tuned).

Pooling, templates and tokenisation are not re-implemented here: the model embeds through
``BMRetrieverEncoder.forward`` (last-token/EOS pooling from ``bmrag.encoder``), so what is trained is
exactly what ``BMRetrieverEncoder.from_pretrained(output_dir)`` later loads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers.utils import ModelOutput

from bmrag.encoder import BMRetrieverEncoder
from bmrag.loading import DTYPE_NAMES, resolve_dtype, write_bmrag_config
from retriever_training.loss import distributed_info_nce

logger = logging.getLogger(__name__)

LoraTargets = Literal["attention", "attention_mlp"]

LORA_TARGETS: dict[str, dict[str, list[str]]] = {
    "llama": {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]},
    "gpt_neox": {"attention": ["query_key_value", "dense"], "mlp": ["dense_h_to_4h", "dense_4h_to_h"]},
}
for _name in ("mistral", "gemma", "gemma2", "gemma3", "gemma3_text", "qwen2", "qwen3", "phi3"):
    LORA_TARGETS[_name] = LORA_TARGETS["llama"]
"""LoRA target modules per Hugging Face ``model_type``: attention projections, and the MLP projections."""


def lora_target_modules(model_type: str, targets: LoraTargets) -> list[str]:
    """Module names to adapt for ``model_type`` (e.g. ``"llama"``) and ``targets``.

    Raises:
        ValueError: For an architecture without a known mapping (pass ``lora_target_modules`` explicitly).
    """
    if targets not in ("attention", "attention_mlp"):
        raise ValueError(f"lora_targets must be 'attention' or 'attention_mlp', got {targets!r}")
    if model_type not in LORA_TARGETS:
        raise ValueError(f"no LoRA target modules known for model_type {model_type!r} (known: "
                         f"{', '.join(sorted(LORA_TARGETS))}); pass lora_target_modules explicitly")
    spec = LORA_TARGETS[model_type]
    return spec["attention"] + (spec["mlp"] if targets == "attention_mlp" else [])


def build_encoder(
    model_name_or_path: str,
    *,
    dtype: str | None = None,
    device: str | None = None,
    lora: bool = True,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    lora_targets: LoraTargets = "attention_mlp",
    lora_target_modules_: list[str] | None = None,
    init_adapter: str | None = None,
    gradient_checkpointing: bool = False,
    normalize: bool | None = True,
    default_instruction: str | None = None,
) -> BMRetrieverEncoder:
    """Load a base decoder with ``BMRetrieverEncoder.from_pretrained`` and make it trainable.

    With ``lora`` the base weights stay frozen in ``dtype`` (None or ``"auto"``: the encoder's hardware
    default, :func:`bmrag.loading.default_dtype`) and the adapters train in fp32 (peft casts
    them up); without it every weight trains (use ``dtype="float32"`` then). ``init_adapter`` continues
    training a saved adapter (Stage II from Stage I); its rank and targets win over the arguments.
    ``normalize`` sets the recipe's L2 normalisation (None keeps the base's), so the loss sees the vectors
    inference will produce and the saved ``bmrag_config.json`` says cosine or dot.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    base_encoder = BMRetrieverEncoder.from_pretrained(model_name_or_path, dtype=None if dtype == "auto" else dtype,
                                                      device=device)
    base = base_encoder.model
    if gradient_checkpointing:
        base.config.use_cache = False
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if init_adapter:
        if not lora:
            raise ValueError("init_adapter continues a LoRA adapter; it needs lora=True")
        if not (Path(init_adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{init_adapter}: no adapter_config.json (expected a folder saved by bmrag-train)")
        model = PeftModel.from_pretrained(base, init_adapter, is_trainable=True)
        logger.info("continuing adapter %s (r=%s)", init_adapter, model.peft_config["default"].r)
    elif lora:
        modules = lora_target_modules_ or lora_target_modules(base.config.model_type, lora_targets)
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=modules,
                            bias="none")
        model = get_peft_model(base, config)
    else:
        model = base
        model.requires_grad_(True)
    recipe = base_encoder.recipe if normalize is None else replace(base_encoder.recipe, normalize=normalize)
    encoder = BMRetrieverEncoder(model, base_encoder.tokenizer, recipe, source=base_encoder.source,
                                 default_instruction=default_instruction or base_encoder.default_instruction)
    model.train()  # BMRetrieverEncoder.__init__ puts the model in eval mode
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    return encoder


@dataclass
class EncoderOutput(ModelOutput):
    """What :class:`BiEncoderModel` returns: the loss (when both sides are given) and the vectors."""

    loss: torch.Tensor | None = None
    q_reps: torch.Tensor | None = None
    p_reps: torch.Tensor | None = None
    reps: torch.Tensor | None = None


class BiEncoderModel(nn.Module):
    """``nn.Module`` wrapper the HF ``Trainer`` drives; the encoder's model is its only submodule.

    Args:
        encoder: A trainable encoder from :func:`build_encoder`.
        temperature: InfoNCE temperature (``scale = 1 / temperature``).
        base_model: Name recorded in ``bmrag_config.json`` (an alias such as ``"SmolLM2-135M-Instruct"`` or a path).
    """

    def __init__(self, encoder: BMRetrieverEncoder, temperature: float = 0.02, base_model: str | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.backbone = encoder.model  # registers the parameters with nn.Module
        self.temperature = temperature
        self.base_model = base_model or encoder.source.model

    def embed(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(n, D) fp32 vectors of collated inputs, through the shared ``BMRetrieverEncoder.forward``."""
        return self.encoder.forward(inputs)

    def forward(self, query: Mapping[str, torch.Tensor] | None = None,
                passage: Mapping[str, torch.Tensor] | None = None, mask: torch.Tensor | None = None,
                embed: Mapping[str, torch.Tensor] | None = None) -> EncoderOutput:
        if embed is not None:
            return EncoderOutput(reps=self.embed(embed))
        q_reps = self.embed(query) if query is not None else None  # (B, D)
        p_reps = self.embed(passage) if passage is not None else None  # (B*G, D)
        loss = None
        if q_reps is not None and p_reps is not None:
            loss = distributed_info_nce(q_reps, p_reps, self.temperature, mask)
        return EncoderOutput(loss=loss, q_reps=q_reps, p_reps=p_reps)

    @property
    def is_peft(self) -> bool:
        return hasattr(self.backbone, "peft_config")

    def save(self, output_dir: str | os.PathLike[str], *, adapter_dtype: str = "float32",
             extra: Mapping[str, object] | None = None) -> Path:
        """Write the adapter (or the full model) and ``bmrag_config.json`` so that
        ``BMRetrieverEncoder.from_pretrained(output_dir)`` loads it.

        Args:
            output_dir: Target directory.
            adapter_dtype: ``"float32"`` (checkpoints: exact resume) or ``"bfloat16"`` (half the size, for shipping).
            extra: More fields for ``bmrag_config.json`` (e.g. the training summary).
        """
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        encoder = self.encoder
        if self.is_peft:
            from peft import get_peft_model_state_dict

            if adapter_dtype not in DTYPE_NAMES:
                raise ValueError(f"adapter_dtype must be one of {sorted(DTYPE_NAMES)}, got {adapter_dtype!r}")
            dtype = resolve_dtype(adapter_dtype, "cpu")
            state = {k: v.detach().to(dtype).contiguous()
                     for k, v in get_peft_model_state_dict(self.backbone).items()}
            self.backbone.save_pretrained(str(out), state_dict=state)
            # peft records the base's local path; the alias is portable (the encoder reads bmrag_config first).
            adapter_file = out / "adapter_config.json"
            adapter = json.loads(adapter_file.read_text(encoding="utf-8"))
            adapter["base_model_name_or_path"] = self.base_model
            adapter_file.write_text(json.dumps(adapter, indent=2) + "\n", encoding="utf-8")
            readme = out / "README.md"  # peft's auto-generated card would claim a Hub base; ours is MODEL_CARD.md
            if readme.is_file():
                readme.unlink()
            write_bmrag_config(out, encoder.recipe, base_model=self.base_model,
                               default_instruction=encoder.default_instruction,
                               extra={"adapter_dtype": adapter_dtype, **(extra or {})})
        else:
            encoder.model.save_pretrained(out)
            encoder.tokenizer.save_pretrained(out)
            write_bmrag_config(out, encoder.recipe, base_model=self.base_model,
                               default_instruction=encoder.default_instruction, extra=dict(extra or {}))
        return out

    def load_adapter_weights(self, checkpoint: str | os.PathLike[str]) -> None:
        """Load adapter (or full) weights saved by :meth:`save` into this model (used to resume)."""
        from safetensors.torch import load_file

        folder = Path(checkpoint)
        if self.is_peft:
            from peft import set_peft_model_state_dict

            file = folder / "adapter_model.safetensors"
            if not file.is_file():
                raise FileNotFoundError(f"{file}: no adapter weights to resume from")
            result = set_peft_model_state_dict(self.backbone, load_file(str(file)))
            missing = [k for k in result.missing_keys if "lora_" in k]
            if missing or result.unexpected_keys:
                raise ValueError(f"{file}: adapter does not match the model (missing {missing[:3]}, unexpected "
                                 f"{list(result.unexpected_keys)[:3]})")
        else:
            file = folder / "model.safetensors"
            if not file.is_file():
                raise FileNotFoundError(f"{file}: no model weights to resume from")
            self.backbone.load_state_dict(load_file(str(file)))
