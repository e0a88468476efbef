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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

IndexLocation = Path | str
"""A ``Path`` for an embedded index, a ``str`` URL (``http://host:port``) for a Chroma server."""

_URL = re.compile(r"^https?:/{1,2}", re.IGNORECASE)
DEFAULT_PORT = 8100
HEALTHY_TIMEOUT_S = 120.0


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


# ------------------------------------------------------------------------------------------- serve-index
def chroma_command(path: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> list[str]:
    """``chroma run --path DIR --host HOST --port PORT`` with the ``chroma`` script of this environment."""
    exe = Path(sys.executable).with_name("chroma")
    if not exe.is_file():
        raise FileNotFoundError(f"no `chroma` command next to {sys.executable}: reinstall chromadb here")
    return [str(exe), "run", "--path", str(Path(path).expanduser()), "--host", host, "--port", str(port)]


def start_server(path: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 log: IO[str] | None = None) -> subprocess.Popen:
    """Start ``chroma run`` in its own process group (stop it with :func:`bmrag.serve.stop`)."""
    Path(path).expanduser().mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    return subprocess.Popen(chroma_command(path, host=host, port=port), env=env, stdout=log,
                            stderr=subprocess.STDOUT if log else None, start_new_session=True)


def wait_healthy(process: subprocess.Popen, url: str, *, timeout: float = HEALTHY_TIMEOUT_S) -> float:
    """Poll ``GET /api/v2/heartbeat`` until the server answers; returns the seconds it took.

    Raises:
        RuntimeError: The process exited first, or ``timeout`` passed.
    """
    start = time.perf_counter()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the Chroma server exited with code {process.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2.0):  # noqa: S310 (local URL)
                return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"the Chroma server at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def run_serve_index(path: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                    out: IO[str] | None = None) -> int:
    """``bmrag serve-index``: serve an index directory with Chroma's own server until stopped."""
    import signal

    from bmrag.serve import stop

    out = out or sys.stdout
    if is_url(path):
        raise ValueError(f"serve-index takes an index directory, got the URL {os.fspath(path)!r}")
    url = f"http://{host}:{port}"
    process = start_server(path, host=host, port=port)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        seconds = wait_healthy(process, url)
        print(f"Chroma is serving {Path(path).expanduser()} at {url} (up after {seconds:.1f} s, pid {process.pid}).",
              file=out)
        print(f"Use it with --index {url} (bmrag index, ask, search, app); several processes may share it.", file=out)
        print("Stop with Ctrl-C.", file=out, flush=True)
        return int(process.wait() or 0)
    except KeyboardInterrupt:
        print("\nstopping Chroma ...", file=out, flush=True)
        return 0
    finally:
        stop(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
