"""The README's examples run as written (they import only the public API)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_retrieves_and_reranks_the_colorectal_passage_first(capsys):
    ranked = _load("quickstart").main([])
    assert ranked[0] == "crc"
    assert len(ranked) == 2
    assert "first stage" in capsys.readouterr().out
