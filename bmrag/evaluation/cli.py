"""``bmrag eval``: retrieval, sts, rag, leaderboard, datasets, download; parsing here, work in the modules."""

from __future__ import annotations

import argparse
import os

from bmrag import options
from bmrag.loading import DTYPE_NAMES
from bmrag.models import DEFAULT_RETRIEVER


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
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
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

    if args.no_generate and (args.generator or args.llm_model or args.api_base or args.max_new_tokens or args.answer):
        raise ValueError("--no-generate runs retrieval only: drop --answer/--generator/--llm-model/--api-base/"
                         "--max-new-tokens")
    # --answer defaults to generative when a generator is asked for (--generator), extractive otherwise.
    answer = None if args.no_generate else (args.answer or ("generative" if args.generator else "extractive"))
    if answer == "extractive" and (args.generator or args.llm_model or args.max_new_tokens):
        raise ValueError("--answer extractive quotes the passages and loads no generator: drop "
                         "--generator/--llm-model/--max-new-tokens")
    generator = (args.generator or "local") if answer == "generative" else None
    options.check_generator_args(generator, args)
    if args.judge_api_base is None and (args.judge_model or args.judge_embedding):
        raise ValueError("--judge-model/--judge-embedding need --judge-api-base")
    judge = (Judge(api_base=args.judge_api_base, model=args.judge_model,
                   embedding_model=args.judge_embedding or "all-MiniLM-L6-v2") if args.judge_api_base else None)
    result = evaluate_rag(
        args.dataset, data=args.data, retriever=args.retriever,
        generator=generator, answer=answer, unanswerable=answer is not None and not args.no_unanswerable,
        other_domain=args.other_domain, abstention_calibration=args.abstention_calibration,
        llm_model=args.llm_model, api_base=args.api_base, k=args.k, hybrid=args.hybrid, limit=args.limit,
        threads=args.threads, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
        attribution=not args.no_attribution,
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
    rag.add_argument("--dataset", required=True, choices=["pubmedqa", "bioasq", "medquad"],
                     help="pubmedqa: PQA-L test vs the PubMedQA contexts; bioasq: Task 8B vs the bioasq-snippets "
                          "pool; medquad: MedQuAD topics held out from the abstention calibration")
    rag.add_argument("--data", default=None, help="data root (pubmedqa-retrieval/, pubmedqa/, bioasq-snippets/, "
                                                  "bioasq-qa/); default $BMRAG_DATA")
    rag.add_argument("--retriever", default=DEFAULT_RETRIEVER, help="retriever model the index is built with")
    options.add_answer_option(rag)
    options.add_generator_options(rag, backend_flag="--generator")
    rag.add_argument("--no-generate", action="store_true",
                     help="retrieval only: context precision/recall (cheap; use it for the full question sets)")
    rag.add_argument("-k", "--k", "--top-k", dest="k", type=int, default=3,
                     help="passages given to the generator (default 3)")
    options.add_hybrid_option(rag)
    rag.add_argument("--no-attribution", action="store_true",
                     help="score only the citations the generator wrote (default: the chain's word-overlap "
                          "attribution, as in bmrag ask)")
    rag.add_argument("--limit", type=int, default=None, help="only the first N questions in id order")
    rag.add_argument("--no-unanswerable", action="store_true",
                     help="skip the unanswerable split (by default the same questions are also asked against a copy "
                          "of the index without their gold passages, plus --other-domain SCIDOCS queries, and "
                          "abstention precision/recall are reported)")
    rag.add_argument("--other-domain", type=int, default=20,
                     help="other-domain (SCIDOCS) questions in the unanswerable split (default 20)")
    rag.add_argument("--abstention-calibration", default=None,
                     help="abstention calibration JSON to evaluate instead of the shipped bmrag/data/abstention.json")
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


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``bmrag eval`` and its sub-commands on the top-level parser's sub-parsers."""
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


