"""GPU slots: parallel jobs on a machine with several GPUs spread over them."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from posinfo.names import GPU_LOCK_DIR_ENV

log = logging.getLogger(__name__)

def gpu_lock_dir() -> Path:
    env = os.environ.get(GPU_LOCK_DIR_ENV)
    if env:
        return Path(env)
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"posinfo-gpus-{uid}"


def _gpu_ids(n: int) -> list[str]:
    """Names of the visible GPUs for the lock files: physical ids when CUDA_VISIBLE_DEVICES says."""
    vis = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [re.sub(r"[^\w.-]", "_", v) for v in vis[:n]] if len(vis) >= n else [str(i) for i in range(n)]


@contextlib.contextmanager
def claim_gpu(device: str, max_jobs_per_gpu: int = 256) -> Iterator[str]:
    """On a machine with several GPUs, give each concurrent job the least busy GPU.

    For ``device=auto`` or ``cuda`` with two or more visible GPUs, the job holds a lock
    file ``gpu<id>.<slot>.lock`` (in ``$POSINFO_GPU_LOCK_DIR``, default
    ``$TMPDIR/posinfo-gpus-<uid>``) for as long as it runs, taking slot 0 of every GPU
    before slot 1 of any: parallel jobs (joblib) spread over the GPUs instead of piling
    onto GPU 0, and more jobs than GPUs share them evenly. A lock dies with its process.
    One GPU, the CPU, or an explicit ``cuda:N`` are left as they are.
    """
    device = str(device)
    if device not in ("auto", "cuda"):
        yield device
        return
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        yield device
        return
    from filelock import FileLock, Timeout

    lock_dir = gpu_lock_dir()
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        probe = lock_dir / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        log.warning("cannot use %s for GPU locks (%s): not spreading jobs over the GPUs", lock_dir, e)
        yield device
        return
    ids = _gpu_ids(n)
    for slot in range(max_jobs_per_gpu):
        for i in range(n):
            lock = FileLock(str(lock_dir / f"gpu{ids[i]}.{slot}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                log.info("using GPU %d of %d%s", i, n, f" (shared by {slot + 1} jobs)" if slot else "")
                yield f"cuda:{i}"
            finally:
                lock.release()
            return
    yield device  # more than max_jobs_per_gpu jobs per GPU: give up spreading
