"""``bmrag-train``: pairs | prepare | pretrain | finetune | mine | synth | merge | arrow.

``pretrain`` and ``finetune`` take a YAML config (``--config``) and any training argument as
``--name value`` after it (``bmrag-train finetune --help-args`` lists them all). The other commands
are data tools; each prints a report of what it read, kept and filtered. Evaluation is ``bmrag eval``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bmrag.loading import DTYPE_NAMES, REPOSITORY_DATA, data_root

logger = logging.getLogger("retriever_training")

DEFAULT_DATA_DIR = str(data_root() or REPOSITORY_DATA)
"""``$BMRAG_DATA``, else ``../shared/data`` beside the repository (:func:`bmrag.loading.data_root`)."""


def _offline_defaults() -> None:
    for key, value in {"HF_HUB_DISABLE_TELEMETRY": "1", "ANONYMIZED_TELEMETRY": "False"}.items():
        os.environ.setdefault(key, value)


# ---------------------------------------------------------------------------------------------- train
def _run_train(args: argparse.Namespace, stage: str) -> int:
    from retriever_training.arguments import ARGUMENT_CLASSES, parse_training_args

    if args.help_args:
        from transformers import HfArgumentParser

        HfArgumentParser(ARGUMENT_CLASSES).print_help()
        return 0
    extra = list(args.overrides)
    if stage == "pretrain" and "--train_group_size" not in extra:
        extra = ["--train_group_size", "1"] + extra  # Stage I: in-batch negatives only, unless a config says more
    model_args, data_args, training_args = parse_training_args(extra, args.config)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from retriever_training.trainer import train

    summary = train(model_args, data_args, training_args)
    print(json.dumps({k: summary[k] for k in ("global_step", "train_loss", "wall_s", "groups_used")}, indent=2))
    return 0


def _add_train(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text, allow_abbrev=False,
                            description=help_text + " Unknown options go to the training arguments (see --help-args).")
    parser.add_argument("--config", help="YAML file of training arguments (retriever_training/configs/*.yaml)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--help-args", action="store_true", help="list every training argument and exit")
    parser.set_defaults(func=lambda a: _run_train(a, name), accepts_overrides=True)


# ----------------------------------------------------------------------------------------------- data
def _pairs(args: argparse.Namespace) -> int:
    from retriever_training.data import write_groups
    from retriever_training.pairs import PairReport, PairRules, make_pairs, raw_documents

    rules = PairRules(title_words=tuple(args.title_words), min_body_words=args.min_body_words,
                      query_words=tuple(args.query_words), passage_words=tuple(args.passage_words),
                      spans_per_doc=args.spans_per_doc, title_body=not args.no_title_body, seed=args.seed)
    report = PairReport()
    groups = list(make_pairs(raw_documents(args.data_dir, args.sources), rules, report))
    if args.max_pairs is not None:
        import random

        random.Random(args.seed).shuffle(groups)
        groups = groups[: args.max_pairs]
    count = write_groups(args.out, groups)
    print(f"stage I pairs from {', '.join(args.sources)}: {report.summary()}; wrote {count} to {args.out}")
    return 0


def _add_pairs(sub: argparse._SubParsersAction) -> None:
    from retriever_training.pairs import RAW_SOURCES

    p = sub.add_parser("pairs", help="Stage I pseudo pairs (title->body, span->span) from raw text")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="shared data folder (BEIR layout)")
    p.add_argument("--sources", nargs="+", default=["bioasq", "medquad", "pubmedqa"], choices=RAW_SOURCES,
                   help="raw-text sources (scifact = the SciFact corpus; leave out for zero-shot SciFact)")
    p.add_argument("--out", required=True, help="output JSONL of groups")
    p.add_argument("--title-words", nargs=2, type=int, default=[3, 64], metavar=("MIN", "MAX"))
    p.add_argument("--min-body-words", type=int, default=20)
    p.add_argument("--query-words", nargs=2, type=int, default=[8, 32], metavar=("MIN", "MAX"))
    p.add_argument("--passage-words", nargs=2, type=int, default=[32, 96], metavar=("MIN", "MAX"))
    p.add_argument("--spans-per-doc", type=int, default=1)
    p.add_argument("--no-title-body", action="store_true", help="span pairs only")
    p.add_argument("--max-pairs", type=int, default=None, help="keep a seeded random subset of this size")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_pairs)


def _mining_kwargs(args: argparse.Namespace) -> dict:
    return {"method": args.method, "rank_range": (args.rank_start, args.rank_stop), "count": args.count,
            "margin": args.margin, "max_ratio": args.max_ratio, "sample": args.sample, "seed": args.seed}


def _mining_encoder(args: argparse.Namespace):
    if args.method != "encoder":
        return None
    if not args.encoder:
        raise ValueError("--method encoder needs --encoder (a model name or path, e.g. all-MiniLM-L6-v2)")
    from bmrag.encoder import BMRetrieverEncoder

    return BMRetrieverEncoder.from_pretrained(args.encoder)


def _add_mining_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["bm25", "encoder"], default="bm25", help="first-stage retriever")
    p.add_argument("--encoder", default=None, help="encoder for --method encoder (name or path)")
    p.add_argument("--rank-start", type=int, default=10, help="first rank (0-based) a negative may come from")
    p.add_argument("--rank-stop", type=int, default=100, help="rank (exclusive) where candidates stop")
    p.add_argument("--count", type=int, default=7, help="negatives per group")
    p.add_argument("--margin", type=float, default=None,
                   help="drop candidates scoring above weakest positive - margin")
    p.add_argument("--max-ratio", type=float, default=None,
                   help="drop candidates scoring above this fraction of the weakest positive (e.g. 0.95)")
    p.add_argument("--sample", choices=["random", "top"], default="random", help="which survivors to keep")
    p.add_argument("--seed", type=int, default=0)


def _prepare(args: argparse.Namespace) -> int:
    from retriever_training.data import SOURCES, convert, eval_query_texts, write_groups
    from retriever_training.mining import mine_hard_negatives

    unknown = sorted(set(args.sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown sources {unknown}; valid: {', '.join(SOURCES)}")
    eval_texts = eval_query_texts(args.data_dir)
    encoder = _mining_encoder(args)
    everything, reports = [], {}
    for source in args.sources:
        converted = convert(source, args.data_dir, eval_texts)
        groups = converted.groups
        if args.max_per_source and len(groups) > args.max_per_source:
            import random

            random.Random(args.seed).shuffle(groups)
            groups = groups[: args.max_per_source]
            converted.report.notes.append(f"subsampled to {len(groups)} groups (--max-per-source)")
        mined = None
        if converted.corpus and args.count > 0:
            groups, mined = mine_hard_negatives(groups, converted.corpus, encoder=encoder,
                                                barred_ids=converted.barred_doc_ids, **_mining_kwargs(args))
        everything.extend(groups)
        reports[source] = {"convert": converted.report.summary(), "notes": converted.report.notes,
                           "mining": mined.summary() if mined else "none (no document pool; dataset negatives kept)"}
        print(f"[{source}] {reports[source]['convert']}\n[{source}] mining: {reports[source]['mining']}")
    count = write_groups(args.out, everything)
    Path(str(args.out) + ".report.json").write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {count} groups to {args.out} (report: {args.out}.report.json)")
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    from retriever_training.data import SOURCES

    p = sub.add_parser("prepare", help="Stage II groups from the shared training splits (+ mined hard negatives)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="shared data folder")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), help=f"any of {', '.join(SOURCES)}")
    p.add_argument("--max-per-source", type=int, default=None, help="seeded random subset per source")
    p.add_argument("--out", required=True, help="output JSONL of groups")
    _add_mining_options(p)
    p.set_defaults(func=_prepare)


def _mine(args: argparse.Namespace) -> int:
    from bmrag.index.readers import load_corpus, load_qrels
    from retriever_training.data import read_groups, write_groups
    from retriever_training.mining import mine_hard_negatives

    groups = read_groups(args.groups)
    raw = load_corpus(args.corpus)
    corpus = {d: {"title": r["title"], "text": r["text"]} for d, r in raw.items()}
    barred: set[str] = set()
    for split in args.bar_split:
        barred |= {d for docs in load_qrels(args.corpus, split).values() for d in docs}
    mined, report = mine_hard_negatives(groups, corpus, encoder=_mining_encoder(args), barred_ids=barred,
                                        keep_existing=not args.replace, **_mining_kwargs(args))
    count = write_groups(args.out, mined)
    print(f"{report.summary()}\nwrote {count} groups to {args.out}")
    return 0


def _add_mine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mine", help="add hard negatives to a groups JSONL from a BEIR corpus")
    p.add_argument("--groups", required=True, help="input JSONL of groups")
    p.add_argument("--corpus", required=True, help="BEIR folder whose corpus.jsonl(.gz) is mined")
    p.add_argument("--bar-split", nargs="*", default=["test"], help="qrels splits whose documents are never negatives")
    p.add_argument("--replace", action="store_true", help="drop the groups' existing negatives")
    p.add_argument("--out", required=True, help="output JSONL")
    _add_mining_options(p)
    p.set_defaults(func=_mine)


def _synth(args: argparse.Namespace) -> int:
    from retriever_training.data import write_groups
    from retriever_training.synth import ChatClient, SynthReport, brainstorm_tasks, generate_examples

    client = ChatClient(api_base=args.api_base, model=args.model, api_key=args.api_key, timeout=args.timeout)
    report = SynthReport()
    tasks = brainstorm_tasks(client, rounds=args.rounds, per_round=args.per_round, max_tasks=args.max_tasks,
                             report=report, seed=args.seed)
    groups = generate_examples(client, tasks, per_task=args.per_task, seed=args.seed, report=report)
    count = write_groups(args.out, groups)
    print(f"{report.summary()}\nwrote {count} groups to {args.out}")
    return 0 if count else 1


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="E5-Mistral-style synthetic groups from an OpenAI-compatible server (vLLM)")
    p.add_argument("--api-base", required=True, help="server URL including /v1, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--api-key", default="EMPTY")
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=10, help="brainstorm requests")
    p.add_argument("--per-round", type=int, default=20, help="tasks asked for per brainstorm request")
    p.add_argument("--max-tasks", type=int, default=200)
    p.add_argument("--per-task", type=int, default=1, help="examples per task")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_synth)


def _merge(args: argparse.Namespace) -> int:
    from bmrag.encoder import BMRetrieverEncoder

    encoder = BMRetrieverEncoder.from_pretrained(args.adapter, dtype=args.dtype, device="cpu")
    out = encoder.save_pretrained(args.out)
    print(f"merged {args.adapter} into {encoder.source.base_model} and saved a full model to {out}")
    return 0


def _add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter into its base and save a standalone model")
    p.add_argument("--adapter", required=True, help="adapter directory written by pretrain/finetune")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    p.set_defaults(func=_merge)


def _add_arrow(sub: argparse._SubParsersAction) -> None:
    from retriever_training import arrow_data

    p = sub.add_parser("arrow", help="convert JSONL groups to a memory-mapped Arrow file (train_files accepts it)")
    arrow_data.add_arguments(p)
    p.set_defaults(func=arrow_data.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bmrag-train", description="BMRetriever training recipe (bmrag)",
                                     allow_abbrev=False)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pairs(sub)
    _add_prepare(sub)
    _add_train(sub, "pretrain", "Stage I: contrastive pre-training on pseudo pairs (in-batch negatives).")
    _add_train(sub, "finetune", "Stage II: instruction fine-tuning on labelled groups with hard negatives.")
    _add_mine(sub)
    _add_synth(sub)
    _add_merge(sub)
    _add_arrow(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _offline_defaults()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = rest
    logging.basicConfig(level=logging.INFO if args.verbose or getattr(args, "accepts_overrides", False)
                        else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, OSError, TypeError) as err:
        print(f"bmrag-train {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
