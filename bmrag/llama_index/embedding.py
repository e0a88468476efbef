"""``BMRetrieverEmbedding``: a LlamaIndex embedding model over :class:`bmrag.encoder.BMRetrieverEncoder`.

The adapter adds nothing to the vectors: queries go through ``encoder.encode_queries`` (instruction + query
template) and texts through ``encoder.encode_documents`` (passage template), so the numbers equal the encoder's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from bmrag import prompts
from bmrag.encoder import BMRetrieverEncoder
from bmrag.loading import DTypeName, dtype_name
from bmrag.validation import reject_unknown_kwargs

logger = logging.getLogger(__name__)

_LOAD_OPTIONS = ("revision", "dtype", "device", "max_length", "pooling", "normalize")


def resolve_query_instruction(encoder: BMRetrieverEncoder, instruction: str | None, task: str | None,
                              owner: str) -> tuple[str | None, str | None]:
    """Pick the query instruction once and log it: ``(instruction, task)`` as the component will use them.

    Order: ``instruction``, else ``task``, else the model's recorded default, else ``prompts.DEFAULT_TASK``.
    Models whose query template has no ``{instruction}`` (sentence-transformers baselines) get ``(None, None)``.
    """
    model = encoder.source.model
    if not encoder.recipe.needs_instruction:
        if instruction is not None or task is not None:
            logger.warning("%s: %s embeds queries as %r with no instruction; ignoring instruction=%r task=%r",
                           owner, model, encoder.recipe.query_template, instruction, task)
        else:
            logger.info("%s: %s embeds queries as %r (no instruction)", owner, model, encoder.recipe.query_template)
        return None, None
    try:
        choice = prompts.choose_instruction(instruction, task, model_default=encoder.default_instruction,
                                            fallback_task=prompts.DEFAULT_TASK)
    except ValueError as err:
        raise ValueError(f"{owner}: {err}") from None
    instruction, task, origin = choice.text, choice.task, choice.origin
    logger.info("%s: query instruction for %s (%s): %r", owner, model, origin, instruction)
    return instruction, task


class BMRetrieverEmbedding(BaseEmbedding):
    """LlamaIndex embedding model running the BMRetriever recipe (or any model :class:`BMRetrieverEncoder` loads).

    With the BMRetriever recipe, queries are embedded as ``"{instruction}\\nQuery: {query}"`` and texts as
    ``"Represent this passage\\npassage: {text}"`` (other models use their own templates);
    :meth:`format_query` shows the exact query text. The instruction is chosen once (``instruction``, else
    ``task``, else the model's recorded default, else ``bmrag.prompts.DEFAULT_TASK``), logged, and kept in
    the ``instruction`` field.

    LlamaIndex embeds a node's ``get_content(MetadataMode.EMBED)``, which prepends its metadata
    (``"key: value"`` lines) unless the keys are listed in ``node.excluded_embed_metadata_keys``. For the
    exact recipe a node's text should be ``title + " " + text`` with every metadata key excluded
    (``bmrag.index.build.corpus_to_nodes`` builds nodes that way).

    Example:
        >>> emb = BMRetrieverEmbedding(model_name="BMRetriever/BMRetriever-410M", task="scifact")
        >>> emb = BMRetrieverEmbedding(encoder=my_encoder)  # reuse a loaded encoder
    """

    model_name: str = Field(description="Model loaded: Hub id, local path or offline alias (see bmrag.models).")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) to pin.")
    dtype: DTypeName | None = Field(
        default=None, description="Weights dtype; default bf16 on GPUs and bf16-capable CPUs, else fp32 "
                                  "(bmrag.loading.default_dtype; filled in with the dtype used).")
    device: str | None = Field(default=None, description="'cpu', 'cuda', 'cuda:1'...; default cuda when available.")
    max_length: int | None = Field(default=None, description="Tokens per text including EOS (recipe: 512).")
    pooling: Literal["last", "mean", "cls"] | None = Field(default=None, description="Pooling (recipe: last).")
    normalize: bool | None = Field(default=None, description="L2-normalise vectors (recipe: False, dot product).")
    instruction: str | None = Field(
        default=None, description="Query instruction actually used (resolved from instruction/task; None when the "
                                  "model's query template takes none).")
    task: str | None = Field(default=None, description="Task whose official instruction is used (bmrag.prompts).")
    embed_batch_size: int = Field(default=32, gt=0, le=2048, description="Texts per forward pass.")
    api_base: str | None = Field(default=None, description="vLLM pooling server (`bmrag serve-embed`) that runs the "
                                                           "model; None: in-process.")

    _encoder: BMRetrieverEncoder = PrivateAttr()

    def __init__(self, model_name: str | None = None, *, encoder: BMRetrieverEncoder | None = None,
                 instruction: str | None = None, task: str | None = None, embed_batch_size: int = 32,
                 api_base: str | None = None, **kwargs: Any) -> None:
        base = {"callback_manager", "num_workers", "embeddings_cache", "rate_limiter"}
        reject_unknown_kwargs({k: v for k, v in kwargs.items() if k not in {*_LOAD_OPTIONS, *base}},
                              ["model_name", "encoder", "instruction", "task", "embed_batch_size", "api_base",
                               *_LOAD_OPTIONS, *base], "BMRetrieverEmbedding()")
        load = {k: kwargs.pop(k) for k in _LOAD_OPTIONS if kwargs.get(k) is not None}
        kwargs = {k: v for k, v in kwargs.items() if k not in _LOAD_OPTIONS}
        if api_base is not None:
            # The server holds the weights: only the dtype it runs is meaningful here (recorded in manifests).
            if encoder is not None or not model_name or set(load) - {"dtype"}:
                raise ValueError("BMRetrieverEmbedding(api_base=...) takes model_name= (and dtype=) only: the server "
                                 f"runs the model; got encoder={encoder is not None}, options {sorted(load)}")
            encoder = BMRetrieverEncoder.from_server(api_base, model_name, **load)
        encoder = encoder_for(model_name, encoder, load, "BMRetrieverEmbedding")
        instruction, task = resolve_query_instruction(encoder, instruction, task, "BMRetrieverEmbedding")
        recipe = encoder.recipe
        super().__init__(model_name=encoder.source.model, revision=encoder.source.revision,
                         dtype=dtype_name(encoder.dtype), device=str(encoder.device),
                         max_length=recipe.max_length, pooling=recipe.pooling, normalize=recipe.normalize,
                         instruction=instruction, task=task, embed_batch_size=embed_batch_size,
                         api_base=getattr(encoder, "api_base", None), **kwargs)
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "BMRetrieverEmbedding"

    @property
    def encoder(self) -> BMRetrieverEncoder:
        """The underlying encoder (share it with a reranker or the store manifest)."""
        return self._encoder

    def to_payload(self) -> dict[str, Any]:
        return {**super().to_payload(), "instruction": self.instruction, "task": self.task}

    def format_query(self, query: str) -> str:
        """The exact text embedded for ``query``."""
        return self._encoder.format_query(query, instruction=self.instruction)

    def format_document(self, text: str) -> str:
        """The exact text embedded for a node text."""
        return self._encoder.format_document(text)

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encoder.encode_queries([query], instruction=self.instruction, batch_size=1)[0].tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encoder.encode_documents(texts, batch_size=self.embed_batch_size).tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


def encoder_for(model_name: str | None, encoder: BMRetrieverEncoder | None, load: dict[str, Any],
                 owner: str) -> BMRetrieverEncoder:
    """Load ``model_name`` with ``load`` options, or check and return an already-built ``encoder``."""
    if encoder is None:
        if not model_name:
            raise ValueError(f"{owner}: pass model_name= (Hub id, local path or offline alias) or encoder=")
        return BMRetrieverEncoder.from_pretrained(model_name, **load)
    if not isinstance(encoder, BMRetrieverEncoder):
        raise TypeError(f"{owner}: encoder= must be a BMRetrieverEncoder, got {type(encoder).__name__}")
    if model_name is not None and model_name != encoder.source.model:
        raise ValueError(f"{owner}: model_name={model_name!r} does not match the given encoder's model "
                         f"{encoder.source.model!r}; pass one or the other")
    # Options that only apply when loading would be silently ignored for a built encoder.
    differs = {k: v for k, v in load.items() if str(v) != str(_current(encoder, k))}
    if differs:
        raise ValueError(f"{owner}: {sorted(differs)} apply when loading a model, but encoder= is already loaded "
                         f"(with {({k: _current(encoder, k) for k in differs})}); set them in "
                         "BMRetrieverEncoder.from_pretrained() instead")
    return encoder


def _current(encoder: BMRetrieverEncoder, option: str) -> Any:
    if option == "dtype":
        return dtype_name(encoder.dtype)
    if option == "device":
        return str(encoder.device)
    if option == "revision":
        return encoder.source.revision
    return getattr(encoder.recipe, option)
