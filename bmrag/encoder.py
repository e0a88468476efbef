"""The BMRetriever encoder: load, format, tokenize (+EOS), pool, score. Framework-free.

This module is the single implementation of the encoding recipe of the released checkpoints
(official ``eval.py``); the LlamaIndex adapters, the evaluation harness and ``retriever_training``
all call into it, so a model is embedded at inference exactly as it was trained.

Recipe (see ``docs/recipe.md``):
    query   = "{instruction}\\nQuery: {query}"
    passage = "Represent this passage\\npassage: {title + ' ' + text}"
    tokens  = tokenizer(text, truncation to max_length - 1) + [eos_token_id]
    vector  = final hidden state at the EOS position; no normalisation; score = dot product.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from bmrag import hardware, models, prompts

logger = logging.getLogger(__name__)

Pooling = Literal["last", "mean", "cls"]
PaddingSide = Literal["left", "right"]
DTypeLike = str | torch.dtype | None
Document = str | Mapping[str, Any]

BMRAG_CONFIG = "bmrag_config.json"
"""File written next to a model or adapter that records the recipe it was trained with."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ST_POOLING = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what vector a text gets, besides the weights.

    Attributes:
        query_template: Format string with ``{instruction}`` and ``{query}``.
        passage_template: Format string with ``{passage}``.
        pooling: ``"last"`` (EOS/last-token, BMRetriever), ``"mean"`` or ``"cls"``.
        normalize: L2-normalise vectors (then dot product = cosine).
        max_length: Token budget per text, including the appended EOS.
        append_eos: Append ``eos_token_id`` after truncating to ``max_length - 1``.
        padding_side: Where pad tokens go; embeddings do not depend on it (positions come from the mask).
    """

    query_template: str = prompts.QUERY_TEMPLATE
    passage_template: str = prompts.PASSAGE_TEMPLATE
    pooling: Pooling = "last"
    normalize: bool = False
    max_length: int = 512
    append_eos: bool = True
    padding_side: PaddingSide = "left"

    def __post_init__(self) -> None:
        if self.pooling not in ("last", "mean", "cls"):
            raise ValueError(f"pooling must be one of 'last', 'mean', 'cls', got {self.pooling!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {self.max_length!r}")
        if "{query}" not in self.query_template or "{passage}" not in self.passage_template:
            raise ValueError("query_template needs '{query}' and passage_template needs '{passage}'")

    @property
    def similarity(self) -> Literal["dot", "cosine"]:
        """The score the vectors are meant for: dot product, or cosine when normalised."""
        return "cosine" if self.normalize else "dot"

    @property
    def needs_instruction(self) -> bool:
        return "{instruction}" in self.query_template

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "similarity": self.similarity}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys are rejected (a typo would otherwise change nothing)."""
        names = [f.name for f in fields(cls)]
        reject_unknown_kwargs({k: v for k, v in data.items() if k not in names and k != "similarity"}, names,
                              "Recipe.from_dict()")
        return cls(**{k: v for k, v in data.items() if k in names})


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last non-pad token of each row (the EOS in the BMRetriever recipe).

    Works for left and right padding because it reads the mask, not the sequence end.

    Args:
        hidden: (batch, seq, dim) final-layer hidden states.
        attention_mask: (batch, seq) 1 for tokens, 0 for padding.

    Returns:
        (batch, dim) pooled vectors.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (seq,)
    last = (attention_mask.long() * positions).argmax(dim=1)  # (batch,) highest index with mask 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (batch, dim)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over non-pad tokens, in fp32. Shapes as :func:`last_token_pool`."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)  # (batch, seq, 1)
    return (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (batch, dim)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Apply the named pooling; returns (batch, dim) in fp32."""
    if pooling == "last":
        return last_token_pool(hidden, attention_mask).float()
    if pooling == "mean":
        return mean_pool(hidden, attention_mask)
    if pooling == "cls":
        # CLS is the first real token; with left padding that is not index 0.
        first = attention_mask.long().argmax(dim=1)  # (batch,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first].float()
    raise ValueError(f"unknown pooling {pooling!r}")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so a left-padded text sees the positions it has alone.

    Without them Hugging Face decoders number pad tokens too, and a text's embedding would depend on
    the longest text in its batch (see docs/bugs-and-fixes.md).
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (batch, seq)


def resolve_dtype(dtype: DTypeLike, device: str) -> torch.dtype:
    """Map ``"float32" | "bfloat16" | "float16" | torch.dtype | None`` to a torch dtype.

    None picks :func:`bmrag.hardware.default_dtype`: bf16 on GPUs and on CPUs with native bf16 matmuls
    (quality checked in docs/recipe.md), fp32 on CPUs that would only emulate bf16.
    """
    if dtype is None:
        dtype = hardware.default_dtype(device)
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch dtype, got {dtype!r}")
    return _DTYPES[dtype]


def reject_unknown_kwargs(kwargs: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Raise ``TypeError`` naming unknown keyword arguments, a close match, and every valid name."""
    if not kwargs:
        return
    valid = sorted(valid)
    parts = []
    for key in sorted(kwargs):
        close = difflib.get_close_matches(key, valid, n=1)
        parts.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{where} got unknown keyword argument(s) {', '.join(parts)}; valid: {', '.join(valid)}")


def _check_texts(texts: Any, what: str) -> list[Any]:
    if isinstance(texts, (str, bytes)) or isinstance(texts, Mapping):
        raise TypeError(f"{what} must be a list, got a single {type(texts).__name__}; wrap it in a list")
    if texts is None:
        raise TypeError(f"{what} must be a list of strings, got None")
    return list(texts)


def _check_text(text: Any, index: int, what: str) -> str:
    if text is None:
        raise TypeError(f"{what}[{index}] is None; expected a non-empty string")
    if not isinstance(text, str):
        raise TypeError(f"{what}[{index}] is a {type(text).__name__}; expected a non-empty string")
    if not text.strip():
        raise ValueError(f"{what}[{index}] is empty or whitespace only; there is nothing to embed")
    return text


@dataclass
class LoadedFrom:
    """Where the weights came from, recorded in results and Chroma manifests."""

    model: str
    revision: str | None = None
    path: str | None = None
    kind: str = "hf"  # hf | gguf | sentence-transformers | peft-adapter
    base_model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BMRetrieverEncoder:
    """Dense encoder implementing the BMRetriever recipe over any Hugging Face decoder.

    Build it with :meth:`from_pretrained`. Queries and documents are embedded with different
    templates; :meth:`format_query` / :meth:`format_document` show exactly the text that is embedded.

    Example:
        >>> enc = BMRetrieverEncoder.from_pretrained("BMRetriever/BMRetriever-410M")
        >>> q = enc.encode_queries(["Aspirin prevents colorectal cancer"], task="scifact")
        >>> d = enc.encode_documents([{"title": "Aspirin", "text": "..."}])
        >>> scores = enc.similarity(q, d)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        recipe: Recipe | None = None,
        *,
        source: LoadedFrom | None = None,
        default_instruction: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.recipe = recipe or Recipe()
        self.source = source or LoadedFrom(model=type(model).__name__)
        self.default_instruction = default_instruction
        self.compiled = False
        self._warned_unused_instruction = False
        if self.recipe.append_eos and tokenizer.eos_token_id is None:
            raise ValueError("the recipe appends EOS but the tokenizer has no eos_token_id; pass append_eos=False")
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        parameters = inspect.signature(model.forward).parameters  # follows __wrapped__ of HF decorators
        self._takes_position_ids = "position_ids" in parameters or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        dtype: DTypeLike = None,
        device: str | None = None,
        max_length: int | None = None,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        padding_side: PaddingSide | None = None,
        query_template: str | None = None,
        passage_template: str | None = None,
        torch_compile: bool = False,
        **kwargs: Any,
    ) -> BMRetrieverEncoder:
        """Load a model and the recipe it expects.

        ``model_name_or_path`` may be a Hub id (``"BMRetriever/BMRetriever-410M"``), a local model
        directory, a ``.gguf`` file, a directory holding a LoRA adapter (merged on load), a
        sentence-transformers directory (its own pooling and normalisation are used), or an offline
        alias from :mod:`bmrag.models` (``"all-MiniLM-L6-v2"``, ``"gemma-3-270m"``, ...).
        Explicit arguments override what the model directory records.

        Args:
            model_name_or_path: What to load (see above).
            revision: Hub revision (branch, tag or commit) to pin.
            dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype. Default: bf16 on GPUs and on
                CPUs with AMX/AVX512-BF16, fp32 on other CPUs (:func:`bmrag.hardware.default_dtype`).
            device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default cuda when available.
            max_length: Tokens per text including the EOS (default 512).
            pooling: ``"last"``, ``"mean"`` or ``"cls"``.
            normalize: L2-normalise the vectors (default False: the checkpoints score by dot product).
            padding_side: ``"left"`` or ``"right"``; results do not depend on it.
            query_template: Override the query template.
            passage_template: Override the passage template.
            torch_compile: Wrap the model's forward in ``torch.compile(dynamic=True)`` (see :meth:`compile`):
                faster encoding of large corpora after a one-off compile of tens of seconds.
            **kwargs: Rejected; unknown names raise ``TypeError`` listing the valid ones.

        Raises:
            FileNotFoundError: A local path that does not exist, or a missing PyPI model package.
            OSError: A Hub id that cannot be fetched (e.g. offline and not cached).
            TypeError: Unknown keyword arguments.
        """
        reject_unknown_kwargs(
            kwargs,
            ["revision", "dtype", "device", "max_length", "pooling", "normalize", "padding_side",
             "query_template", "passage_template", "torch_compile"],
            "BMRetrieverEncoder.from_pretrained()",
        )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = resolve_dtype(dtype, device)
        model, tokenizer, recipe, source, instruction = _load(str(model_name_or_path), revision, torch_dtype)
        overrides = {
            "max_length": max_length, "pooling": pooling, "normalize": normalize, "padding_side": padding_side,
            "query_template": query_template, "passage_template": passage_template,
        }
        recipe = replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
        model.to(device=device, dtype=torch_dtype)
        encoder = cls(model, tokenizer, recipe, source=source, default_instruction=instruction)
        if torch_compile:
            encoder.compile()
        logger.info("loaded %s (%s) on %s as %s%s; recipe %s", source.model, source.kind, device, torch_dtype,
                    " (torch.compile)" if torch_compile else "", recipe.to_dict())
        return encoder

    @classmethod
    def from_server(cls, api_base: str, model: str, **kwargs: Any) -> BMRetrieverEncoder:
        """An encoder whose forward pass runs on a vLLM pooling server (``bmrag serve-embed MODEL``).

        Formatting, tokenization (511 tokens + EOS) and normalisation stay local; token ids are sent to
        ``{api_base}/embeddings``. See :class:`bmrag.embed_client.ServerEncoder` (``served_name``, ``dtype``,
        ``timeout``, ``concurrency``, ``check``; unknown names raise ``TypeError``).

        Raises:
            bmrag.embed_client.EmbeddingServerError: The server is down or serves another model.
        """
        from bmrag.embed_client import ServerEncoder

        valid = ["served_name", "dtype", "timeout", "concurrency", "check"]
        reject_unknown_kwargs({k: v for k, v in kwargs.items() if k not in valid}, valid,
                              "BMRetrieverEncoder.from_server()")
        return ServerEncoder.connect(api_base, model, **kwargs)

    def compile(self) -> BMRetrieverEncoder:
        """Wrap the model's forward in ``torch.compile(dynamic=True)``; returns ``self``.

        Dynamic shapes, because every length-sorted batch has its own width: one compile serves them all
        instead of a recompile per width. It fuses the element-wise work around the matmuls (norms,
        activations, rotary embeddings), which is where eager bf16 loses most time on CPU (measured in
        ``evals/bench_encode.py``). The first batches pay the compile (tens of seconds; a C++ compiler is
        needed on CPU). Vectors match eager mode up to floating-point reassociation.
        """
        if not self.compiled:
            self.model.forward = torch.compile(self.model.forward, dynamic=True)
            self.compiled = True
        return self

    # ------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dim(self) -> int:
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or config.get_text_config().hidden_size)

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of model, revision and recipe (for results files and index manifests)."""
        return {
            "model": self.source.model,
            "revision": self.source.revision,
            "kind": self.source.kind,
            "base_model": self.source.base_model,
            "dtype": str(self.dtype).removeprefix("torch."),
            "dim": self.dim,
            "recipe": self.recipe.to_dict(),
            "default_instruction": self.default_instruction,
            "compiled": self.compiled,
        }

    def __repr__(self) -> str:
        return (f"BMRetrieverEncoder(model={self.source.model!r}, kind={self.source.kind!r}, dtype={self.dtype}, "
                f"device={self.device}, recipe={self.recipe}, default_instruction={self.default_instruction!r})")

    # ----------------------------------------------------------------------------------------- format
    def format_query(self, query: str, instruction: str | None = None, task: str | None = None) -> str:
        """The exact text embedded for ``query`` (instruction from ``instruction``, ``task`` or the default)."""
        text = _check_text(query, 0, "query")
        return prompts.format_query(text, self._instruction(instruction, task), self.recipe.query_template)

    def _instruction(self, instruction: str | None, task: str | None) -> str | None:
        chosen = prompts.resolve_instruction(instruction, task)
        if chosen is not None and not self.recipe.needs_instruction and not self._warned_unused_instruction:
            # Dropping it silently would hide that this model was not trained with instructions.
            logger.warning("%s has no {instruction} in its query template; the instruction %r is not used",
                           self.source.model, chosen)
            self._warned_unused_instruction = True
        return chosen or self.default_instruction

    def format_document(self, document: Document) -> str:
        """The exact text embedded for a document: a string, or a mapping with ``text`` and optional ``title``."""
        return self._format_documents([document])[0]

    def _format_documents(self, documents: Sequence[Document]) -> list[str]:
        out = []
        for i, doc in enumerate(documents):
            if isinstance(doc, Mapping):
                if "text" not in doc:
                    raise KeyError(f"documents[{i}] has no 'text' field (fields: {sorted(doc)})")
                text = doc.get("text") or ""
                title = doc.get("title") or ""
                if not isinstance(text, str) or not isinstance(title, str):
                    raise TypeError(f"documents[{i}]: 'title' and 'text' must be strings")
                passage = prompts.join_title(text, title)
                _check_text(passage, i, "documents")
            else:
                passage = _check_text(doc, i, "documents").strip()
            out.append(prompts.format_passage(passage, self.recipe.passage_template))
        return out

    # --------------------------------------------------------------------------------------- tokenize
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of already-formatted texts: truncated to ``max_length - 1``, then EOS appended."""
        recipe = self.recipe
        budget = recipe.max_length - 1 if recipe.append_eos else recipe.max_length
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=budget,
                             padding=False, return_attention_mask=False)["input_ids"]
        if recipe.append_eos:
            eos = self.tokenizer.eos_token_id
            ids = [list(row) + [eos] for row in ids]
        return [list(row) for row in ids]

    def collate(self, batch_ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad token ids to the longest row on ``recipe.padding_side``; returns model inputs."""
        width = max(len(row) for row in batch_ids)
        input_ids = torch.full((len(batch_ids), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for i, row in enumerate(batch_ids):
            span = slice(width - len(row), width) if self.recipe.padding_side == "left" else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Run the model on collated inputs and pool; returns (batch, dim) fp32 (gradients allowed).

        ``retriever_training`` calls this, so training and inference share one pooling path.
        """
        input_ids = inputs["input_ids"].to(self.device)
        mask = inputs["attention_mask"].to(self.device)
        extra = {"position_ids": position_ids_from_mask(mask)} if self._takes_position_ids else {}
        hidden = self.model(input_ids=input_ids, attention_mask=mask, **extra).last_hidden_state
        vectors = pool(hidden, mask, self.recipe.pooling)
        if self.recipe.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return vectors

    # ----------------------------------------------------------------------------------------- encode
    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        convert_to_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Embed already-formatted texts (no template applied); returns (n, dim) float32.

        Texts are sorted by token length so each batch pads little; the output keeps input order.
        """
        texts = [_check_text(t, i, "texts") for i, t in enumerate(_check_texts(texts, "texts"))]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            empty = torch.zeros((0, self.dim), dtype=torch.float32)
            return empty if convert_to_tensor else empty.numpy()
        ids = self.tokenize(texts)
        truncated = sum(len(row) >= self.recipe.max_length for row in ids)
        if truncated:
            logger.info("%d of %d texts reached max_length=%d tokens and were truncated", truncated, len(ids),
                        self.recipe.max_length)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = torch.empty((len(ids), self.dim), dtype=torch.float32)
        starts = range(0, len(order), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="encode", unit="batch", disable=not show_progress_bar):
                index = order[start:start + batch_size]
                vectors = self.forward(self.collate([ids[i] for i in index]))
                out[torch.tensor(index)] = vectors.float().cpu()
        return out if convert_to_tensor else out.numpy()

    def encode_queries(
        self,
        queries: Sequence[str],
        instruction: str | None = None,
        *,
        task: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        convert_to_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Embed queries with the query template.

        Args:
            queries: Query strings.
            instruction: Instruction text; or give ``task`` (a key of ``bmrag.prompts.INSTRUCTIONS``).
            task: Registered task name whose official instruction is used.
            batch_size: Texts per forward pass.
            show_progress_bar: Show a tqdm bar.
            convert_to_tensor: Return a torch tensor instead of numpy.

        Returns:
            (n, dim) float32 vectors.
        """
        queries = _check_texts(queries, "queries")
        chosen = self._instruction(instruction, task)
        texts = [prompts.format_query(_check_text(q, i, "queries"), chosen, self.recipe.query_template)
                 for i, q in enumerate(queries)]
        return self.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar,
                           convert_to_tensor=convert_to_tensor)

    def encode_documents(
        self,
        documents: Sequence[Document],
        *,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        convert_to_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Embed documents (strings or ``{"title", "text"}`` mappings) with the passage template.

        Returns:
            (n, dim) float32 vectors.
        """
        texts = self._format_documents(_check_texts(documents, "documents"))
        return self.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar,
                           convert_to_tensor=convert_to_tensor)

    def similarity(self, queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
        """Scores (n_queries, n_documents): dot product (cosine when the recipe normalises)."""
        return np.asarray(queries, dtype=np.float32) @ np.asarray(documents, dtype=np.float32).T

    # ------------------------------------------------------------------------------------------ saving
    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write weights, tokenizer and ``bmrag_config.json`` so ``from_pretrained(path)`` restores this encoder."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        write_bmrag_config(out, self.recipe, base_model=self.source.base_model or self.source.model,
                           default_instruction=self.default_instruction)
        return out


def write_bmrag_config(path: str | os.PathLike[str], recipe: Recipe, *, base_model: str | None = None,
                       default_instruction: str | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Record the recipe (and, for adapters, the base model) next to saved weights."""
    from bmrag import __version__

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


def _load(name: str, revision: str | None, dtype: torch.dtype):
    """Return (model, tokenizer, recipe, source, default_instruction) for any supported location."""
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


def _load_local(path: Path, dtype: torch.dtype):
    from transformers import AutoModel, AutoTokenizer

    path = path.resolve()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf model; pass a model directory or a .gguf file")
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModel.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        _drop_quantizer(model)
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


def _drop_quantizer(model: torch.nn.Module) -> None:
    # GGUF weights arrive dequantised to fp32; the leftover quantizer would block dtype casts and saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_adapter(path: Path, config: dict[str, Any] | None, recipe: Recipe, instruction: str | None,
                  dtype: torch.dtype):
    from peft import PeftModel
    from transformers import AutoTokenizer

    adapter = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    base_name = (config or {}).get("base_model") or adapter.get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{path / 'adapter_config.json'}: no base model recorded (base_model_name_or_path)")
    base, tokenizer, _, base_source, base_instruction = _load(base_name, (config or {}).get("base_revision"), dtype)
    model = PeftModel.from_pretrained(base, path).merge_and_unload()
    if (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
    source = LoadedFrom(model=str(path), path=str(path), kind="peft-adapter", base_model=base_source.model,
                        revision=None)
    return model, tokenizer, recipe, source, instruction or base_instruction


def _load_sentence_transformers(path: Path, dtype: torch.dtype):
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
