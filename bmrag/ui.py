"""The clinical QA web app: a Gradio front end over :class:`bmrag.chain.QAChain`.

Importing this module has no side effects and does not import Gradio; :func:`build_app` does (the ``app``
extra: ``pip install "bmrag[app]"``). The work is split so that it can be tested without a browser:

* :class:`DemoService` loads the index, the retriever and the generator **once per process** and answers
  questions with :meth:`DemoService.ask`, a generator of :class:`AnswerView` updates (the Gradio handler
  streams them). Every failure is turned into a message for the user, never a traceback: missing or
  empty index (how to build one), generator unavailable (the evidence is still shown), over-long question
  (truncated to :data:`MAX_QUESTION_CHARS` with a notice), invalid filters.
* :func:`build_app` lays out the page; :func:`launch` serves it on 127.0.0.1 (by default) with the queue
  settings documented there; :func:`run_smoke` answers one question headlessly through the same handler.

Streaming: the answer streams token by token from the generator itself (``stream_chat`` of the local
transformers model or of the vLLM server), through :class:`StreamingGenerator`, while the chain's own
logic (retrieval, rerank, weak-evidence threshold, citation check) runs unchanged. When generation ends
the streamed text is replaced by the checked answer (invalid citations removed, repeats dropped).

Thread safety: torch models and Hugging Face tokenizers are not re-entrant, so one lock serialises the
work that uses them (query embedding, reranking, local generation). A vLLM server batches requests
itself: the lock is released while waiting for its answer.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from bmrag.demo import SAMPLE_QUESTIONS
from bmrag.index.chroma_client import index_location

if TYPE_CHECKING:
    import gradio as gr

    from bmrag.chain import AskResult, QAChain
    from bmrag.generate import Generation, Generator

logger = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 1000
"""Longest question used, in characters (~250 tokens): longer input is cut at a word boundary and the user is
told. It keeps the question well inside the retriever's 512-token window and leaves the generator's
2048-token context to the evidence."""

DEFAULT_API_BASE = "http://127.0.0.1:8000/v1"
"""vLLM server the app talks to by default: ``bmrag.generate.DEFAULT_API_BASE`` (repeated here so that building
the command line does not import the generation stack)."""

MAX_TOP_K = 10
"""Largest top-k the settings offer (the prompt must still fit the generator's context window)."""

DEFAULT_RERANK_MODEL = "all-MiniLM-L6-v2"
"""Reranker used when "rerank" is ticked: the only reranker weights installable offline. Online, pass
``--rerank-model BMRetriever/BMRetriever-2B``."""

EXAMPLE_QUESTIONS = SAMPLE_QUESTIONS
"""Clinical questions the bundled sample corpus answers (``bmrag.demo.SAMPLE_QUESTIONS``)."""

DISCLAIMER = ("**Not medical advice.** This is a research demo: a small model answers from a sample of "
              "~350 biomedical documents and can be wrong or incomplete. Do not use it to diagnose or treat "
              "anyone; ask a qualified clinician.")

Backend = Literal["local", "vllm"]
ViewStatus = Literal["answered", "insufficient_evidence", "model_declined", "no_passages", "generator_unavailable",
                     "working", "no_index", "bad_input", "error"]

EXIT_CODES: dict[str, int] = {"answered": 0, "insufficient_evidence": 0, "model_declined": 0,
                              "generator_unavailable": 3, "no_passages": 4, "no_index": 2, "bad_input": 2,
                              "error": 1}
"""Exit status of :func:`run_smoke` per final status (the first five as in ``bmrag ask``)."""


# ----------------------------------------------------------------------------------------------- config
@dataclass
class AppConfig:
    """What the app serves and how.

    Attributes:
        index_dir: Index built by ``bmrag index``.
        collection: Chroma collection name.
        backend: ``"local"`` (in-process transformers) or ``"vllm"`` (OpenAI-compatible server).
        api_base: vLLM server URL (default ``http://127.0.0.1:8000/v1``); vllm backend only.
        llm_model: Generator model: local alias/dir, or the vLLM served name (default: the only one served).
        threads: Local backend: torch CPU threads (None keeps torch's default).
        max_new_tokens: Answer budget in tokens (default: the generator's, 64).
        rerank_model: Model loaded (lazily, once) when a user ticks "rerank".
        top_k: Initial value of the top-k setting.
        concurrency_limit: Answers computed at once by the Gradio queue (default: 1 for local, 8 for vLLM).
        max_queue: Requests the queue holds before refusing new ones.
    """

    index_dir: Path
    collection: str = "bmrag"
    backend: Backend = "local"
    api_base: str | None = None
    llm_model: str | None = None
    threads: int | None = None
    max_new_tokens: int | None = None
    rerank_model: str = DEFAULT_RERANK_MODEL
    top_k: int = 3
    concurrency_limit: int | None = None
    max_queue: int = 64

    def __post_init__(self) -> None:
        self.index_dir = index_location(self.index_dir)  # a directory or an http://HOST:PORT Chroma server
        if self.backend not in ("local", "vllm"):
            raise ValueError(f"backend must be 'local' or 'vllm', got {self.backend!r}")
        if self.backend == "local" and self.api_base is not None:
            raise ValueError("api_base applies to the vllm backend only")
        if self.backend == "vllm" and self.threads is not None:
            raise ValueError("threads applies to the local backend only")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in 1..{MAX_TOP_K}, got {self.top_k}")
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValueError(f"concurrency_limit must be >= 1, got {self.concurrency_limit}")

    @property
    def queue_concurrency(self) -> int:
        """Gradio ``concurrency_limit`` of the ask event (see :func:`launch`)."""
        if self.concurrency_limit is not None:
            return self.concurrency_limit
        return 1 if self.backend == "local" else 8


# ------------------------------------------------------------------------------------------ streaming
class StreamingGenerator:
    """Wraps a :class:`~bmrag.generate.Generator` so that ``generate`` streams tokens to a per-thread sink.

    The chain calls ``generate(messages)`` as usual and gets the full :class:`~bmrag.generate.Generation`
    back; meanwhile each new piece of text is passed to the sink that the calling thread registered with
    :meth:`streaming`. Everything else (backend, model, budgets, token counting) is the wrapped generator's.
    Token counts: vLLM's stream does not report usage and the local streamer yields text, so
    ``completion_tokens`` is the answer re-tokenised (local) or None (vLLM); ``finish_reason`` is the
    server's (vLLM) or ``"length"`` when the re-tokenised answer fills the budget (local).

    Args:
        generator: The generator to wrap.
    """

    def __init__(self, generator: Generator) -> None:
        self.inner = generator
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes this class lacks: backend, model, llm, describe(), count_tokens(), ...
        return getattr(self.__dict__["inner"], name)

    @classmethod
    def wrap(cls, generator: Generator | StreamingGenerator) -> StreamingGenerator:
        """``generator`` streaming (returned as is when it already is a :class:`StreamingGenerator`)."""
        return generator if isinstance(generator, StreamingGenerator) else cls(generator)

    def streaming(self, sink: Callable[[str], None] | None, held_lock: threading.Lock | None = None) -> _Streaming:
        """Context manager: send this thread's generated text (so far) to ``sink``.

        ``held_lock`` is a lock the calling thread holds around the chain; it is released while a remote
        (vLLM) server generates, so other users' retrieval can run meanwhile.
        """
        return _Streaming(self._local, sink, held_lock)

    def generate(self, messages: Sequence[Any]) -> Generation:
        """Generate (greedy) by streaming, feeding the registered sink; returns the whole answer."""
        from bmrag.generate import Generation

        sink = getattr(self._local, "sink", None)
        held = getattr(self._local, "held_lock", None)
        release = held is not None and self.inner.backend == "vllm"
        if release:
            held.release()
        try:
            text, last = "", None
            for chunk in self.inner.llm.stream_chat(list(messages)):
                text += chunk.delta or ""
                last = chunk
                if sink is not None:
                    sink(text)
        finally:
            if release:
                held.acquire()
        text = text.strip()
        if self.inner.backend == "local":
            tokens = self.inner.count_tokens(text)
            finish = "length" if tokens >= self.inner.max_new_tokens else "stop"
        else:
            tokens = None
            choices = getattr(getattr(last, "raw", None), "choices", None) or []
            finish = getattr(choices[0], "finish_reason", None) if choices else None
        return Generation(text=text, completion_tokens=tokens, finish_reason=finish)


class _Streaming:
    def __init__(self, local: threading.local, sink: Callable[[str], None] | None,
                 held_lock: threading.Lock | None) -> None:
        self._local, self._sink, self._held = local, sink, held_lock

    def __enter__(self) -> None:
        self._local.sink, self._local.held_lock = self._sink, self._held

    def __exit__(self, *exc: object) -> None:
        self._local.sink = self._local.held_lock = None


# ------------------------------------------------------------------------------------------- evidence
@dataclass
class EvidenceRow:
    """One passage of the evidence panel.

    Attributes:
        number: ``n`` of ``[n]`` in the prompt and the answer.
        cited: Whether the (checked) answer cites it.
        attributed: Cited only through bmrag's word-overlap attribution, not by the model (see
            :mod:`bmrag.attribution`).
        title: Document title.
        source_id: ``PMID 123`` or the document id.
        url: PubMed link for PMIDs (or the document's own URL), else None.
        text: The passage.
        score: Final score (rerank score when reranked, else the retriever's).
        year: Publication year, when the index has it.
        pub_type: Publication type, when the index has it.
        corpus: Where the document comes from (``metadata["source"]``, e.g. ``PubMedQA``).
    """

    number: int
    cited: bool
    title: str
    source_id: str
    url: str | None
    text: str
    score: float
    year: int | None = None
    pub_type: str | None = None
    corpus: str | None = None
    attributed: bool = False


def evidence_rows(result: AskResult, metadata: dict[str, dict[str, Any]] | None = None) -> list[EvidenceRow]:
    """Rows of the evidence panel: the cited passages first (in citation order), then the other passages given.

    Args:
        result: What the chain returned.
        metadata: Extra metadata per node id (``pub_type``, ``source``) read from the index.
    """
    metadata = metadata or {}
    cited = [src["number"] for src in result.sources]
    added = {src["number"] for src in result.sources if src.get("attributed")}
    order = cited + [item.number for item in result.evidence if item.number not in cited]
    by_number = {item.number: item for item in result.evidence}
    rows = []
    for number in order:
        item = by_number[number]
        meta = metadata.get(item.node_id, {})
        pub_type = meta.get("pub_type")
        rows.append(EvidenceRow(number=number, cited=number in cited, title=item.title, source_id=item.label(),
                                url=item.url, text=item.text, score=item.score, year=item.year,
                                pub_type=str(pub_type) if pub_type not in (None, "") else None,
                                corpus=meta.get("source"), attributed=number in added))
    return rows


def render_evidence(rows: Sequence[EvidenceRow], *, empty: str = "No evidence yet.") -> str:
    """The evidence panel as HTML (every field escaped)."""
    if not rows:
        return f'<div class="bm-evidence bm-empty">{html.escape(empty)}</div>'
    cards = []
    for row in rows:
        source = html.escape(row.source_id)
        if row.url:
            source = (f'<a href="{html.escape(row.url, quote=True)}" target="_blank" rel="noopener noreferrer">'
                      f"{source}</a>")
        meta = [f"<span>source: {source}</span>", f"<span>score {row.score:.3f}</span>",
                f"<span>year {row.year if row.year is not None else 'n/a'}</span>",
                f"<span>type {html.escape(row.pub_type) if row.pub_type else 'n/a'}</span>"]
        if row.corpus:
            meta.append(f"<span>{html.escape(row.corpus)}</span>")
        badge = ('<span class="bm-badge">given, not cited</span>' if not row.cited
                 else '<span class="bm-badge bm-cited" title="the model wrote no citation; bmrag cited the passage '
                      'holding most of the sentence\'s words">cited (word overlap)</span>' if row.attributed
                 else '<span class="bm-badge bm-cited">cited</span>')
        title = html.escape(row.title) if row.title else "<i>no title</i>"
        cards.append(
            f'<div class="bm-card" id="evidence-{row.number}" data-number="{row.number}" '
            f'data-cited="{str(row.cited).lower()}">'
            f'<div class="bm-head"><span class="bm-num">[{row.number}]</span> <b>{title}</b> {badge}</div>'
            f'<div class="bm-meta">{" · ".join(meta)}</div>'
            f'<div class="bm-text">{html.escape(" ".join(row.text.split()))}</div></div>')
    return '<div class="bm-evidence">' + "".join(cards) + "</div>"


# ------------------------------------------------------------------------------------------- answers
@dataclass
class AnswerView:
    """One update of the page: what the answer, evidence and message areas show.

    Attributes:
        status: The chain's status, ``"working"`` while streaming, or a UI failure (``no_index``,
            ``bad_input``, ``error``).
        answer: Markdown for the answer area.
        evidence: Rows of the evidence panel.
        message: Notices for the user (truncation, generator down, removed citations, ...), Markdown.
        details: JSON-able record of the run (the chain's result plus the UI's notes).
        final: Whether this is the last update for the question.
    """

    status: ViewStatus
    answer: str = ""
    evidence: list[EvidenceRow] = field(default_factory=list)
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    final: bool = False

    def outputs(self) -> tuple[str, str, str, dict[str, Any]]:
        """``(answer, evidence HTML, message, details)`` for the Gradio components."""
        empty = "Evidence appears here with the answer." if self.status == "working" else "No evidence to show."
        return self.answer, render_evidence(self.evidence, empty=empty), self.message, self.details


def truncate_question(question: str, limit: int = MAX_QUESTION_CHARS) -> tuple[str, str | None]:
    """``question`` stripped and cut to ``limit`` characters at a word boundary, plus a notice when cut."""
    text = " ".join(str(question or "").split())
    if len(text) <= limit:
        return text, None
    cut = text[:limit]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rfind(" ")]
    return cut, (f"Your question was {len(text)} characters long; only the first {len(cut)} were used (limit "
                 f"{limit}). Ask a shorter question for a precise answer.")


