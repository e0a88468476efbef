"""The clinical QA web app: the Gradio page over :class:`~bmrag.app.service.DemoService`, and its launchers.

Importing this module does not import Gradio; :func:`build_app` does (the ``app`` extra:
``pip install "bmrag[app]"``). :func:`launch` serves the page on 127.0.0.1 (by default) with the queue settings
documented there; :func:`run_smoke` answers one question headlessly through the same handler.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bmrag import options
from bmrag.app.config import MAX_TOP_K, AppConfig
from bmrag.app.render import CSS, DISCLAIMER, render_evidence
from bmrag.app.service import MAX_QUESTION_CHARS, DemoService
from bmrag.index.background import BackgroundIndexer
from bmrag.index.chroma_client import index_location
from bmrag.index.open import default_index_dir, load_embedding
from bmrag.index.sample import SAMPLE_QUESTIONS, STARTUP_DOCUMENTS, priority_order
from bmrag.index.sources import read_documents
from bmrag.index.store import open_store
from bmrag.loading import offline_environment
from bmrag.models import DEFAULT_RETRIEVER, model_note
from bmrag.qa.result import EXIT_CODES

if TYPE_CHECKING:
    import gradio as gr

EXAMPLE_QUESTIONS = SAMPLE_QUESTIONS
"""Clinical questions the bundled sample corpus answers (``bmrag.index.sample.SAMPLE_QUESTIONS``)."""

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
        gr.Markdown(service.coverage_line(), elem_id="bm-coverage")
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
        run_status = gr.Markdown("", elem_id="bm-run-status")
        message = gr.Markdown("", elem_id="bm-message")
        gr.Markdown("### Evidence")
        evidence = gr.HTML(render_evidence([], empty="Evidence appears here as soon as the passages are retrieved."),
                           elem_id="bm-evidence")
        with gr.Accordion("Details (JSON)", open=False):
            details = gr.JSON(label="Run details")

        def handle(q: str, k: float, rr: bool, hy: bool, y0: str | None, y1: str | None,
                   pt: list[str] | None) -> Iterator[tuple[str, str, str, dict[str, Any], str, str]]:
            for view in service.ask(q, int(k), rr, hy, y0, y1, pt):
                yield (*view.outputs(), service.status_line())

        inputs = [question, top_k, rerank, hybrid, year_min, year_max, pub_types]
        outputs = [answer, evidence, message, details, run_status, status]
        limit = service.config.queue_concurrency

        # Ask is disabled while its question is answered, so a second click cannot queue a duplicate run.
        def busy() -> tuple[Any, Any]:
            return gr.Button("Answering...", interactive=False), gr.Textbox(interactive=False)

        def idle() -> tuple[Any, Any]:
            return gr.Button("Ask", interactive=True), gr.Textbox(interactive=True)

        for trigger, visibility in ((ask.click, "public"), (question.submit, "private")):
            run = trigger(busy, None, [ask, question], queue=False, api_visibility="private")
            run = run.then(handle, inputs, outputs, api_name="ask" if visibility == "public" else None,
                           api_visibility=visibility, concurrency_limit=limit, concurrency_id="ask")
            run.then(idle, None, [ask, question], queue=False, api_visibility="private")
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
    text = re.sub(r"^>\s?", "", markdown, flags=re.MULTILINE)  # quotations: the quote marks stay
    return re.sub(r"[*_]{1,2}", "", re.sub(r"\n{2,}", "\n", text))


# ------------------------------------------------------------------------------------------ commands
def config_from_args(args: argparse.Namespace, index_dir: str | os.PathLike[str]) -> AppConfig:
    """An :class:`AppConfig` from :func:`bmrag.options.add_app_arguments` options."""
    return AppConfig(index_dir=Path(index_dir), collection=args.collection, backend=args.backend,
                     api_base=args.api_base, llm_model=args.llm_model, threads=args.threads, dtype=args.dtype,
                     answer=args.answer,
                     max_new_tokens=args.max_new_tokens, rerank_model=args.rerank_model,
                     concurrency_limit=args.concurrency, top_k=getattr(args, "k", None) or 3)


def run_demo_app(args: argparse.Namespace) -> int:
    """``bmrag demo``: index the first documents of the corpus, then serve the app while the rest is indexed.

    The corpus (the bundled sample, or ``--corpus``) is indexed in :func:`bmrag.index.sample.priority_order`:
    the first :data:`~bmrag.index.sample.STARTUP_DOCUMENTS` before the app starts (the sample questions' documents
    first), the rest in the background while the app answers from what is indexed (the page shows the progress).
    Indexing is idempotent: a restart skips what is stored. ``--smoke`` answers after the startup documents.
    """
    if args.model is None:
        offline_environment()  # a Hub model named with --model is the only reason to reach the Hub
    index_dir = index_location(args.index) if args.index else default_index_dir()
    options.apply_threads(args)
    corpus, label = read_documents(args.corpus)
    order = priority_order(corpus) if args.corpus is None else list(corpus)
    name = args.model or DEFAULT_RETRIEVER
    print(model_note(name, "option" if args.model else "default"), flush=True)
    embed_model = load_embedding(name, dtype=args.dtype)
    store = open_store(index_dir, embed_model, collection=args.collection)
    try:
        print(f"Corpus: {label} ({len(corpus):,} documents). Indexing the first {STARTUP_DOCUMENTS:,} into "
              f"{index_dir} before the app starts; the rest follows in the background.", flush=True)
        BackgroundIndexer(store, embed_model, corpus, order,
                          show_progress=not args.no_progress).run_until(STARTUP_DOCUMENTS)
    finally:
        store.close()
    return run_from_args(args, index_dir=index_dir, background=(corpus, order))


def run_from_args(args: argparse.Namespace, *, index_dir: str | os.PathLike[str] | None = None,
                  background: tuple[Mapping[str, Any], list[str]] | None = None) -> int:
    """Load the service once, then either answer ``--smoke`` and exit, or serve the app until Ctrl-C.

    ``background`` is ``(corpus, order)`` to keep indexing while the app serves (not with ``--smoke``).
    """
    if getattr(args, "model", None) is None:
        offline_environment()
    config = config_from_args(args, index_dir or args.index or default_index_dir())
    print(f"Loading the index {config.index_dir} and the {config.backend} generator ...", flush=True)
    service = DemoService(config)
    try:
        print(f"bmrag demo: {service.status_line().replace('**', '')}", flush=True)
        if args.smoke is not None:
            return run_smoke(service, args.smoke)
        if service.index_error:
            print(f"warning: {service.index_error}", file=sys.stderr)
        if service.generator_error:
            print(f"warning: {service.generator_error}", file=sys.stderr)
        if background is not None and service.chain is not None:
            service.start_indexing(*background, show_progress=not getattr(args, "no_progress", False))
        try:
            launch(service, host=args.host, port=args.port)
        except KeyboardInterrupt:
            print("stopped", flush=True)
        return 0
    finally:
        service.close()
