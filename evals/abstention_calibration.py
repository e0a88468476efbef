"""Build the labelled abstention split from TRAINING data, compare extractive scorers, calibrate abstention.

Labelled questions (training splits only; no bundled sample question, no test split):

* answerable: MedQuAD questions of the calibration topics (``focus`` hashed: ``sha256(focus) % 10 < 7``; the
  other 30% of topics stay unseen for ``eval rag``), PubMedQA ``pubmedqa-retrieval`` train questions, BioASQ
  train questions (tasks 7B/9B/10B/11B), each with its gold documents indexed;
* unanswerable: the SAME questions with their gold documents removed from retrieval (MedQuAD: every document of
  the same focus, in any NIH collection, since sibling pages answer it too), plus questions from another
  domain (SCIDOCS computer-science paper titles: their texts only, no labels of that set are used).

The pool indexed for this is the gold documents of those questions (and MedQuAD same-focus pages) plus seeded
random distractors from the demo corpus (``tools/build_demo_corpus.py``), embedded exactly as the index embeds
them (``bmrag.store.corpus_to_nodes``). Questions are split by question (MedQuAD: by focus) into a calibration
part (60%) and a held-out part (40%); both variants of a question stay on the same side.

Outputs: ``bmrag/data/abstention.json`` (the calibrated model per retriever), ``evals/results/abstention.json``
and ``.md`` (precision/recall, curves, extractive scorer comparison, latency), ``evals/results/abstention.png``.

Usage::

    BMRAG_DATA=/path/to/shared/data python evals/abstention_calibration.py [--threads 1] \
        [--retrievers all-MiniLM-L6-v2 bm25]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import platform
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmrag.qa import abstention as ab  # noqa: E402
from bmrag.qa import extractive as ex  # noqa: E402

SEED = 13
K = 5  # passages retrieved (the chain's default k)
EXTRACT_FROM = 3  # passages the extractive answer quotes from
CALIB_SHARE = 0.6
MEDQUAD_TRAIN_BUCKETS = 7  # sha256(focus) % 10 < 7 -> usable here; the rest is kept for held-out evaluation
TARGET_PRECISION = 0.8
MIN_RECALL = 0.9  # on the calibration part: a margin over the 0.8 target for the held-out part
FEATURES = ("top_score", "margin", "sentence_coverage", "passage_coverage", "unmentioned_rarity")
"""Signals the shipped model uses. ``best_sentence`` (dense sentence cosine) is left out: embedding every
candidate sentence of ~1,200 question variants costs more than this 2-core machine can spend, and the
lexical coverage of the candidates carries the sentence-level signal at no model cost."""


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_demo_corpus", REPO / "tools" / "build_demo_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


def medquad_topic_is_train(focus: str) -> bool:
    """The MedQuAD topic split: calibration may use a topic when this is True (70% of topics)."""
    return _h(focus.lower()) % 10 < MEDQUAD_TRAIN_BUCKETS


@dataclass
class Question:
    qid: str
    text: str
    source: str
    gold: set[str]  # documents that answer it
    remove: set[str]  # documents removed for the unanswerable variant (gold, MedQuAD: the whole focus)
    group: str  # split key
    reference: str = ""  # reference answer for ROUGE-L, when the source has one outside the passage
    snippets: list[str] = field(default_factory=list)


def _qrels(path: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    with path.open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            q, d, _ = line.rstrip("\n").split("\t")
            out[q].add(d)
    return out


def _queries(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as handle:
        return {r["_id"]: r["text"] for r in map(json.loads, handle)}


def build_questions(data: Path, docs: dict[str, dict[str, Any]], n: dict[str, int],
                    rng: random.Random) -> tuple[list[Question], list[Question]]:
    """(in-domain labelled questions, other-domain questions)."""
    questions: list[Question] = []
    # MedQuAD: one question per calibration topic (focus), gold = its page, removed = every page of the focus.
    by_focus: dict[str, list[str]] = defaultdict(list)
    for doc_id, doc in docs.items():
        if doc_id.startswith("medquad-"):
            by_focus[doc["metadata"]["focus"].lower()].append(doc_id)
    topics = sorted(f for f in by_focus if medquad_topic_is_train(f))
    for focus in rng.sample(topics, n["medquad"]):
        doc_id = rng.choice(sorted(by_focus[focus]))
        questions.append(Question(doc_id, docs[doc_id]["metadata"]["question"], "medquad", {doc_id},
                                  set(by_focus[focus]), f"medquad:{focus}"))
    # PubMedQA train questions -> their abstract; reference = the conclusion (not in the passage).
    pqal = json.loads((data / "pubmedqa" / "ori_pqal.json").read_text(encoding="utf-8"))
    qrels = _qrels(data / "pubmedqa-retrieval" / "qrels" / "train.tsv")
    texts = _queries(data / "pubmedqa-retrieval" / "queries.jsonl")
    for qid in rng.sample(sorted(qrels), n["pubmedqa"]):
        gold = {f"pubmedqa-{d}" for d in qrels[qid]}
        pmid = next(iter(qrels[qid]))
        questions.append(Question(qid, texts[qid], "pubmedqa", gold, gold, f"pubmedqa:{qid}",
                                  reference=pqal[pmid]["LONG_ANSWER"]))
    # BioASQ train questions (7B/9B/10B/11B) -> their snippet documents; reference = the ideal answer.
    qrels = _qrels(data / "bioasq-snippets" / "qrels" / "train.tsv")
    texts = _queries(data / "bioasq-snippets" / "queries.jsonl")
    gold_qa = {}
    with gzip.open(data / "bioasq-qa" / "taskb_golden_7b-11b.jsonl.gz", "rt", encoding="utf-8") as handle:
        for rec in map(json.loads, handle):
            gold_qa[rec["id"]] = rec
    for qid in rng.sample(sorted(qrels), n["bioasq"]):
        gold = {f"bioasq-{d}" for d in qrels[qid] if f"bioasq-{d}" in docs}
        if not gold:
            continue
        rec = gold_qa.get(qid, {})
        ideal = rec.get("ideal_answer") or [""]
        questions.append(Question(qid, texts[qid], "bioasq", gold, gold, f"bioasq:{qid}",
                                  reference=ideal[0] if isinstance(ideal, list) else str(ideal),
                                  snippets=[s["text"] for s in rec.get("snippets", [])]))
    other = _queries(data / "scidocs" / "queries.jsonl")
    picked = rng.sample(sorted(other), n["other"])
    others = [Question(q, other[q], "scidocs", set(), set(), f"scidocs:{q}") for q in picked]
    return questions, others


class CachingEmbedding:
    """The retriever's embedding with a per-text cache (the same sentence recurs across question variants)."""

    def __init__(self, embed_model: Any) -> None:
        self.embed_model = embed_model
        self.texts: dict[str, np.ndarray] = {}
        self.queries: dict[str, np.ndarray] = {}

    def get_query_embedding(self, query: str) -> list[float]:
        if query not in self.queries:
            self.queries[query] = np.asarray(self.embed_model.get_query_embedding(query), dtype=np.float32)
        return self.queries[query]

    def get_text_embedding_batch(self, texts: list[str]) -> list[np.ndarray]:
        missing = sorted({t for t in texts if t not in self.texts})
        if missing:
            vectors = self.embed_model.encoder.encode_documents(missing, batch_size=64)
            for text, vector in zip(missing, vectors):
                self.texts[text] = vector
        return [self.texts[t] for t in texts]