_NO_INDEX_HELP = ("Build the bundled sample index with `bmrag index --index {dir}` (or your own corpus: "
                  "`bmrag index --corpus CORPUS --index {dir}`), then restart the app. `bmrag demo` builds "
                  "the sample index by itself.")


class DemoService:
    """The models and the index, loaded once, shared by every request (thread-safe).

    Args:
        config: What to serve.
        generator: An already-built generator (tests pass a stand-in here); default: built from ``config``.

    Loading never raises for the failure states the app shows: a missing or empty index and an unreachable
    vLLM server are recorded (:attr:`index_error`, :attr:`generator_error`) and reported on every question.
    The vLLM server is checked again (2 s) on the next question, so starting it later needs no restart.
    """

    def __init__(self, config: AppConfig, *, generator: Generator | None = None) -> None:
        self.config = config
        self._lock = threading.Lock()  # torch models and HF tokenizers are not re-entrant
        self._load_lock = threading.Lock()
        self.chain: QAChain | None = None
        self.index_error: str | None = None
        self.generator: StreamingGenerator | None = None
        self.generator_error: str | None = None
        self._reranker: Any = None
        self.chunks = 0
        self.retriever_model: str | None = None
        self.pub_types: list[str] = []
        self.years: tuple[int, int] | None = None
        self._open_index()
        if generator is not None:
            self.generator = StreamingGenerator.wrap(generator)
        elif self.chain is not None:
            self._load_generator()

    # -- loading
    def _open_index(self) -> None:
        from bmrag.chain import QAChain
        from bmrag.store import read_manifest

        where = self.config.index_dir
        try:
            manifest = read_manifest(where, self.config.collection)
        except (FileNotFoundError, ValueError) as err:
            self.index_error = f"No index to search: {err}. " + _NO_INDEX_HELP.format(dir=where)
            return
        if int(manifest.get("count", 0)) == 0:
            self.index_error = (f"The index at {where} (collection {self.config.collection!r}) is empty. "
                                + _NO_INDEX_HELP.format(dir=where))
            return
        self.chain = QAChain.from_index(where, collection=self.config.collection, k=MAX_TOP_K, backend=None)
        self.chunks = self.chain.store.count()
        self.retriever_model = self.chain.embed_model.model_name
        self._scan_metadata()

    def _scan_metadata(self) -> None:
        from bmrag.chain import SCAN_LIMIT

        rows = self.chain.store.client.get(include=["metadatas"], limit=SCAN_LIMIT)["metadatas"] or []
        self.pub_types = sorted({str(m["pub_type"]) for m in rows if m and m.get("pub_type") not in (None, "")})
        years = [int(m["year"]) for m in rows if m and isinstance(m.get("year"), (int, float))]
        self.years = (min(years), max(years)) if years else None

    def _load_generator(self) -> None:
        from bmrag import generate
        from bmrag.generate import BackendUnavailable

        cfg = self.config
        options: dict[str, Any] = {"model": cfg.llm_model, "max_new_tokens": cfg.max_new_tokens}
        if cfg.backend == "local":
            options["threads"] = cfg.threads
        else:
            options["api_base"] = cfg.api_base or DEFAULT_API_BASE
        try:
            self.generator = StreamingGenerator.wrap(generate.load_generator(cfg.backend, **options))
            self.generator_error = None
        except BackendUnavailable as err:
            self.generator, self.generator_error = None, str(err)
        except (FileNotFoundError, ValueError, OSError) as err:
            # A missing model package or a model the server does not serve: shown, not raised.
            self.generator, self.generator_error = None, f"the {cfg.backend} generator could not be loaded: {err}"

    def _generator_now(self) -> StreamingGenerator | None:
        if self.generator is None and self.config.backend == "vllm":
            with self._load_lock:
                if self.generator is None:
                    self._load_generator()
        return self.generator

    def _reranker_now(self) -> Any:
        if self._reranker is None:
            with self._load_lock:
                if self._reranker is None:
                    from bmrag.llama_index.reranker import BMRetrieverReranker

                    # Re-score every candidate of the largest top-k; the chain then keeps its k best.
                    self._reranker = BMRetrieverReranker(model_name=self.config.rerank_model,
                                                         top_n=max(4 * MAX_TOP_K, 20))
        return self._reranker

    def close(self) -> None:
        """Release the Chroma client."""
        if self.chain is not None:
            self.chain.close()

    # -- reporting
    def status_line(self) -> str:
        """Which retriever, which generator backend and how many chunks the index holds (Markdown)."""
        if self.chain is None:
            return f"**Index:** not available ({self.config.index_dir})"
        gen = self.generator
        if gen is not None:
            where = f" at {gen.endpoint}" if gen.backend == "vllm" else ""
            dtype = gen.describe().get("dtype")  # local only: the hardware's default unless chosen
            generator = (f"{gen.backend} backend, {gen.model}{where} (greedy{f', {dtype}' if dtype else ''}, "
                         f"up to {gen.max_new_tokens} tokens)")
        else:
            generator = f"{self.config.backend} backend, **unavailable**"
        return (f"**Retriever:** {self.retriever_model} · **Generator:** {generator} · "
                f"**Index:** {self.config.index_dir} ({self.chunks} chunks)")

    # -- answering
    def _view_chain(self, top_k: int, rerank: bool, generator: StreamingGenerator | None) -> QAChain:
        from bmrag.chain import QAChain

        base = self.chain
        # A light per-request chain over the shared store, retriever and generator: top-k and rerank are
        # per-user settings, so the shared chain is never mutated.
        return QAChain(base.store, base.embed_model, generator, reranker=self._reranker_now() if rerank else None,
                       k=top_k, generator_error=None if generator is not None
                       else self.generator_error or "the generator is unavailable",
                       index_label=base.index_label)

    def ask(self, question: str, top_k: int = 3, rerank: bool = False, hybrid: bool = False,
            year_min: str | float | int | None = None, year_max: str | float | int | None = None,
            pub_types: Sequence[str] | None = None) -> Iterator[AnswerView]:
        """Answer ``question``, yielding page updates: progress, the streamed answer, then the final view.

        Never raises for user-facing failures; the last update has ``final=True``.
        """
        text, notice = truncate_question(question)
        notices = [notice] if notice else []
        ui = {"question_used": text, "truncated": notice is not None, "max_question_chars": MAX_QUESTION_CHARS,
              "top_k": top_k, "rerank": bool(rerank), "hybrid": bool(hybrid)}
        if self.chain is None:
            yield AnswerView("no_index", answer="**No index to search.**", message=self.index_error or "",
                             details={"status": "no_index", "ui": ui}, final=True)
            return
        if not text:
            yield AnswerView("bad_input", message="Type a question first.", details={"status": "bad_input", "ui": ui},
                             final=True)
            return
        try:
            top_k = int(top_k)
            if not 1 <= top_k <= MAX_TOP_K:
                raise ValueError(f"top-k must be between 1 and {MAX_TOP_K}, got {top_k}")
            filters = {"year_min": _year(year_min, "year from"), "year_max": _year(year_max, "year to"),
                       "pub_types": list(pub_types) or None if pub_types else None}
            from bmrag.chain import build_filters

            build_filters(**filters)  # validate before any work (year_min > year_max, ...)
        except ValueError as err:
            yield AnswerView("bad_input", message=f"Check the settings: {err}",
                             details={"status": "bad_input", "error": str(err), "ui": ui}, final=True)
            return
        filters["hybrid"] = bool(hybrid)

        yield AnswerView("working", answer="_Searching the index..._", message="\n\n".join(notices),
                         details={"status": "working", "ui": ui})
        generator = self._generator_now()
        updates: queue.Queue[tuple[str, Any]] = queue.Queue()
        start = time.perf_counter()

        def work() -> None:
            try:
                with self._lock:
                    chain = self._view_chain(top_k, bool(rerank), generator)
                    if generator is None:
                        result = chain.ask(text, **filters)
                    else:
                        with generator.streaming(lambda so_far: updates.put(("delta", so_far)), self._lock):
                            result = chain.ask(text, **filters)
                updates.put(("done", result))
            except Exception as err:  # noqa: BLE001 (shown to the user; the traceback goes to the server log)
                updates.put(("error", err))

        threading.Thread(target=work, name="bmrag-ask", daemon=True).start()
        while True:
            kind, payload = updates.get()
            if kind == "delta":
                yield AnswerView("working", answer=payload + " ▌", message="\n\n".join(notices),
                                 details={"status": "working", "ui": ui})
                continue
            if kind == "error":
                yield self._failed(text, payload, filters, top_k, bool(rerank), notices, ui)
                return
            result: AskResult = payload
            ui["seconds"] = round(time.perf_counter() - start, 3)
            yield self._final_view(result, notices, ui)
            return

    def _failed(self, text: str, err: BaseException, filters: dict[str, Any], top_k: int, rerank: bool,
                notices: list[str], ui: dict[str, Any]) -> AnswerView:
        logger.error("answering %r failed", text, exc_info=err)
        if self.config.backend == "vllm" and self.generator is not None and not isinstance(err, ValueError):
            # The server went away between the health check and the answer: show the evidence without it.
            self.generator, self.generator_error = None, f"the LLM server failed while answering ({err})"
            try:
                with self._lock:
                    result = self._view_chain(top_k, rerank, None).ask(text, **filters)
                return self._final_view(result, notices, ui)
            except Exception as again:  # noqa: BLE001
                err = again
        message = f"Something went wrong while answering: {type(err).__name__}: {err}"
        return AnswerView("error", answer="**No answer.**", message="\n\n".join([*notices, message]),
                          details={"status": "error", "error": f"{type(err).__name__}: {err}", "ui": ui},
                          final=True)

    def _final_view(self, result: AskResult, notices: list[str], ui: dict[str, Any]) -> AnswerView:
        rows = evidence_rows(result, self._metadata([item.node_id for item in result.evidence]))
        messages = list(notices)
        status = result.status
        if status == "generator_unavailable":
            answer = ("**No answer generated: the generator is unavailable.** The passages retrieved for your "
                      "question are below.")
            messages.append(f"Generator unavailable: {self.generator_error or 'unknown reason'}")
        elif status == "no_passages":
            answer = "**Nothing retrieved.**"
        elif result.answer is None:
            answer = "**No answer.**"
        else:
            answer = result.answer
        notes = [n for n in result.notes if not n.startswith("generation skipped:")]
        messages += [n[:1].upper() + n[1:] for n in notes]
        if result.invalid_citations:
            removed = ", ".join(f"{c['marker']} ({c['reason']})" for c in result.invalid_citations)
            messages.append(f"Removed citations: {removed}")
        timings = ", ".join(f"{k} {result.timings[k]:.2f} s" for k in ("retrieval", "rerank", "generation", "total")
                            if k in result.timings)
        details = {**result.to_dict(), "ui": ui}
        mode = result.retrieval.get("mode", "dense")
        messages.append(f"_Status: {status} · retrieval: {mode} · {timings}_")
        return AnswerView(status, answer=answer, evidence=rows, message="\n\n".join(messages), details=details,
                          final=True)

    def _metadata(self, node_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not node_ids or self.chain is None:
            return {}
        got = self.chain.store.client.get(ids=list(node_ids), include=["metadatas"])
        return {i: (m or {}) for i, m in zip(got["ids"], got["metadatas"] or [])}


def _year(value: float | int | str | None, name: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a year, got {value!r}") from None
    if number != int(number):
        raise ValueError(f"{name} must be a whole year, got {value!r}")
    return int(number)


# ------------------------------------------------------------------------------------------------ app
CSS = """
.bm-notice {border: 2px solid #b45309; background: #fffbeb; color: #78350f; border-radius: 8px; padding: 4px 12px;}
.bm-evidence {display: flex; flex-direction: column; gap: 10px;}
.bm-card {border: 1px solid #d1d5db; border-radius: 8px; padding: 8px 12px; background: #ffffff; color: #111827;}
.bm-card[data-cited="true"] {border-left: 5px solid #15803d;}
.bm-head {font-size: 15px;} .bm-num {font-weight: 700; color: #1d4ed8;}
.bm-badge {font-size: 12px; padding: 1px 6px; border-radius: 6px; background: #e5e7eb; margin-left: 6px;}
.bm-cited {background: #dcfce7; color: #14532d;}
.bm-meta {font-size: 13px; color: #4b5563; margin: 4px 0;}
.bm-text {font-size: 14px; max-height: 9em; overflow-y: auto;}
.bm-empty {color: #6b7280; font-style: italic;}
"""


def build_app(service: DemoService) -> gr.Blocks:
    """The Gradio page for ``service`` (not launched). The ask event is exposed as ``api_name="ask"``."""
    import gradio as gr

    years = service.years
    year_info = (f"the index has years {years[0]}-{years[1]} (not on every passage)" if years
                 else "this index has no publication years")
    with gr.Blocks(title="bmrag clinical QA") as app:
        gr.Markdown("# bmrag clinical QA\nAnswers from biomedical passages, with numbered citations checked "
                    "against the evidence shown.")
        gr.Markdown(DISCLAIMER, elem_classes=["bm-notice"], elem_id="bm-disclaimer")
        status = gr.Markdown(service.status_line(), elem_id="bm-status")
        if service.index_error:
            gr.Markdown(f"**Index problem:** {service.index_error}", elem_classes=["bm-notice"])
        with gr.Row():
            with gr.Column(scale=3):
                question = gr.Textbox(label="Clinical question", lines=2, elem_id="bm-question",
                                      placeholder="e.g. What are the warning signs of a stroke?",
                                      info=f"Up to {MAX_QUESTION_CHARS} characters are used.")
                ask = gr.Button("Ask", variant="primary", elem_id="bm-ask")
                gr.Examples(examples=[[q] for q in EXAMPLE_QUESTIONS], inputs=[question], label="Examples")
            with gr.Column(scale=2):
                with gr.Accordion("Settings", open=False):
                    top_k = gr.Slider(1, MAX_TOP_K, value=service.config.top_k, step=1, label="Top-k passages")
                    rerank = gr.Checkbox(False, label="Rerank",
                                         info=f"re-score 20+ candidates with {service.config.rerank_model}")
                    hybrid = gr.Checkbox(False, label="Hybrid (BM25 + dense)",
                                         info="fuse BM25 and dense hits by reciprocal-rank fusion")
                    # Text boxes, not gr.Number: a rendered Number sends 0 for "empty", which would filter.
                    with gr.Row():
                        year_min = gr.Textbox("", label="Year from", placeholder="any", max_lines=1, info=year_info)
                        year_max = gr.Textbox("", label="Year to", placeholder="any", max_lines=1,
                                              info="passages without a year are left out when a year is set")
                    pub_types = gr.CheckboxGroup(choices=service.pub_types, label="Publication types",
                                                 interactive=bool(service.pub_types),
                                                 info=None if service.pub_types
                                                 else "this index has no publication types")
        gr.Markdown("### Answer")
        answer = gr.Markdown("", label="Answer", elem_id="bm-answer", container=True, min_height=60)
        message = gr.Markdown("", elem_id="bm-message")
        gr.Markdown("### Evidence")
        evidence = gr.HTML(render_evidence([], empty="Evidence appears here with the answer."),
                           elem_id="bm-evidence")
        with gr.Accordion("Details (JSON)", open=False):
            details = gr.JSON(label="Run details")

        def handle(q: str, k: float, rr: bool, hy: bool, y0: str | None, y1: str | None,
                   pt: list[str] | None) -> Iterator[tuple[str, str, str, dict[str, Any], str]]:
            for view in service.ask(q, int(k), rr, hy, y0, y1, pt):
                yield (*view.outputs(), service.status_line())

        inputs = [question, top_k, rerank, hybrid, year_min, year_max, pub_types]
        outputs = [answer, evidence, message, details, status]
        limit = service.config.queue_concurrency
        ask.click(handle, inputs, outputs, api_name="ask", concurrency_limit=limit, concurrency_id="ask")
        question.submit(handle, inputs, outputs, api_visibility="private", concurrency_limit=limit,
                        concurrency_id="ask")
    return app


def launch(service: DemoService, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
           quiet: bool = False) -> tuple[gr.Blocks, str]:
    """Serve the app; returns ``(app, url)``. With ``block=False`` it returns at once (close with ``app.close()``).

    Queue: the ask event runs ``config.queue_concurrency`` answers at once (1 for the local generator, whose
    model serves one answer at a time anyway; 8 for vLLM, which batches); up to ``config.max_queue`` more
    wait in line, each told its position. Analytics are off and the Hub is not contacted (see
    :func:`offline_environment`).
    """
    offline_environment(hub=False)  # the models are loaded already; analytics must be off before gradio loads
    import gradio as gr

    app = build_app(service)
    app.queue(max_size=service.config.max_queue, default_concurrency_limit=service.config.queue_concurrency)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False, quiet=True,
               show_error=False, inbrowser=False, theme=gr.themes.Default(), css=CSS, footer_links=["api"],
               run_history=False, enable_monitoring=False)
    url = app.local_url or f"http://{host}:{app.server_port}/"
    if not quiet:
        print(f"bmrag clinical QA running at {url}  (Ctrl-C to stop)", flush=True)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return app, url


def offline_environment(*, hub: bool = True) -> None:
    """Turn off Gradio analytics and telemetry, and Hub lookups (``hub``), unless the user set these variables.

    Set before transformers or huggingface_hub is imported: they read ``HF_HUB_OFFLINE`` at import time.
    """
    settings = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "ANONYMIZED_TELEMETRY": "False"}
    if hub:
        settings["HF_HUB_OFFLINE"] = "1"
    for key, value in settings.items():
        os.environ.setdefault(key, value)


