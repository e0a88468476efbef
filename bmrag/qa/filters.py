"""Metadata filters (year range, publication types) and why a filtered question found nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

YEAR_FIELD = "year"
PUB_TYPE_FIELD = "pub_type"
"""Metadata fields the filters use: ``year`` (int) and ``pub_type`` (one lower-case string per document,
e.g. ``"rct"``, ``"review"``, ``"meta-analysis"``). They exist only when the indexed corpus has them."""


def build_filters(year_min: int | None = None, year_max: int | None = None,
                  pub_types: Sequence[str] | None = None) -> MetadataFilters | None:
    """LlamaIndex metadata filters for a year range and publication types (None when no filter is asked).

    ``year`` bounds are inclusive; ``pub_types`` match the ``pub_type`` field exactly (any of them).

    Raises:
        ValueError: ``year_min > year_max``, a non-integer year, or an empty publication type.
    """
    filters: list[MetadataFilter] = []
    for name, value in (("year_min", year_min), ("year_max", year_max)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an integer year, got {value!r}")
    if year_min is not None and year_max is not None and year_min > year_max:
        raise ValueError(f"year_min ({year_min}) is after year_max ({year_max})")
    if year_min is not None:
        filters.append(MetadataFilter(key=YEAR_FIELD, operator=FilterOperator.GTE, value=year_min))
    if year_max is not None:
        filters.append(MetadataFilter(key=YEAR_FIELD, operator=FilterOperator.LTE, value=year_max))
    if pub_types:
        if isinstance(pub_types, str):
            raise ValueError("pub_types must be a list of strings, not one string")
        cleaned = [t.strip() for t in pub_types]
        if not all(cleaned):
            raise ValueError(f"publication types must be non-empty strings, got {list(pub_types)!r}")
        filters.append(MetadataFilter(key=PUB_TYPE_FIELD, operator=FilterOperator.IN, value=cleaned))
    return MetadataFilters(filters=filters, condition=FilterCondition.AND) if filters else None


def describe_filters(filters: MetadataFilters | None) -> str:
    """``year >= 2010 and pub_type in ['rct']`` (``"none"`` without filters)."""
    if filters is None or not filters.filters:
        return "none"
    return " and ".join(f"{f.key} {f.operator.value} {f.value!r}" for f in filters.filters
                        if isinstance(f, MetadataFilter))


SCAN_LIMIT = 20000
"""Passages inspected when explaining why a filter matched nothing."""


def explain_no_match(collection: Any, filters: MetadataFilters) -> str:
    """Say why a filtered query returned nothing: the field is absent from the index, or no value matches.

    Args:
        collection: The Chroma collection (``store.client``).
        filters: The filters that matched nothing.
    """
    keys = sorted({f.key for f in filters.filters if isinstance(f, MetadataFilter)})
    rows = collection.get(include=["metadatas"], limit=SCAN_LIMIT)["metadatas"] or []
    parts = []
    for key in keys:
        values = [m[key] for m in rows if m and key in m and m[key] != ""]
        if not values:
            parts.append(f"the index has no '{key}' metadata (none of its {len(rows)} passages), so this filter "
                         f"cannot match; index a corpus whose documents carry '{key}'")
            continue
        if key == YEAR_FIELD and all(isinstance(v, (int, float)) for v in values):
            spread = f"years {int(min(values))}-{int(max(values))}"
        else:
            distinct = sorted({str(v) for v in values})
            spread = "values " + ", ".join(distinct[:10]) + (" ..." if len(distinct) > 10 else "")
        parts.append(f"'{key}' is set on {len(values)} of {len(rows)} passages ({spread}), none matching")
    return f"no passage matched the filters ({describe_filters(filters)}): " + "; ".join(parts)


