"""Each warning once per sweep, with a count.

Every job of a sweep logs the same warnings (an unreadable image in the shared data folder,
random weights as a control): the console shows each distinct warning the first time a job
logs it, and the sweep summary says in how many jobs it came up. A job's own ``job.log``
keeps every line. The records live in ``<sweep>/.posinfo_warnings/<sweep id>/`` (one file
per warning, created atomically by the first job, appended to by the others), so this works
across forked jobs, joblib workers and Slurm jobs alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

from posinfo.names import WARNINGS_DIR


def _folder(sweep_dir: Path, sweep_id: str) -> Path:
    return Path(sweep_dir) / WARNINGS_DIR / sweep_id


class OncePerSweep(logging.Filter):
    """Passes a warning to the console only the first time any job of the sweep logs it."""

    def __init__(self, sweep_dir: Path, sweep_id: str):
        super().__init__()
        self.folder = _folder(sweep_dir, sweep_id)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        msg = record.getMessage()
        name = hashlib.sha1(msg.encode()).hexdigest()[:16]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / f"{name}.count", "a") as fh:  # one short line: an atomic append
                fh.write(f"{os.getpid()}\n")
            fd = os.open(self.folder / f"{name}.msg", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False  # another job said it already
        except OSError:
            return True  # no record possible: say it
        with os.fdopen(fd, "w") as fh:
            fh.write(msg)
        return True


@contextlib.contextmanager
def once_per_sweep(sweep_dir: Path, sweep_id: str | None) -> Iterator[None]:
    """While a job runs: repeated warnings leave the console (not job.log) alone."""
    if not sweep_id:
        yield
        return
    flt = OncePerSweep(sweep_dir, sweep_id)
    console = [h for h in logging.getLogger().handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for h in console:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in console:
            h.removeFilter(flt)


def repeated(sweep_dir: Path, sweep_id: str | None) -> list[tuple[str, int]]:
    """Warnings of this sweep that more than one job logged, and how often; the records go."""
    folder = _folder(sweep_dir, sweep_id) if sweep_id else None
    if folder is None or not folder.is_dir():
        return []
    out = []
    for msg_file in sorted(folder.glob("*.msg")):
        with contextlib.suppress(OSError):
            n = len((msg_file.with_suffix(".count")).read_text().splitlines())
            if n > 1:
                out.append((msg_file.read_text(), n))
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()
    return out