def cosine_top(matrix: np.ndarray, query: np.ndarray, node_docs: np.ndarray, exclude: set[str], k: int):
    scores = matrix @ query
    if exclude:
        scores = scores.copy()
        scores[np.isin(node_docs, list(exclude))] = -np.inf
    top = np.argpartition(-scores, k)[:k]
    top = top[np.argsort(-scores[top])]
    return top, scores[top]


def rouge_l(reference: str, text: str) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(reference, text)["rougeL"].fmeasure)


def choose_threshold(p: np.ndarray, y: np.ndarray) -> tuple[float, list[dict[str, float]]]:
    """The curve over every distinct p, and the chosen threshold: the most precise point whose recall is at
    least MIN_RECALL (ties: the higher recall), when its precision reaches the target; otherwise the best-F1
    point. Precision first: every wrong abstention hides an answer the sources hold."""
    curve = []
    for t in sorted(set(np.round(p, 6).tolist())):
        prec, rec, n = ab.precision_recall(p, y, t)
        curve.append({"threshold": t, "precision": prec, "recall": rec, "abstained": n})
    ok = [c for c in curve if c["recall"] >= MIN_RECALL and c["precision"] >= TARGET_PRECISION]
    if ok:
        best = max(ok, key=lambda c: (c["precision"], c["recall"]))
    else:
        best = max(curve, key=lambda c: 2 * c["precision"] * c["recall"] / max(c["precision"] + c["recall"], 1e-9))
    return float(best["threshold"]), curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("BMRAG_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--retrievers", nargs="+", default=["all-MiniLM-L6-v2", "bm25"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--features", nargs="+", choices=ab.SIGNAL_NAMES, default=list(FEATURES),
                        help=f"signals the model uses (default: {' '.join(FEATURES)}); for ablations")
    parser.add_argument("--distractors", type=int, default=800)
    parser.add_argument("--medquad", type=int, default=120)
    parser.add_argument("--pubmedqa", type=int, default=80)
    parser.add_argument("--bioasq", type=int, default=120)
    parser.add_argument("--other", type=int, default=120)
    parser.add_argument("--compare-percent", type=int, default=30,
                        help="percent of answerable PubMedQA/BioASQ questions the extractive scorers are compared on")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "bmrag" / "abstention")
    parser.add_argument("--out", type=Path, default=REPO / "bmrag" / "data" / "abstention.json")
    parser.add_argument("--results", type=Path, default=REPO / "evals" / "results")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from llama_index.core.schema import MetadataMode

    from bmrag.bm25 import _import_bm25s, tokenize
    from bmrag.index.build import corpus_to_nodes
    from bmrag.index.open import load_embedding

    rng = random.Random(SEED)
    builder = _load_builder()
    docs = {d["_id"]: d for d in builder.build(args.data)}
    questions, others = build_questions(args.data, docs, {"medquad": args.medquad, "pubmedqa": args.pubmedqa,
                                                          "bioasq": args.bioasq, "other": args.other}, rng)
    needed = set().union(*(q.remove for q in questions))
    pool_ids = sorted(needed) + rng.sample(sorted(set(docs) - needed), args.distractors)
    pool = {i: {"title": docs[i]["title"], "text": docs[i]["text"], "metadata": docs[i]["metadata"]} for i in pool_ids}
    print(f"{len(questions)} questions (+{len(others)} other-domain), pool {len(pool)} documents", flush=True)

    embed = load_embedding("all-MiniLM-L6-v2")
    encoder = embed.encoder
    nodes = corpus_to_nodes(pool, encoder)
    node_texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    node_docs = np.asarray([n.metadata["doc_id"] for n in nodes])
    key = hashlib.sha256(("\n".join(node_texts) + encoder.source.model + str(encoder.dtype)).encode()).hexdigest()[:16]
    args.cache.mkdir(parents=True, exist_ok=True)
    vec_path = args.cache / f"nodes-{key}.npy"
    if vec_path.is_file():
        matrix = np.load(vec_path)
    else:
        t = time.perf_counter()
        matrix = encoder.encode_documents(node_texts, batch_size=64, show_progress_bar=True)
        np.save(vec_path, matrix)
        print(f"encoded {len(node_texts)} nodes in {time.perf_counter() - t:.0f} s", flush=True)
    matrix = ex._normalise(matrix)

    bm25s = _import_bm25s()
    bm25 = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    bm25.index([tokenize(t) or ["\x00"] for t in node_texts], show_progress=False)

    cached = CachingEmbedding(embed)
    scorers = {"dense": ex.DenseScorer(cached), "lexical": ex.LexicalScorer(), "mix": ex.MixScorer(cached)}
    variants = [(q, False) for q in questions] + [(q, True) for q in questions] + [(q, True) for q in others]
    all_q = [v[0].text for v in variants]
    qvecs = ex._normalise(encoder.encode_queries(sorted(set(all_q)), batch_size=64))
    qvec = dict(zip(sorted(set(all_q)), qvecs))

    rows: dict[str, list[dict[str, Any]]] = {r: [] for r in args.retrievers}
    extractive_rows: list[dict[str, Any]] = []
    for q, removed in tqdm(variants, desc="questions", unit="q"):
        exclude = q.remove if removed else set()
        for retriever in args.retrievers:
            if retriever == "bm25":
                scores = np.asarray(bm25.get_scores(tokenize(q.text)), dtype=np.float64)
                if exclude:
                    scores[np.isin(node_docs, list(exclude))] = -np.inf
                top = np.argsort(-scores, kind="stable")[:K]
                top_scores = scores[top]
            else:
                top, top_scores = cosine_top(matrix, qvec[q.text], node_docs, exclude, K)
            passages = [ex.Passage(i + 1, nodes[int(n)].get_content(metadata_mode=MetadataMode.NONE),
                                   nodes[int(n)].metadata.get("title") or "")
                        for i, n in enumerate(top[:EXTRACT_FROM])]
            compare = (retriever == "all-MiniLM-L6-v2" and not removed and bool(q.reference)
                       and _h(q.qid) % 100 < args.compare_percent)
            names = scorers if compare else ["lexical"]
            answers = {name: ex.extract_answer(q.text, passages, scorers[name]) for name in names}
            # Coverage signals do not depend on the scorer (they look at every candidate sentence).
            signals = ab.signals_from(q.text, top_scores.tolist(), [node_texts[int(n)] for n in top],
                                      answers["lexical"])
            label = 1 if removed else 0
            rows[retriever].append({"qid": q.qid, "source": q.source, "group": q.group, "label": label,
                                    "signals": signals})
            if compare:
                gold_nodes = {i + 1 for i, n in enumerate(top[:EXTRACT_FROM]) if node_docs[int(n)] in q.gold}
                row = {"source": q.source, "gold_in_top": bool(gold_nodes)}
                for name, answer in answers.items():
                    row[f"{name}_from_gold"] = (sum(p in gold_nodes for p in answer.passages) / len(answer.passages)
                                                if answer.passages else 0.0)
                    if q.reference:
                        row[f"{name}_rouge_l"] = rouge_l(q.reference, " ".join(s.text for s in answer.sentences))
                extractive_rows.append(row)

    models, report = [], {"recipe": {}, "retrievers": {}}
    split_calib = {g: (_h(g) % 100) < CALIB_SHARE * 100 for g in {r["group"] for rr in rows.values() for r in rr}}
    features = tuple(args.features)
    recipe = {"k": K, "extract_from": EXTRACT_FROM, "signals": list(features),
              "sentence_coverage": "over every candidate sentence of the top extract_from passages "
              "(bmrag.qa.extractive.candidates; titles skipped), any scorer", "score": "cosine of normalised vectors "
              "(dense) / bm25s lucene k1=0.9 b=0.4 (bm25) over index nodes (corpus_to_nodes)"}
    counts = defaultdict(int)
    for q in questions:
        counts[q.source] += 1
    built = {"script": "evals/abstention_calibration.py", "seed": SEED, "questions": dict(counts),
             "other_domain": {"scidocs": len(others)}, "pool_documents": len(pool), "pool_nodes": len(nodes),
             "distractors": args.distractors, "calibration_share": CALIB_SHARE,
             "labels": "answerable = gold documents indexed; unanswerable = the same questions with their gold "
                       "documents (MedQuAD: all pages of the focus) removed, plus SCIDOCS titles",
             "medquad_topic_split": f"sha256(focus.lower())[:12] % 10 < {MEDQUAD_TRAIN_BUCKETS} used here; "
                                    "other topics held out for eval"}
    for retriever, rr in rows.items():
        x = np.stack([r["signals"].vector(features) for r in rr])
        y = np.asarray([r["label"] for r in rr])
        calib = np.asarray([split_calib[r["group"]] for r in rr])
        mean, scale = x[calib].mean(0), x[calib].std(0) + 1e-9
        weights, bias = ab.fit_logistic((x[calib] - mean) / scale, y[calib])
        model = ab.AbstentionModel(retriever, features, tuple(mean), tuple(scale), tuple(weights), bias, 0.5)
        p = np.asarray([model.probability(r["signals"]) for r in rr])
        threshold, curve_cal = choose_threshold(p[calib], y[calib])
        _, curve_held = choose_threshold(p[~calib], y[~calib])
        hp, hr, hn = ab.precision_recall(p[~calib], y[~calib], threshold)
        cp, cr, cn = ab.precision_recall(p[calib], y[calib], threshold)
        # One-signal baseline: the top retrieval score alone (what the chain's min_score threshold uses).
        top = x[:, 0]
        base_t, _ = choose_threshold(-top[calib] + top.max(), y[calib])
        bp, br, _ = ab.precision_recall(-top[~calib] + top.max(), y[~calib], base_t)
        by_source = {}
        for source in sorted({r["source"] for r in rr}):
            mask = ~calib & np.asarray([r["source"] == source for r in rr])
            by_source[source] = {"n": int(mask.sum()), "abstained": int((p[mask] >= threshold).sum()),
                                 "unanswerable": int(y[mask].sum()),
                                 "abstained_unanswerable": int(((p[mask] >= threshold) & (y[mask] == 1)).sum())}
        point = {"threshold": threshold, "target": f"recall >= 0.8 at precision >= {TARGET_PRECISION}",
                 "rule": f"most precise calibration point with recall >= {MIN_RECALL}",
                 "calibration": {"precision": cp, "recall": cr, "abstained": cn, "n": int(calib.sum())},
                 "held_out": {"precision": hp, "recall": hr, "abstained": hn, "n": int((~calib).sum())},
                 "held_out_by_source": by_source,
                 "baseline_top_score_only_held_out": {"precision": bp, "recall": br,
                                                      "min_score": float(top.max() - base_t)}}
        model = ab.AbstentionModel(retriever, features, tuple(map(float, mean)), tuple(map(float, scale)),
                                   tuple(map(float, weights)), float(bias), threshold, recipe=recipe,
                                   chosen_point=point, built=built)
        models.append(model)
        report["retrievers"][retriever] = {"chosen_point": point, "curve_held_out": curve_held,
                                           "curve_calibration": curve_cal}
    ab.write_models(models, args.out, note="Abstention calibration per retriever; built by "
                    "evals/abstention_calibration.py from training splits (see each entry's 'built').")

    extractive_summary = {}
    for name in scorers:
        sub = [r for r in extractive_rows if r["gold_in_top"]]
        summary = {"questions_gold_in_top3": len(sub),
                   "quoted_from_gold_passage": float(np.mean([r[f"{name}_from_gold"] for r in sub])) if sub else None}
        for metric, source in (("rouge_l", "pubmedqa"), ("rouge_l", "bioasq")):
            vals = [r[f"{name}_{metric}"] for r in sub if r["source"] == source and f"{name}_{metric}" in r]
            summary[f"{metric}_{source}"] = float(np.mean(vals)) if vals else None
        extractive_summary[name] = summary
    report["extractive"] = extractive_summary
    report["recipe"], report["built"] = recipe, built
    report["machine"] = {"cpu": _cpu(), "threads": args.threads, "python": platform.python_version()}
    report["command"] = ("BMRAG_DATA=<shared data> python evals/abstention_calibration.py --threads "
                         f"{args.threads} --retrievers {' '.join(args.retrievers)}"
                         + (f" --features {' '.join(features)}" if features != FEATURES else ""))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "abstention.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    _plot(report, args.results / "abstention.png")
    _markdown(report, args.results / "abstention.md")
    print(json.dumps({r: v["chosen_point"] for r, v in report["retrievers"].items()}, indent=1))
    print(json.dumps(extractive_summary, indent=1))
    return 0


