"""Finding and loading evaluation data: BEIR retrieval sets, STS pairs, hashes, and the BEIR download.

What each set is (instruction, split, published numbers) lives in :mod:`bmrag.evaluation.registry`.

Data location, in order: an explicit ``data`` argument (either a BEIR folder itself or a root holding
``<folder>/`` per dataset), else :func:`bmrag.loading.data_root` (``$BMRAG_DATA``, else ``../shared/data``
beside the repository).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmrag import loading
from bmrag.evaluation.registry import DATASETS, DatasetSpec, get_dataset
from bmrag.index.readers import DataError, iter_jsonl, load_corpus, load_qrels, load_queries
from bmrag.loading import DATA_ENV, data_root


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
            holding one sub-folder per dataset. Default: :func:`bmrag.loading.data_root` (``$BMRAG_DATA``, else
            ``../shared/data`` beside the repository).

    Returns:
        ``(folder, spec)``; ``spec`` is None for a custom folder not in the registry.

    Raises:
        ValueError: No ``data`` and no data root, or a root given without ``dataset``.
        FileNotFoundError: The folder does not exist.
        KeyError: Unknown dataset name.
    """
    spec = get_dataset(dataset) if dataset is not None else None
    if data is None:
        data = data_root()
        if data is None:
            raise ValueError(f"no data location: pass --data DIR (a BEIR folder or a data root) or set ${DATA_ENV} "
                             f"(default: {loading.REPOSITORY_DATA}, which does not exist)")
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
        bmrag.index.readers.DataError: A missing file (named, with a download hint for BEIR sets), a malformed line
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
        bmrag.index.readers.DataError: Missing file, malformed line, or a record lacking a field (file and line named).
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
