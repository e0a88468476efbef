"""The biomedical QA chain, orchestration only: retrieve -> (rerank) -> numbered evidence -> grounded answer.

``QAChain.from_index(dir).ask(question)`` embeds the question with the model recorded in the index manifest
(:func:`bmrag.index.open.open_index`), takes the dense top-k from Chroma (metadata filters applied inside the
vector-store query) or, with ``hybrid=True``, the reciprocal-rank fusion of BM25 and dense hits
(:mod:`bmrag.qa.fusion`), optionally re-scores with a reranker, numbers the evidence (:mod:`bmrag.qa.evidence`)
and answers from it (:mod:`bmrag.qa.grounding`): sentences quoted from the evidence (``answer="extractive"``,
no generator) or generated and checked sentence by sentence (``"generative"``), or an abstention when the
sources don't answer. :class:`~bmrag.qa.result.AskResult` records what ran, the timings and every note.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.schema import NodeWithScore
from llama_index.core.vector_stores.types import MetadataFilters

from bmrag.index.manifest import DEFAULT_COLLECTION
from bmrag.qa import citations, fusion
from bmrag.qa.answer import cited_sources, declined, drop_repeated_sentences
from bmrag.qa.attribution import MIN_SUPPORT
from bmrag.qa.evidence import (
    Evidence,
    default_min_score,
    evidence_from_nodes,
    first_stage_candidates,
    nearest,
    select_evidence,
)
from bmrag.qa.filters import build_filters, describe_filters, explain_no_match
from bmrag.qa.grounding import (
    ABSTAIN_MESSAGE,
    Abstainer,
    AnswerMode,
    check_answer_mode,
    default_answer_mode,
    drop_unfinished,
    extractive_answer,
    quoted_sources,
    supported_sentences,
)
from bmrag.qa.prompt import build_messages, fit_texts
from bmrag.qa.result import AskResult
from bmrag.qa.support import unmentioned_terms

if TYPE_CHECKING:
    from bmrag.generators import Generator
    from bmrag.llama_index.embedding import BMRetrieverEmbedding
    from bmrag.llama_index.reranker import BMRetrieverReranker
    from bmrag.llama_index.vector_store import BMRagChromaVectorStore

logger = logging.getLogger(__name__)

class QAChain:
    """Retrieve, rerank, prompt with numbered evidence, generate and check citations.

    Build it with :meth:`from_index` (``bmrag ask`` does), or from parts for custom set-ups.

    Args:
        store: The open vector store (see :func:`bmrag.index.store.open_store`).
        embed_model: The embedding model the index was built with.
        generator: The answer generator, or None when unavailable (then ``generator_error`` says why and
            ``ask`` returns the evidence only).
        reranker: Optional reranker applied to the first-stage candidates.
        k: Passages given to the generator.
        candidates: First-stage passages retrieved (default :func:`first_stage_candidates`).
        min_score: Weak-evidence threshold on the final score (rerank score when reranking); ``"auto"``
            uses :func:`default_min_score` for the scoring model's similarity; None turns the check off.
        generator_error: Why the generator is unavailable (shown to the user).
        index_label: How to name the index in reports.
        hybrid: Default retrieval mode of :meth:`ask`: False dense only, True BM25 + dense fused by
            reciprocal-rank fusion (:mod:`bmrag.qa.fusion`). ``ask(hybrid=...)`` overrides it per question.
        fusion_depth: Hybrid only: hits each retriever contributes to the fusion (default
            ``max(candidates, HYBRID_DEPTH)``, i.e. at least 20); must be >= ``candidates``.
        min_support: Generative answers: a sentence is supported when a passage holds at least this share of
            its content words (:mod:`bmrag.qa.attribution`); unsupported sentences are removed and listed, an
            uncited supported one gets that passage's citation. None turns the check off (the model's own
            citations only).
        answer: ``"extractive"`` (quote 1-4 sentences of the evidence; no generator needed) or ``"generative"``
            (the generator writes, every sentence is checked); see :mod:`bmrag.qa.grounding`.
    """

    def __init__(self, store: BMRagChromaVectorStore, embed_model: BMRetrieverEmbedding,
                 generator: Generator | None, *, reranker: BMRetrieverReranker | None = None, k: int = 5,
                 candidates: int | None = None, min_score: float | Literal["auto"] | None = "auto",
                 generator_error: str | None = None, index_label: str | None = None, hybrid: bool = False,
                 fusion_depth: int | None = None, min_support: float | None = MIN_SUPPORT,
                 answer: AnswerMode = "extractive") -> None:
        from llama_index.core import VectorStoreIndex

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        candidates = candidates or first_stage_candidates(k, reranker is not None)
        if candidates < k:
            raise ValueError(f"candidates ({candidates}) must be >= k ({k})")
        self.answer = check_answer_mode(answer)
        if answer == "generative" and generator is None and generator_error is None:
            raise ValueError("generative answers need a generator, or generator_error saying why there is none")
        if not isinstance(hybrid, bool):
            raise ValueError(f"hybrid must be True or False, got {hybrid!r}")
        if min_support is not None and not 0.0 <= min_support <= 1.0:
            raise ValueError(f"min_support must be between 0 and 1 (or None: no attribution), got {min_support}")
        self.min_support = min_support
        fusion_depth = fusion_depth if fusion_depth is not None else max(candidates, fusion.HYBRID_DEPTH)
        if fusion_depth < candidates:
            raise ValueError(f"fusion_depth ({fusion_depth}) must be >= candidates ({candidates})")
        self.hybrid = hybrid
        self.fusion_depth = fusion_depth
        self.store = store
        self.embed_model = embed_model
        self.generator = generator
        self.generator_error = generator_error
        self.reranker = reranker
        self.k = k
        self.candidates = candidates
        scorer = reranker.encoder if reranker is not None else embed_model.encoder
        self.score_kind = scorer.recipe.similarity
        self.score_model = scorer.source.model
        self.min_score = default_min_score(self.score_kind) if min_score == "auto" else min_score
        self.index_label = index_label or str(store.persist_dir)
        self.abstainer = Abstainer(embed_model.model_name)
        self._index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)

    @classmethod
    def from_index(cls, index_dir: str | os.PathLike[str] | None = None, *, collection: str = DEFAULT_COLLECTION,
                   k: int = 5, candidates: int | None = None, rerank: str | None = None,
                   backend: str | None = "local", llm_model: str | None = None, api_base: str | None = None,
                   min_score: float | Literal["auto"] | None = "auto", max_new_tokens: int | None = None,
                   health_timeout: float | None = None, threads: int | None = None, dtype: str | None = None,
                   generator: Generator | None = None, hybrid: bool = False,
                   fusion_depth: int | None = None, min_support: float | None = MIN_SUPPORT,
                   answer: AnswerMode | None = None, embed_api_base: str | None = None) -> QAChain:
        """Open an index with the model recorded in its manifest and set up the generator.

        Args:
            index_dir: Directory built by ``bmrag index`` (default: the demo index, see
                :func:`bmrag.index.open.default_index_dir`).
            collection: Chroma collection name.
            k: Passages given to the generator.
            candidates: First-stage passages (default :func:`first_stage_candidates`).
            rerank: Model name for a :class:`BMRetrieverReranker`, or None.
            backend: ``"local"``, ``"vllm"``, or None for retrieval only (``ask`` returns the evidence).
            llm_model: Generator model (local: alias/dir; vLLM: served name, default the only one served).
            api_base: vLLM server URL (default :data:`bmrag.models.DEFAULT_API_BASE`).
            min_score: See :class:`QAChain`.
            max_new_tokens: Answer budget.
            health_timeout: Seconds the vLLM health check waits.
            threads: Local backend: torch CPU threads (see :class:`bmrag.llama_index.llm.LocalLLM`).
            dtype: Weights dtype of the in-process models (retriever, reranker, local generator); default the
                hardware's (:func:`bmrag.loading.default_dtype`).
            generator: An already-built generator (then backend/llm_model/api_base must not be given).
            hybrid: Default retrieval mode of :meth:`ask` (see :class:`QAChain`).
            fusion_depth: Hybrid only: hits per retriever fed to the fusion (see :class:`QAChain`).
            min_support: Citation attribution threshold, None for none (see :class:`QAChain`).
            answer: ``"extractive"`` or ``"generative"``; default :func:`bmrag.qa.grounding.default_answer_mode`
                (generative with ``backend="vllm"``, else extractive, which loads no generator).
            embed_api_base: Embed questions on this vLLM pooling server (``bmrag serve-embed``, serving the model
                the index records) instead of loading the retriever in this process.

        A vLLM server that does not answer does not raise: the chain is built without a generator and each
        ``ask`` returns the evidence with status ``generator_unavailable`` and the reason.
        """
        from bmrag import generators
        from bmrag.index.open import open_index

        candidates = candidates or first_stage_candidates(k, bool(rerank))
        error = None
        answer = check_answer_mode(answer or default_answer_mode(backend))
        if generator is None and (backend is None or answer == "extractive"):
            # Extractive answers quote the evidence: no generator is loaded.
            error = ("no generator requested (backend=None: retrieval only)" if backend is None
                     else "extractive answers need no generator")
        elif generator is None:
            try:
                # A vLLM server sets its own dtype; dtype here is for the models running in this process.
                local = {"dtype": dtype} if backend == "local" else {}
                generator = generators.load_generator(backend, model=llm_model, api_base=api_base,
                                                      max_new_tokens=max_new_tokens, health_timeout=health_timeout,
                                                      threads=threads, **local)
            except generators.BackendUnavailable as err:
                error = str(err)
        elif llm_model is not None or api_base is not None:
            raise ValueError("pass either generator= or llm_model/api_base, not both")
        index = open_index(index_dir, collection=collection, dtype=dtype, api_base=embed_api_base)
        try:
            reranker = None
            if rerank:
                from bmrag.llama_index.reranker import BMRetrieverReranker

                # Re-score every candidate: the threshold and k are applied afterwards, on the rerank scores.
                reranker = BMRetrieverReranker(model_name=rerank, top_n=candidates, dtype=dtype)
            return cls(index.store, index.embed_model, generator, reranker=reranker, k=k, candidates=candidates,
                       min_score=min_score, generator_error=error, hybrid=hybrid, fusion_depth=fusion_depth,
                       min_support=min_support, index_label=index.label, answer=answer)
        except BaseException:
            index.close()
            raise

    @property
    def retrieve_depth(self) -> int:
        """Dense hits retrieved: ``candidates``, or more when the abstention signals were calibrated deeper."""
        return max(self.candidates, self.abstainer.depth)

    def describe_setup(self) -> str:
        """One line naming the retriever, the answer mode and the generator (printed when a command starts)."""
        if self.answer == "extractive":
            mode = "answer mode extractive (sentences quoted from the sources; no generator)"
        elif self.generator is not None:
            gen = self.generator.describe()
            dtype = f", {gen['dtype']}" if gen.get("dtype") else ""
            mode = (f"answer mode generative ({gen['backend']} generator {gen['model']}{dtype}; each sentence "
                    "checked against the sources)")
        else:
            mode = f"answer mode generative, generator unavailable ({self.generator_error})"
        abstain = ("calibrated abstention" if self.abstainer.model is not None
                   else "no calibrated abstention for this retriever")
        return f"retriever {self.embed_model.model_name} (recorded in the index); {mode}; {abstain}"

    def close(self) -> None:
        """Release the Chroma client."""
        self.store.close()

    def threshold_note(self, hybrid: bool = False) -> str:
        """How weak evidence is decided, for reports."""
        stage = "rerank" if self.reranker is not None else "first-stage"
        if self.min_score is None:
            return (f"off: no calibrated threshold for {self.score_kind} scores of {self.score_model}; "
                    "pass min_score (--min-score) to refuse weak evidence")
        note = f"{stage} {self.score_kind} score >= {self.min_score:g} ({self.score_model})"
        if hybrid and self.reranker is None:
            # RRF scores (<= 2/61) are never compared with a cosine threshold.
            note += "; hybrid: each passage's dense score, not its RRF score"
        return note

    def _hybrid_flag(self, hybrid: bool | None) -> bool:
        if hybrid is None:
            return self.hybrid
        if not isinstance(hybrid, bool):
            raise ValueError(f"hybrid must be True, False or None (the chain's default), got {hybrid!r}")
        return hybrid

    def retrieve(self, question: str, filters: MetadataFilters | None = None, *,
                 hybrid: bool | None = None) -> list[NodeWithScore]:
        """First-stage ``candidates`` for ``question`` with the filters applied to every retriever.

        Args:
            question: The question.
            filters: Metadata filters (see :func:`build_filters`).
            hybrid: False: dense top-``candidates`` from the vector store. True: BM25 and dense hits (each
                ``fusion_depth`` deep) fused by reciprocal-rank fusion, the top ``candidates``
                kept, each scored by its dense score (see :mod:`bmrag.qa.fusion`). None: the chain's default.
        """
        return self._retrieve(question, filters, self._hybrid_flag(hybrid), self.candidates)[0]

    def _retrieve(self, question: str, filters: MetadataFilters | None, hybrid: bool,
                  depth: int) -> tuple[list[NodeWithScore], dict[str, Any]]:
        if not hybrid:
            retriever = self._index.as_retriever(similarity_top_k=depth, filters=filters)
            return retriever.retrieve(question), {"mode": fusion.DENSE_LABEL}
        return fusion.hybrid_retrieve(self._index, self.store, self.embed_model, question, filters,
                                      depth=self.fusion_depth, top_n=min(depth, self.fusion_depth))

    def ask(self, question: str, *, year_min: int | None = None, year_max: int | None = None,
            pub_types: Sequence[str] | None = None, hybrid: bool | None = None,
            on_evidence: Callable[[list[Evidence], list[Evidence]], None] | None = None) -> AskResult:
        """Answer ``question`` from the index with checked citations (see the module docstring).

        Args:
            question: The question.
            year_min: Only passages with metadata ``year >= year_min``.
            year_max: Only passages with metadata ``year <= year_max``.
            pub_types: Only passages whose ``pub_type`` is one of these.
            hybrid: BM25 + dense retrieval fused by RRF (True), dense only (False), or the chain's default
                (None). The filters apply to both retrievers; ``result.retrieval["mode"]`` says which ran.
            on_evidence: Called with the passages given and held back as soon as retrieval (and rerank) has
                chosen them, before any answer is generated: the app shows the evidence while the answer is written.

        Raises:
            ValueError: Empty question or invalid filters.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty")
        hybrid = self._hybrid_flag(hybrid)
        filters = build_filters(year_min, year_max, pub_types)
        start = time.perf_counter()
        result = AskResult(question=question, status="answered", answer_mode=self.answer, retrieval={
            "model": self.embed_model.model_name, "index": self.index_label, "k": self.k,
            "candidates": self.candidates, "filters": describe_filters(filters), "score_kind": self.score_kind,
            "min_score": self.min_score, "threshold_note": self.threshold_note(hybrid)})
        if self.reranker is not None:
            result.reranker = {"model": self.reranker.model_name, "top_n": self.reranker.top_n}
        if self.generator is not None:
            result.generator = self.generator.describe()
        elif self.answer == "generative":
            result.notes.append(f"generation skipped: {self.generator_error}")

        # Deeper than ``candidates`` when the abstention signals were calibrated on more passages.
        nodes, info = self._retrieve(question, filters, hybrid, self.retrieve_depth)
        result.retrieval.update(info)
        result.timings["retrieval"] = time.perf_counter() - start
        t = time.perf_counter()
        if self.reranker is not None and nodes:
            nodes = self.reranker.postprocess_nodes(nodes, query_str=question)
        result.timings["rerank"] = time.perf_counter() - t
        given, held = select_evidence(evidence_from_nodes(nodes), self.min_score, self.k)
        # Too weak to answer from, the nearest passages are still what the user should see.
        shown, rest = (given, held) if given else nearest(held, self.k)
        result.evidence, result.held_back = shown, rest
        if on_evidence is not None:
            on_evidence(list(shown), list(rest))

        if not nodes:
            result.status = "no_passages"
            result.notes.append(explain_no_match(self.store.client, filters) if filters is not None
                                else "the index returned no passage (is it empty?)")
        else:
            self._answer(question, nodes, given, shown, result, hybrid)
        if result.sources:
            cited = {src["number"] for src in result.sources}
            result.unmentioned = unmentioned_terms(question, [f"{e.title} {e.text}" for e in shown
                                                              if e.number in cited])
            if result.unmentioned:
                result.notes.append(f"the answer's sources do not mention: {', '.join(result.unmentioned)} "
                                    "(the answer may not address that part of the question)")
        result.timings.setdefault("generation", 0.0)
        result.timings["total"] = time.perf_counter() - start
        return result

    def _answer(self, question: str, nodes: list[NodeWithScore], given: list[Evidence], shown: list[Evidence],
                result: AskResult, hybrid: bool) -> None:
        """Abstain, quote, or generate and check: fills ``result`` (see :mod:`bmrag.qa.grounding`)."""
        t = time.perf_counter()
        quotes = extractive_answer(question, shown, self.embed_model)
        result.quotes = quotes.to_dict()
        decision = self.abstainer.decide(question, nodes, quotes)
        result.abstention = decision.to_dict() if decision else {"calibrated": False, "note": self.abstainer.note}
        result.timings["extractive"] = time.perf_counter() - t
        reason = None
        if not given:
            best = max(item.score for item in shown)
            reason = (f"the best passage scores {best:.3f}, below the evidence threshold {self.min_score:g} "
                      f"({self.threshold_note(hybrid)})")
        elif decision is not None and decision.abstain:
            reason = (f"calibrated abstention: p(unanswerable) {decision.p_unanswerable:.2f} >= "
                      f"{decision.threshold:.2f} for {decision.retriever}")
        elif not quotes.sentences:
            reason = "no passage has a sentence that could be quoted as an answer"
        if reason is not None:
            result.status, result.answer = "abstained", ABSTAIN_MESSAGE
            result.notes.append(f"abstained: {reason}; the nearest passages are shown")
            return
        if self.answer == "extractive":
            result.answer, result.sources = quotes.text, quoted_sources(quotes, shown)
            return
        if self.generator is None:
            result.status = "generator_unavailable"
            return
        t = time.perf_counter()
        texts = fit_texts(question, given, self.generator)
        generation = self.generator.generate(build_messages(question, given, texts))
        result.timings["generation"] = time.perf_counter() - t
        raw = generation.text
        result.raw_answer, result.answer_tokens = raw, generation.completion_tokens
        text, repeats = drop_repeated_sentences(raw)
        if repeats:
            result.notes.append(f"removed {repeats} sentence(s) the generator repeated word for word")
        text, cut = drop_unfinished(text, generation.finish_reason)
        if cut:
            result.notes.append(f"dropped the last sentence, cut off at the generation budget "
                                f"({self.generator.max_new_tokens} tokens): {cut!r}")
        check = citations.validate_citations(text, len(given))
        result.invalid_citations = [asdict(c) for c in check.invalid]
        written = list(check.cited)
        if declined(raw):
            result.status, result.answer = "abstained", ABSTAIN_MESSAGE
            result.notes.append("abstained: the generator said the sources do not answer the question")
            return
        if self.min_support is None:  # asked for: the model's own citations, sentences not checked
            result.answer, result.sources = check.text, cited_sources(check, given, written)
            result.notes.append("sentences were not checked against the sources (attribution is off)")
            return
        checked = supported_sentences(check, given, texts, self.min_support)
        result.attribution, result.unsupported = checked.attribution.to_dict(), checked.unsupported
        result.notes += checked.notes
        if not checked.check.text.strip():
            result.answer_mode = "extractive (fallback)"
            result.answer, result.sources = quotes.text, quoted_sources(quotes, shown)
            result.notes.append("none of the generated sentences is supported by the sources: the answer shown is "
                                "quoted from them instead")
            return
        result.answer, result.sources = checked.check.text, cited_sources(checked.check, given, written)
        if checked.unsupported:
            result.status = "partially_supported"


def ask(question: str, index_dir: str | os.PathLike[str], **options: Any) -> AskResult:
    """One-shot helper: ``QAChain.from_index(index_dir, **chain_options).ask(question, **filters)``.

    ``options`` may hold :meth:`QAChain.from_index` arguments and the filters ``year_min``, ``year_max``,
    ``pub_types``.
    """
    filters = {key: options.pop(key) for key in ("year_min", "year_max", "pub_types") if key in options}
    chain = QAChain.from_index(index_dir, **options)
    try:
        return chain.ask(question, **filters)
    finally:
        chain.close()
