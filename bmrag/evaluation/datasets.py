"""The benchmark registry: where each evaluation set lives, its instruction, split and published numbers.

Dataset facts live here and nowhere else (the metric code knows nothing about datasets). Published
numbers are the BMRetriever paper's (Xu et al., EMNLP 2024, nDCG@10 on the BEIR test split, BIOSSES =
Spearman) and are kept apart from anything measured in this repository. The two ``derived`` sets are
built from real data in ``shared/data`` but are not the paper's protocol, so no paper number is attached.

Data location, in order: an explicit ``data`` argument (either a BEIR folder itself or a root holding
``<folder>/`` per dataset), else the ``BMRAG_DATA`` environment variable (a root).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bmrag import prompts
from bmrag.readers import DataError, iter_jsonl, load_corpus, load_qrels, load_queries

Kind = Literal["retrieval", "sts"]

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
"""The BEIR download mirror (needs network)."""

DATA_ENV = "BMRAG_DATA"
"""Environment variable naming the data root (a folder with one sub-folder per dataset)."""

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


def _is_beir_folder(path: Path) -> bool:
    return (path / "queries.jsonl").is_file() or (path / "queries.jsonl.gz").is_file() or (path / "qrels").is_dir()


def _is_sts_folder(path: Path, spec: DatasetSpec | None) -> bool:
    return spec is not None and spec.kind == "sts" and (path / f"{spec.folder}.jsonl").is_file()


def resolve_dataset(dataset: str | None = None, data: str | os.PathLike[str] | None = None
                    ) -> tuple[Path, DatasetSpec | None]:
    """Find the folder of a dataset.

    Args:
        dataset: Registry key; may be omitted when ``data`` is a dataset folder (its folder name is then
            looked up in the registry, and an unknown name means "custom BEIR folder").
        data: A dataset folder (holding ``queries.jsonl`` / ``qrels/``, or ``biosses.jsonl``) or a data root
            holding one sub-folder per dataset. Default: ``$BMRAG_DATA``.

    Returns:
        ``(folder, spec)``; ``spec`` is None for a custom folder not in the registry.

    Raises:
        ValueError: Neither ``data`` nor ``$BMRAG_DATA`` given, or a root given without ``dataset``.
        FileNotFoundError: The folder does not exist.
        KeyError: Unknown dataset name.
    """
    spec = get_dataset(dataset) if dataset is not None else None
    if data is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise ValueError(f"no data location: pass --data DIR (a BEIR folder or a data root) or set ${DATA_ENV}")
        data = env
    path = Path(data).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} does not exist")
    if _is_beir_folder(path) or _is_sts_folder(path, spec):
        if spec is None and path.name in DATASETS:
            spec = DATASETS[path.name]
        return path, spec
    if spec is None:
        raise ValueError(f"{path} is not a BEIR folder (no queries.jsonl or qrels/); if it is a data root, "
                         f"name the dataset ({', '.join(DATASETS)})")
    folder = path / spec.folder
    if not folder.is_dir():
        hint = (f"; download {spec.url} (needs network), unzip it and pass --data, or call "
                f"bmrag.evaluation.download_beir({spec.name!r}, DEST)") if spec.url else ""
        raise FileNotFoundError(f"{spec.name}: folder {folder} not found{hint}")
    return folder, spec


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_file(folder: Path, *names: str) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


@dataclass
class RetrievalDataset:
    """A loaded BEIR retrieval set restricted to one split.

    Attributes:
        name: Registry key or folder name.
        path: The folder read.
        split: Qrels split.
        corpus: ``{doc_id: {"title", "text", "metadata"}}``.
        queries: ``{query_id: text}`` for the queries judged in ``qrels`` only.
        qrels: ``{query_id: {doc_id: grade}}``.
        hashes: SHA-256 of the corpus, queries and qrels files (``corpus`` keys the embedding cache).
        spec: Registry entry (None for a custom folder).
        stats: Counts worth recording (documents, queries, judged pairs, judged docs missing from the corpus).
    """

    name: str
    path: Path
    split: str
    corpus: dict[str, dict[str, Any]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    hashes: dict[str, str]
    spec: DatasetSpec | None = None
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """One SHA-256 over the three file hashes: changes when any file used changes."""
        joined = "|".join(f"{k}={self.hashes[k]}" for k in sorted(self.hashes))
        return hashlib.sha256(joined.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-able record for result files."""
        return {"name": self.name, "path": str(self.path), "split": self.split,
                "derived": bool(self.spec and self.spec.derived), "registered": self.spec is not None,
                "content_hash": self.content_hash, "file_sha256": dict(self.hashes), **self.stats}


