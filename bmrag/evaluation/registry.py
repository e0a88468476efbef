"""The benchmark registry: where each evaluation set lives, its instruction, split and published numbers.

Dataset facts live here and nowhere else (the metric code knows nothing about datasets). Published
numbers are the BMRetriever paper's (Xu et al., EMNLP 2024, nDCG@10 on the BEIR test split, BIOSSES =
Spearman) and are kept apart from anything measured in this repository. The two ``derived`` sets are
built from real data in ``shared/data`` but are not the paper's protocol, so no paper number is attached.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from bmrag import prompts

Kind = Literal["retrieval", "sts"]

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
"""The BEIR download mirror (needs network)."""

PAPER = "BMRetriever paper (Xu et al., EMNLP 2024, arXiv 2404.18443); nDCG@10 on BEIR test; BIOSSES = Spearman"


@dataclass(frozen=True)
class Reference:
    """A published number our harness must reproduce (an honesty gate), with its source.

    Attributes:
        model: Model name as this harness runs it (``"bm25"`` or an alias / Hub id).
        dataset: Registry key.
        metric: Metric key in our results (``"ndcg@10"``, ``"spearman"``...).
        value: The published value.
        tolerance: Largest accepted absolute difference.
        source: Where the number was published (citable).
        note: Protocol differences worth knowing.
    """

    model: str
    dataset: str
    metric: str
    value: float
    tolerance: float
    source: str
    note: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """One evaluation set.

    Attributes:
        name: Registry key (``"scifact"``).
        kind: ``"retrieval"`` (BEIR layout) or ``"sts"`` (sentence pairs with gold scores).
        folder: Sub-folder name under a data root.
        task: Key of :data:`bmrag.prompts.INSTRUCTIONS` giving the query instruction.
        split: The qrels split evaluated by default.
        headline: The metric the leaderboard shows.
        title: Display name.
        derived: True for sets built by this project (no published numbers exist for them).
        beir_name: Name on the BEIR mirror, when BEIR distributes the set.
        md5: md5 of the BEIR zip as published in the BEIR README (beir-cellar/beir).
        published: Paper numbers (model -> headline value). Empty for derived sets.
        note: What to know about the set.
    """

    name: str
    kind: Kind
    folder: str
    task: str
    split: str = "test"
    headline: str = "ndcg@10"
    title: str = ""
    derived: bool = False
    beir_name: str | None = None
    md5: str | None = None
    published: Mapping[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def url(self) -> str | None:
        """Download URL of the BEIR zip, or None when BEIR does not distribute the set."""
        return BEIR_URL.format(name=self.beir_name) if self.beir_name else None


def _paper(nfcorpus: float, scifact: float, scidocs: float, trec_covid: float, biosses: float | None):
    return {"nfcorpus": nfcorpus, "scifact": scifact, "scidocs": scidocs, "trec-covid": trec_covid,
            "biosses": biosses}


# Rows of the paper's table (see shared/reference/bmretriever.md); None = not reported.
_PAPER_ROWS = {
    "BM25": _paper(0.325, 0.665, 0.158, 0.656, None),
    "Contriever (110M)": _paper(0.328, 0.677, 0.165, 0.596, 0.833),
    "MedCPT (220M)": _paper(0.340, 0.724, 0.123, 0.697, 0.837),
    "E5-Large-v2 (335M)": _paper(0.371, 0.726, 0.201, 0.665, 0.836),
    "BGE-Large (335M)": _paper(0.345, 0.723, 0.222, 0.753, 0.804),
    "BMRetriever/BMRetriever-410M": _paper(0.321, 0.711, 0.167, 0.831, 0.840),
    "BMRetriever/BMRetriever-2B": _paper(0.351, 0.760, 0.199, 0.863, 0.828),
    "E5-Mistral (7B)": _paper(0.386, 0.764, 0.162, 0.872, 0.855),
    "BMRetriever/BMRetriever-7B": _paper(0.364, 0.778, 0.201, 0.861, 0.847),
    "REPAIR-7B (later work)": _paper(0.413, 0.789, 0.227, 0.842, 0.846),
}
# BMRetriever-1B: the paper reports NFCorpus, TREC-COVID and BIOSSES only.
_PAPER_1B = {"nfcorpus": 0.344, "trec-covid": 0.840, "biosses": 0.858}


def _published(dataset: str) -> dict[str, float]:
    out = {model: row[dataset] for model, row in _PAPER_ROWS.items() if row.get(dataset) is not None}
    if dataset in _PAPER_1B:
        out["BMRetriever/BMRetriever-1B"] = _PAPER_1B[dataset]
    return out


DATASETS: dict[str, DatasetSpec] = {
    "scifact": DatasetSpec(
        "scifact", "retrieval", "scifact", "scifact", title="SciFact", beir_name="scifact",
        md5="5f7d1de60b170fc8027bb7898e2efca1", published=_published("scifact"),
        note="BEIR SciFact: 300 test claims, 5,183 abstracts.",
    ),
    "nfcorpus": DatasetSpec(
        "nfcorpus", "retrieval", "nfcorpus", "nfcorpus", title="NFCorpus", beir_name="nfcorpus",
        md5="a89dba18a62ef92f7d323ec890a0d38d", published=_published("nfcorpus"),
        note="BEIR NFCorpus: 323 test queries, 3,633 docs, graded qrels.",
    ),
    "trec-covid": DatasetSpec(
        "trec-covid", "retrieval", "trec-covid", "trec-covid", title="TREC-COVID", beir_name="trec-covid",
        md5="ce62140cb23feb9becf6270d0d1fe6d1", published=_published("trec-covid"),
        note="BEIR TREC-COVID: 50 topics, 171,332 CORD-19 docs, graded qrels (0 = judged non-relevant).",
    ),
    "scidocs": DatasetSpec(
        "scidocs", "retrieval", "scidocs", "scidocs", title="SCIDOCS", beir_name="scidocs",
        md5="38121350fc3a4d2f48850f6aff52e4a9", published=_published("scidocs"),
        note="BEIR SCIDOCS: 1,000 paper titles, 25,657 abstracts.",
    ),
    "biosses": DatasetSpec(
        "biosses", "sts", "biosses", "biosses", headline="spearman", title="BIOSSES",
        published=_published("biosses"),
        note="100 biomedical sentence pairs scored 0-4; Spearman between cosine similarity and the gold score.",
    ),
    "pubmedqa-retrieval": DatasetSpec(
        "pubmedqa-retrieval", "retrieval", "pubmedqa-retrieval", "pubmedqa", title="PubMedQA-retrieval",
        derived=True,
        note="Derived (not a paper number): 500 PQA-L test questions -> their own abstract among 1,000.",
    ),
    "bioasq-snippets": DatasetSpec(
        "bioasq-snippets", "retrieval", "bioasq-snippets", "bioasq", title="BioASQ-snippets", derived=True,
        note="Derived (not a paper number): 500 BioASQ 8B questions over a closed pool of 13,449 snippet docs; "
             "far easier than real BioASQ.",
    ),
}
"""Every dataset the harness knows, by registry key."""

REFERENCES: list[Reference] = [
    Reference("bm25", "scifact", "ndcg@10", 0.665, 0.01,
              "BEIR (Thakur et al., NeurIPS 2021 Datasets & Benchmarks, arXiv 2104.08663), BM25 (Elasticsearch) row; "
              "the BMRetriever paper repeats it",
              "Elasticsearch's analyser stems; ours does not (see docs/evaluation.md)."),
    Reference("all-MiniLM-L6-v2", "scifact", "ndcg@10", 0.64508, 0.003,
              "MTEB: github.com/embeddings-benchmark/mtebpaper results/all-MiniLM-L6-v2/SciFact.json "
              "@ 28debbe59f00719389cc2a42e630aa31ea8cdfee (ndcg_at_10 = 0.64508; model card MTEB 64.51)",
              "MTEB protocol: sentence-transformers, max_seq_length 256, cosine, exact search."),
    Reference("all-MiniLM-L6-v2", "biosses", "spearman", 0.81640, 0.003,
              "MTEB: github.com/embeddings-benchmark/mtebpaper results/all-MiniLM-L6-v2/BIOSSES.json "
              "@ 28debbe59f00719389cc2a42e630aa31ea8cdfee (cos_sim spearman = 0.81640)",
              "MTEB protocol: both sentences encoded plainly, cosine. sentence-transformers itself gives 0.81254 on "
              "shared/data/biosses (= ours): the gap is MTEB's copy of the data (HF mteb/biosses-sts), not the "
              "harness."),
]
"""Published numbers for models this harness can run offline: the honesty gates."""

MTEB_MINILM = {"scifact": 0.64508, "nfcorpus": 0.31594, "trec-covid": 0.47246, "scidocs": 0.21641,
               "biosses": 0.81640}
"""all-MiniLM-L6-v2 on MTEB (mtebpaper results @ 28debbe; retrieval nDCG@10, BIOSSES cosine Spearman)."""


def get_dataset(name: str) -> DatasetSpec:
    """Return the registry entry for ``name``.

    Raises:
        KeyError: Unknown name; the message lists close matches and all known datasets.
    """
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(name, DATASETS, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(DATASETS)}")


def instruction_for(spec: DatasetSpec | None, task: str | None) -> str | None:
    """The task key to use: an explicit ``task`` wins, else the registry's; validated against the prompts."""
    chosen = task or (spec.task if spec else None)
    if chosen is not None:
        prompts.get_instruction(chosen)  # raises KeyError with close matches
    return chosen
