"""LlamaIndex's Chroma vector store with bmrag's batching, score units and manifest (built by ``open_store``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode, VectorStoreQueryResult
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from llama_index.vector_stores.chroma import ChromaVectorStore


class BMRagChromaVectorStore(ChromaVectorStore):
    """``ChromaVectorStore`` with upserts in batches, scores in the model's units, and a manifest.

    Build it with :func:`open_store`. ``node.score`` is ``1 - distance`` (dot product or cosine, see the
    module docstring). MMR mode is refused: LlamaIndex's Chroma MMR path reports ``exp(-distance)``.
    """

    _client: Any = PrivateAttr(default=None)
    _manifest: dict[str, Any] = PrivateAttr(default_factory=dict)
    _max_batch_size: int = PrivateAttr(default=5000)

    @classmethod
    def class_name(cls) -> str:
        return "BMRagChromaVectorStore"

    @property
    def manifest(self) -> dict[str, Any]:
        """The collection's manifest (model, revision, recipe JSON, space, dim, dtype, versions)."""
        return dict(self._manifest)

    def count(self) -> int:
        """Number of stored nodes."""
        return int(self._collection.count())

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` already stored."""
        found: set[str] = set()
        for start in range(0, len(ids), self._max_batch_size):
            found.update(self._collection.get(ids=list(ids[start:start + self._max_batch_size]), include=[])["ids"])
        return found

    def add(self, nodes: list[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert nodes (with embeddings) in batches under Chroma's max batch size; returns their ids."""
        ids: list[str] = []
        for start in range(0, len(nodes), self._max_batch_size):
            batch = nodes[start:start + self._max_batch_size]
            metadatas = []
            for node in batch:
                meta = node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
                metadatas.append({k: ("" if v is None else v) for k, v in meta.items()})
            self._collection.upsert(ids=[n.node_id for n in batch], embeddings=[n.get_embedding() for n in batch],
                                    metadatas=metadatas,
                                    documents=[n.get_content(metadata_mode=MetadataMode.NONE) for n in batch])
            ids.extend(n.node_id for n in batch)
        return ids

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.mode == VectorStoreQueryMode.MMR:
            raise ValueError("BMRagChromaVectorStore does not support MMR mode: LlamaIndex's Chroma MMR scores are "
                             "exp(-distance), which overflows for BMRetriever dot products; use the default mode")
        return super().query(query, **kwargs)

    def _query(self, query_embeddings: list[float], n_results: int, where: dict | None,
               **kwargs: Any) -> VectorStoreQueryResult:
        filters = {"where": where} if where else {}
        results = self._collection.query(query_embeddings=query_embeddings, n_results=n_results, **filters, **kwargs)
        nodes, scores, ids = [], [], []
        for nid, text, metadata, distance in zip(results["ids"][0], results["documents"][0],
                                                 results["metadatas"][0], results["distances"][0]):
            nodes.append(metadata_dict_to_node(metadata, text=text))
            scores.append(1.0 - float(distance))  # ip: 1 - (1 - dot) = dot; cosine: 1 - (1 - cos) = cos
            ids.append(nid)
        return VectorStoreQueryResult(nodes=nodes, similarities=scores, ids=ids)

    def close(self) -> None:
        """Release the Chroma client (SQLite handles); the store is unusable afterwards."""
        if self._client is not None:
            self._client.close()
            self._client = None
