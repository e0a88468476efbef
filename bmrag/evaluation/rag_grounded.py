"""Grounded-answer scoring for ``bmrag eval rag``: answer modes, unsupported sentences, the unanswerable split.

* **Answer mode** (:func:`resolve_answer_mode`): ``extractive`` (sentences quoted from the evidence, no generator)
  or ``generative`` (the generator writes, the chain checks every sentence); None = retrieval only.
* **Unsupported-sentence rate** (:func:`sentence_support`): of the sentences an answer was made of, the share the
  evidence does not support. Generative: the generated sentences the chain's check removed
  (``AskResult.unsupported``) over all generated sentences it judged. Extractive: quoted sentences that do not
  occur verbatim in the passage they cite -- 0 by construction, so a non-zero count raises (a bug, not a score).
* **Unanswerable split** (:func:`ask_unanswerable`): the same questions asked against a copy of the index without
  their gold passages (:func:`bmrag.evaluation.rag_splits.index_without`), plus other-domain questions (SCIDOCS)
  asked against the full index. Abstention precision/recall treat "abstained" as the prediction of
  "unanswerable", with the answerable run as the negatives (:func:`bmrag.evaluation.rag_metrics.abstention_scores`).
* **Latency**: per question ``AskResult.timings["total"]`` (retrieval + answer, models already loaded), p50/p95.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from bmrag.evaluation.rag_metrics import abstention_scores, latency_summary, not_verbatim
from bmrag.qa.grounding import AnswerMode, check_answer_mode

ANSWERED = ("answered", "partially_supported")
"""Statuses whose answer is shown as an answer (citation precision and ROUGE-L over answered are scored on these)."""

UnanswerableKind = Literal["gold_removed", "other_domain"]


def resolve_answer_mode(answer: str | None, generator: str | None) -> AnswerMode | None:
    """The answer mode of a run: ``answer``, else generative with a generator and retrieval only (None) without.

    Raises:
        ValueError: An unknown mode, extractive with a generator (it would never be called), or generative
            without one.
    """
    if answer is None:
        return "generative" if generator is not None else None
    mode = check_answer_mode(answer)
    if mode == "extractive" and generator is not None:
        raise ValueError(f"answer='extractive' quotes the evidence and loads no generator: pass generator=None "
                         f"(got generator={generator!r})")
    if mode == "generative" and generator is None:
        raise ValueError("answer='generative' needs a generator ('local' or 'vllm')")
    return mode


def apply_calibration(chains: Iterable[Any], path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Point the chains' abstention at the calibration file ``path`` (None: the shipped one, as the chain loads it).

    Used to measure a calibration before it ships. Returns what the result records: whether a calibrated model
    ran, from which file (with its SHA-256), its threshold, or why none ran.

    Raises:
        bmrag.qa.abstention.UncalibratedRetriever: ``path`` has no model for the chain's retriever.
        FileNotFoundError: ``path`` does not exist.
    """
    from bmrag.qa.abstention import CALIBRATION_FILE, model_for

    chains = list(chains)
    source = Path(path) if path is not None else CALIBRATION_FILE
    if path is not None:
        for chain in chains:
            chain.abstainer.model = model_for(chain.abstainer.retriever, source)
            chain.abstainer.note = None
    abstainer = chains[0].abstainer
    if abstainer.model is None:
        return {"calibrated": False, "note": abstainer.note}
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    return {"calibrated": True, "file": str(source), "sha256": digest,
            "threshold": abstainer.model.threshold, "retriever": abstainer.retriever}


def sentence_support(result: Any, mode: AnswerMode) -> tuple[int, int] | None:
    """``(sentences judged, sentences unsupported)`` of one answer, or None when it has none to judge.

    Raises:
        RuntimeError: An extractive answer quotes a sentence that is not verbatim in its passage.
    """
    if mode == "extractive":
        if result.status not in ANSWERED or not result.quotes:
            return None
        quotes = [(row["text"], int(row["passage"])) for row in result.quotes["sentences"]]
        bad = not_verbatim(quotes, {item.number: item.text for item in result.evidence})
        if bad:
            raise RuntimeError(f"extractive answer to {result.question!r} quotes a sentence that is not verbatim in "
                               f"its passage: {bad[0]!r}")
        return len(quotes), 0
    if not result.attribution:
        return None
    return len(result.attribution.get("sentences", [])), len(result.unsupported)


@dataclass
class UnanswerableRecord:
    """One question of the unanswerable split (one row of ``unanswerable.per_question``)."""

    id: str
    question: str
    kind: str
    status: str
    answer_mode: str
    answer: str | None
    given_ids: list[str]
    removed_ids: int
    p_unanswerable: float | None
    unmentioned: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def ask_unanswerable(chain: Any, items: Sequence[tuple[str, str, int]], kind: UnanswerableKind, *,
                     show_progress: bool = True) -> list[UnanswerableRecord]:
    """Ask ``(id, question, documents removed)`` items through ``chain`` and record what users would see."""
    from tqdm.auto import tqdm

    records = []
    for qid, question, removed in tqdm(items, desc=f"unanswerable ({kind})", disable=not show_progress):
        result = chain.ask(question)
        abstention = result.abstention or {}
        records.append(UnanswerableRecord(
            qid, question, kind, result.status, result.answer_mode, result.answer,
            list(dict.fromkeys(e.doc_id for e in result.evidence)), removed, abstention.get("p_unanswerable"),
            list(result.unmentioned), {key: round(value, 4) for key, value in result.timings.items()},
            [n for n in result.notes if n.startswith("abstained")]))
    return records


