"""Helpers shared by tests/test_ui.py and tests/test_browser.py: a small real index and a citing LLM stand-in.

Only the LLM is a test double (:class:`CitingStandInLLM`): SmolLM2-135M-Instruct, the only generator that
installs offline, rarely writes citation markers itself and takes seconds per answer, so tests that must see
the model's own ``[1]`` use the stand-in (test_ui.py also runs the real model once, cited by attribution).
Retrieval (all-MiniLM-L6-v2 through bmrag's encoder, a real Chroma index), the chain, the citation check and
the UI are the real ones.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

STROKE = {"medquad-8-0000124-6", "medquad-6-0000261-1", "medquad-7-0000066-15"}
ASTHMA = {"medquad-8-0000010-4", "medquad-2-0000491-2", "medquad-4-0000065-1"}
STATINS_AF = "pubmedqa-21881325"
STATINS_QUESTION = "Do statins taken before heart surgery prevent atrial fibrillation?"

_INDEX: dict[str, Path] = {}


def small_index(root: Path) -> Path:
    """Index the demo's answer documents plus 16 distractors (real model, real Chroma) once per test run."""
    if "dir" in _INDEX:
        return _INDEX["dir"]
    from bmrag.index.build import build_index
    from bmrag.index.open import load_embedding
    from bmrag.index.sources import read_documents

    corpus, _ = read_documents(None)
    wanted = STROKE | ASTHMA | {STATINS_AF, "pubmedqa-11340218"}
    ids = list(corpus)
    keep = [i for i in ids if i in wanted] + [i for i in ids if i not in wanted][::20][:16]
    path = root / "small.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for doc_id in keep:
            handle.write(json.dumps({"_id": doc_id, **corpus[doc_id]}) + "\n")
    documents, _ = read_documents(path)
    store, _ = build_index(documents, root / "index", load_embedding("all-MiniLM-L6-v2"), show_progress=False)
    store.close()
    _INDEX["dir"] = root / "index"
    return _INDEX["dir"]


class CitingStandInLLM(CustomLLM):
    """TEST DOUBLE standing in for the LLM: answers with the first sentence of source [1], cited as ``[1]``.

    It streams word by word (``delay`` seconds apart) so the UI's streaming path is exercised.
    """

    delay: float = 0.01

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=2048, num_output=64, model_name="citing-stand-in", is_chat_model=False)

    def _answer(self, prompt: str) -> str:
        sources = prompt.rsplit("Sources:", 1)[-1]
        match = re.search(r"\[1\]\s*(.+)", sources)
        first = match.group(1) if match else "No source was given"
        sentence = re.split(r"(?<=[.!?])\s", first.strip(), maxsplit=1)[0].rstrip(".!? ")
        return f"{' '.join(sentence.split()[:25])} [1]."

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._answer(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        words = self._answer(prompt).split(" ")

        def gen() -> Iterator[CompletionResponse]:
            text = ""
            for i, word in enumerate(words):
                delta = word if i == 0 else " " + word
                text += delta
                time.sleep(self.delay)
                yield CompletionResponse(text=text, delta=delta)

        return gen()


def stand_in_generator():
    """A :class:`bmrag.generators.Generator` around :class:`CitingStandInLLM`, named as the test double it is."""
    from bmrag.generators import Generator

    return Generator(llm=CitingStandInLLM(), backend="local", model="citing-stand-in (test double)",
                     endpoint="in-process test double", max_new_tokens=64, context_window=2048)


def free_port() -> int:
    """A TCP port nothing listens on right now (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
