"""Where the tests find the shared biomedical datasets (``../shared/data`` next to the repository)."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _locate() -> Path:
    # $BMRAG_DATA (the variable the CLI reads) wins; then ../shared/data beside the checkout, then the
    # development machines' fixed location, so a clone anywhere (e.g. /tmp) still runs the data tests.
    if os.environ.get("BMRAG_DATA"):
        return Path(os.environ["BMRAG_DATA"])
    for candidate in (_REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    return _REPO.parent / "shared" / "data"


SHARED_DATA = _locate()
"""Root holding one folder per dataset (scifact/, biosses/, ...); tests needing it skip when it is absent."""
