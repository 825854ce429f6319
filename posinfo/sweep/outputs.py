"""Results are replaced, never destroyed.

A run writes into ``<job>/.staging/`` and its outputs take their final names only when
it succeeds: the outputs they replace are deleted when the configuration is the same
(a forced re-run), and kept in ``<job>/previous/`` when it changed. A run that fails or
is interrupted leaves the folder's result as it was; its own failed result goes to
``<job>/failed/`` beside an ok result, or into the folder when there was none.
Every file under a final name is complete (each is written atomically, result.json last).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from posinfo.io import read_result
from posinfo.names import FAILED_DIR, JOB_LOG, JOB_OUTPUTS, PREVIOUS_DIR, RESULT_FILE, STAGING_DIR


def fresh_staging(job_dir: Path) -> Path:
    """An empty ``.staging`` folder for a run of ``job_dir``."""
    stage = Path(job_dir) / STAGING_DIR
    remove_staging(job_dir)
    stage.mkdir(parents=True)
    return stage


def remove_staging(job_dir: Path) -> None:
    shutil.rmtree(Path(job_dir) / STAGING_DIR, ignore_errors=True)


def has_ok_result(job_dir: Path) -> bool:
    res = read_result(job_dir)
    return bool(res and res.get("status") == "ok")


def _move_outputs(src: Path, dst: Path) -> None:
    """Move the run outputs in ``src`` onto their names in ``dst``: result.json last."""
    for name in sorted(JOB_OUTPUTS, key=lambda n: n == RESULT_FILE):
        if (src / name).exists():
            os.replace(src / name, dst / name)


def _carry_log(stage: Path, job_dir: Path) -> None:
    """What the run logged into its staging folder (a traceback) joins the job's log."""
    with contextlib.suppress(OSError):
        text = (stage / JOB_LOG).read_text()
        with open(job_dir / JOB_LOG, "a") as fh:
            fh.write(text)


def promote(job_dir: Path, keep_previous: bool) -> None:
    """Swap a successful run's staged outputs in."""
    job_dir, stage = Path(job_dir), Path(job_dir) / STAGING_DIR
    if keep_previous:
        prev = job_dir / PREVIOUS_DIR
        shutil.rmtree(prev, ignore_errors=True)
        prev.mkdir()
        if (job_dir / RESULT_FILE).exists():  # first: the folder never shows it beside half its files
            os.replace(job_dir / RESULT_FILE, prev / RESULT_FILE)
        _move_outputs(job_dir, prev)
    else:
        # The old result goes first: a swap cut short leaves no result.json (the job re-runs),
        # never an old result.json beside new outputs.
        (job_dir / RESULT_FILE).unlink(missing_ok=True)
    _move_outputs(stage, job_dir)
    _carry_log(stage, job_dir)
    remove_staging(job_dir)
    shutil.rmtree(job_dir / FAILED_DIR, ignore_errors=True)


def failure_dir(job_dir: Path) -> Path:
    """Where a failed run's result goes: ``failed/`` beside an ok result, else the job folder."""
    job_dir = Path(job_dir)
    if has_ok_result(job_dir):
        (job_dir / FAILED_DIR).mkdir(exist_ok=True)
        return job_dir / FAILED_DIR
    return job_dir


def settle_failure(job_dir: Path) -> None:
    """Keep a failed run's staged outputs where they cannot hide or replace an ok result."""
    job_dir, stage = Path(job_dir), Path(job_dir) / STAGING_DIR
    target = failure_dir(job_dir)
    if target == job_dir:
        for name in JOB_OUTPUTS:  # no ok result: the failure replaces whatever failed before
            (job_dir / name).unlink(missing_ok=True)
    _move_outputs(stage, target)
    _carry_log(stage, job_dir)
    remove_staging(job_dir)


def clear_failures(job_dir: Path) -> None:
    """Before a run: earlier failures go (an ok result and its previous/ stay)."""
    job_dir = Path(job_dir)
    shutil.rmtree(job_dir / FAILED_DIR, ignore_errors=True)
    res = read_result(job_dir)
    if res is not None and res.get("status") != "ok":
        (job_dir / RESULT_FILE).unlink(missing_ok=True)


def last_failure(job_dir: Path) -> dict | None:
    """The failed result of the run that just ended, wherever it went."""
    for d in (Path(job_dir) / FAILED_DIR, Path(job_dir)):
        res = read_result(d)
        if res and res.get("status") == "failed":
            return res
    return None