# ----------------------------------------------------------------------------------------- headless
def run_smoke(service: DemoService, question: str, *, top_k: int | None = None, out: IO[str] | None = None) -> int:
    """Answer ``question`` through the app's handler, print the result, and return an exit status.

    Returns:
        0 answered (or a justified refusal), 3 generator unavailable, 4 nothing retrieved, 2 no index or bad
        input, 1 any other failure (see :data:`EXIT_CODES`).
    """
    out = out or sys.stdout
    print(service.status_line().replace("**", ""), file=out)
    print(f"Q. {question}", file=out, flush=True)
    final = None
    for view in service.ask(question, top_k or service.config.top_k):
        final = view
    assert final is not None and final.final
    print(f"\nAnswer: {_plain(final.answer)}", file=out)
    for row in final.evidence:
        link = f" {row.url}" if row.url else ""
        mark = ("cited by word overlap" if row.attributed else "cited") if row.cited else "not cited"
        print(f"  [{row.number}] {row.source_id}{link} score {row.score:.3f} ({mark}): {row.title}", file=out)
    if final.message:
        print(f"\n{_plain(final.message)}", file=out)
    print(f"\nstatus: {final.status}", file=out)
    return EXIT_CODES[final.status]


def _plain(markdown: str) -> str:
    return re.sub(r"[*_]{1,2}", "", markdown)