def _missing_corpus_message(name: str, folder: Path, spec: DatasetSpec | None) -> str:
    message = f"{name}: corpus.jsonl(.gz) not found in {folder}"
    if spec is not None and spec.url:
        message += (f"; download {spec.url} (needs network) and pass --data, or call "
                    f"bmrag.evaluation.download_beir({spec.name!r}, DEST)")
    return message


def load_retrieval_dataset(dataset: str | None = None, data: str | os.PathLike[str] | None = None,
                           split: str | None = None) -> RetrievalDataset:
    """Load a BEIR retrieval set (corpus, judged queries, qrels) with content hashes.

    Args:
        dataset: Registry key (see :data:`DATASETS`), or None when ``data`` is a BEIR folder.
        data: BEIR folder or data root (see :func:`resolve_dataset`).
        split: Qrels split; default the registry's (``"test"``).

    Raises:
        bmrag.readers.DataError: A missing file (named, with a download hint for BEIR sets), a malformed line
            (file and line named), or judged queries absent from ``queries.jsonl``.
    """
    folder, spec = resolve_dataset(dataset, data)
    if spec is not None and spec.kind != "retrieval":
        raise ValueError(f"{spec.name} is a {spec.kind} dataset; use the sts evaluation for it")
    name = spec.name if spec else folder.name
    split = split or (spec.split if spec else "test")
    corpus_file = _first_file(folder, "corpus.jsonl.gz", "corpus.jsonl")
    if corpus_file is None:
        raise DataError(_missing_corpus_message(name, folder, spec))
    queries_file = _first_file(folder, "queries.jsonl", "queries.jsonl.gz")
    if queries_file is None:
        raise DataError(f"{name}: queries.jsonl not found in {folder}")
    qrels_file = folder / "qrels" / f"{split}.tsv"
    qrels = load_qrels(folder, split)  # names the missing file and the splits available
    corpus = load_corpus(folder)
    all_queries = load_queries(folder)
    missing = [qid for qid in qrels if qid not in all_queries]
    if missing:
        raise DataError(f"{qrels_file}: {len(missing)} judged queries are not in {queries_file.name} "
                        f"(first: {', '.join(missing[:5])})")
    queries = {qid: all_queries[qid] for qid in qrels}
    judged = {doc for docs in qrels.values() for doc in docs}
    stats = {"n_docs": len(corpus), "n_queries": len(queries), "n_judgements": sum(len(d) for d in qrels.values()),
             "judged_docs_missing_from_corpus": len(judged - corpus.keys()),
             "query_ids_equal_to_doc_ids": sum(1 for qid in queries if qid in corpus)}
    hashes = {"corpus": file_sha256(corpus_file), "queries": file_sha256(queries_file),
              "qrels": file_sha256(qrels_file)}
    return RetrievalDataset(name, folder, split, corpus, queries, qrels, hashes, spec, stats)


@dataclass(frozen=True)
class StsPair:
    """One sentence pair with its gold similarity."""

    id: str
    sentence1: str
    sentence2: str
    score: float


@dataclass
class StsDataset:
    """A loaded sentence-similarity set."""

    name: str
    path: Path
    pairs: list[StsPair]
    sha256: str
    spec: DatasetSpec | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "derived": bool(self.spec and self.spec.derived),
                "registered": self.spec is not None, "content_hash": self.sha256, "n_pairs": len(self.pairs)}


