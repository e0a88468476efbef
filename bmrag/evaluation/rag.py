"""``bmrag eval rag``: the real QA chain over PubMedQA and BioASQ questions, scored with RAGAS and QA metrics.

Per question the chain (:class:`bmrag.qa.chain.QAChain`) retrieves from a Chroma index of the dataset's corpus
(built once per corpus, retriever and corpus hash, then reused), applies its weak-evidence threshold, and
(unless ``generate=False``) answers with the chosen generator. Scores:

* **ID-based context precision / recall** (RAGAS ``IDBasedContextPrecision`` / ``IDBasedContextRecall``) on
  document ids (PMIDs for both sets): precision = |retrieved ∩ relevant| / |retrieved|, recall =
  |retrieved ∩ relevant| / |relevant|, over *distinct* document ids. Two variants: ``given`` = the passages
  the generator receives (top-k after the weak-evidence threshold; what RAGAS means by retrieved contexts)
  and ``top_k`` = the top-k before the threshold (pure retrieval quality). Precision is undefined (NaN,
  left out of the mean and counted) when nothing was given.
* **Answer metrics without an LLM** (RAGAS ``RougeScore`` ROUGE-L F1 with stemming, ``NonLLMStringSimilarity``
  = 1 - normalised Levenshtein distance) against the reference answer: PubMedQA's ``LONG_ANSWER`` (the
  abstract's conclusion), BioASQ's first ``ideal_answer``. Computed for every question with an answer text
  (refusals included, as the user sees them).
* **Decision accuracy**: :func:`parse_decision` reads yes/no/maybe from the answer; PubMedQA test (yes/no/maybe,
  ``final_decision``) and BioASQ yes/no questions (``exact_answer``). Unparseable answers count as wrong and
  are counted; the majority-class baseline of the evaluated questions is reported next to it.
* **Faithfulness / answer relevancy** (RAGAS ``Faithfulness``, ``AnswerRelevancy``): LLM-judged, run *only* with
  a judge endpoint (an OpenAI-compatible server such as vLLM, through ``ragas.llms.llm_factory`` with an
  explicit ``AsyncOpenAI(base_url=...)`` client). Without one the result says ``"not run: no judge
  configured"``. RAGAS never reaches OpenAI silently: :func:`openai_guard` makes any OpenAI client aimed at
  api.openai.com (or, without a judge, any OpenAI client at all) raise, and points the default key and URL
  at values that cannot reach OpenAI.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bmrag.evaluation.rag_data import RAG_DATASETS, RagDatasetSpec, RagQuestion, load_rag_questions
from bmrag.evaluation.rag_grounded import (
    ANSWERED,
    apply_calibration,
    ask_unanswerable,
    grounding_metrics,
    resolve_answer_mode,
    sentence_support,
)
from bmrag.evaluation.rag_judge import Judge, openai_guard
from bmrag.evaluation.rag_metrics import (
    CITATION_METRICS,
    DECISIONS,
    Decision,
    citation_scores,
    decision_scores,
    id_context_scores,
    parse_decision,
)
from bmrag.evaluation.rag_report import result_stem, summary_line, to_markdown, write_rag_result
from bmrag.loading import cache_dir
from bmrag.qa.attribution import MIN_SUPPORT
from bmrag.qa.chain import QAChain

logger = logging.getLogger(__name__)

__all__ = ["CITATION_METRICS", "DECISIONS", "RAG_DATASETS", "Decision", "Judge", "RagDatasetSpec", "RagQuestion",
           "citation_scores", "decision_scores", "evaluate_rag", "id_context_scores", "load_rag_questions",
           "openai_guard", "parse_decision", "result_stem", "summary_line", "to_markdown", "write_rag_result"]

RAG_SCHEMA = "bmrag.rag/1"
"""Schema of ``bmrag eval rag`` results (not ``bmrag.eval.*``: the retrieval leaderboard skips them)."""

NO_JUDGE = "not run: no judge configured"
"""What the result says for LLM-judged metrics without ``--judge-api-base``."""

GeneratorName = Literal["local", "vllm"]


@dataclass
class RagRecord:
    """What happened for one question (one row of ``per_question``)."""

    id: str
    question: str
    status: str
    answer: str | None
    relevant_ids: list[str]
    given_ids: list[str]
    top_k_ids: list[str]
    reference_answer: str | None
    decision_gold: str | None
    decision_predicted: str | None
    cited_ids: list[str] = field(default_factory=list)
    attributed_ids: list[str] = field(default_factory=list)
    unmentioned: list[str] = field(default_factory=list)
    metrics: dict[str, float | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text)).strip("-") or "x"


def default_index_dir(dataset: str, retriever: str, content_hash: str) -> Path:
    """``cache_dir()/rag-eval/<dataset>__<retriever>__<corpus hash[:12]>`` (see :func:`bmrag.loading.cache_dir`)."""
    return cache_dir("rag-eval", f"{dataset}__{_slug(Path(retriever).name)}__{content_hash[:12]}")


def _mean(values: Sequence[float | None]) -> tuple[float | None, int]:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return (sum(kept) / len(kept) if kept else None), len(values) - len(kept)


def evaluate_rag(dataset: str, *, data: str | os.PathLike[str] | None = None, retriever: str = "all-MiniLM-L6-v2",
                 generator: GeneratorName | None = "local", llm_model: str | None = None, api_base: str | None = None,
                 k: int = 3, hybrid: bool = False, limit: int | None = None, threads: int | None = None,
                 dtype: str | None = None,
                 max_new_tokens: int | None = None, attribution: bool = True,
                 index_dir: str | os.PathLike[str] | None = None,
                 judge: Judge | None = None, show_progress: bool = True,
                 command: Sequence[str] | None = None, answer: str | None = None, unanswerable: bool = False,
                 other_domain: int = 20,
                 abstention_calibration: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run the QA chain over a RAG evaluation set and score it (see the module docstring).

    Args:
        dataset: ``"pubmedqa"`` or ``"bioasq"`` (:data:`RAG_DATASETS`).
        data: Data root (default ``$BMRAG_DATA``).
        retriever: Retriever model (alias, directory or Hub id) the corpus index is built with.
        generator: ``"local"`` (embedded SmolLM2 by default), ``"vllm"``, or None for retrieval only
            (``--no-generate``: context precision/recall only).
        llm_model: Generator model (see :meth:`bmrag.qa.chain.QAChain.from_index`).
        api_base: vLLM URL for ``generator="vllm"``.
        k: Passages given to the generator.
        hybrid: BM25 + dense retrieval (RRF) instead of dense only.
        limit: Ask only the first ``limit`` questions in id order (deterministic).
        threads: torch CPU threads for indexing, retrieval and local generation.
        dtype: Weights dtype of the retriever and the local generator (default: the hardware's).
        max_new_tokens: Answer budget.
        attribution: Word-overlap citation attribution (the chain's default); False scores the model's own
            citations only.
        index_dir: Chroma index folder (default :func:`default_index_dir`); built if missing, reused otherwise.
        judge: Judge endpoint for faithfulness and answer relevancy; None: those metrics are not run.
        show_progress: tqdm progress bars.
        command: The command line, recorded in the result.
        answer: ``"extractive"`` (quoted sentences; needs ``generator=None``) or ``"generative"``; default
            generative with a generator, retrieval only without (see
            :func:`bmrag.evaluation.rag_grounded.resolve_answer_mode`).
        unanswerable: Also ask the unanswerable split (the same questions against the index without their gold
            passages, plus ``other_domain`` SCIDOCS questions) and score abstention; needs an answer mode.
        other_domain: Other-domain questions in the unanswerable split.
        abstention_calibration: Abstention calibration file to evaluate instead of the shipped one.

    Returns:
        The result dictionary (schema :data:`RAG_SCHEMA`).
    """
    # Before ragas is imported anywhere: its usage tracking is a network call.
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    from tqdm.auto import tqdm

    from bmrag.evaluation.report import environment
    from bmrag.hardware import describe_cpu
    from bmrag.index.build import build_index
    from bmrag.index.open import load_embedding

    if generator not in (None, "local", "vllm"):
        raise ValueError(f"generator must be 'local', 'vllm' or None (no generation), got {generator!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    mode = resolve_answer_mode(answer, generator)
    if unanswerable and mode is None:
        raise ValueError("the unanswerable split scores answers: it needs an answer mode (not retrieval only)")
    if threads is not None:
        import torch

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    started = time.perf_counter()
    timing: dict[str, float] = {}

    t = time.perf_counter()
    questions, retrieval = load_rag_questions(dataset, data)
    n_total = len(questions)
    if limit is not None:
        questions = questions[:limit]
    timing["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    index_dir = Path(index_dir).expanduser() if index_dir else default_index_dir(dataset, retriever,
                                                                                  retrieval.content_hash)
    embed_model = load_embedding(retriever, dtype=dtype)
    from bmrag.evaluation.rag_splits import index_lock, index_without, other_domain_questions

    with index_lock(index_dir):  # one writer per index folder: concurrent runs wait, then reuse it
        store, report = build_index(retrieval.corpus, index_dir, embed_model, show_progress=show_progress)
        passages = store.count()
        store.close()
    without = None
    if unanswerable:
        others = other_domain_questions(data if data is not None else _data_root(), other_domain)
        removed = sorted({doc for q in questions for doc in (q.remove_ids or q.relevant_ids)})
        with index_lock(index_dir):
            without, deleted = index_without(index_dir, removed, embed_model)
        split_setup = (f"{len(questions)} questions against {without.name} (index copy without the "
                       f"{len(removed)} gold documents of the evaluated questions"
                       + (f", {deleted} nodes deleted" if deleted >= 0 else ", reused") +
                       f"), plus {len(others)} SCIDOCS queries against the full index")
    timing["index_s"] = time.perf_counter() - t

    t = time.perf_counter()
    chain = QAChain.from_index(index_dir, k=k, backend=generator, llm_model=llm_model, api_base=api_base,
                                  max_new_tokens=max_new_tokens, threads=threads if generator == "local" else None,
                                  hybrid=hybrid, min_support=MIN_SUPPORT if attribution else None, dtype=dtype,
                                  answer=mode or "generative")  # retrieval only: no generator, no answer
    chains = [chain]
    if without is not None:
        chains.append(QAChain.from_index(without, k=k, backend=generator, generator=chain.generator, hybrid=hybrid,
                                         min_support=chain.min_support, dtype=dtype, answer=mode))
    timing["chain_load_s"] = time.perf_counter() - t
    if generator is not None and chain.generator is None:
        for c in chains:
            c.close()
        raise RuntimeError(f"the {generator} generator is unavailable: {chain.generator_error}")
    try:
        abstention_setup = apply_calibration(chains, abstention_calibration)
    except BaseException:
        for c in chains:
            c.close()
        raise

    judge_metrics = None
    judge_model = None
    records: list[RagRecord] = []
    endpoints = [judge.api_base] if judge else []
    if chain.generator is not None and generator == "vllm":
        endpoints.append(str(chain.generator.describe()["endpoint"]))
    with openai_guard(endpoints) as openai_clients:
        if judge is not None:
            faithfulness, relevancy, judge_model = judge.build()
            judge_metrics = (faithfulness, relevancy)
        from ragas.metrics.collections import NonLLMStringSimilarity, RougeScore

        rouge, similarity = RougeScore(rouge_type="rougeL", mode="fmeasure"), NonLLMStringSimilarity()
        t = time.perf_counter()
        try:
            for item in tqdm(questions, desc=f"rag {dataset}", disable=not show_progress):
                result = chain.ask(item.question)
                given = _unique([e.doc_id for e in result.evidence])
                top_k = _unique([e.doc_id for e in result.evidence + result.held_back])
                record = RagRecord(
                    id=item.id, question=item.question, status=result.status, answer=result.answer,
                    relevant_ids=item.relevant_ids, given_ids=given, top_k_ids=top_k,
                    reference_answer=item.reference_answer, decision_gold=item.decision,
                    decision_predicted=parse_decision(result.answer) if generator is not None else None,
                    cited_ids=_unique([source["doc_id"] for source in result.sources]),
                    attributed_ids=_unique([s["doc_id"] for s in result.sources if s.get("attributed")]),
                    unmentioned=list(result.unmentioned),
                    timings={key: round(value, 4) for key, value in result.timings.items()},
                    notes=[n for n in result.notes if not n.startswith("generation skipped")])
                p, r = id_context_scores(given, item.relevant_ids)
                pk, rk = id_context_scores(top_k, item.relevant_ids)
                record.metrics.update({"context_precision_given": p, "context_recall_given": r,
                                       "context_precision_top_k": pk, "context_recall_top_k": rk})
                if result.status in ANSWERED and result.evidence:
                    record.metrics.update(citation_scores(record.cited_ids, given, item.relevant_ids))
                    scored = [row for row in (result.attribution or {}).get("sentences", []) if row["best"]]
                    if scored:  # lexical: no passage holds min_support of the sentence's content words
                        record.metrics["unsupported_sentences"] = sum(r["unsupported"] for r in scored) / len(scored)
                support = sentence_support(result, mode) if mode is not None else None
                if support is not None:
                    record.metrics["sentences_judged"], record.metrics["sentences_unsupported"] = support
                if mode is not None and result.answer is not None and item.reference_answer:
                    record.metrics["rouge_l"] = float(rouge.score(reference=item.reference_answer,
                                                                  response=result.answer).value)
                    record.metrics["string_similarity"] = float(similarity.score(
                        reference=item.reference_answer, response=result.answer).value)
                if judge_metrics is not None and result.status == "answered" and result.answer and result.evidence:
                    contexts = [e.text for e in result.evidence]
                    for metric, kwargs in ((judge_metrics[0], {"retrieved_contexts": contexts}),
                                           (judge_metrics[1], {})):
                        try:
                            value = metric.score(user_input=item.question, response=result.answer, **kwargs).value
                            record.metrics[metric.name] = float(value)
                        except Exception as err:  # a judge failure is recorded per question, never hidden
                            record.metrics[metric.name] = None
                            record.notes.append(f"{metric.name} failed: {type(err).__name__}: {err}")
                records.append(record)
            unanswered = None
            if without is not None:
                unanswered = ask_unanswerable(chains[1], [(q.id, q.question, len(q.remove_ids or q.relevant_ids))
                                                          for q in questions], "gold_removed",
                                              show_progress=show_progress)
                unanswered += ask_unanswerable(chain, [(qid, text, 0) for qid, text in others], "other_domain",
                                               show_progress=show_progress)
        finally:
            for c in chains:
                c.close()
        timing["questions_s"] = time.perf_counter() - t

    metrics: dict[str, Any] = {}
    for name in ("context_precision_given", "context_recall_given", "context_precision_top_k",
                 "context_recall_top_k", *CITATION_METRICS, "rouge_l", "string_similarity"):
        values = [r.metrics.get(name) for r in records if name in r.metrics]
        if values:
            mean, undefined = _mean(values)
            metrics[name] = mean
            if undefined:
                metrics[f"{name}_undefined"] = undefined
    for name in ("faithfulness", "answer_relevancy"):
        if judge is None:
            metrics[name] = NO_JUDGE
        else:
            values = [r.metrics.get(name) for r in records if name in r.metrics]
            mean, failed = _mean(values)
            metrics[name] = mean
            metrics[f"{name}_scored"] = len(values) - failed
    decided = [r for r in records if r.decision_gold in DECISIONS]
    if generator is not None and decided:
        metrics["decision"] = decision_scores([r.decision_gold for r in decided],
                                              [r.decision_predicted for r in decided])
    status = Counter(r.status for r in records)
    gen_timings = [r.timings.get("generation", 0.0) for r in records if r.timings.get("generation")]
    timing.update({"total_s": time.perf_counter() - started,
                   "per_question_mean_s": timing["questions_s"] / max(len(records), 1),
                   "generation_mean_s": (sum(gen_timings) / len(gen_timings)) if gen_timings else None})
    spec = RAG_DATASETS[dataset]
    grounding = None
    if mode is not None:
        grounding = {"abstention_setup": abstention_setup, **grounding_metrics(records, unanswered)}
        if unanswered is not None:
            grounding["unanswerable_setup"] = split_setup
            grounding["unanswerable_per_question"] = [asdict(u) for u in unanswered]
    return {
        "schema": RAG_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": {"name": dataset, "note": spec.note, "questions_total": n_total,
                    "questions_evaluated": len(records),
                    "limit": limit, "selection": "first N question ids in sorted order" if limit else "all",
                    "retrieval_set": retrieval.describe()},
        "index": {"dir": str(index_dir), "passages": passages, "added_now": report.added,
                  "retriever": embed_model.model_name},
        "chain": {"k": k, "retrieval_mode": "hybrid (BM25 + dense, RRF k=60)" if hybrid else "dense",
                  "min_support": chain.min_support, "answer": mode,
                  "min_score": chain.min_score, "threshold_note": chain.threshold_note(hybrid),
                  "generator": chain.generator.describe() if chain.generator else None},
        "judge": ({"api_base": judge.api_base, "model": judge_model, "embedding_model": judge.embedding_model}
                  if judge else NO_JUDGE),
        "openai_clients_created": openai_clients,
        "metrics": metrics,
        "status_counts": dict(status),
        "timing": {key: (round(v, 3) if isinstance(v, float) else v) for key, v in timing.items()},
        "environment": {**environment(), "ragas": _version("ragas"), "cpu": describe_cpu()},
        "grounding": grounding,
        "command": list(command) if command else None,
        "per_question": [asdict(r) for r in records],
    }


def _data_root() -> Path:
    from bmrag.loading import DATA_ENV, data_root

    root = data_root()
    if root is None:
        raise ValueError(f"no data location: pass --data (the data root) or set ${DATA_ENV}")
    return root


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
