"""Citation markers in generated answers: parse them, and keep only those that point at given evidence.

Pure functions, no model or framework: the QA chain numbers its evidence ``[1]..[k]`` in the prompt and
passes the generated answer through :func:`validate_citations`. A marker that points outside ``1..k``
(``[7]`` with 5 passages, ``[0]``) is removed from the answer and reported; it is never shown as a
source. Recognised marker forms::

    [2]   [2, 3]   [2,3]   [2; 3]   [2-4]   [2–4]   [2, 4-5]

Brackets whose content is not such a list (``[a]``, ``[see above]``, ``[2.5]``) are left alone: they are
not citations. A range expands to every number in it; a reversed or huge range (more than
:data:`MAX_RANGE` numbers) is invalid as a whole, because no honest answer cites 500 passages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_RANGE = 20
"""Longest range ``[a-b]`` accepted (b - a + 1 numbers); longer ones are reported as invalid."""

# One bracket holding only numbers, ranges and separators. "–" (en dash) is what models often write.
_MARKER = re.compile(r"\[\s*(\d+(?:\s*[-–]\s*\d+)?(?:\s*[,;]\s*\d+(?:\s*[-–]\s*\d+)?)*)\s*\]")
_ITEM = re.compile(r"(\d+)(?:\s*[-–]\s*(\d+))?")
_PMID_PREFIX = re.compile(r"^(?:pmid|pubmed)[:_ ]?(\d{1,9})$", re.IGNORECASE)

PUBMED_URL = "https://pubmed.ncbi.nlm.nih.gov/{pmid}/"


@dataclass(frozen=True)
class InvalidCitation:
    """A citation removed from an answer.

    Attributes:
        marker: The bracket as the model wrote it, e.g. ``"[7]"`` or ``"[2-40]"``.
        number: The offending number (for a bad range, its start).
        reason: Why it was removed, e.g. ``"out of range: only 5 evidence passages were given"``.
    """

    marker: str
    number: int
    reason: str


@dataclass
class CitationCheck:
    """The result of :func:`validate_citations`.

    Attributes:
        text: The answer with invalid numbers removed (a marker left empty is removed entirely;
            the kept numbers are rewritten as ``[2, 3]``).
        cited: Valid evidence numbers in order of first appearance, no repeats.
        invalid: Every removed number, in order of appearance (repeats included).
        n_evidence: How many passages the answer could cite.
    """

    text: str
    cited: list[int] = field(default_factory=list)
    invalid: list[InvalidCitation] = field(default_factory=list)
    n_evidence: int = 0

    @property
    def has_citations(self) -> bool:
        """True when at least one valid citation survived."""
        return bool(self.cited)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "cited": list(self.cited), "invalid": [asdict(i) for i in self.invalid],
                "n_evidence": self.n_evidence}


def parse_citations(text: str) -> list[tuple[str, list[int] | None]]:
    """Find citation markers and the numbers each one cites.

    Args:
        text: A generated answer.

    Returns:
        ``(marker, numbers)`` per marker in order of appearance. ``numbers`` expands ranges and keeps the
        order written; it is None for a range that is reversed or longer than :data:`MAX_RANGE`.
    """
    found: list[tuple[str, list[int] | None]] = []
    for match in _MARKER.finditer(text):
        numbers: list[int] | None = []
        for item in _ITEM.finditer(match.group(1)):
            start, end = int(item.group(1)), item.group(2)
            if end is None:
                numbers.append(start)
                continue
            stop = int(end)
            if stop < start or stop - start + 1 > MAX_RANGE:
                numbers = None
                break
            numbers.extend(range(start, stop + 1))
        found.append((match.group(0), numbers))
    return found


def _tidy(text: str) -> str:
    # Removing a marker can leave "word ." or double spaces; fix only what removal created.
    text = re.sub(r"[ \t]+([.,;:!?])", r"\1", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return re.sub(r"[ \t]+\n", "\n", text).strip()


def validate_citations(text: str, n_evidence: int) -> CitationCheck:
    """Keep the citations that point at one of ``n_evidence`` passages; remove and report the rest.

    Args:
        text: A generated answer with ``[n]`` markers.
        n_evidence: Number of passages that were in the prompt, numbered ``1..n_evidence``.

    Returns:
        A :class:`CitationCheck` with the cleaned text, the cited numbers and the removed ones.

    Raises:
        ValueError: If ``n_evidence`` is negative.

    Example:
        >>> check = validate_citations("Aspirin inhibits COX-1 [1][7].", n_evidence=5)
        >>> check.text, check.cited, [i.marker for i in check.invalid]
        ('Aspirin inhibits COX-1 [1].', [1], ['[7]'])
    """
    if n_evidence < 0:
        raise ValueError(f"n_evidence must be >= 0, got {n_evidence}")
    cited: list[int] = []
    invalid: list[InvalidCitation] = []

    def replace(match: re.Match[str]) -> str:
        marker = match.group(0)
        (_, numbers), = parse_citations(marker)
        if numbers is None:
            start = int(_ITEM.match(match.group(1)).group(1))  # type: ignore[union-attr]
            invalid.append(InvalidCitation(marker, start, f"range is reversed or longer than {MAX_RANGE}"))
            return ""
        kept: list[int] = []
        for number in numbers:
            if number < 1 or number > n_evidence:
                reason = ("evidence is numbered from 1" if number < 1
                          else f"out of range: only {n_evidence} evidence passage(s) were given")
                invalid.append(InvalidCitation(marker, number, reason))
            elif number not in kept:
                kept.append(number)
        for number in kept:
            if number not in cited:
                cited.append(number)
        return f"[{', '.join(str(n) for n in kept)}]" if kept else ""

    cleaned = _MARKER.sub(replace, text)
    return CitationCheck(text=_tidy(cleaned) if invalid else cleaned.strip(), cited=cited, invalid=invalid,
                         n_evidence=n_evidence)


def pmid_of(doc_id: str, metadata: Mapping[str, Any] | None = None) -> str | None:
    """The PubMed id of a document, when it is known to have one.

    A PMID is taken from ``metadata["pmid"]``, or from an id written ``PMID:123`` / ``pubmed_123``. Bare
    numeric ids are *not* assumed to be PMIDs (SciFact's numeric ids are Semantic Scholar ids); set
    ``metadata["pmid"]`` or ``metadata["id_type"] = "pmid"`` when your ids are PMIDs.
    """
    metadata = metadata or {}
    value = metadata.get("pmid")
    if value not in (None, ""):
        text = str(value).strip()
        return text if text.isdigit() else None
    if str(metadata.get("id_type", "")).lower() == "pmid" and str(doc_id).isdigit():
        return str(doc_id)
    match = _PMID_PREFIX.match(str(doc_id).strip())
    return match.group(1) if match else None


def source_url(doc_id: str, metadata: Mapping[str, Any] | None = None) -> str | None:
    """A link for a source: ``metadata["url"]`` if given, else its PubMed page when it has a PMID."""
    metadata = metadata or {}
    url = metadata.get("url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return url
    pmid = pmid_of(doc_id, metadata)
    return PUBMED_URL.format(pmid=pmid) if pmid else None


def number_evidence(doc_ids: Sequence[str]) -> dict[int, str]:
    """Map the prompt numbers ``1..k`` to document ids, in the order the evidence is shown."""
    return {i: doc_id for i, doc_id in enumerate(doc_ids, start=1)}
