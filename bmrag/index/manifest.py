"""The manifest a bmrag index records: which model, revision, recipe, distance space and dimension filled it.

Chroma metadata must be flat, so the manifest lives in the collection's metadata as ``bmrag_<field>`` keys.
Reopening an index compares its manifest with the embedding model and refuses a mismatch, because vectors of
different models or recipes are not comparable (:func:`check_manifest`). :func:`read_manifest` reads it
without loading any model, which is how every caller learns the model to query an index with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import chromadb

from bmrag._version import __version__
from bmrag.encoder import BMRetrieverEncoder
from bmrag.index.chroma_client import index_location, open_client
from bmrag.recipe import Recipe

if TYPE_CHECKING:
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

Space = Literal["ip", "cosine"]
EmbedModelLike = Union["BMRetrieverEmbedding", BMRetrieverEncoder]

DEFAULT_COLLECTION = "bmrag"
MANIFEST_PREFIX = "bmrag_"
"""Collection metadata keys of the manifest are ``bmrag_<field>`` (Chroma metadata must be flat)."""
CHECKED_FIELDS = ("model", "revision", "recipe", "space", "dim")
"""Manifest fields that must match to reuse a collection (dtype and versions are informational)."""


class IndexMismatchError(ValueError):
    """An existing collection was built with another model, recipe or distance space."""


def space_for(recipe: Recipe) -> Space:
    """Chroma distance space for a recipe: ``"ip"`` for dot-product models, ``"cosine"`` for normalised ones."""
    return "ip" if recipe.similarity == "dot" else "cosine"


def manifest_for(encoder: BMRetrieverEncoder) -> dict[str, str | int]:
    """What a collection records about the model that filled it (flat values, ``""`` for unknown)."""
    described = encoder.describe()
    return {
        "model": described["model"],
        "revision": described["revision"] or "",
        "kind": described["kind"],
        "base_model": described["base_model"] or "",
        "recipe": json.dumps(encoder.recipe.to_dict(), sort_keys=True),
        "space": space_for(encoder.recipe),
        "dim": int(described["dim"]),
        "dtype": described["dtype"],
        "chroma_version": chromadb.__version__,
        "bmrag_version": __version__,
    }


def encoder_of(embed_model: EmbedModelLike) -> BMRetrieverEncoder:
    encoder = embed_model if isinstance(embed_model, BMRetrieverEncoder) else getattr(embed_model, "encoder", None)
    if not isinstance(encoder, BMRetrieverEncoder):
        raise TypeError(f"expected a BMRetrieverEmbedding or BMRetrieverEncoder, got {type(embed_model).__name__}")
    return encoder


def chroma_client(path: Path | str) -> Any:
    """The Chroma client for an index location: a directory, or the URL of a Chroma server."""
    return open_client(path)


def space_of(collection: Any) -> str:
    hnsw = (collection.configuration or {}).get("hnsw") or {}
    return str(hnsw.get("space") or (collection.metadata or {}).get("hnsw:space") or "l2")


def recorded_manifest(collection: Any) -> dict[str, Any] | None:
    meta = collection.metadata or {}
    manifest = {k.removeprefix(MANIFEST_PREFIX): v for k, v in meta.items() if k.startswith(MANIFEST_PREFIX)}
    return manifest or None


def describe_manifest(manifest: Mapping[str, Any]) -> str:
    revision = f"@{manifest['revision']}" if manifest.get("revision") else ""
    return (f"model {manifest.get('model')!r}{revision} (space {manifest.get('space')!r}, dim {manifest.get('dim')}, "
            f"recipe {manifest.get('recipe')})")


def check_manifest(recorded: Mapping[str, Any] | None, expected: Mapping[str, Any], where: str) -> None:
    """Raise :class:`IndexMismatchError` naming both models unless ``recorded`` matches ``expected``."""
    if recorded is None:
        raise IndexMismatchError(f"{where} has no bmrag manifest (it was not created by bmrag), so which "
                                 "model filled it is unknown; use another index directory or collection name")
    differs = [key for key in CHECKED_FIELDS if str(recorded.get(key, "")) != str(expected.get(key, ""))]
    if differs:
        raise IndexMismatchError(
            f"{where} was built with {describe_manifest(recorded)}, but the embedding model is "
            f"{describe_manifest(expected)}; "
            f"they differ in {', '.join(differs)}. Vectors of different models or recipes are not comparable: "
            "query it with the model it was built with, or index into another directory or collection."
        )


def no_collection_message(path: Path, collection: str, names: list[str]) -> str:
    return f"{path}: no collection {collection!r} (collections: {', '.join(names) or 'none'})"


def read_manifest(path: str | os.PathLike[str], collection: str = DEFAULT_COLLECTION) -> dict[str, Any]:
    """The manifest of an existing collection (plus ``count``), without loading any model.

    Raises:
        FileNotFoundError: No index at ``path`` or no such collection.
    """
    path = index_location(path)  # a directory, or http://HOST:PORT of a Chroma server
    if isinstance(path, Path) and not path.is_dir():
        raise FileNotFoundError(f"{path}: no index directory here (build one with `bmrag index --index {path}`)")
    client = chroma_client(path)
    try:
        names = [c.name for c in client.list_collections()]
        if collection not in names:
            raise FileNotFoundError(no_collection_message(path, collection, names))
        col = client.get_collection(collection, embedding_function=None)
        recorded = recorded_manifest(col)
        if recorded is None:
            raise IndexMismatchError(f"{path} collection {collection!r} has no bmrag manifest")
        return {**recorded, "space": space_of(col), "count": col.count()}
    finally:
        client.close()


