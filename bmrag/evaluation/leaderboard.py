"""Build ``README.md`` and a PNG from a folder of result JSON files (``bmrag eval leaderboard``).

Everything shown comes from the committed JSON files and the registry, so the output is reproducible:
regenerating from the same files gives the same README. Our measured runs and the paper's published
numbers are separate tables (and separate panels of the plot); they are never mixed in one column.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bmrag.evaluation import registry as ds

README = "README.md"
PLOT = "leaderboard.png"
DATASET_ORDER = ["scifact", "nfcorpus", "trec-covid", "scidocs", "biosses", "pubmedqa-retrieval", "bioasq-snippets"]
_PAPER_COLUMNS = ["nfcorpus", "scifact", "scidocs", "trec-covid", "biosses"]
_METRIC_LABEL = {"ndcg@10": "nDCG@10", "spearman": "Spearman"}


def load_results(results_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every ``*.json`` result (schema ``bmrag.eval.*``) in the folder; other JSON files are skipped.

    Raises:
        FileNotFoundError: The folder does not exist.
        ValueError: A file is not valid JSON (file and line named).
    """
    folder = Path(results_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder {folder} does not exist")
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
        if isinstance(record, dict) and str(record.get("schema", "")).startswith("bmrag.eval."):
            record["_file"] = path.name
            results.append(record)
    return results


MODEL_NOTES = {
    "bmrag-mini/stage1": "bmrag-mini after Stage I only: pseudo pairs from raw text (the BioASQ snippet pool, which "
                         "is also the bioasq-snippets corpus; PubMedQA train abstracts; MedQuAD answers), no query "
                         "or label of any evaluated set, no SciFact text.",
    "bmrag-mini/stage2": "bmrag-mini Stage I+II stopped at step 81 of 150 by its time budget. Stage II includes "
                         "SciFact train claims, so SciFact is **in-domain**; PubMedQA-retrieval and BioASQ-snippets "
                         "are in-domain too (their train splits); BIOSSES is zero-shot.",
    "bmrag-mini/stage2-150": "the same run resumed to its full 150 steps: the shipped `bmrag-mini` adapter (same "
                             "in-domain sets as stage2).",
    "bmrag-mini/stage2-noscifact": "bmrag-mini Stage I+II without SciFact train: SciFact and BIOSSES are zero-shot.",
}
"""What each trained model saw in training (which benchmarks are in-domain), keyed by run label stem."""


def _model_name(model: dict[str, Any]) -> str:
    """A local checkpoint path shows as its last two parts (``bmrag-mini/stage2``), a Hub id or alias as is."""
    name = str(model["model"])
    if os.path.isabs(name) or name.startswith((".", "artifacts/")):
        return "/".join(Path(name).parts[-2:])
    return name


def run_label(result: dict[str, Any]) -> str:
    """Row label: ``"BM25 (k1=0.9, b=0.4)"`` or ``"<model> (<dtype>)"``."""
    model = result["model"]
    if model.get("kind") == "bm25":
        return f"BM25 (k1={model['k1']}, b={model['b']})"
    return f"{_model_name(model)} ({model.get('dtype')})"


def _headline(result: dict[str, Any]) -> float | None:
    return result.get("metrics", {}).get(result.get("headline", "ndcg@10"))


def _dataset_order(names: Sequence[str]) -> list[str]:
    known = [n for n in DATASET_ORDER if n in names]
    return known + sorted(n for n in set(names) if n not in DATASET_ORDER)


def _title(name: str) -> str:
    spec = ds.DATASETS.get(name)
    title = spec.title if spec else name
    return f"{title}*" if spec and spec.derived else title


def _latest(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest run per (label, dataset) among exact-search runs (Chroma runs appear in the details only)."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for result in sorted(results, key=lambda r: (r.get("created", ""), r["_file"])):
        if result.get("search", {}).get("method") == "chroma":
            continue
        table[(run_label(result), result["dataset"]["name"])] = result
    return table


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _gates(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| check | our run | ours | published | diff | tolerance | pass | source | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for ref in ds.REFERENCES:
        matching = [r for r in results if r["dataset"]["name"] == ref.dataset and r["model"]["model"] == ref.model
                    and r.get("search", {}).get("method") != "chroma"]
        if not matching:
            lines.append(f"| {ref.model} on {ref.dataset} {ref.metric} | not run | – | {ref.value:.4f} | – | "
                         f"{ref.tolerance} | – | {ref.source} | {ref.note} |")
        for result in sorted(matching, key=lambda r: r["_file"]):
            ours = result["metrics"].get(ref.metric)
            diff = None if ours is None else ours - ref.value
            ok = diff is not None and abs(diff) <= ref.tolerance
            lines.append(f"| {ref.model} on {ref.dataset} {ref.metric} | `{result['_file']}` | {_fmt(ours, 4)} | "
                         f"{ref.value:.4f} | {_fmt(diff, 4) if diff is None else f'{diff:+.4f}'} | "
                         f"{ref.tolerance} | {'yes' if ok else '**no**'} | {ref.source} | {ref.note} |")
    return lines


def render_readme(results: Sequence[dict[str, Any]], plot_name: str = PLOT) -> str:
    """The leaderboard markdown for ``results`` (see module docstring)."""
    latest = _latest(results)
    labels = sorted({label for label, _ in latest}, key=lambda s: (not s.startswith("BM25"), s.lower()))
    names = _dataset_order([name for _, name in latest])
    out = [
        "# bmrag evaluation results",
        "",
        "Generated by `bmrag eval leaderboard --results evals/results` from the JSON files in this folder; "
        "do not edit by hand. How the numbers are produced: [docs/evaluation.md](../../docs/evaluation.md).",
        "",
        f"![leaderboard]({plot_name})",
        "",
        "## Our runs (measured in this repository)",
        "",
        "Headline metric per set: nDCG@10 (BEIR test split) for retrieval, Spearman for BIOSSES. "
        "Exact search; `*` = derived set built by this project (no published number exists).",
        "",
    ]
    if labels:
        out.append("| model | " + " | ".join(f"{_title(n)} {_METRIC_LABEL.get(_headline_name(n), '')}"
                                            for n in names) + " |")
        out.append("|---|" + "---|" * len(names))
        for label in labels:
            cells = [_fmt(_headline(latest[(label, n)])) if (label, n) in latest else "–" for n in names]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        notes = [f"- `{stem}`: {note}" for stem, note in MODEL_NOTES.items()
                 if any(label.startswith(f"{stem} (") for label in labels)]
        if notes:
            out += ["", "Training data of the models trained here (in-domain vs zero-shot):", "", *notes]
    else:
        out.append("No results yet.")
    out += ["", "## Honesty gates (published numbers this harness must reproduce)", "", *_gates(results), ""]
    out += ["## Run details", "",
            "| file | dataset | model | dtype | search | ndcg@10 | recall@100 | map@10 | mrr@10 | spearman | "
            "pearson | total s | corpus encode s | cache | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in sorted(results, key=lambda r: r["_file"]):
        m, t = result["metrics"], result.get("timing", {})
        commit = (result.get("environment", {}).get("git_commit") or "")[:10]
        if result.get("environment", {}).get("git_dirty"):
            commit += "+dirty"
        out.append(
            f"| `{result['_file']}` | {result['dataset']['name']} | {_model_name(result['model'])} | "
            f"{result['model'].get('dtype') or '–'} | {result.get('search', {}).get('method', '–')} | "
            + " | ".join(_fmt(m.get(k), 4) for k in ("ndcg@10", "recall@100", "map@10", "mrr@10", "spearman",
                                                      "pearson"))
            + f" | {_fmt(t.get('total_s'), 1)} | {_fmt(t.get('encode_corpus_s'), 1)} | "
            f"{t.get('corpus_cache', '–')} | {commit or '–'} |")
    out += ["", "## Published numbers (BMRetriever paper; not run here)", "",
            f"Source: {ds.PAPER}. Kept apart from our runs: these checkpoints need the Hugging Face Hub.", "",
            "| model | " + " | ".join(ds.DATASETS[n].title for n in _PAPER_COLUMNS) + " |",
            "|---|" + "---|" * len(_PAPER_COLUMNS)]
    paper_models = list(dict.fromkeys(m for n in _PAPER_COLUMNS for m in ds.DATASETS[n].published))
    for model in paper_models:
        out.append(f"| {model} | " + " | ".join(_fmt(ds.DATASETS[n].published.get(model)) for n in _PAPER_COLUMNS)
                   + " |")
    out += ["", "all-MiniLM-L6-v2 on MTEB (mtebpaper results @ 28debbe, same metrics): "
            + ", ".join(f"{ds.DATASETS[n].title} {v:.3f}" for n, v in ds.MTEB_MINILM.items()) + ".", "",
            "## Derived sets", ""]
    out += [f"- **{spec.title}** (`{spec.name}`): {spec.note}" for spec in ds.DATASETS.values() if spec.derived]
    return "\n".join(out) + "\n"


def _headline_name(dataset: str) -> str:
    spec = ds.DATASETS.get(dataset)
    return spec.headline if spec else "ndcg@10"


def render_plot(results: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Two panels: our runs (headline metric per set) and the paper's published numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    latest = _latest(results)
    labels = sorted({label for label, _ in latest}, key=lambda s: (not s.startswith("BM25"), s.lower()))
    names = _dataset_order([name for _, name in latest])
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [1.2, 1]})
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(names))
    for i, label in enumerate(labels):
        values = [_headline(latest[(label, n)]) if (label, n) in latest else np.nan for n in names]
        left.bar(x + (i - (len(labels) - 1) / 2) * width, values, width, label=label)
    left.set_xticks(x, [f"{_title(n)}\n{_METRIC_LABEL.get(_headline_name(n), '')}" for n in names], fontsize=8)
    left.set_ylim(0, 1)
    left.set_title("Our runs (measured here; * = derived set)")
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    left.grid(axis="y", alpha=0.3)

    paper_models = ["BM25", "BMRetriever/BMRetriever-410M", "BMRetriever/BMRetriever-1B", "BMRetriever/BMRetriever-2B",
                    "BMRetriever/BMRetriever-7B"]
    xp = np.arange(len(_PAPER_COLUMNS))
    pwidth = 0.8 / len(paper_models)
    for i, model in enumerate(paper_models):
        values = [ds.DATASETS[n].published.get(model, np.nan) for n in _PAPER_COLUMNS]
        right.bar(xp + (i - (len(paper_models) - 1) / 2) * pwidth, values, pwidth, label=model.split("/")[-1],
                  hatch="//", alpha=0.8)
    right.set_xticks(xp, [f"{ds.DATASETS[n].title}\n{_METRIC_LABEL[ds.DATASETS[n].headline]}" for n in _PAPER_COLUMNS],
                     fontsize=8)
    right.set_ylim(0, 1)
    right.set_title("Published (BMRetriever paper; not run here)")
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return target


def build_leaderboard(results_dir: str | os.PathLike[str], *, readme: str = README, plot: str = PLOT
                      ) -> tuple[Path, Path]:
    """Regenerate ``README.md`` and the PNG in ``results_dir`` from its JSON results; returns both paths."""
    folder = Path(results_dir)
    results = load_results(folder)
    readme_path = folder / readme
    readme_path.write_text(render_readme(results, plot), encoding="utf-8")
    return readme_path, render_plot(results, folder / plot)
