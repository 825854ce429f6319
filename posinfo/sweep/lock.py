"""A sweep folder is owned by one command at a time.

The launching process holds ``<sweep>/.posinfo_sweep.lock`` (an OS file lock, released
when the process ends however it ends: a lock left by a killed sweep is stale and simply
taken) and describes itself in ``.posinfo_sweep.json``. Each running job holds
``<job>/.posinfo_job.lock`` in the process that runs it, so jobs that outlive their
sweep (Slurm jobs still running after the command that submitted them was interrupted)
count as owners too. A second command refuses with one line naming the owner, or waits
for it with ``sweep.wait=true``. On a cluster the locks need a file system whose locks
work across nodes (NFSv4, Lustre and GPFS with locking enabled).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from posinfo.errors import PosinfoError
from posinfo.io import write_json
from posinfo.names import JOB_LOCK, STATUS_FILE, SWEEP_LOCK, SWEEP_OWNER, utc_now

POLL_S = 2.0


def _held(path: Path) -> bool:
    """Whether another process holds the lock file ``path`` now."""
    if not path.exists():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def running_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders below ``sweep_dir`` whose job is running in some process now."""
    return sorted(p.parent for p in Path(sweep_dir).rglob(STATUS_FILE) if _held(p.parent / JOB_LOCK))


def _owner_text(sweep_dir: Path) -> str:
    try:
        o = json.loads((Path(sweep_dir) / SWEEP_OWNER).read_text())
        return f"pid {o['pid']} on {o['host']}, since {o['started']}: {o['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another posinfo command"


class SweepLock:
    """The launching process's claim on a sweep folder."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = Path(sweep_dir)
        self.lock = FileLock(str(self.sweep_dir / SWEEP_LOCK))

    def acquire(self, wait: bool) -> None:
        """Own the folder, or raise PosinfoError naming its owner (``wait``: block until free)."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            why = f"sweep folder {self.sweep_dir} is in use by {_owner_text(self.sweep_dir)}"
            if not wait:
                raise PosinfoError(f"{why}: wait for it to finish, stop it, add sweep.wait=true to wait, or give "
                                   "this sweep a folder of its own with name=TAG") from None
            print(f"posinfo: {why}; waiting (sweep.wait=true)", file=sys.stderr, flush=True)
            self.lock.acquire()
        said = False
        while running := running_jobs(self.sweep_dir):
            why = (f"sweep folder {self.sweep_dir} has {len(running)} job(s) still running from an earlier command "
                   f"(e.g. {running[0].name})")
            if not wait:
                self.lock.release()
                raise PosinfoError(f"{why}: wait for them to finish, cancel them, or add sweep.wait=true to wait")
            if not said:
                print(f"posinfo: {why}; waiting (sweep.wait=true)", file=sys.stderr, flush=True)
                said = True
            time.sleep(POLL_S)
        write_json(self.sweep_dir / SWEEP_OWNER, {"pid": os.getpid(), "host": platform.node(), "started": utc_now(),
                                                  "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])})

    def release(self) -> None:
        with contextlib.suppress(OSError):
            (self.sweep_dir / SWEEP_OWNER).unlink(missing_ok=True)
        self.lock.release(force=True)


@contextlib.contextmanager
def job_lock(job_dir: Path) -> Iterator[None]:
    """Held by the process that runs a job, for as long as it runs."""
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(job_dir) / JOB_LOCK))
    with lock:
        yield
