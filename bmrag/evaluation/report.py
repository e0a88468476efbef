"""What every result file records and how it is written: environment, portable paths, atomic JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bmrag._version import __version__


def environment() -> dict[str, Any]:
    """Git commit (and whether the tree had local changes), library versions, machine: for reproducibility."""
    import torch
    import transformers

    root = Path(__file__).resolve().parents[2]
    commit, dirty = None, None
    # GIT_OPTIONAL_LOCKS=0: read-only, never refreshes the index while others work in the repo.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, env=env,
                                timeout=10, check=True).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, env=env, timeout=10, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout (installed package): recorded as None
    return {"git_commit": commit, "git_dirty": dirty, "bmrag_version": __version__,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}


def portable(value: Any) -> Any:
    """``value`` with this machine's absolute paths made relative, for files that are committed and shared.

    In every string: ``<cwd>/`` becomes ``""``, ``<cwd's parent>/`` becomes ``"../"`` and ``<home>/`` becomes
    ``"~/"`` (so the shared data beside a checkout is recorded as ``../shared/data``). Dicts, lists
    and tuples are copied; nothing is mutated.
    """
    if isinstance(value, str):
        cwd = Path.cwd()
        for prefix, short in ((f"{cwd}{os.sep}", ""), (f"{cwd.parent}{os.sep}", f"..{os.sep}"),
                              (f"{Path.home()}{os.sep}", f"~{os.sep}")):
            if len(prefix) > 1:  # never rewrite a bare "/"
                value = value.replace(prefix, short)
        return value
    if isinstance(value, dict):
        return {portable(k): portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(v) for v in value)
    return value


def write_result(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a result as indented JSON (atomically: a reader never sees half a file), paths made :func:`portable`."""
    result = portable(result)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def reject_unknown(kwargs: dict[str, Any], function: Any) -> None:
    """Raise ``TypeError`` naming unknown keyword arguments of ``function`` (with a close match) and the valid ones."""
    if not kwargs:
        return
    import difflib
    import inspect

    valid = [name for name in inspect.signature(function).parameters if name not in ("model", "kwargs")]
    parts = []
    for key in sorted(kwargs):
        close = difflib.get_close_matches(key, valid, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{function.__name__}() got unknown keyword argument(s) {', '.join(parts)}; "
                    f"valid: {', '.join(valid)}")
