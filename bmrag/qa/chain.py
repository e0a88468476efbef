"""The biomedical QA chain: retrieve -> (rerank) -> numbered evidence -> generate -> checked citations.

``QAChain.from_index(dir).ask(question)`` embeds the question with the model recorded in the index
manifest, takes the dense top-k from Chroma through LlamaIndex (metadata filters applied inside the
vector-store query) or, with ``hybrid=True``, the reciprocal-rank fusion of BM25 and dense hits (same filters,
see :mod:`bmrag.qa.fusion`), optionally re-scores with a :class:`~bmrag.llama_index.reranker.BMRetrieverReranker`,
and then:

1. **Weak evidence**: passages scoring below ``min_score`` are not given to the generator; when none is
   left the chain answers that it cannot answer from the sources, without calling the generator
   (see :func:`default_min_score` for the documented thresholds).
2. **Prompt**: the remaining passages are numbered ``[1]..[k]`` (:func:`build_messages`), trimmed to fit
   the generator's context window.
3. **Citations**: every ``[n]`` in the answer is checked against the evidence actually given
   (:func:`bmrag.qa.citations.validate_citations`); invented or out-of-range ones are removed and reported.
   Cited passages are mapped to their document ids and links (PubMed for PMIDs).
4. **Attribution** (``min_support``, on by default): sentences the model left uncited get the passage that
   holds at least half of their content words, marked as added by bmrag; sentences no passage supports are
   reported (:func:`attribute_answer`, :mod:`bmrag.qa.attribution`).

:class:`AskResult` records what ran (retriever, reranker, generator backend and model), the timings of
each stage and every note (server down, a filter that matched nothing, removed citations).
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
from bmrag.qa.answer import attribute_answer, cited_sources, declined, drop_repeated_sentences
from bmrag.qa.attribution import MIN_SUPPORT
from bmrag.qa.evidence import Evidence, default_min_score, evidence_from_nodes, select_evidence
from bmrag.qa.filters import build_filters, describe_filters, explain_no_match
from bmrag.qa.prompt import CANNOT_ANSWER, build_messages, fit_texts
from bmrag.qa.result import AskResult

if TYPE_CHECKING:
    from bmrag.generators import Generator
    from bmrag.llama_index.embedding import BMRetrieverEmbedding
    from bmrag.llama_index.reranker import BMRetrieverReranker
    from bmrag.llama_index.vector_store import BMRagChromaVectorStore

logger = logging.getLogger(__name__)

RERANK_POOL = 20
"""Least first-stage candidates a reranker re-scores (more when ``4 * k`` is larger)."""


def first_stage_candidates(k: int, reranking: bool) -> int:
    """First-stage passages retrieved for ``k`` evidence passages: ``k``, or ``max(4k, 20)`` with a reranker."""
    return max(4 * k, RERANK_POOL) if reranking else k


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
        min_support: Citation attribution (:mod:`bmrag.qa.attribution`): an answer sentence without a citation
            gets ``[n]`` of the passage holding at least this share of its content words; sentences no passage
            reaches are reported. None turns attribution off (only the model's own citations count).
    """

    def __init__(self, store: BMRagChromaVectorStore, embed_model: BMRetrieverEmbedding,
                 generator: Generator | None, *, reranker: BMRetrieverReranker | None = None, k: int = 5,
                 candidates: int | None = None, min_score: float | Literal["auto"] | None = "auto",
                 generator_error: str | None = None, index_label: str | None = None, hybrid: bool = False,
                 fusion_depth: int | None = None, min_support: float | None = MIN_SUPPORT) -> None:
        from llama_index.core import VectorStoreIndex

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        candidates = candidates or first_stage_candidates(k, reranker is not None)
        if candidates < k:
            raise ValueError(f"candidates ({candidates}) must be >= k ({k})")
        if generator is None and generator_error is None:
            raise ValueError("pass a generator, or generator_error saying why there is none")
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
        self._index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)

    @classmethod
    def from_index(cls, index_dir: str | os.PathLike[str] | None = None, *, collection: str = DEFAULT_COLLECTION,
                   k: int = 5, candidates: int | None = None, rerank: str | None = None,
                   backend: str | None = "local", llm_model: str | None = None, api_base: str | None = None,
                   min_score: float | Literal["auto"] | None = "auto", max_new_tokens: int | None = None,
                   health_timeout: float | None = None, threads: int | None = None, dtype: str | None = None,
                   generator: Generator | None = None, hybrid: bool = False,
                   fusion_depth: int | None = None, min_support: float | None = MIN_SUPPORT) -> QAChain:
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

        A vLLM server that does not answer does not raise: the chain is built without a generator and each
        ``ask`` returns the evidence with status ``generator_unavailable`` and the reason.
        """
        from bmrag import generators
        from bmrag.index.open import open_index

        candidates = candidates or first_stage_candidates(k, bool(rerank))
        error = None
        if generator is None and backend is None:
            error = "no generator requested (backend=None: retrieval only)"
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
        index = open_index(index_dir, collection=collection, dtype=dtype)
        try:
            reranker = None
            if rerank:
                from bmrag.llama_index.reranker import BMRetrieverReranker

                # Re-score every candidate: the threshold and k are applied afterwards, on the rerank scores.
                reranker = BMRetrieverReranker(model_name=rerank, top_n=candidates, dtype=dtype)
            return cls(index.store, index.embed_model, generator, reranker=reranker, k=k, candidates=candidates,
                       min_score=min_score, generator_error=error, hybrid=hybrid, fusion_depth=fusion_depth,
                       min_support=min_support, index_label=index.label)
        except BaseException:
            index.close()
            raise

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
        return self._retrieve(question, filters, self._hybrid_flag(hybrid))[0]

    def _retrieve(self, question: str, filters: MetadataFilters | None,
                  hybrid: bool) -> tuple[list[NodeWithScore], dict[str, Any]]:
        if not hybrid:
            retriever = self._index.as_retriever(similarity_top_k=self.candidates, filters=filters)
            return retriever.retrieve(question), {"mode": fusion.DENSE_LABEL}
        from llama_index.core.schema import QueryBundle

        depth = self.fusion_depth
        # Embed once: the dense query and the dense scores of BM25-only hits use the same vector.
        embedding = self.embed_model.get_query_embedding(question)
        dense = self._index.as_retriever(similarity_top_k=depth, filters=filters).retrieve(
            QueryBundle(query_str=question, embedding=embedding))
        collection = self.store.client
        bm25, built = fusion.bm25_for_collection(collection)
        allowed = fusion.allowed_ids(collection, fusion.chroma_where(filters))
        hits = bm25.search(question, depth, allowed)
        nodes = fusion.fuse(dense, hits, collection=collection, query_embedding=embedding,
                            space=str(self.store.manifest["space"]), top_n=self.candidates)
        info = {"mode": fusion.HYBRID_LABEL, "fusion_depth": depth, "dense_hits": len(dense), "bm25_hits": len(hits),
                "bm25_only": sum(1 for n in nodes if n.node.metadata.get(fusion.DENSE_RANK) is None),
                "bm25_index": {**bm25.description, "built_now": built,
                               "build_seconds": round(bm25.build_seconds, 3)}}
        return nodes, info

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
        result = AskResult(question=question, status="answered", retrieval={
            "model": self.embed_model.model_name, "index": self.index_label, "k": self.k,
            "candidates": self.candidates, "filters": describe_filters(filters), "score_kind": self.score_kind,
            "min_score": self.min_score, "threshold_note": self.threshold_note(hybrid)})
        if self.reranker is not None:
            result.reranker = {"model": self.reranker.model_name, "top_n": self.reranker.top_n}
        if self.generator is not None:
            result.generator = self.generator.describe()
        else:
            result.notes.append(f"generation skipped: {self.generator_error}")

        nodes, info = self._retrieve(question, filters, hybrid)
        result.retrieval.update(info)
        result.timings["retrieval"] = time.perf_counter() - start
        t = time.perf_counter()
        if self.reranker is not None and nodes:
            nodes = self.reranker.postprocess_nodes(nodes, query_str=question)
        result.timings["rerank"] = time.perf_counter() - t
        given, held = select_evidence(evidence_from_nodes(nodes), self.min_score, self.k)
        result.evidence, result.held_back = given, held
        if on_evidence is not None:
            on_evidence(list(given), list(held))

        if not nodes:
            result.status = "no_passages"
            result.notes.append(explain_no_match(self.store.client, filters) if filters is not None
                                else "the index returned no passage (is it empty?)")
        elif not given:
            # Decided before looking at the generator: weak evidence is refused even when the server is down.
            best = max(item.score for item in held)
            result.status = "insufficient_evidence"
            result.answer = CANNOT_ANSWER
            result.notes.append(f"weak evidence: the best passage scores {best:.3f}, below the threshold "
                                f"{self.min_score:g} ({self.threshold_note(hybrid)}); the generator was not called")
        elif self.generator is None:
            result.status = "generator_unavailable"
        else:
            t = time.perf_counter()
            texts = fit_texts(question, given, self.generator)
            messages = build_messages(question, given, texts)
            generation = self.generator.generate(messages)
            result.timings["generation"] = time.perf_counter() - t
            raw = generation.text
            result.answer_tokens = generation.completion_tokens
            text, repeats = drop_repeated_sentences(raw)
            if repeats:
                result.notes.append(f"removed {repeats} sentence(s) the generator repeated word for word")
            if generation.finish_reason == "length":
                result.notes.append(f"the answer hit the generation budget ({self.generator.max_new_tokens} "
                                    "tokens) and may end mid-sentence")
            check = citations.validate_citations(text, len(given))
            result.invalid_citations = [asdict(c) for c in check.invalid]
            written = list(check.cited)
            if declined(raw):
                result.status = "model_declined"
            elif self.min_support is not None:
                check, attribution, notes = attribute_answer(check, given, texts, self.min_support)
                result.attribution = attribution.to_dict()
                result.notes += notes
            result.raw_answer, result.answer = raw, check.text
            result.sources = cited_sources(check, given, written)
            if result.status != "model_declined" and not check.cited:
                result.notes.append("the answer cites none of the evidence passages: check it against them")
        result.timings.setdefault("generation", 0.0)
        result.timings["total"] = time.perf_counter() - start
        return result


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
