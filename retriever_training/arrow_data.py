"""Training groups as memory-mapped Arrow: convert the JSONL once, then train on millions of groups in flat memory.

``read_groups`` + :class:`~retriever_training.data.GroupDataset` hold every group as Python objects (and the
duplicate-free sampler every group's query/positive strings): RAM grows with the data, and at paper scale
(~11M pairs) tens of GB are needed before the first step. Here:

* :func:`convert_to_arrow` streams JSONL files (validated line by line with the same
  :func:`~retriever_training.data.group_from_json`, errors name ``file:line`` and the field) into one Arrow
  file in the streaming IPC format that HF ``datasets`` memory-maps (``datasets.Dataset.from_file``). Each
  row also stores the group's de-duplication keys (query and positives, normalised as in
  :func:`~retriever_training.data.group_keys`) as 64-bit BLAKE2b hashes, so batching needs no text.
  The file is written to ``<out>.tmp`` and renamed at the end: a failed conversion leaves no partial file and
  never touches an existing one.
* :class:`ArrowGroupDataset` memory-maps one or more such files (the OS pages rows in and out; nothing is
  read up front but the negative counts and the key hashes, 8 bytes per key) and returns the same
  ``(epoch, index, Group)`` items as ``GroupDataset``: the collator, the hard-negative draws and the
  masks are unchanged.
* :class:`ArrowNoDuplicateBatchSampler` is :class:`~retriever_training.data.NoDuplicateBatchSampler` (the
  same algorithm and order) over the hashed keys, so the batches equal the in-memory path's batches.

Sharding over ranks needs nothing here: the trainer draws *global* batches and each rank's collator embeds its
own slice (``RetrieverTrainer.get_train_dataloader``); every rank maps the same file, so the page cache holds
one copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from bmrag.index.readers import DataError, iter_jsonl
from retriever_training.data import Group, NoDuplicateBatchSampler, Passage, group_from_json, group_keys

logger = logging.getLogger(__name__)

PASSAGE_TYPE = pa.struct([("title", pa.string()), ("text", pa.string())])
"""A passage: ``title`` null for a plain-string passage, a string (maybe empty) for a ``{"title", "text"}`` one."""

SCHEMA = pa.schema(
    [
        ("query", pa.string()),
        ("positives", pa.list_(PASSAGE_TYPE)),
        ("negatives", pa.list_(PASSAGE_TYPE)),
        ("instruction", pa.string()),
        ("task", pa.string()),
        ("source", pa.string()),
        ("id", pa.string()),
        ("positive_ids", pa.list_(pa.string())),
        ("dedupe_keys", pa.list_(pa.uint64())),
    ],
    metadata={"bmrag_groups_format": "1"},
)
"""Columns of a groups Arrow file (one row per group)."""


def key_hash(key: str) -> int:
    """64-bit BLAKE2b of a de-duplication key (collision odds ~n^2 / 2^65: negligible at 10^8 keys)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def _passage_row(passage: Passage) -> dict[str, str | None]:
    if isinstance(passage, str):
        return {"title": None, "text": passage}
    return {"title": passage.get("title", ""), "text": passage["text"]}


def _passage(row: dict[str, Any]) -> Passage:
    return row["text"] if row["title"] is None else {"title": row["title"], "text": row["text"]}


@dataclass
class ArrowConvertReport:
    """What :func:`convert_to_arrow` wrote."""

    out: str
    groups: int = 0
    per_file: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        files = ", ".join(f"{Path(k).name}: {v}" for k, v in self.per_file.items())
        return (f"wrote {self.groups} groups ({files}) to {self.out}: {self.bytes / 2**20:.1f} MiB in "
                f"{self.seconds:.1f} s")


def convert_to_arrow(inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                     limit_per_file: int | None = None, batch_rows: int = 8192,
                     progress: bool = True) -> ArrowConvertReport:
    """Stream JSONL group files into one memory-mappable Arrow file (see the module docstring).

    Args:
        inputs: JSONL(.gz) files of groups (the ``read_groups`` format).
        out: The ``.arrow`` file to write (parent folders are created; an existing file is replaced only
            when the conversion succeeded).
        limit_per_file: Take at most this many groups from each input (the first N, like ``max_groups``).
        batch_rows: Rows per Arrow record batch (memory while converting is about one batch).
        progress: Show a tqdm bar (groups converted).

    Raises:
        DataError: Invalid JSON or an invalid group (file and line named), or an input without groups.
    """
    from tqdm.auto import tqdm

    if not inputs:
        raise ValueError("no input files")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    report = ArrowConvertReport(out=str(target))
    started = time.perf_counter()
    names = SCHEMA.names
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer, \
                tqdm(desc=f"-> {target.name}", unit=" groups", disable=not progress) as bar:
            columns: dict[str, list] = {name: [] for name in names}

            def flush() -> None:
                if columns["query"]:
                    writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=SCHEMA))
                    for values in columns.values():
                        values.clear()

            for path in inputs:
                count = 0
                for lineno, record in iter_jsonl(path):
                    if limit_per_file is not None and count >= limit_per_file:
                        break
                    group = group_from_json(record, f"{path}:{lineno}")
                    for name in ("query", "instruction", "task", "source", "id", "positive_ids"):
                        columns[name].append(getattr(group, name))
                    columns["positives"].append([_passage_row(p) for p in group.positives])
                    columns["negatives"].append([_passage_row(p) for p in group.negatives])
                    columns["dedupe_keys"].append(sorted({key_hash(k) for k in group_keys(group)}))
                    count += 1
                    if len(columns["query"]) >= batch_rows:
                        flush()
                        bar.update(batch_rows)
                if not count:
                    raise DataError(f"{path}: no training groups")
                report.per_file[str(path)] = count
                report.groups += count
            bar.update(len(columns["query"]))
            flush()
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report.bytes = target.stat().st_size
    report.seconds = round(time.perf_counter() - started, 1)
    logger.info("%s", report.summary())
    return report


