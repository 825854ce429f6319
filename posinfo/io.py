"""Atomic outputs: every file appears under its final name complete, or not at all."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from posinfo.names import RESULT_FILE



def user_path(value: str | os.PathLike) -> Path:
    """A path as users write it: ``~`` and ``$VARS`` (``$HOME``) expanded."""
    return Path(os.path.expanduser(os.path.expandvars(str(value))))


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; read once, before any worker thread writes
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The file gets the mode a plain ``open`` would give it (0644 under the usual umask),
    not mkstemp's 0600: results on a shared cluster stay readable by the group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def jsonable(obj: Any) -> Any:
    """NaN/inf are not JSON: they become null, so readers never meet a bare NaN token."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def read_result(job_dir: str | Path) -> dict | None:
    """The job's result.json, or None if it is absent or unreadable."""
    p = Path(job_dir) / RESULT_FILE
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def quiet_closed_pipe() -> Iterator[None]:
    """A command whose reader stops early (``… | head -1``) ends quietly, not with a
    BrokenPipeError traceback: what it printed was all the reader wanted."""
    import sys

    try:
        yield
        sys.stdout.flush()  # inside: a failing flush is caught here, not at exit
    except BrokenPipeError:
        # Python flushes stdout once more at exit; /dev/null keeps that flush from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
