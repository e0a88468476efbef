"""``bmrag eval rag`` output: result file names, the Markdown report and the one-line summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bmrag.evaluation.rag_grounded import grounding_markdown
from bmrag.qa.attribution import MIN_SUPPORT

__all__ = ["result_stem", "summary_line", "to_markdown", "write_rag_result"]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text)).strip("-") or "x"


def result_stem(result: dict[str, Any]) -> str:
    """``rag__<dataset>__<retriever>__<generator>[__hybrid][__no-attribution]`` (``none``: no generation)."""
    generator = result["chain"]["generator"]
    gen = "none" if generator is None else f"{generator['backend']}-{Path(str(generator['model'])).name}"
    if result["chain"].get("answer") == "extractive":
        gen = "extractive"
    tail = "__hybrid" if result["chain"]["retrieval_mode"] != "dense" else ""
    if generator is not None and result["chain"].get("min_support", MIN_SUPPORT) is None:
        tail += "__no-attribution"
    return (f"rag__{result['dataset']['name']}__{_slug(Path(result['index']['retriever']).name)}__"
            f"{_slug(gen)}{tail}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def to_markdown(result: dict[str, Any], examples: int = 3) -> str:
    """A short human report: setup, metrics, decision accuracy, timings, a few answers, the command."""
    m = result["metrics"]
    d = result["dataset"]
    gen = result["chain"]["generator"]
    lines = [f"# RAG evaluation: {d['name']} ({d['questions_evaluated']} of {d['questions_total']} questions)", "",
             d["note"], "",
             f"- retriever: `{result['index']['retriever']}`, {result['chain']['retrieval_mode']} retrieval, "
             f"k={result['chain']['k']}, index {result['index']['passages']} passages",
             f"- evidence threshold: {result['chain']['threshold_note']}",
             "- citation attribution: " + ("off (the generator's own citations only)"
                                           if result["chain"].get("min_support", MIN_SUPPORT) is None else
                                           f"word overlap >= {result['chain'].get('min_support', MIN_SUPPORT)}"),
             "- generator: " + ("none (retrieval only)" if gen is None else f"{gen['backend']} / {gen['model']}"),
             f"- judge: {result['judge'] if isinstance(result['judge'], str) else result['judge']['model']}",
             f"- selection: {d['selection']}", "", "| metric | value |", "|---|---|"]
    for key, value in m.items():
        if key != "decision":
            lines.append(f"| {key} | {_fmt(value)} |")
    if "decision" in m:
        dec = m["decision"]
        lines += ["", f"Decision accuracy over {dec['n']} questions with a gold yes/no(/maybe) label: "
                      f"**{_fmt(dec['accuracy'])}** (unparseable answers count as wrong: {dec['unparseable']}); "
                      f"over parseable answers {_fmt(dec['accuracy_parseable'])}; majority-class baseline "
                      f"('{dec['majority_class']}') {_fmt(dec['majority_baseline'])}. Gold {dec['gold']}, "
                      f"predicted {dec['predicted']}."]
    t = result["timing"]
    lines += ["", f"Status counts: {result['status_counts']}. Wall time {t['total_s']:.0f} s "
                  f"(index {t['index_s']:.0f} s, questions {t['questions_s']:.0f} s, "
                  f"{t['per_question_mean_s']:.2f} s per question"
                  + (f", generation mean {t['generation_mean_s']:.2f} s" if t.get("generation_mean_s") else "") + ")."]
    if gen is not None:
        lines += ["", "Examples (first questions):", ""]
        for row in result["per_question"][:examples]:
            lines.append(f"- **{row['question']}** -> {row['answer']!r} (gold decision {row['decision_gold']}, "
                         f"parsed {row['decision_predicted']}; given {row['given_ids']}, cited "
                         f"{row.get('cited_ids', [])}, relevant "
                         f"{row['relevant_ids'][:5]})")
    lines += grounding_markdown(result)
    if result.get("command"):
        lines += ["", "Reproduce:", "", "```", " ".join(result["command"]), "```"]
    return "\n".join(lines) + "\n"


def write_rag_result(result: dict[str, Any], out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into folder ``out`` (or next to the ``.json`` path given)."""
    from bmrag.evaluation.report import portable, write_result

    out = Path(out)
    target = out if out.suffix == ".json" else out / f"{result_stem(result)}.json"
    result = portable(result)  # the .md below shows the same relative paths as the JSON
    path = write_result(result, target)
    md = path.with_suffix(".md")
    md.write_text(to_markdown(result), encoding="utf-8")
    return path, md


def summary_line(result: dict[str, Any]) -> str:
    """One line: dataset, questions, main metrics."""
    m = result["metrics"]
    parts = [f"{k} {_fmt(m[k])}" for k in ("context_recall_given", "context_precision_given", "context_recall_top_k",
                                           "citation_rate", "citation_precision", "rouge_l", "string_similarity")
             if k in m]
    if "decision" in m:
        parts.append(f"decision accuracy {_fmt(m['decision']['accuracy'])} (majority "
                     f"{_fmt(m['decision']['majority_baseline'])}, unparseable {m['decision']['unparseable']})")
    parts.append(f"faithfulness {_fmt(m['faithfulness'])}")
    return (f"rag {result['dataset']['name']} | {result['dataset']['questions_evaluated']} questions | "
            + ", ".join(parts) + f" | {result['timing']['total_s']:.1f} s")
