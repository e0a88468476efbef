"""One way to reach a Chroma index, embedded or served: ``--index DIR`` or ``--index http://HOST:PORT``.

* A directory: ``chromadb.PersistentClient`` (embedded, one process at a time: Chroma's standalone client is
  not process-safe, so a ``bmrag index`` run while the app serves the same directory is unsafe).
* An ``http(s)://`` URL: ``chromadb.HttpClient`` to a Chroma server (``bmrag serve-index DIR --port P``, i.e.
  ``chroma run``); any number of processes may read and write through it at once.

:func:`index_location` turns what the user typed into a ``Path`` or a URL string (a ``Path`` would collapse
``http://`` to ``http:/``), and :func:`open_client` opens the matching client.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

IndexLocation = Path | str
"""A ``Path`` for an embedded index, a ``str`` URL (``http://host:port``) for a Chroma server."""

_URL = re.compile(r"^https?:/{1,2}", re.IGNORECASE)
DEFAULT_PORT = 8100


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for ``http://...`` / ``https://...`` (also ``http:/...``, what ``Path()`` makes of a URL)."""
    return bool(_URL.match(os.fspath(location)))


def index_location(location: str | os.PathLike[str]) -> IndexLocation:
    """A user's ``--index`` value as a ``Path`` (expanded) or a normalised ``http(s)://host:port`` URL.

    Raises:
        ValueError: A URL without a host, or with a path (Chroma servers are addressed by host and port only).
    """
    text = os.fspath(location)
    if not is_url(text):
        return Path(text).expanduser()
    text = _URL.sub(lambda m: m.group(0).rstrip("/") + "//", text, count=1)
    parts = urlsplit(text)
    if not parts.hostname:
        raise ValueError(f"--index {text!r}: a Chroma server URL needs a host, e.g. http://127.0.0.1:{DEFAULT_PORT}")
    if parts.path not in ("", "/"):
        raise ValueError(f"--index {text!r}: a Chroma server URL is http(s)://HOST:PORT, without a path")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme.lower()}://{parts.hostname}:{port}"


def open_client(location: str | os.PathLike[str]) -> Any:
    """``PersistentClient`` for a directory, ``HttpClient`` for a URL; telemetry off in both.

    Raises:
        ConnectionError: No Chroma server answers at the URL (the message says how to start one).
    """
    import chromadb  # here, not at import: index_location() is used by light modules (demo, ui)
    from chromadb.config import Settings

    where = index_location(location)
    settings = Settings(anonymized_telemetry=False)
    if isinstance(where, Path):
        return chromadb.PersistentClient(path=str(where), settings=settings)
    parts = urlsplit(where)
    try:
        return chromadb.HttpClient(host=parts.hostname, port=parts.port, ssl=parts.scheme == "https",
                                   settings=settings)
    except Exception as err:  # chromadb raises ValueError/httpx errors for an unreachable server
        raise ConnectionError(f"no Chroma server answered at {where} ({type(err).__name__}: {err}); start one with "
                              f"`bmrag serve-index DIR --port {parts.port}`") from err
