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

import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bmrag import prompts
from bmrag.loading import (
    DTypeName,
    LoadedFrom,
    default_device,
    dtype_name,
    load_encoder_model,
    resolve_dtype,
    write_bmrag_config,
)
from bmrag.recipe import PaddingSide, Pooling, Recipe, last_token_pool, mean_pool, pool, position_ids_from_mask
from bmrag.validation import check_text, check_texts, reject_unknown_kwargs

__all__ = ["BMRetrieverEncoder", "LoadedFrom", "Recipe", "last_token_pool", "mean_pool", "pool",
           "position_ids_from_mask", "reject_unknown_kwargs"]

logger = logging.getLogger(__name__)

Document = str | Mapping[str, Any]


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
        dtype: DTypeName | torch.dtype | None = None,
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
                CPUs with AMX/AVX512-BF16, fp32 on other CPUs (:func:`bmrag.loading.default_dtype`).
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
        device = device or default_device()
        torch_dtype = resolve_dtype(dtype, device)
        model, tokenizer, recipe, source, instruction = load_encoder_model(str(model_name_or_path), revision,
                                                                           torch_dtype)
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
            "dtype": dtype_name(self.dtype),
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
        text = check_text(query, 0, "query")
        return prompts.format_query(text, self._instruction(instruction, task), self.recipe.query_template)

    def _instruction(self, instruction: str | None, task: str | None) -> str | None:
        choice = prompts.choose_instruction(instruction, task, model_default=self.default_instruction)
        explicit = instruction is not None or task is not None
        if explicit and not self.recipe.needs_instruction and not self._warned_unused_instruction:
            # Dropping it silently would hide that this model was not trained with instructions.
            logger.warning("%s has no {instruction} in its query template; the instruction %r is not used",
                           self.source.model, choice.text)
            self._warned_unused_instruction = True
        return choice.text

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
                check_text(passage, i, "documents")
            else:
                passage = check_text(doc, i, "documents").strip()
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
        texts = [check_text(t, i, "texts") for i, t in enumerate(check_texts(texts, "texts"))]
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
        queries = check_texts(queries, "queries")
        chosen = self._instruction(instruction, task)
        texts = [prompts.format_query(check_text(q, i, "queries"), chosen, self.recipe.query_template)
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
        texts = self._format_documents(check_texts(documents, "documents"))
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
