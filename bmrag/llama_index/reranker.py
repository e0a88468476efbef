"""``BMRetrieverReranker``: re-score first-stage nodes with a (usually larger) BMRetriever encoder."""

from __future__ import annotations

import logging
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from bmrag.encoder import BMRetrieverEncoder
from bmrag.llama_index.embedding import encoder_for, resolve_query_instruction
from bmrag.loading import DTypeName, dtype_name
from bmrag.validation import reject_unknown_kwargs

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

FIRST_STAGE_SCORE = "first_stage_score"
"""Metadata key holding the score a node had before its first BMRetriever rerank."""


class BMRetrieverReranker(BaseNodePostprocessor):
    """Re-rank retrieved nodes by a BMRetriever bi-encoder score and keep the best ``top_n``.

    The query is embedded with its instruction and the query template, each node's
    ``get_content(MetadataMode.EMBED)`` with the passage template, and ``node.score`` becomes the recipe's
    similarity: the raw dot product of the two vectors (cosine when the model normalises). It ranks
    passages for one query; it is not a probability and is not comparable across queries or models.
    The score a node arrived with is kept in ``node.metadata["first_stage_score"]`` (the first one,
    if nodes are reranked twice); that key is excluded from embedding and LLM text. Input nodes are not
    modified: returned nodes are copies.

    Example:
        >>> rr = BMRetrieverReranker(model_name="BMRetriever/BMRetriever-2B", top_n=5)
        >>> rr.postprocess_nodes(nodes, query_str="Does aspirin prevent colorectal cancer?")
    """

    model_name: str = Field(description="Model loaded: Hub id, local path or offline alias (see bmrag.models).")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) to pin.")
    dtype: DTypeName | None = Field(default=None, description="Weights dtype.")
    device: str | None = Field(default=None, description="'cpu', 'cuda', ...; default cuda when available.")
    top_n: int = Field(default=5, gt=0, description="Number of nodes returned, best first.")
    instruction: str | None = Field(default=None, description="Query instruction actually used (resolved).")
    task: str | None = Field(default=None, description="Task whose official instruction is used (bmrag.prompts).")
    batch_size: int = Field(default=16, gt=0, description="Node texts per forward pass.")

    _encoder: BMRetrieverEncoder = PrivateAttr()

    def __init__(self, model_name: str | None = None, *, encoder: BMRetrieverEncoder | None = None, top_n: int = 5,
                 instruction: str | None = None, task: str | None = None, batch_size: int = 16,
                 **kwargs: Any) -> None:
        load_options = ("revision", "dtype", "device")
        reject_unknown_kwargs({k: v for k, v in kwargs.items() if k not in {*load_options, "callback_manager"}},
                              ["model_name", "encoder", "top_n", "instruction", "task", "batch_size", *load_options,
                               "callback_manager"], "BMRetrieverReranker()")
        load = {k: kwargs.pop(k) for k in load_options if kwargs.get(k) is not None}
        kwargs = {k: v for k, v in kwargs.items() if k not in load_options}
        encoder = encoder_for(model_name, encoder, load, "BMRetrieverReranker")
        instruction, task = resolve_query_instruction(encoder, instruction, task, "BMRetrieverReranker")
        super().__init__(model_name=encoder.source.model, revision=encoder.source.revision,
                         dtype=dtype_name(encoder.dtype), device=str(encoder.device), top_n=top_n,
                         instruction=instruction, task=task, batch_size=batch_size, **kwargs)
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "BMRetrieverReranker"

    @property
    def encoder(self) -> BMRetrieverEncoder:
        return self._encoder

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("BMRetrieverReranker needs the query: call postprocess_nodes(nodes, query_str=...) "
                             "or pass query_bundle=")
        if not nodes:
            return []
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n,
                                          model_name=self.model_name))
        payload = {EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self.model_name,
                   EventPayload.QUERY_STR: query_bundle.query_str, EventPayload.TOP_K: self.top_n}
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            query = self._encoder.encode_queries([query_bundle.query_str], instruction=self.instruction)
            texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
            docs = self._encoder.encode_documents(texts, batch_size=self.batch_size)
            scores = self._encoder.similarity(query, docs)[0]
            rescored = [NodeWithScore(node=_with_first_stage_score(n), score=float(s)) for n, s in zip(nodes, scores)]
            # sorted() is stable: ties keep the first-stage order.
            ranked = sorted(rescored, key=lambda n: -n.score)[: self.top_n]
            event.on_end(payload={EventPayload.NODES: ranked})
        dispatcher.event(ReRankEndEvent(nodes=ranked))
        return ranked


def _with_first_stage_score(scored: NodeWithScore) -> Any:
    node = scored.node.model_copy()
    node.metadata = dict(node.metadata)
    node.metadata.setdefault(FIRST_STAGE_SCORE, scored.score)
    for keys in ("excluded_embed_metadata_keys", "excluded_llm_metadata_keys"):
        current = list(getattr(node, keys))
        setattr(node, keys, current if FIRST_STAGE_SCORE in current else [*current, FIRST_STAGE_SCORE])
    return node
