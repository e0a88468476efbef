"""On-disk cache of corpus embeddings, so a re-run of an evaluation does not re-encode the corpus.

The key is a SHA-256 over everything that decides the vectors: the model record (name, revision, kind,
base model, dtype, recipe: templates, pooling, normalisation, max length, EOS), a fingerprint of the loaded
weights (so a retrained model in the same folder, or a moved Hub branch, misses the cache), the device type,
the source of ``bmrag/encoder.py`` (a fix in the encoder invalidates old vectors), and the SHA-256 of the
corpus file. Any change recomputes; identical inputs load.

Vectors are written in shards of ``shard_size`` documents as they are computed, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from bmrag.loading import cache_dir

logger = logging.getLogger(__name__)

CacheStatus = Literal["hit", "partial", "miss", "disabled"]


def default_cache_dir() -> Path:
    """``cache_dir()/embeddings`` (see :func:`bmrag.loading.cache_dir`)."""
    return cache_dir("embeddings")


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over each tensor's name, shape, dtype and (sum, sum of squares, first/last values).

    One pass over the weights (about a second for a 1B model on CPU); any retraining or LoRA merge changes it.
    """
    digest = hashlib.sha256()
    with torch.inference_mode():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            values = flat.double()
            stats = torch.stack([values.sum(), values.square().sum()]) if flat.numel() else torch.zeros(2)
            ends = torch.cat([flat[:8], flat[-8:]]).double() if flat.numel() else torch.zeros(0)
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            # 10 significant digits: stable across thread counts (reduction order), sensitive to any update.
            digest.update(" ".join(f"{v:.10g}" for v in stats.tolist()).encode())
            digest.update(ends.cpu().numpy().tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _encoder_source_hash() -> str:
    # Read once per process (right after the encoder was imported), so a long job keys its vectors by the code
    # it actually runs even if someone edits encoder.py meanwhile.
    from bmrag import encoder as encoder_module

    return hashlib.sha256(Path(encoder_module.__file__).read_bytes()).hexdigest()


def corpus_cache_fields(encoder: Any, corpus_sha256: str, doc_ids: Sequence[str]) -> dict[str, Any]:
    """The JSON-able record hashed into the cache key (also written next to the vectors for humans)."""
    description = encoder.describe()
    description.pop("default_instruction", None)  # queries only; documents do not depend on it
    return {
        "model": description,
        "weights": weights_fingerprint(encoder.model),
        "device": encoder.device.type,
        "encoder_impl": _encoder_source_hash(),
        "corpus_sha256": corpus_sha256,
        "doc_ids_sha256": hashlib.sha256("\n".join(doc_ids).encode()).hexdigest(),
    }


def cache_key(fields: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``fields``."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


class EmbeddingCache:
    """A folder of cached corpus embeddings, one sub-folder per key.

    Args:
        root: Cache folder (default :func:`default_cache_dir`).
        shard_size: Documents per shard file.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, shard_size: int = 1024) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.shard_size = shard_size

    def folder(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _shard(self, key: str, index: int) -> Path:
        return self.folder(key) / f"shard_{index:06d}.npy"

    def encode_corpus(self, encoder: Any, corpus: Mapping[str, Mapping[str, Any]], corpus_sha256: str, *,
                      batch_size: int = 32, show_progress_bar: bool = False) -> tuple[np.ndarray, CacheStatus, str]:
        """Return ``(vectors in corpus order, status, key)``, encoding only the shards not cached yet.

        ``status`` is ``"hit"`` (nothing encoded), ``"partial"`` (resumed) or ``"miss"``.
        """
        doc_ids = list(corpus)
        fields = corpus_cache_fields(encoder, corpus_sha256, doc_ids)
        key = cache_key(fields)
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "meta.json"
        if not meta.is_file():
            meta.write_text(json.dumps({**fields, "n_docs": len(doc_ids), "shard_size": self.shard_size,
                                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        else:
            recorded = json.loads(meta.read_text())
            if recorded.get("shard_size") != self.shard_size or recorded.get("n_docs") != len(doc_ids):
                raise ValueError(f"{meta}: cached with shard_size={recorded.get('shard_size')} for "
                                 f"{recorded.get('n_docs')} docs; delete the folder or use the same shard size")
        n_shards = (len(doc_ids) + self.shard_size - 1) // self.shard_size
        cached = [self._shard(key, i).is_file() for i in range(n_shards)]
        status: CacheStatus = "hit" if all(cached) else ("partial" if any(cached) else "miss")
        parts = []
        bar = tqdm(total=len(doc_ids), desc="encode corpus", unit="doc", disable=not show_progress_bar)
        try:
            for index in range(n_shards):
                shard = self._shard(key, index)
                ids = doc_ids[index * self.shard_size:(index + 1) * self.shard_size]
                if cached[index]:
                    vectors = np.load(shard)
                    if vectors.shape[0] != len(ids):
                        raise ValueError(f"{shard}: {vectors.shape[0]} vectors for {len(ids)} documents; delete it")
                else:
                    vectors = encoder.encode_documents([corpus[d] for d in ids], batch_size=batch_size)
                    tmp = shard.with_suffix(".tmp.npy")
                    np.save(tmp, vectors)
                    os.replace(tmp, shard)  # a shard is either complete or absent
                parts.append(vectors)
                bar.update(len(ids))
        finally:
            bar.close()
        dim = getattr(encoder, "dim", 0)
        vectors = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
        return vectors.astype(np.float32, copy=False), status, key
