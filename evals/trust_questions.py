"""What a user sees for the issue-13 questions and the bundled sample questions: answer or abstention.

Pipeline per question: retrieval (top 5) -> extractive answer (``bmrag.qa.extractive``, mix scorer, quoted
from the top 3 passages) -> abstention (``bmrag.qa.abstention``, the shipped calibration of that retriever).
Two set-ups:

* ``bundled``: the corpus bundled today (``bmrag/data/demo_corpus.jsonl.gz``) indexed for real with the default
  retriever (all-MiniLM-L6-v2, Chroma) and retrieved with ``QAChain`` (no generator, no score threshold:
  abstention decides);
* ``full``: the new demo corpus (``tools/build_demo_corpus.py``, all of MedQuAD/PubMedQA/BioASQ/SciFact) with
  BM25 over the index nodes (``corpus_to_nodes`` chunks): a dense index of its 53k nodes takes hours on a
  busy 2-core machine, so that set-up uses the BM25 calibration.

Writes ``evals/results/trust_questions.json`` and ``.md``.

Usage::

    BMRAG_DATA=/path/to/shared/data python evals/trust_questions.py [--threads 1] [--setups bundled full]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmrag.qa import abstention as ab  # noqa: E402
from bmrag.qa import extractive as ex  # noqa: E402

ISSUE_QUESTIONS = (
    "What are the side effects of taking metformin for a long time?",
    "how do i know if my child has ADHD",
    "Does vitamin D supplementation prevent fractures?",
)
K, EXTRACT_FROM = 5, 3


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_demo_corpus", REPO / "tools" / "build_demo_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seen(question: str, passages: list[dict[str, Any]], scores: list[float], embed: Any,
          model: ab.AbstentionModel) -> dict[str, Any]:
    given = [ex.Passage(i + 1, p["text"], p["title"]) for i, p in enumerate(passages[:EXTRACT_FROM])]
    t = time.perf_counter()
    answer = ex.extract_answer(question, given, ex.make_scorer("mix", embed))
    seconds = time.perf_counter() - t
    decision = model.decide(ab.signals_from(question, scores, [p["embedded"] for p in passages], answer))
    return {
        "question": question,
        "shown": ab.ABSTAIN_MESSAGE if decision.abstain or not answer.sentences else answer.text,
        "status": "abstained" if decision.abstain or not answer.sentences else "answered (extractive)",
        "p_unanswerable": round(decision.p_unanswerable, 3), "threshold": round(decision.threshold, 3),
        "extractive_answer": answer.text, "extractive_seconds": round(seconds, 3),
        "evidence": [{"n": i + 1, "title": p["title"] or p.get("shown_title") or p["id"], "id": p["id"],
                      "score": round(float(s), 3)}
                     for i, (p, s) in enumerate(zip(passages, scores))],
        "signals": {k: round(float(v), 3) for k, v in decision.signals.__dict__.items()},
    }


def run_bundled(questions: list[str], embed: Any) -> list[dict[str, Any]]:
    from bmrag.index.build import build_index
    from bmrag.index.sources import read_documents
    from bmrag.qa.chain import QAChain

    corpus, _ = read_documents(None)
    model = ab.model_for("all-MiniLM-L6-v2")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        store, _ = build_index(corpus, tmp, embed, show_progress=True)
        store.close()
        chain = QAChain.from_index(tmp, backend=None, k=K, min_score=None)
        try:
            for question in questions:
                result = chain.ask(question)
                # A node's text already starts with its title (what the index embeds).
                passages = [{"title": e.title, "id": e.doc_id, "text": e.text, "embedded": e.text}
                            for e in result.evidence]
                out.append(_seen(question, passages, [e.score for e in result.evidence], embed, model))
        finally:
            chain.close()
    return out


def run_full(questions: list[str], embed: Any, data: Path, cache: Path) -> list[dict[str, Any]]:
    from llama_index.core.schema import MetadataMode

    from bmrag.bm25 import _import_bm25s, tokenize
    from bmrag.index.build import corpus_to_nodes

    docs = {d["_id"]: d for d in _load_builder().build(data)}
    cache.mkdir(parents=True, exist_ok=True)
    nodes_file = cache / "full_nodes.pkl"
    if nodes_file.is_file():
        rows = pickle.loads(nodes_file.read_bytes())
    else:
        corpus = {i: {"title": d["title"], "text": d["text"]} for i, d in docs.items()}
        nodes = corpus_to_nodes(corpus, embed.encoder)
        rows = [(n.metadata["doc_id"], n.get_content(metadata_mode=MetadataMode.EMBED),
                 n.get_content(metadata_mode=MetadataMode.NONE)) for n in nodes]
        nodes_file.write_bytes(pickle.dumps(rows))
    bm25 = _import_bm25s().BM25(k1=0.9, b=0.4, method="lucene")
    bm25.index([tokenize(r[1]) or ["\x00"] for r in rows], show_progress=False)
    model = ab.model_for("bm25")
    out = []
    for question in questions:
        scores = np.asarray(bm25.get_scores(tokenize(question)), dtype=np.float64)
        top = np.argsort(-scores, kind="stable")[:K]
        passages = []
        for i in top:
            doc_id, embedded, text = rows[int(i)]
            meta = docs[doc_id]["metadata"]
            passages.append({"title": docs[doc_id]["title"], "shown_title": meta.get("display_title", ""),
                             "id": doc_id, "text": text, "embedded": embedded})
        out.append(_seen(question, passages, scores[top].tolist(), embed, model))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("BMRAG_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--setups", nargs="+", default=["bundled", "full"], choices=["bundled", "full"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "bmrag" / "trust")
    parser.add_argument("--results", type=Path, default=REPO / "evals" / "results")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from bmrag.hardware import describe_cpu
    from bmrag.index.open import load_embedding
    from bmrag.index.sources import SAMPLE_QUESTIONS

    embed = load_embedding("all-MiniLM-L6-v2")
    questions = list(ISSUE_QUESTIONS) + list(SAMPLE_QUESTIONS)
    report: dict[str, Any] = {"command": f"BMRAG_DATA=<shared data> python evals/trust_questions.py --threads "
                                         f"{args.threads} --setups {' '.join(args.setups)}",
                              "cpu": describe_cpu(), "setups": {}}
    if "bundled" in args.setups:
        report["setups"]["bundled"] = {"retriever": "all-MiniLM-L6-v2 (Chroma, QAChain)", "corpus": "bundled 350",
                                       "results": run_bundled(questions, embed)}
    if "full" in args.setups:
        report["setups"]["full"] = {"retriever": "bm25 over index nodes", "corpus": "tools/build_demo_corpus.py",
                                    "results": run_full(questions, embed, args.data, args.cache)}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "trust_questions.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    lines = ["# What a user sees: issue-13 questions and the sample questions", "",
             f"Command: `{report['command']}`  ", f"CPU: {report['cpu']}", ""]
    for name, setup in report["setups"].items():
        lines += [f"## {name}: {setup['retriever']}, corpus {setup['corpus']}", ""]
        for r in setup["results"]:
            lines += [f"**{r['question']}** — {r['status']} (p_unanswerable {r['p_unanswerable']} vs "
                      f"{r['threshold']})", "", f"> {r['shown']}", "",
                      "Evidence: " + "; ".join(f"[{e['n']}] {e['title'][:80]} ({e['score']})" for e in r["evidence"]),
                      ""]
    (args.results / "trust_questions.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for setup in report["setups"].values():
        for r in setup["results"]:
            print(f"{r['status']:22s} p={r['p_unanswerable']:.2f} {r['question']}\n    {r['shown'][:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