def load_sts_dataset(dataset: str = "biosses", data: str | os.PathLike[str] | None = None) -> StsDataset:
    """Load sentence pairs from ``<folder>/<name>.jsonl`` (fields ``sentence1``, ``sentence2``, ``score``).

    Raises:
        bmrag.readers.DataError: Missing file, malformed line, or a record lacking a field (file and line named).
    """
    folder, spec = resolve_dataset(dataset, data)
    name = spec.name if spec else folder.name
    path = folder / f"{spec.folder if spec else name}.jsonl"
    if not path.is_file():
        raise DataError(f"{name}: {path.name} not found in {folder}")
    pairs = []
    for lineno, record in iter_jsonl(path):
        try:
            s1, s2, score = record["sentence1"], record["sentence2"], float(record["score"])
        except KeyError as err:
            raise DataError(f"{path}:{lineno}: missing field {err.args[0]!r} (need sentence1, sentence2, score)"
                            ) from err
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}:{lineno}: score {record.get('score')!r} is not a number") from err
        if not isinstance(s1, str) or not isinstance(s2, str) or not s1.strip() or not s2.strip():
            raise DataError(f"{path}:{lineno}: sentence1 and sentence2 must be non-empty strings")
        pairs.append(StsPair(str(record.get("id", lineno)), s1, s2, score))
    if len(pairs) < 3:
        raise DataError(f"{path}: {len(pairs)} pairs; a correlation needs at least 3")
    return StsDataset(name, folder, pairs, file_sha256(path), spec)


def _md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - BEIR publishes md5s; this checks integrity, not security
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_beir(name: str, dest: str | os.PathLike[str], *, url: str | None = None,
                  md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download and unzip a BEIR dataset (needs network); returns the dataset folder ``dest/<name>``.

    The zip is checked against the md5 BEIR publishes before it is extracted; an existing complete folder
    is returned without downloading.

    Args:
        name: Registry key of a BEIR set (``"scifact"``, ``"nfcorpus"``, ``"trec-covid"``, ``"scidocs"``).
        dest: Folder to extract into (created).
        url: Override the mirror URL (e.g. a local mirror or ``file://`` path).
        md5: Expected md5 of the zip; default the registry's. Pass ``""`` to skip the check.
        timeout: Socket timeout in seconds.

    Raises:
        KeyError: Unknown dataset or one BEIR does not distribute.
        OSError: The download failed (offline?) or the md5 does not match.
    """
    spec = get_dataset(name)
    if spec.url is None and url is None:
        raise KeyError(f"{name} is not distributed by BEIR; nothing to download")
    url = url or spec.url
    expected = spec.md5 if md5 is None else md5
    dest = Path(dest).expanduser()
    target = dest / (spec.beir_name or name)
    if _first_file(target, "corpus.jsonl", "corpus.jsonl.gz") and _is_beir_folder(target):
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:  # noqa: S310
                shutil.copyfileobj(response, out)
        except OSError as err:
            raise OSError(f"could not download {url}: {err} (this needs network access)") from err
        if expected and _md5(archive) != expected:
            raise OSError(f"{url}: md5 {_md5(archive)} does not match the published {expected}; not extracting")
        with zipfile.ZipFile(archive) as zipped:
            root = Path(tmp).resolve()
            for member in zipped.namelist():
                # Refuse entries that would escape the folder (zip-slip).
                if not (root / member).resolve().is_relative_to(root):
                    raise OSError(f"{url}: unsafe path {member!r} in archive")
            zipped.extractall(tmp)
        extracted = Path(tmp) / (spec.beir_name or name)
        if not extracted.is_dir():
            raise OSError(f"{url}: archive has no top-level folder {extracted.name!r}")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(extracted), target)
    return target


def instruction_for(spec: DatasetSpec | None, task: str | None) -> str | None:
    """The task key to use: an explicit ``task`` wins, else the registry's; validated against the prompts."""
    chosen = task or (spec.task if spec else None)
    if chosen is not None:
        prompts.get_instruction(chosen)  # raises KeyError with close matches
    return chosen
