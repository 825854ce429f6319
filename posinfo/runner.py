"""Sweep plumbing around ``job.run``: resume, dry run, crash isolation, GPU choice, summary.

Hydra 1.3 re-raises only the first failure of a multirun, after the whole batch, and
skips ``on_multirun_end`` when a job raised. So in a multirun a job never raises: it
records its outcome in ``<job_dir>/.posinfo_status.json`` and returns; the
``SweepSummary`` callback reads those files at the end, prints the summary and sets the
exit status.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from posinfo.errors import PosinfoError
from posinfo.io import read_result, write_json

log = logging.getLogger(__name__)

STATUS_FILE = ".posinfo_status.json"
# Keys that steer how a job runs, not what it computes: they never make a job "changed".
RUN_CONTROL_KEYS = ("force", "dry_run", "device", "name", "cache", "experiment_name")
RUN_CONTROL_DATA_KEYS = ("num_workers",)


def signature(config: dict) -> dict:
    """The part of a resolved config that determines a job's science."""
    sig = {k: v for k, v in config.items() if k not in RUN_CONTROL_KEYS}
    if isinstance(sig.get("data"), dict):
        sig["data"] = {k: v for k, v in sig["data"].items() if k not in RUN_CONTROL_DATA_KEYS}
    return sig


def is_done(job_dir: Path, config: dict) -> tuple[bool, str]:
    """Whether ``job_dir`` holds an ok result for this very configuration."""
    res = read_result(job_dir)
    if res is None:
        return False, "missing"
    if res.get("status") != "ok":
        return False, res.get("status", "unknown")
    if signature(res.get("config") or {}) != signature(config):
        return False, "config changed"
    return True, "done"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _record(job_dir: Path, status: str, error: str | None = None) -> None:
    write_json(job_dir / STATUS_FILE, {"status": status, "error": error, "time": _now()})


@contextlib.contextmanager
def claim_gpu(device: str) -> Iterator[str]:
    """On a machine with several GPUs, give each concurrent job a GPU of its own.

    Parallel local jobs (joblib) each lock the first free GPU, so they spread over the
    GPUs instead of piling onto GPU 0. Slurm and explicit ``cuda:N`` are left alone.
    """
    if device != "auto" or "SLURM_JOB_ID" in os.environ:
        yield device
        return
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        yield device
        return
    from filelock import FileLock, Timeout

    lock_dir = Path(tempfile.gettempdir()) / "posinfo-gpus"
    lock_dir.mkdir(exist_ok=True)
    while True:
        for i in range(n):
            lock = FileLock(str(lock_dir / f"gpu{i}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                log.info("using GPU %d of %d", i, n)
                yield f"cuda:{i}"
            finally:
                lock.release()
            return
        time.sleep(1.0)


def _hydra_context() -> tuple[Path, dict, list[str], bool]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    return Path(hc.runtime.output_dir), choices, list(hc.overrides.task), hc.mode == RunMode.MULTIRUN


def run(cfg: DictConfig) -> dict | None:
    """The task function behind ``sweep.py``: one job, with resume and crash isolation."""
    from posinfo import job

    job_dir, choices, overrides, multirun = _hydra_context()
    config = OmegaConf.to_container(cfg, resolve=True)
    done, why = is_done(job_dir, config)
    if cfg.get("dry_run"):
        mark = "done (would skip)" if done and not cfg.get("force") else f"would run ({why})"
        print(f"[dry run] {mark:<24} {job_dir}", flush=True)
        _record(job_dir, "dry_run:" + ("done" if done and not cfg.get("force") else "todo"))
        return None
    if done and not cfg.get("force"):
        log.info("done, skipped: %s", job_dir)
        _record(job_dir, "skipped")
        return read_result(job_dir)
    if why == "config changed":
        log.warning("config changed since the last run in %s: re-running", job_dir)
    try:
        with claim_gpu(str(cfg.device)) as dev:
            if dev != str(cfg.device):
                cfg = cfg.copy()
                OmegaConf.update(cfg, "device", dev, force_add=True)
            result = job.run(cfg, job_dir, choices=choices, overrides=overrides)
    except Exception as e:
        res = read_result(job_dir) or {}
        error = res.get("error") or f"{type(e).__name__}: {e}"
        _record(job_dir, "failed", error)
        if not multirun:
            # A single run: one line for the user, the traceback is in the job log.
            print(f"posinfo: error: {error}", file=sys.stderr)
            sys.exit(1)
        return None
    _record(job_dir, "ok")
    return result


def summarize_sweep(sweep_dir: Path, since: str) -> dict[str, Any]:
    """Collect the outcome of every job of a sweep that reported at or after ``since``."""
    out: dict[str, Any] = {"ok": [], "failed": [], "skipped": [], "dry_run:done": [], "dry_run:todo": []}
    for p in sorted(sweep_dir.rglob(STATUS_FILE)):
        try:
            st = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if st.get("time", "") < since:
            continue
        out.setdefault(st["status"], []).append((p.parent, st.get("error")))
    return out


def format_summary(s: dict[str, Any], expected: int | None) -> tuple[str, bool]:
    n_ran = len(s["ok"]) + len(s["failed"])
    lines = []
    if s["dry_run:done"] or s["dry_run:todo"]:
        lines.append(
            f"posinfo dry run: {len(s['dry_run:todo'])} job(s) would run, {len(s['dry_run:done'])} already done"
        )
        return "\n".join(lines), True
    reported = n_ran + len(s["skipped"])
    lines.append(
        f"posinfo sweep: {reported} job(s): {len(s['ok'])} succeeded, {len(s['failed'])} failed, "
        f"{len(s['skipped'])} skipped (done)"
    )
    missing = (expected - reported) if expected is not None else 0
    if missing > 0:
        lines.append(f"  {missing} job(s) never reported (killed, out of memory, or lost by the launcher)")
    for d, err in s["failed"]:
        lines.append(f"  FAILED {d}: {err}")
    return "\n".join(lines), not s["failed"] and missing <= 0
