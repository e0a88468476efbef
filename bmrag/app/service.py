"""The clinical QA app's service: models and index loaded once, questions answered as page updates. No Gradio.

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

import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bmrag.app.config import MAX_TOP_K, AppConfig
from bmrag.app.render import AnswerView, EvidenceRow, answer_markdown, evidence_rows
from bmrag.app.streaming import StreamingGenerator
from bmrag.index.background import BackgroundIndexer
from bmrag.models import DEFAULT_API_BASE
from bmrag.qa.evidence import Evidence, first_stage_candidates
from bmrag.qa.result import STATUS_LABELS, AskResult

if TYPE_CHECKING:
    from bmrag.generators import Generator
    from bmrag.qa.chain import QAChain
    from bmrag.qa.result import AskResult

logger = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 1000
"""Longest question used, in characters (~250 tokens): longer input is cut at a word boundary and the user is
told. It keeps the question well inside the retriever's 512-token window and leaves the generator's
2048-token context to the evidence."""

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
        self.indexer: BackgroundIndexer | None = None
        self.sources: dict[str, int] = {}
        self._open_index()
        if generator is not None:
            self.generator = StreamingGenerator.wrap(generator)
        elif self.chain is not None and config.answer == "generative":
            self._load_generator()  # extractive answers quote the evidence: no generator is loaded

    # -- loading
    def _open_index(self) -> None:
        from bmrag.index.manifest import read_manifest
        from bmrag.qa.chain import QAChain

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
        self.chain = QAChain.from_index(where, collection=self.config.collection, k=MAX_TOP_K, backend=None,
                                        dtype=self.config.dtype)
        self.chunks = self.chain.store.count()
        self.retriever_model = self.chain.embed_model.model_name
        self._scan_metadata()

    def _scan_metadata(self) -> None:
        from bmrag.qa.filters import SCAN_LIMIT

        rows = self.chain.store.client.get(include=["metadatas"], limit=SCAN_LIMIT)["metadatas"] or []
        self.pub_types = sorted({str(m["pub_type"]) for m in rows if m and m.get("pub_type") not in (None, "")})
        years = [int(m["year"]) for m in rows if m and isinstance(m.get("year"), (int, float))]
        self.years = (min(years), max(years)) if years else None
        sources: dict[str, int] = {}
        for m in rows:
            name = str((m or {}).get("source") or "other").split("/")[0]
            sources[name] = sources.get(name, 0) + 1
        self.sources = dict(sorted(sources.items(), key=lambda kv: -kv[1]))

    def coverage_line(self) -> str:
        """What the index covers, for the page: its sources and what kind of questions they answer (Markdown)."""
        if self.chain is None or not self.sources:
            return ""
        kinds = {"MedQuAD": "NIH consumer-health pages", "PubMedQA": "PubMed abstracts",
                 "BioASQ": "PubMed abstracts (excerpts)", "SciFact": "scientific abstracts"}
        parts = [f"{name} ({kinds[name]})" if name in kinds else name for name in self.sources]
        return ("**What the sources cover:** " + ", ".join(parts) + ". Questions outside them are answered with "
                "\"The indexed sources don't answer this question\" and the nearest passages.")

    def _load_generator(self) -> None:
        from bmrag import generators
        from bmrag.generators import BackendUnavailable

        cfg = self.config
        options: dict[str, Any] = {"model": cfg.llm_model, "max_new_tokens": cfg.max_new_tokens}
        if cfg.backend == "local":
            options["threads"], options["dtype"] = cfg.threads, cfg.dtype
        else:
            options["api_base"] = cfg.api_base or DEFAULT_API_BASE
        try:
            self.generator = StreamingGenerator.wrap(generators.load_generator(cfg.backend, **options))
            self.generator_error = None
        except BackendUnavailable as err:
            self.generator, self.generator_error = None, str(err)
        except (FileNotFoundError, ValueError, OSError) as err:
            # A missing model package or a model the server does not serve: shown, not raised.
            self.generator, self.generator_error = None, f"the {cfg.backend} generator could not be loaded: {err}"

    def _generator_now(self) -> StreamingGenerator | None:
        if self.generator is None and self.config.backend == "vllm" and self.config.answer == "generative":
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
                    self._reranker = BMRetrieverReranker(model_name=self.config.rerank_model, dtype=self.config.dtype,
                                                         top_n=first_stage_candidates(MAX_TOP_K, True))
        return self._reranker

    def start_indexing(self, corpus: Mapping[str, Mapping[str, Any]], order: Sequence[str] | None = None, *,
                       show_progress: bool = True) -> BackgroundIndexer:
        """Index ``corpus`` into the open index in the background while questions are answered (see
        :mod:`bmrag.index.background`); the status line shows the progress."""
        if self.chain is None:
            raise RuntimeError(f"no index to add to: {self.index_error}")
        self.indexer = BackgroundIndexer(self.chain.store, self.chain.embed_model, corpus, order, lock=self._lock,
                                         show_progress=show_progress)
        self.indexer.start()
        return self.indexer

    def close(self) -> None:
        """Stop background indexing and release the Chroma client."""
        if self.indexer is not None:
            self.indexer.stop(timeout=60)
        if self.chain is not None:
            self.chain.close()

    # -- reporting
    def status_line(self) -> str:
        """Which retriever, which generator backend and how many chunks the index holds (Markdown)."""
        if self.chain is None:
            return f"**Index:** not available ({self.config.index_dir})"
        gen = self.generator
        chunks = self.chain.store.count() if self.indexer is not None else self.chunks
        index = f"**Index:** {self.config.index_dir} ({chunks} chunks)"
        if self.indexer is not None and not self.indexer.progress().complete:
            index += f" · **Indexing:** {self.indexer.progress().describe()}"
        if self.config.answer == "extractive":
            return (f"**Retriever:** {self.retriever_model} · **Answers:** sentences quoted from the sources "
                    f"(extractive; no generator) · {index}")
        if gen is not None:
            where = f" at {gen.endpoint}" if gen.backend == "vllm" else ""
            dtype = gen.describe().get("dtype")  # local only: the hardware's default unless chosen
            generator = (f"{gen.backend} backend, {gen.model}{where} (greedy{f', {dtype}' if dtype else ''}, "
                         f"up to {gen.max_new_tokens} tokens)")
        else:
            generator = f"{self.config.backend} backend, **unavailable**"
        return f"**Retriever:** {self.retriever_model} · **Generator:** {generator} · {index}"

    # -- answering
    def _view_chain(self, top_k: int, rerank: bool, generator: StreamingGenerator | None) -> QAChain:
        from bmrag.qa.chain import QAChain

        base = self.chain
        # A light per-request chain over the shared store, retriever and generator: top-k and rerank are
        # per-user settings, so the shared chain is never mutated.
        return QAChain(base.store, base.embed_model, generator, reranker=self._reranker_now() if rerank else None,
                       k=top_k, generator_error=None if generator is not None
                       else self.generator_error or "the generator is unavailable",
                       index_label=base.index_label, answer=self.config.answer)

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
            from bmrag.qa.filters import build_filters

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

        def evidence_ready(given: list[Evidence], held: list[Evidence]) -> None:
            updates.put(("evidence", given))

        def work() -> None:
            try:
                with self._lock:
                    chain = self._view_chain(top_k, bool(rerank), generator)
                    if generator is None:
                        result = chain.ask(text, on_evidence=evidence_ready, **filters)
                    else:
                        with generator.streaming(lambda so_far: updates.put(("delta", so_far)), self._lock):
                            result = chain.ask(text, on_evidence=evidence_ready, **filters)
                updates.put(("done", result))
            except Exception as err:  # noqa: BLE001 (shown to the user; the traceback goes to the server log)
                updates.put(("error", err))

        threading.Thread(target=work, name="bmrag-ask", daemon=True).start()
        rows: list[EvidenceRow] = []
        while True:
            kind, payload = updates.get()
            if kind == "evidence":
                # Shown as soon as retrieval has chosen it, while the answer is still being written.
                rows = evidence_rows(AskResult(question=text, status="answered", evidence=payload),
                                     self._metadata([item.node_id for item in payload]))
                yield AnswerView("working", answer="_Writing the answer..._" if payload and generator else
                                 "_Checking the evidence..._", evidence=rows, message="\n\n".join(notices),
                                 details={"status": "working", "ui": ui})
                continue
            if kind == "delta":
                yield AnswerView("working", answer=payload + " ▌", evidence=rows, message="\n\n".join(notices),
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
            answer = answer_markdown(result)
        notes = [n for n in result.notes if not n.startswith("generation skipped:")]
        messages += [n[:1].upper() + n[1:] for n in notes]
        if result.invalid_citations:
            removed = ", ".join(f"{c['marker']} ({c['reason']})" for c in result.invalid_citations)
            messages.append(f"Citations to passages that were not given were removed: {removed}")
        timings = ", ".join(f"{k} {result.timings[k]:.2f} s" for k in ("retrieval", "rerank", "extractive",
                                                                       "generation", "total") if k in result.timings)
        details = {**result.to_dict(), "ui": ui}
        mode = result.retrieval.get("mode", "dense")
        run_status = (f"**Status: {status}** ({STATUS_LABELS[status]}) · answer: {result.answer_mode} · "
                      f"retrieval: {mode} · {timings}")
        return AnswerView(status, answer=answer, evidence=rows, message="\n\n".join(messages), details=details,
                          final=True, run_status=run_status)

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


