"""Argument checks shared by every public constructor: unknown keyword arguments are errors, never ignored."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


def reject_unknown_kwargs(kwargs: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Raise ``TypeError`` naming unknown keyword arguments, a close match, and every valid name."""
    if not kwargs:
        return
    valid = sorted(valid)
    parts = []
    for key in sorted(kwargs):
        close = difflib.get_close_matches(key, valid, n=1)
        parts.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{where} got unknown keyword argument(s) {', '.join(parts)}; valid: {', '.join(valid)}")


def check_texts(texts: Any, what: str) -> list[Any]:
    """``texts`` as a list; a single string/mapping or None is a ``TypeError`` saying how to pass it."""
    if isinstance(texts, (str, bytes)) or isinstance(texts, Mapping):
        raise TypeError(f"{what} must be a list, got a single {type(texts).__name__}; wrap it in a list")
    if texts is None:
        raise TypeError(f"{what} must be a list of strings, got None")
    return list(texts)


def check_text(text: Any, index: int, what: str) -> str:
    """``text`` when it is a non-empty string; else an error naming ``what[index]`` and what is wrong."""
    if text is None:
        raise TypeError(f"{what}[{index}] is None; expected a non-empty string")
    if not isinstance(text, str):
        raise TypeError(f"{what}[{index}] is a {type(text).__name__}; expected a non-empty string")
    if not text.strip():
        raise ValueError(f"{what}[{index}] is empty or whitespace only; there is nothing to embed")
    return text