class _KeySets(Sequence):
    """The hashed keys of the used rows as frozensets, built on access from two flat arrays (CSR)."""

    def __init__(self, offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> None:
        self.offsets, self.values, self.rows = offsets, values, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> frozenset[int]:  # type: ignore[override]
        row = self.rows[i]
        return frozenset(self.values[self.offsets[row]:self.offsets[row + 1]].tolist())


class ArrowGroupDataset(torch.utils.data.Dataset):
    """Groups read from memory-mapped Arrow files (:func:`convert_to_arrow`), indexed like ``GroupDataset``.

    Args:
        paths: One or more ``.arrow`` files (concatenated in order).
        min_negatives: Groups with fewer hard negatives are not used (counted in ``dropped_short``).
        limit_per_file: Use at most the first N groups of each file.

    Raises:
        DataError: A file that is not a groups Arrow file (named), or no usable group.
    """

    def __init__(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], min_negatives: int = 0,
                 limit_per_file: int | None = None) -> None:
        from datasets import Dataset, concatenate_datasets

        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise ValueError("no Arrow files given")
        parts, rows, start = [], [], 0
        self.per_file: dict[str, int] = {}
        for path in paths:
            if not Path(path).is_file():
                raise DataError(f"{path}: file not found")
            try:
                part = Dataset.from_file(str(path))  # memory-mapped, nothing copied
            except (pa.ArrowInvalid, OSError) as err:
                raise DataError(f"{path}: not an Arrow file written by convert_to_arrow ({err})") from err
            missing = [n for n in SCHEMA.names if n not in part.column_names]
            if missing:
                raise DataError(f"{path}: not a groups Arrow file (missing columns {missing}); convert JSONL with "
                                "`bmrag-train arrow`")
            used = len(part) if limit_per_file is None else min(limit_per_file, len(part))
            self.per_file[str(path)] = used
            rows.append(np.arange(start, start + used, dtype=np.int64))
            start += len(part)
            parts.append(part)
        self.data = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        table = self.data.data.table  # the memory-mapped pyarrow Table
        negatives = pc.list_value_length(table.column("negatives")).to_numpy(zero_copy_only=False)
        candidates = np.concatenate(rows)
        self.rows = candidates[negatives[candidates] >= min_negatives]  # dataset row of each used group
        self.dropped_short = len(candidates) - len(self.rows)
        if self.dropped_short:
            logger.warning("%d of %d groups have fewer than %d negatives and are not used (mine more, or lower "
                           "train_group_size)", self.dropped_short, len(candidates), min_negatives)
        if not len(self.rows):
            raise DataError(f"no group has the {min_negatives} negatives that train_group_size needs")
        keys = pa.concat_arrays(table.column("dedupe_keys").chunks)  # 8 bytes per key, copied once
        self._offsets = keys.offsets.to_numpy()
        self._values = keys.values.to_numpy()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[int, int, Group]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return epoch, index, self.group(index)

    def group(self, index: int) -> Group:
        """The ``index``-th used group, rebuilt exactly as ``group_from_json`` made it."""
        row = self.data[int(self.rows[index])]
        return Group(query=row["query"], positives=[_passage(p) for p in row["positives"]],
                     negatives=[_passage(p) for p in row["negatives"]], instruction=row["instruction"],
                     task=row["task"], source=row["source"], id=row["id"], positive_ids=list(row["positive_ids"]))

    def __iter__(self) -> Iterator[Group]:
        for index in range(len(self)):
            yield self.group(index)

    def key_sets(self) -> Sequence[frozenset[int]]:
        """Hashed de-duplication keys of every used group (what the batch sampler needs, no text)."""
        return _KeySets(self._offsets, self._values, self.rows)


class ArrowNoDuplicateBatchSampler(NoDuplicateBatchSampler):
    """:class:`~retriever_training.data.NoDuplicateBatchSampler` over an :class:`ArrowGroupDataset`'s hashed keys:
    the same batches, in the same order, as over the groups in memory (tested), without holding any text.
    """

    def __init__(self, dataset: ArrowGroupDataset, batch_size: int, seed: int = 0) -> None:  # noqa: D107
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) < batch_size:
            raise ValueError(f"{len(dataset)} groups cannot fill one batch of {batch_size}")
        self.keys = dataset.key_sets()
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.deferred = 0
        self.unused = 0
        self._cache = None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m retriever_training.arrow_data IN.jsonl [...] --out OUT.arrow`` (also ``bmrag-train arrow``)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__, allow_abbrev=False)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: Any) -> None:
    """The converter's options (shared by ``bmrag-train arrow``)."""
    parser.add_argument("inputs", nargs="+", help="JSONL(.gz) files of groups")
    parser.add_argument("--out", required=True, help="the .arrow file to write (train_files accepts it)")
    parser.add_argument("--limit-per-file", type=int, default=None, help="first N groups of each input")
    parser.add_argument("--batch-rows", type=int, default=8192, help="rows per Arrow record batch")


def run(args: Any) -> int:
    report = convert_to_arrow(args.inputs, args.out, limit_per_file=args.limit_per_file, batch_rows=args.batch_rows)
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