# ------------------------------------------------------------------------------------------ commands
def add_app_arguments(parser: argparse.ArgumentParser, *, index: bool = True) -> None:
    """The app's command-line options (shared by ``apps/clinical_qa.py`` and ``bmrag demo``)."""
    if index:
        parser.add_argument("--index", default=None, metavar="DIR",
                            help="index built by `bmrag index` (default ~/.cache/bmrag/index/demo)")
        parser.add_argument("--collection", default="bmrag", help="collection name in the index (default bmrag)")
    parser.add_argument("--backend", choices=["local", "vllm"], default="local",
                        help="generator: local (embedded SmolLM2-135M-Instruct) or vllm (OpenAI-compatible server)")
    parser.add_argument("--api-base", default=None,
                        help=f"vLLM server URL (default {DEFAULT_API_BASE}); --backend vllm only")
    parser.add_argument("--llm-model", default=None, help="generator model (local alias/dir, or vLLM served name)")
    parser.add_argument("--threads", type=int, default=None, help="local generator: torch CPU threads")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer budget in tokens (default 64)")
    parser.add_argument("--rerank-model", default=DEFAULT_RERANK_MODEL,
                        help=f"reranker loaded when 'rerank' is ticked (default {DEFAULT_RERANK_MODEL})")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="answers computed at once (default 1 for local, 8 for vllm)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--smoke", nargs="?", const=EXAMPLE_QUESTIONS[0], default=None, metavar="QUESTION",
                        help="answer one question headlessly through the app's handler and exit (0 = answered); "
                             f"without QUESTION: {EXAMPLE_QUESTIONS[0]!r}")


