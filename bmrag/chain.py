"""The biomedical QA chain: retrieve -> (rerank) -> numbered evidence -> generate -> checked citations.

``QAChain.from_index(dir).ask(question)`` embeds the question with the model recorded in the index
manifest, takes the dense top-k from Chroma through LlamaIndex (metadata filters applied inside the
vector-store query) or, with ``hybrid=True``, the reciprocal-rank fusion of BM25 and dense hits (same filters,
see :mod:`bmrag.hybrid`), optionally re-scores with a :class:`~bmrag.llama_index.reranker.BMRetrieverReranker`,
and then:

1. **Weak evidence**: passages scoring below ``min_score`` are not given to the generator; when none is
   left the chain answers that it cannot answer from the sources, without calling the generator
   (see :func:`default_min_score` for the documented thresholds).
2. **Prompt**: the remaining passages are numbered ``[1]..[k]`` (:func:`build_messages`), trimmed to fit
   the generator's context window.
3. **Citations**: every ``[n]`` in the answer is checked against the evidence actually given
   (:func:`bmrag.citations.validate_citations`); invented or out-of-range ones are removed and reported.
   Cited passages are mapped to their document ids and links (PubMed for PMIDs).
4. **Attribution** (``min_support``, on by default): sentences the model left uncited get the passage that
   holds at least half of their content words, marked as added by bmrag; sentences no passage supports are
   reported (:func:`attribute_answer`, :mod:`bmrag.attribution`).

:class:`AskResult` records what ran (retriever, reranker, generator backend and model), the timings of
each stage and every note (server down, a filter that matched nothing, removed citations).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.schema import MetadataMode, NodeWithScore
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from bmrag import citations
from bmrag.attribution import MIN_SUPPORT, Attribution, attribute, split_sentences

if TYPE_CHECKING:
    from bmrag.generate import Generator
    from bmrag.llama_index.embedding import BMRetrieverEmbedding
    from bmrag.llama_index.reranker import BMRetrieverReranker
    from bmrag.store import BMRagChromaVectorStore

logger = logging.getLogger(__name__)

Status = Literal["answered", "insufficient_evidence", "model_declined", "no_passages", "generator_unavailable"]

EXIT_CODES: dict[str, int] = {
    "answered": 0,
    "insufficient_evidence": 0,
    "model_declined": 0,
    "no_passages": 4,
    "generator_unavailable": 3,
}
"""``bmrag ask`` exit status per outcome: 0 the chain ran (answer or a justified refusal), 3 the generator
is unavailable (the evidence is still printed), 4 nothing was retrieved (empty index or filters that
match nothing); 2 is a usage or input error."""

YEAR_FIELD = "year"
PUB_TYPE_FIELD = "pub_type"
"""Metadata fields the filters use: ``year`` (int) and ``pub_type`` (one lower-case string per document,
e.g. ``"rct"``, ``"review"``, ``"meta-analysis"``). They exist only when the indexed corpus has them."""

CANNOT_ANSWER = "I cannot answer this question from the given sources."
"""What the chain says (and asks the model to say) when the evidence does not answer the question."""

COSINE_MIN_SCORE = 0.35
"""Weak-evidence threshold for cosine scores (normalised models such as all-MiniLM-L6-v2). Measured on the
bundled demo corpus with all-MiniLM-L6-v2 (``evals/bench_ask.py``): the PubMedQA questions of its 60 first
PubMedQA passages reach a top-1 cosine of 0.31-0.90 (median 0.73; 1 of 60 below 0.35), 12 off-topic
questions at most 0.28. Medical questions the corpus does not answer still score 0.35-0.55: the threshold
stops off-topic questions, not near misses (see docs/qa-chain.md)."""

SYSTEM_PROMPT = (
    "You are a biomedical assistant. Answer the question in at most three sentences, using only the numbered "
    "sources. Cite the source number in square brackets after each claim, for example [2]. "
    f"If the sources do not contain the answer, reply: {CANNOT_ANSWER}"
)

# One worked example teaches a 135M model the citation format far better than instructions alone; the
# answer is in source [2] so the model does not learn to always cite [1].
_EXAMPLE = (
    "Sources:\n[1] The liver stores glucose as glycogen.\n[2] Insulin is produced by the beta cells of the "
    "pancreatic islets.\n\nQuestion: Which cells produce insulin?",
    "Insulin is produced by the beta cells of the pancreas [2].",
)


def default_min_score(similarity: str) -> float | None:
    """The documented weak-evidence threshold for a score kind.

    Args:
        similarity: ``"cosine"`` or ``"dot"`` (``Recipe.similarity`` of the model whose score is checked).

    Returns:
        :data:`COSINE_MIN_SCORE` for cosine. None for dot products: BMRetriever's unnormalised dot products
        have a per-checkpoint scale and no threshold has been calibrated offline, so the check is off unless
        ``min_score`` is given (the result says so).
    """
    if similarity == "cosine":
        return COSINE_MIN_SCORE
    if similarity == "dot":
        return None
    raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")


@dataclass
class Evidence:
    """One retrieved passage, numbered as it appears in the prompt (``number`` is 0 when not given).

    Attributes:
        number: ``n`` of ``[n]`` in the prompt; 0 for passages held back (below the threshold).
        node_id: Index node id (``"{doc_id}#{chunk}"``).
        doc_id: Document id in the corpus.
        title: Document title (may be empty).
        text: Passage text as stored (the prompt may show a trimmed copy).
        score: Score that ranked it: the rerank score when reranked, else the first-stage score.
        first_stage_score: Dense retrieval score (equal to ``score`` without a reranker).
        url: Link to the source (PubMed for PMIDs, or ``metadata["url"]``), when known.
        pmid: PubMed id when known.
        year: Publication year when the index has it.
        rrf_score: Hybrid retrieval only: the passage's reciprocal-rank-fusion score (orders, never thresholds).
        dense_rank: Hybrid retrieval only: 1-based rank on the dense side (None: dense missed it).
        bm25_rank: Hybrid retrieval only: 1-based rank on the BM25 side (None: BM25 missed it).
    """

    number: int
    node_id: str
    doc_id: str
    title: str
    text: str
    score: float
    first_stage_score: float
    url: str | None = None
    pmid: str | None = None
    year: int | None = None
    rrf_score: float | None = None
    dense_rank: int | None = None
    bm25_rank: int | None = None

    def label(self) -> str:
        """``PMID 123`` when known, else the document id."""
        return f"PMID {self.pmid}" if self.pmid else self.doc_id


def evidence_from_nodes(nodes: Sequence[NodeWithScore]) -> list[Evidence]:
    """Turn retrieved nodes into :class:`Evidence` (unnumbered) keeping their order and scores."""
    from bmrag.hybrid import BM25_RANK, DENSE_RANK, RRF_SCORE
    from bmrag.llama_index.reranker import FIRST_STAGE_SCORE

    out = []
    for hit in nodes:
        meta = dict(hit.node.metadata)
        doc_id = str(meta.get("doc_id") or hit.node.ref_doc_id or hit.node.node_id)
        score = float(hit.score) if hit.score is not None else float("nan")
        first = meta.get(FIRST_STAGE_SCORE)
        year = meta.get(YEAR_FIELD)
        out.append(Evidence(
            number=0, node_id=hit.node.node_id, doc_id=doc_id, title=str(meta.get("title") or ""),
            text=hit.node.get_content(metadata_mode=MetadataMode.NONE), score=score,
            first_stage_score=float(first) if first is not None else score,
            url=citations.source_url(doc_id, meta), pmid=citations.pmid_of(doc_id, meta),
            year=int(year) if isinstance(year, (int, float)) and not isinstance(year, bool) else None,
            rrf_score=meta.get(RRF_SCORE), dense_rank=meta.get(DENSE_RANK), bm25_rank=meta.get(BM25_RANK),
        ))
    return out


def select_evidence(evidence: Sequence[Evidence], min_score: float | None,
                    k: int) -> tuple[list[Evidence], list[Evidence]]:
    """Split ranked passages into those given to the generator (numbered 1..) and those held back.

    A passage is held back when its score is below ``min_score`` (None: no threshold) or it is beyond the
    first ``k``.
    """
    given: list[Evidence] = []
    held: list[Evidence] = []
    for item in evidence:
        if len(given) < k and (min_score is None or item.score >= min_score):
            given.append(item)
            item.number = len(given)
        else:
            item.number = 0
            held.append(item)
    return given, held


def _passage(item: Evidence, text: str) -> str:
    body = " ".join(text.split())
    title = " ".join(item.title.split())
    return f"[{item.number}] {title}. {body}" if title and not body.startswith(title) else f"[{item.number}] {body}"


def build_messages(question: str, evidence: Sequence[Evidence],
                   texts: Sequence[str] | None = None) -> list[ChatMessage]:
    """The chat prompt: system rules, one worked example, then the numbered sources and the question.

    Args:
        question: The user's question.
        evidence: Passages numbered ``1..k`` (see :func:`select_evidence`).
        texts: Optional trimmed passage texts (same order); defaults to each passage's full text.
    """
    if not question.strip():
        raise ValueError("the question is empty")
    if texts is None:
        texts = [item.text for item in evidence]
    if len(texts) != len(evidence):
        raise ValueError(f"got {len(texts)} texts for {len(evidence)} evidence passages")
    for expected, item in enumerate(evidence, start=1):
        if item.number != expected:
            raise ValueError(f"evidence must be numbered 1..k in order; passage {item.node_id} has number "
                             f"{item.number}, expected {expected}")
    sources = "\n".join(_passage(item, text) for item, text in zip(evidence, texts))
    return [
        ChatMessage(role=MessageRole.SYSTEM, content=SYSTEM_PROMPT),
        ChatMessage(role=MessageRole.USER, content=_EXAMPLE[0]),
        ChatMessage(role=MessageRole.ASSISTANT, content=_EXAMPLE[1]),
        ChatMessage(role=MessageRole.USER, content=f"Sources:\n{sources}\n\nQuestion: {' '.join(question.split())}"),
    ]


def fit_texts(question: str, evidence: Sequence[Evidence], generator: Generator) -> list[str]:
    """Trim passages (tail first, evenly) so prompt + answer fit the generator's context window."""
    if not evidence:
        return []
    overhead = sum(generator.count_tokens(m.content or "") + 8 for m in build_messages(question, [], []))
    budget = generator.context_window - generator.max_new_tokens - overhead - 16 * len(evidence)
    per_passage = max(budget // len(evidence), 32)
    texts = []
    for item in evidence:
        text = " ".join(item.text.split())
        if generator.count_tokens(text) > per_passage:
            text = generator.truncate(text, per_passage) + " ..."
        texts.append(text)
    return texts


def build_filters(year_min: int | None = None, year_max: int | None = None,
                  pub_types: Sequence[str] | None = None) -> MetadataFilters | None:
    """LlamaIndex metadata filters for a year range and publication types (None when no filter is asked).

    ``year`` bounds are inclusive; ``pub_types`` match the ``pub_type`` field exactly (any of them).

    Raises:
        ValueError: ``year_min > year_max``, a non-integer year, or an empty publication type.
    """
    filters: list[MetadataFilter] = []
    for name, value in (("year_min", year_min), ("year_max", year_max)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an integer year, got {value!r}")
    if year_min is not None and year_max is not None and year_min > year_max:
        raise ValueError(f"year_min ({year_min}) is after year_max ({year_max})")
    if year_min is not None:
        filters.append(MetadataFilter(key=YEAR_FIELD, operator=FilterOperator.GTE, value=year_min))
    if year_max is not None:
        filters.append(MetadataFilter(key=YEAR_FIELD, operator=FilterOperator.LTE, value=year_max))
    if pub_types:
        if isinstance(pub_types, str):
            raise ValueError("pub_types must be a list of strings, not one string")
        cleaned = [t.strip() for t in pub_types]
        if not all(cleaned):
            raise ValueError(f"publication types must be non-empty strings, got {list(pub_types)!r}")
        filters.append(MetadataFilter(key=PUB_TYPE_FIELD, operator=FilterOperator.IN, value=cleaned))
    return MetadataFilters(filters=filters, condition=FilterCondition.AND) if filters else None


def describe_filters(filters: MetadataFilters | None) -> str:
    """``year >= 2010 and pub_type in ['rct']`` (``"none"`` without filters)."""
    if filters is None or not filters.filters:
        return "none"
    return " and ".join(f"{f.key} {f.operator.value} {f.value!r}" for f in filters.filters
                        if isinstance(f, MetadataFilter))


SCAN_LIMIT = 20000
"""Passages inspected when explaining why a filter matched nothing."""


def explain_no_match(collection: Any, filters: MetadataFilters) -> str:
    """Say why a filtered query returned nothing: the field is absent from the index, or no value matches.

    Args:
        collection: The Chroma collection (``store.client``).
        filters: The filters that matched nothing.
    """
    keys = sorted({f.key for f in filters.filters if isinstance(f, MetadataFilter)})
    rows = collection.get(include=["metadatas"], limit=SCAN_LIMIT)["metadatas"] or []
    parts = []
    for key in keys:
        values = [m[key] for m in rows if m and key in m and m[key] != ""]
        if not values:
            parts.append(f"the index has no '{key}' metadata (none of its {len(rows)} passages), so this filter "
                         f"cannot match; index a corpus whose documents carry '{key}'")
            continue
        if key == YEAR_FIELD and all(isinstance(v, (int, float)) for v in values):
            spread = f"years {int(min(values))}-{int(max(values))}"
        else:
            distinct = sorted({str(v) for v in values})
            spread = "values " + ", ".join(distinct[:10]) + (" ..." if len(distinct) > 10 else "")
        parts.append(f"'{key}' is set on {len(values)} of {len(rows)} passages ({spread}), none matching")
    return f"no passage matched the filters ({describe_filters(filters)}): " + "; ".join(parts)


@dataclass
class AskResult:
    """Everything ``ask`` did, for people (:meth:`format`) and programs (:meth:`to_dict`).

    Attributes:
        question: The question asked.
        status: ``answered``, ``insufficient_evidence`` (no passage reached ``min_score``; the generator
            was not called), ``model_declined`` (the generator said the sources do not answer),
            ``no_passages`` (empty index or filters matching nothing) or ``generator_unavailable``.
        answer: The answer after citation checking (or the refusal sentence); None when not generated.
        raw_answer: The generator's text before citation checking.
        sources: Cited passages, in order of first citation: number, doc id, PMID, URL, title.
        invalid_citations: Removed citations (marker, number, reason).
        evidence: Passages given to the generator, numbered as in the prompt.
        held_back: Retrieved passages not given (below the threshold or beyond k).
        retrieval: Retriever model, ``mode`` (``"dense"`` or ``"hybrid (BM25 + dense, RRF k=60)"``), index, k,
            filters, threshold (and, for hybrid, the BM25 index and fusion depth).
        reranker: Reranker model and top_n, or None.
        generator: Backend, model, endpoint, decoding; None when unavailable.
        timings: Seconds for ``retrieval``, ``rerank``, ``generation`` and ``total``.
        answer_tokens: Tokens the generator produced, when the backend reports them.
        attribution: Per-sentence support of the answer by the evidence (:mod:`bmrag.attribution`): which
            passage contains most of each sentence's words, which citations bmrag added, which sentences no
            passage supports; None when attribution is off or nothing was generated.
        notes: Human-readable notes (server down, filters matched nothing, uncited answer, ...).
    """

    question: str
    status: Status
    answer: str | None = None
    raw_answer: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    invalid_citations: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    held_back: list[Evidence] = field(default_factory=list)
    retrieval: dict[str, Any] = field(default_factory=dict)
    reranker: dict[str, Any] | None = None
    generator: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    answer_tokens: int | None = None
    attribution: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The ``bmrag ask`` exit status for this outcome (see :data:`EXIT_CODES`)."""
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def format(self, *, chars: int = 300) -> str:
        """A terminal report: answer, sources, removed citations, evidence, what ran and timings."""
        lines = [f"Question: {self.question}"]
        gen = self.generator
        who = f"{gen['backend']} backend, {gen['model']}, greedy" if gen else "no generator"
        if self.answer is not None:
            lines += [f"\nAnswer ({who}):", f"  {self.answer}"]
        if self.sources:
            lines.append("\nSources:")
            for src in self.sources:
                link = f"  {src['url']}" if src.get("url") else ""
                added = "  (citation added by word-overlap attribution)" if src.get("attributed") else ""
                lines.append(f"  [{src['number']}] {src['label']}{link}{added}")
        if self.invalid_citations:
            removed = ", ".join(f"{c['marker']} ({c['reason']})" for c in self.invalid_citations)
            lines.append(f"\nRemoved citations (not among the evidence given): {removed}")
        for note in self.notes:
            lines.append(f"\nNote: {note}")
        if self.evidence:
            given = ("Evidence given to the generator" if self.generator
                     else "Retrieved evidence (no generator ran)")
            lines.append(f"\n{given} ({len(self.evidence)} passages, score = "
                         f"{self.retrieval.get('score_kind', 'score')}):")
            lines += [_format_evidence(item, chars) for item in self.evidence]
        if self.held_back:
            title = "Retrieved passages not given to the generator"
            threshold = self.retrieval.get("min_score")
            reason = f" (score below {threshold:g} or beyond k)" if threshold is not None else " (beyond k)"
            lines.append(f"\n{title}{reason}:")
            lines += [_format_evidence(item, chars) for item in self.held_back]
        lines.append("")
        lines.append(f"Retriever: {self.retrieval.get('model')}, {self.retrieval.get('mode', 'dense')} retrieval "
                     f"(index {self.retrieval.get('index')}, k={self.retrieval.get('k')}, "
                     f"filters: {self.retrieval.get('filters')})")
        if self.reranker:
            lines.append(f"Reranker: {self.reranker['model']} (top {self.reranker['top_n']} of "
                         f"{self.retrieval.get('candidates')})")
        lines.append(f"Evidence threshold: {self.retrieval.get('threshold_note')}")
        if gen:
            lines.append(f"Generator: {gen['backend']} backend, model {gen['model']} at {gen['endpoint']}")
        t = self.timings
        lines.append("Timings: " + ", ".join(f"{k} {t[k]:.2f} s" for k in ("retrieval", "rerank", "generation",
                                                                           "total") if k in t))
        return "\n".join(lines)


def _format_evidence(item: Evidence, chars: int) -> str:
    text = " ".join(item.text.split())
    text = text if len(text) <= chars else text[: chars - 3].rstrip() + "..."
    tag = f"[{item.number}]" if item.number else " - "
    link = f" {item.url}" if item.url else ""
    fused = ""
    if item.rrf_score is not None:
        ranks = ", ".join(f"{name} #{rank}" if rank else f"not in {name}"
                          for name, rank in (("dense", item.dense_rank), ("BM25", item.bm25_rank)))
        fused = f"; RRF {item.rrf_score:.4f}: {ranks}"
    return f"  {tag} {item.label()}{link} (score {item.score:.3f}{fused})\n      {text}"


def cited_sources(check: citations.CitationCheck, evidence: Sequence[Evidence],
                  model_cited: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The passages an answer cites, in citation order.

    Args:
        check: The checked answer.
        evidence: The passages given, numbered.
        model_cited: Numbers the model itself wrote (None: all of ``check.cited``); any other cited number
            was added by attribution and is marked ``attributed``.

    Returns:
        ``{number, doc_id, node_id, pmid, url, title, label, attributed}`` per cited passage.
    """
    by_number = {item.number: item for item in evidence}
    written = set(check.cited if model_cited is None else model_cited)
    out = []
    for number in check.cited:
        item = by_number[number]
        out.append({"number": number, "doc_id": item.doc_id, "node_id": item.node_id, "pmid": item.pmid,
                    "url": item.url, "title": item.title, "label": item.label(),
                    "attributed": number not in written})
    return out


def drop_repeated_sentences(text: str) -> tuple[str, int]:
    """Remove sentences that repeat an earlier one word for word (small models loop under greedy decoding).

    Returns:
        The text without the repeats, and how many sentences were removed.
    """
    seen: set[str] = set()
    kept: list[str] = []
    removed = 0
    for sentence in split_sentences(text):
        key = " ".join(sentence.lower().split())
        if not key:
            continue
        if key in seen and len(key) > 12:
            removed += 1
            continue
        seen.add(key)
        kept.append(sentence)
    return (" ".join(kept), removed) if removed else (text.strip(), 0)


def attribute_answer(check: citations.CitationCheck, evidence: Sequence[Evidence], texts: Sequence[str],
                     min_support: float) -> tuple[citations.CitationCheck, Attribution, list[str]]:
    """Add word-overlap citations to the uncited sentences of a checked answer (see :mod:`bmrag.attribution`).

    Args:
        check: The answer after :func:`bmrag.citations.validate_citations`.
        evidence: The passages given, numbered ``1..k``.
        texts: The passage texts as shown in the prompt (possibly trimmed), same order.
        min_support: Share of a sentence's content words a passage must contain to be cited for it.

    Returns:
        The re-checked answer with the added citations, the per-sentence attribution, and notes for the user.
    """
    # The passages as the model saw them (title + trimmed text), so support means "was in the prompt".
    shown = [f"{item.title} {text}" for item, text in zip(evidence, texts)]
    attribution = attribute(check.text, shown, min_support=min_support)
    notes = []
    if attribution.added:
        notes.append(f"added {len(attribution.added)} citation(s) "
                     f"({', '.join(f'[{n}]' for n in attribution.added)}) by word overlap to sentences the model "
                     f"left uncited: the cited passage contains at least {min_support:.0%} of the sentence's "
                     "content words")
    notes += [f"no passage contains {min_support:.0%} of the content words of: {sentence!r}; check it against the "
              "evidence" for sentence in attribution.unsupported]
    return citations.validate_citations(attribution.text, len(evidence)), attribution, notes


def _declined(answer: str) -> bool:
    text = answer.lower()
    return "cannot answer" in text and "source" in text


class QAChain:
    """Retrieve, rerank, prompt with numbered evidence, generate and check citations.

    Build it with :meth:`from_index` (``bmrag ask`` does), or from parts for custom set-ups.

    Args:
        store: The open vector store (see :func:`bmrag.store.open_store`).
        embed_model: The embedding model the index was built with.
        generator: The answer generator, or None when unavailable (then ``generator_error`` says why and
            ``ask`` returns the evidence only).
        reranker: Optional reranker applied to the first-stage candidates.
        k: Passages given to the generator.
        candidates: First-stage passages retrieved (default ``k``, or ``4 * k`` with a reranker).
        min_score: Weak-evidence threshold on the final score (rerank score when reranking); ``"auto"``
            uses :func:`default_min_score` for the scoring model's similarity; None turns the check off.
        generator_error: Why the generator is unavailable (shown to the user).
        index_label: How to name the index in reports.
        hybrid: Default retrieval mode of :meth:`ask`: False dense only, True BM25 + dense fused by
            reciprocal-rank fusion (:mod:`bmrag.hybrid`). ``ask(hybrid=...)`` overrides it per question.
        fusion_depth: Hybrid only: hits each retriever contributes to the fusion (default
            ``max(candidates, HYBRID_DEPTH)``, i.e. at least 20); must be >= ``candidates``.
        min_support: Citation attribution (:mod:`bmrag.attribution`): an answer sentence without a citation
            gets ``[n]`` of the passage holding at least this share of its content words; sentences no passage
            reaches are reported. None turns attribution off (only the model's own citations count).
    """

    def __init__(self, store: BMRagChromaVectorStore, embed_model: BMRetrieverEmbedding,
                 generator: Generator | None, *, reranker: BMRetrieverReranker | None = None, k: int = 5,
                 candidates: int | None = None, min_score: float | Literal["auto"] | None = "auto",
                 generator_error: str | None = None, index_label: str | None = None, hybrid: bool = False,
                 fusion_depth: int | None = None, min_support: float | None = MIN_SUPPORT) -> None:
        from llama_index.core import VectorStoreIndex

        from bmrag.hybrid import HYBRID_DEPTH

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        candidates = candidates or (max(4 * k, 20) if reranker is not None else k)
        if candidates < k:
            raise ValueError(f"candidates ({candidates}) must be >= k ({k})")
        if generator is None and generator_error is None:
            raise ValueError("pass a generator, or generator_error saying why there is none")
        if not isinstance(hybrid, bool):
            raise ValueError(f"hybrid must be True or False, got {hybrid!r}")
        if min_support is not None and not 0.0 <= min_support <= 1.0:
            raise ValueError(f"min_support must be between 0 and 1 (or None: no attribution), got {min_support}")
        self.min_support = min_support
        fusion_depth = fusion_depth if fusion_depth is not None else max(candidates, HYBRID_DEPTH)
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
    def from_index(cls, index_dir: str | os.PathLike[str], *, collection: str = "bmrag", k: int = 5,
                   candidates: int | None = None, rerank: str | None = None, backend: str | None = "local",
                   llm_model: str | None = None, api_base: str | None = None,
                   min_score: float | Literal["auto"] | None = "auto", max_new_tokens: int | None = None,
                   health_timeout: float | None = None, threads: int | None = None,
                   generator: Generator | None = None, hybrid: bool = False,
                   fusion_depth: int | None = None, min_support: float | None = MIN_SUPPORT) -> QAChain:
        """Open an index with the model recorded in its manifest and set up the generator.

        Args:
            index_dir: Directory built by ``bmrag index``.
            collection: Chroma collection name.
            k: Passages given to the generator.
            candidates: First-stage passages (default ``k``, or ``max(4k, 20)`` with ``rerank``).
            rerank: Model name for a :class:`BMRetrieverReranker`, or None.
            backend: ``"local"``, ``"vllm"``, or None for retrieval only (``ask`` returns the evidence).
            llm_model: Generator model (local: alias/dir; vLLM: served name, default the only one served).
            api_base: vLLM server URL (default ``http://127.0.0.1:8000/v1``).
            min_score: See :class:`QAChain`.
            max_new_tokens: Answer budget.
            health_timeout: Seconds the vLLM health check waits.
            threads: Local backend: torch CPU threads (see :class:`bmrag.generate.LocalLLM`).
            generator: An already-built generator (then backend/llm_model/api_base must not be given).
            hybrid: Default retrieval mode of :meth:`ask` (see :class:`QAChain`).
            fusion_depth: Hybrid only: hits per retriever fed to the fusion (see :class:`QAChain`).
            min_support: Citation attribution threshold, None for none (see :class:`QAChain`).

        A vLLM server that does not answer does not raise: the chain is built without a generator and each
        ``ask`` returns the evidence with status ``generator_unavailable`` and the reason.
        """
        from bmrag import generate
        from bmrag.demo import load_embedding
        from bmrag.index.chroma_client import index_location
        from bmrag.store import open_store, read_manifest

        index_dir = index_location(index_dir)  # a directory, or an http://HOST:PORT Chroma server
        manifest = read_manifest(index_dir, collection)
        candidates = candidates or (max(4 * k, 20) if rerank else k)
        error = None
        if generator is None and backend is None:
            error = "no generator requested (backend=None: retrieval only)"
        elif generator is None:
            try:
                generator = generate.load_generator(backend, model=llm_model, api_base=api_base,
                                                    max_new_tokens=max_new_tokens, health_timeout=health_timeout,
                                                    threads=threads)
            except generate.BackendUnavailable as err:
                error = str(err)
        elif llm_model is not None or api_base is not None:
            raise ValueError("pass either generator= or llm_model/api_base, not both")
        embed_model = load_embedding(manifest["model"], recipe=json.loads(manifest["recipe"]),
                                     revision=manifest.get("revision") or None)
        store = open_store(index_dir, embed_model, collection=collection, create=False)
        try:
            reranker = None
            if rerank:
                from bmrag.llama_index.reranker import BMRetrieverReranker

                # Re-score every candidate: the threshold and k are applied afterwards, on the rerank scores.
                reranker = BMRetrieverReranker(model_name=rerank, top_n=candidates)
            return cls(store, embed_model, generator, reranker=reranker, k=k, candidates=candidates,
                       min_score=min_score, generator_error=error, hybrid=hybrid, fusion_depth=fusion_depth,
                       min_support=min_support,
                       index_label=f"{index_dir} (collection {collection!r}, {manifest['count']} passages)")
        except BaseException:
            store.close()
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
                kept, each scored by its dense score (see :mod:`bmrag.hybrid`). None: the chain's default.
        """
        return self._retrieve(question, filters, self._hybrid_flag(hybrid))[0]

    def _retrieve(self, question: str, filters: MetadataFilters | None,
                  hybrid: bool) -> tuple[list[NodeWithScore], dict[str, Any]]:
        from bmrag import hybrid as fusion

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
            pub_types: Sequence[str] | None = None, hybrid: bool | None = None) -> AskResult:
        """Answer ``question`` from the index with checked citations (see the module docstring).

        Args:
            question: The question.
            year_min: Only passages with metadata ``year >= year_min``.
            year_max: Only passages with metadata ``year <= year_max``.
            pub_types: Only passages whose ``pub_type`` is one of these.
            hybrid: BM25 + dense retrieval fused by RRF (True), dense only (False), or the chain's default
                (None). The filters apply to both retrievers; ``result.retrieval["mode"]`` says which ran.

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
            if _declined(raw):
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