def _cpu() -> str:
    from bmrag.hardware import describe_cpu

    return describe_cpu()


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for retriever, data in report["retrievers"].items():
        curve = data["curve_held_out"]
        ax.plot([c["recall"] for c in curve], [c["precision"] for c in curve], label=f"{retriever} (held-out)")
        point = data["chosen_point"]["held_out"]
        ax.scatter([point["recall"]], [point["precision"]], marker="o", zorder=3)
        ax.annotate(f"chosen p>={data['chosen_point']['threshold']:.2f}", (point["recall"], point["precision"]),
                    textcoords="offset points", xytext=(-80, -15), fontsize=8)
    ax.axhline(0.8, color="grey", lw=0.5, ls="--")
    ax.axvline(0.8, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("abstention recall (unanswerable questions abstained on)")
    ax.set_ylabel("abstention precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0.4, 1.02)
    ax.set_title("Abstention trade-off on the held-out part")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _markdown(report: dict[str, Any], path: Path) -> None:
    lines = ["# Abstention calibration and extractive scorers", "",
             f"Command: `{report['command']}`  ", f"CPU: {report['machine']['cpu']}", "",
             "Labels: " + report["built"]["labels"] + ".", "",
             "| retriever | threshold | calib P / R | held-out P / R (n) | top-score-only held-out P / R |",
             "|---|---|---|---|---|"]
    for retriever, data in report["retrievers"].items():
        c = data["chosen_point"]
        lines.append(f"| {retriever} | {c['threshold']:.3f} | {c['calibration']['precision']:.3f} / "
                     f"{c['calibration']['recall']:.3f} | {c['held_out']['precision']:.3f} / "
                     f"{c['held_out']['recall']:.3f} ({c['held_out']['n']}) | "
                     f"{c['baseline_top_score_only_held_out']['precision']:.3f} / "
                     f"{c['baseline_top_score_only_held_out']['recall']:.3f} |")
    lines += ["", f"Signals: {', '.join(report['recipe']['signals'])}.", "",
              "Held-out part by source (at the chosen threshold):", "",
              "| retriever | source | questions | unanswerable | abstained on unanswerable (recall) | "
              "abstained on answerable |", "|---|---|---|---|---|---|"]
    for retriever, data in report["retrievers"].items():
        for source, row in data["chosen_point"]["held_out_by_source"].items():
            hits = row["abstained_unanswerable"]
            recall = f"{hits / row['unanswerable']:.3f}" if row["unanswerable"] else "-"
            lines.append(f"| {retriever} | {source} | {row['n']} | {row['unanswerable']} | {hits} ({recall}) | "
                         f"{row['abstained'] - hits} of {row['n'] - row['unanswerable']} |")
    lines += ["", "![trade-off](abstention.png)", "",
              "## Extractive scorers (answerable questions, gold in top 3)", "",
              "| scorer | quoted from gold passage | ROUGE-L PubMedQA (vs conclusion) "
              "| ROUGE-L BioASQ (vs ideal answer) |",
              "|---|---|---|---|"]
    for name, s in report["extractive"].items():
        def f(v):
            return "-" if v is None else f"{v:.3f}"
        lines.append(f"| {name} | {f(s['quoted_from_gold_passage'])} | {f(s['rouge_l_pubmedqa'])} | "
                     f"{f(s['rouge_l_bioasq'])} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
