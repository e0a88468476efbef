"""How specific a question word is: its document frequency in the bundled biomedical corpus.

A quote can be verbatim and on the right subject yet miss the question's one specific word: asked about
harlequin ichthyosis, with that topic's pages not indexed, the nearest pages are about lamellar ichthyosis and
never say "harlequin". Generic words go unmentioned all the time ("outlook", "feasible", "related"), so what
matters is how rare the unmentioned word is. Rarity comes from document frequencies over
``bmrag/data/demo_corpus.jsonl.gz`` (35,443 MedQuAD pages and PubMed abstracts), counted per 5-letter stem as
:func:`bmrag.qa.support.unmentioned_terms` matches words, and shipped as ``bmrag/data/term_df.json.gz``
(``tools/build_term_df.py`` rebuilds it byte for byte; a test checks that).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmrag.bm25 import tokenize

DF_FILE = Path(__file__).resolve().parents[1] / "data" / "term_df.json.gz"
"""The shipped document frequencies (built from the bundled demo corpus)."""
STEM_LENGTH = 5
"""Words are counted by their first 5 letters, the stem :func:`bmrag.qa.support.unmentioned_terms` matches."""
MIN_DF = 2
"""Stems in fewer documents are not stored: one document or none gives the same (maximal) rarity."""


def stem(word: str) -> str:
    """The counted stem of a lower-case token (its first :data:`STEM_LENGTH` characters)."""
    return word[:STEM_LENGTH]


@dataclass(frozen=True)
class DocumentFrequencies:
    """Document frequencies of stems over a corpus of ``documents`` documents.

    Attributes:
        documents: How many documents were counted.
        df: Stem -> number of documents containing it (stems below ``min_df`` left out).
        source: What was counted (a file name).
        min_df: The smallest frequency stored.
    """

    documents: int
    df: dict[str, int]
    source: str
    min_df: int = MIN_DF

    def rarity(self, word: str) -> float:
        """``log((N + 1) / (df + 1)) / log(N + 1)``: 0 for a word in every document, ~1 for one in none.

        A stem that was not stored counts as in one document (it was in fewer than ``min_df``).
        """
        df = self.df.get(stem(word.lower()), 1)
        return math.log((self.documents + 1) / (df + 1)) / math.log(self.documents + 1)

    def to_json_bytes(self) -> bytes:
        """The gzipped JSON file (no timestamp in the gzip header, keys sorted: rebuilds are byte-identical)."""
        body = json.dumps({"source": self.source, "documents": self.documents, "stem_length": STEM_LENGTH,
                           "min_df": self.min_df, "df": dict(sorted(self.df.items()))},
                          separators=(",", ":")).encode("utf-8")
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as handle:
            handle.write(body)
        return out.getvalue()


def count_document_frequencies(texts: Iterable[str], *, source: str, min_df: int = MIN_DF) -> DocumentFrequencies:
    """Count in how many of ``texts`` each stem occurs (bmrag's BM25 tokenizer: lower case, no stop words)."""
    counts: Counter[str] = Counter()
    documents = 0
    for text in texts:
        documents += 1
        counts.update({stem(token) for token in tokenize(text)})
    if documents == 0:
        raise ValueError(f"no documents to count in {source}")
    return DocumentFrequencies(documents, {s: n for s, n in counts.items() if n >= min_df}, source, min_df)


def corpus_texts(path: str | Path) -> Iterable[str]:
    """Title + text of each line of a BEIR ``corpus.jsonl`` (``.gz`` read as gzip)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record: dict[str, Any] = json.loads(line)
                yield f"{record.get('title') or ''} {record['text']}"
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}, line {number}: not a corpus record with a 'text' field ({err})") from err


def load_document_frequencies(path: str | Path = DF_FILE) -> DocumentFrequencies:
    """Read a file written by :meth:`DocumentFrequencies.to_json_bytes`.

    Raises:
        FileNotFoundError: No such file. ValueError: Not such a file, or counted with another stem length.
    """
    path = Path(path)
    try:
        data = json.loads(gzip.decompress(path.read_bytes()))
        if data["stem_length"] != STEM_LENGTH:
            raise ValueError(f"stem length {data['stem_length']}, this version counts {STEM_LENGTH}")
        return DocumentFrequencies(int(data["documents"]), {str(k): int(v) for k, v in data["df"].items()},
                                   str(data["source"]), int(data["min_df"]))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a bmrag document-frequency file ({err})") from err


@functools.cache
def shipped() -> DocumentFrequencies:
    """The shipped frequencies (``bmrag/data/term_df.json.gz``), read once."""
    return load_document_frequencies(DF_FILE)