def grounding_metrics(records: Sequence[Any], unanswerable: Sequence[UnanswerableRecord] | None) -> dict[str, Any]:
    """Run-level grounding metrics from the answerable records (``RagRecord``) and the unanswerable ones.

    Returns:
        ``unsupported_sentence_rate`` (micro: unsupported / judged sentences over all answers) with
        ``sentences_judged``; ``rouge_l_answered`` (ROUGE-L over answered / partially supported questions only);
        ``latency`` (answerable questions); ``unmentioned_flagged``: per split (``answerable``, and with an
        unanswerable split ``gold_removed`` / ``other_domain``), how many answers were given and the share of them
        whose sources do not mention some question word (``AskResult.unmentioned``): a useful flag is rarer on
        answerable questions than on answered unanswerable ones. With an unanswerable split, ``abstention``
        (precision, recall, false-abstention rate and counts; recall per kind) and ``latency_unanswerable``.
    """
    out: dict[str, Any] = {}
    judged = sum(int(r.metrics.get("sentences_judged") or 0) for r in records)
    if judged:
        out["unsupported_sentence_rate"] = sum(int(r.metrics.get("sentences_unsupported") or 0)
                                               for r in records) / judged
        out["sentences_judged"] = judged
    rouge = [r.metrics["rouge_l"] for r in records if r.status in ANSWERED and r.metrics.get("rouge_l") is not None]
    if rouge:
        out["rouge_l_answered"] = sum(rouge) / len(rouge)
    out["latency"] = latency_summary([float(r.timings.get("total", 0.0)) for r in records])
    splits = {"answerable": records}
    if unanswerable is not None:
        splits.update({kind: [u for u in unanswerable if u.kind == kind] for kind in get_args(UnanswerableKind)})
    out["unmentioned_flagged"] = {name: _flag_rate(rows) for name, rows in splits.items()}
    if unanswerable is not None:
        labels = [False] * len(records) + [True] * len(unanswerable)
        abstained = [r.status == "abstained" for r in records] + [u.status == "abstained" for u in unanswerable]
        scores = abstention_scores(labels, abstained)
        for kind in get_args(UnanswerableKind):
            rows = [u for u in unanswerable if u.kind == kind]
            scores[f"recall_{kind}"] = (sum(u.status == "abstained" for u in rows) / len(rows)) if rows else None
            scores[f"n_{kind}"] = len(rows)
        out["abstention"] = scores
        out["unanswerable_status_counts"] = dict(Counter(u.status for u in unanswerable))
        out["latency_unanswerable"] = latency_summary([float(u.timings.get("total", 0.0)) for u in unanswerable])
    return out


def _flag_rate(rows: Sequence[Any]) -> dict[str, Any]:
    """Answers given among ``rows`` and the share of them with unmentioned question words (None without any)."""
    answered = [r for r in rows if r.status in ANSWERED]
    flagged = sum(bool(r.unmentioned) for r in answered)
    return {"answered": len(answered), "flagged": flagged, "rate": flagged / len(answered) if answered else None}


def _f(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))


def grounding_markdown(result: dict[str, Any]) -> list[str]:
    """Markdown lines for the grounding part of a result (empty for a retrieval-only run)."""
    g = result.get("grounding")
    if not g:
        return []
    setup = g["abstention_setup"]
    calibrated = (f"calibrated, p(unanswerable) >= {_f(setup.get('threshold'))}" if setup.get("calibrated")
                  else f"not calibrated ({setup.get('note')})")
    lines = ["", f"Grounding ({result['chain'].get('answer')} answers; abstention {calibrated}; "
                 f"CPU {result['environment'].get('cpu')}):", ""]
    lat = g["latency"]
    lines.append(f"- unsupported-sentence rate {_f(g.get('unsupported_sentence_rate'))} over "
                 f"{g.get('sentences_judged', 0)} sentences; ROUGE-L over answered questions "
                 f"{_f(g.get('rouge_l_answered'))}")
    lines.append(f"- latency per question (retrieval + answer): p50 {_f(lat['p50_s'])} s, p95 {_f(lat['p95_s'])} s "
                 f"(n={lat['n']})")
    flags = g.get("unmentioned_flagged")
    if flags:
        lines.append("- answers whose sources do not mention a question word: " + "; ".join(
            f"{name.replace('_', ' ')} {row['flagged']} of {row['answered']} ({_f(row['rate'])})"
            for name, row in flags.items()))
    a = g.get("abstention")
    if a:
        lines.append(f"- abstention: precision {_f(a['abstention_precision'])}, recall {_f(a['abstention_recall'])} "
                     f"(gold removed {_f(a['recall_gold_removed'])} of {a['n_gold_removed']}, other domain "
                     f"{_f(a['recall_other_domain'])} of {a['n_other_domain']}), false-abstention rate on "
                     f"answerable {_f(a['false_abstention_rate'])}; unanswerable statuses "
                     f"{g['unanswerable_status_counts']}")
        lines.append(f"- unanswerable split: {g['unanswerable_setup']}")
    return lines