def config_from_args(args: argparse.Namespace, index_dir: str | os.PathLike[str]) -> AppConfig:
    """An :class:`AppConfig` from :func:`add_app_arguments` options."""
    return AppConfig(index_dir=index_location(index_dir), collection=args.collection, backend=args.backend,
                     api_base=args.api_base, llm_model=args.llm_model, threads=args.threads,
                     max_new_tokens=args.max_new_tokens, rerank_model=args.rerank_model,
                     concurrency_limit=args.concurrency, top_k=getattr(args, "k", None) or 3)


def run_demo_app(args: argparse.Namespace) -> int:
    """``bmrag demo``: build the bundled sample index when it is missing, then serve the app (or ``--smoke``).

    The index is (re)built when it is missing or empty, or when ``--corpus``/``--model`` is given (indexing is
    idempotent: documents already stored are not embedded again).
    """
    if args.model is None:
        offline_environment()  # a Hub model named with --model is the only reason to reach the Hub
    from bmrag.demo import default_index_dir, run_index
    from bmrag.store import read_manifest

    index_dir = index_location(args.index) if args.index else default_index_dir()
    try:
        count = int(read_manifest(index_dir, args.collection)["count"])
    except FileNotFoundError:
        count = 0
    if count == 0 or args.corpus is not None or args.model is not None:
        print(f"Building the index {index_dir} first (once; later runs reuse it) ...", flush=True)
        code = run_index(corpus=args.corpus, index_dir=index_dir, model=args.model, collection=args.collection,
                         show_progress=not args.no_progress)
        if code:
            return code
    return run_from_args(args, index_dir=index_dir)


def run_from_args(args: argparse.Namespace, *, index_dir: str | os.PathLike[str] | None = None) -> int:
    """Load the service once, then either answer ``--smoke`` and exit, or serve the app until Ctrl-C."""
    if getattr(args, "model", None) is None:
        offline_environment()
    from bmrag.demo import default_index_dir

    config = config_from_args(args, index_dir or args.index or default_index_dir())
    print(f"Loading the index {config.index_dir} and the {config.backend} generator ...", flush=True)
    service = DemoService(config)
    try:
        if args.smoke is not None:
            return run_smoke(service, args.smoke)
        if service.index_error:
            print(f"warning: {service.index_error}", file=sys.stderr)
        if service.generator_error:
            print(f"warning: {service.generator_error}", file=sys.stderr)
        try:
            launch(service, host=args.host, port=args.port)
        except KeyboardInterrupt:
            print("stopped", flush=True)
        return 0
    finally:
        service.close()
