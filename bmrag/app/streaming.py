"""Token streaming for the app: the chain calls ``generate`` as usual while each new piece reaches the page."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bmrag.generators import Generation

if TYPE_CHECKING:
    from bmrag.generators import Generator


class StreamingGenerator:
    """Wraps a :class:`~bmrag.generators.Generator` so that ``generate`` streams tokens to a per-thread sink.

    The chain calls ``generate(messages)`` as usual and gets the full :class:`~bmrag.generators.Generation`
    back; meanwhile each new piece of text is passed to the sink that the calling thread registered with
    :meth:`streaming`. Everything else (backend, model, budgets, token counting) is the wrapped generator's.
    Token counts: vLLM's stream does not report usage and the local streamer yields text, so
    ``completion_tokens`` is the answer re-tokenised (local) or None (vLLM); ``finish_reason`` is the
    server's (vLLM) or ``"length"`` when the re-tokenised answer fills the budget (local).

    Args:
        generator: The generator to wrap.
    """

    def __init__(self, generator: Generator) -> None:
        self.inner = generator
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes this class lacks: backend, model, llm, describe(), count_tokens(), ...
        return getattr(self.__dict__["inner"], name)

    @classmethod
    def wrap(cls, generator: Generator | StreamingGenerator) -> StreamingGenerator:
        """``generator`` streaming (returned as is when it already is a :class:`StreamingGenerator`)."""
        return generator if isinstance(generator, StreamingGenerator) else cls(generator)

    def streaming(self, sink: Callable[[str], None] | None, held_lock: threading.Lock | None = None) -> _Streaming:
        """Context manager: send this thread's generated text (so far) to ``sink``.

        ``held_lock`` is a lock the calling thread holds around the chain; it is released while a remote
        (vLLM) server generates, so other users' retrieval can run meanwhile.
        """
        return _Streaming(self._local, sink, held_lock)

    def generate(self, messages: Sequence[Any]) -> Generation:
        """Generate (greedy) by streaming, feeding the registered sink; returns the whole answer."""
        sink = getattr(self._local, "sink", None)
        held = getattr(self._local, "held_lock", None)
        release = held is not None and self.inner.backend == "vllm"
        if release:
            held.release()
        try:
            text, last = "", None
            for chunk in self.inner.llm.stream_chat(list(messages)):
                text += chunk.delta or ""
                last = chunk
                if sink is not None:
                    sink(text)
        finally:
            if release:
                held.acquire()
        text = text.strip()
        if self.inner.backend == "local":
            tokens = self.inner.count_tokens(text)
            finish = "length" if tokens >= self.inner.max_new_tokens else "stop"
        else:
            tokens = None
            choices = getattr(getattr(last, "raw", None), "choices", None) or []
            finish = getattr(choices[0], "finish_reason", None) if choices else None
        return Generation(text=text, completion_tokens=tokens, finish_reason=finish)


class _Streaming:
    def __init__(self, local: threading.local, sink: Callable[[str], None] | None,
                 held_lock: threading.Lock | None) -> None:
        self._local, self._sink, self._held = local, sink, held_lock

    def __enter__(self) -> None:
        self._local.sink, self._local.held_lock = self._sink, self._held

    def __exit__(self, *exc: object) -> None:
        self._local.sink = self._local.held_lock = None
