"""The sweep summary: a Hydra callback that prints it and exits non-zero if any job failed.

Hydra calls ``on_multirun_start`` / ``on_multirun_end`` in the launching process, for
every launcher (basic, joblib, submitit): the jobs' own processes only ever write their
``.posinfo_status.json``; this callback reads them once the launcher has returned.

If the sweep does not reach ``on_multirun_end`` (an interrupt, or a launcher that
raised), ``posinfo.sweep.task.cli`` calls :func:`report_unfinished`, which prints the same
summary for what did report.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from posinfo import sweepgrid
from posinfo.errors import PosinfoError
from posinfo.names import SWEEP_ID_ENV, utc_now
from posinfo.schema import missing_values_error
from posinfo.preflight import job_problems
from posinfo.sweep.checks import folder_problem, sweep_problems
from posinfo.sweep.lock import SweepLock
from posinfo.sweep.status import format_summary, summarize_sweep
from posinfo.sweep.warnings import repeated

def expected_jobs(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper launches; None for another sweeper or a grid that
    cannot be expanded (the summary then counts what reported)."""
    try:
        jobs = sweepgrid.expand_config(config)
    except Exception:
        return None
    return None if jobs is None else len(jobs)


_active: "SweepSummary | None" = None


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.since = ""
        self.sweep_id: str | None = None
        self.expected: int | None = None
        self.sweep_dir: Path | None = None
        self.lock: SweepLock | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """One job (no -m): its folder and, unless it is a dry run (which lists them), the same
        checks a sweep makes before any job, so that e.g. offline ImageNet weights fail at once."""
        try:
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        except Exception:  # noqa: BLE001  a value only Hydra resolves (${hydra:...}): its own check
            run_dir = None
        if run_dir is not None:
            _stop([folder_problem(run_dir, "hydra.run.dir")])
        if not config.get("dry_run"):
            _stop([missing_values_error(config)])
            _stop(job_problems(config)[:1])  # one line, as the job itself would fail with

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _active
        _stop([missing_values_error(config)])  # before the sweeper resolves its params into a Hydra traceback
        _stop([folder_problem(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")])
        if not config.get("dry_run"):  # a dry run only reads, and lists each job's problems (sweep.task)
            self._check_and_claim(config)
        self.since = utc_now()
        self.sweep_id = uuid.uuid4().hex[:16]
        # Jobs tag their status records with it: joblib workers and submitit jobs
        # (local processes, sbatch with its default --export=ALL) inherit the environment.
        os.environ[SWEEP_ID_ENV] = self.sweep_id
        self.expected = expected_jobs(config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        _active = self

    def __getstate__(self) -> dict:
        # Launchers pickle Hydra's context, callbacks included, to their workers and Slurm
        # jobs: the folder's lock stays with the launching process.
        return {**self.__dict__, "lock": None}

    def _check_and_claim(self, config: DictConfig) -> None:
        """Stop before any job if a job cannot run or another command owns the sweep folder."""
        errors = sweep_problems(config)
        if not errors:
            self.lock = SweepLock(Path(str(config.hydra.sweep.dir)))
            try:
                self.lock.acquire(wait=bool(OmegaConf.select(config, "sweep.wait", default=False)))
            except PosinfoError as e:
                self.lock, errors = None, [str(e)]
        _stop(errors)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def report(self, aborted: str | None = None) -> bool:
        """Print the summary; True if every job succeeded or was skipped.

        For an aborted sweep (``aborted`` says why) nothing is printed, and False
        returned, when no job reported at all: Hydra's own error says what happened.
        """
        assert self.sweep_dir is not None
        s = summarize_sweep(self.sweep_dir, self.sweep_id, self.since)
        if aborted and not any(s.values()):
            return False
        text, ok = format_summary(s, self.expected, self.sweep_dir, aborted=aborted)
        for msg, n in repeated(self.sweep_dir, self.sweep_id):
            text += f"\n  WARNING in {n} jobs (shown once above): {msg}"
        print(text, flush=True)
        return ok

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _active
        _active = None
        self.release()
        if not self.report():
            sys.exit(1)


def _stop(problems: list[str | None]) -> None:
    """Print each problem as one line and exit 2, before any job; nothing when there is none."""
    problems = [p for p in problems if p]
    for p in problems:
        print(f"posinfo: error: {p}", file=sys.stderr, flush=True)
    if problems:
        sys.exit(2)


def report_unfinished(why: str) -> bool:
    """Print the summary of a sweep that never reached on_multirun_end; False if there was none."""
    global _active
    s, _active = _active, None
    if s is None or s.sweep_dir is None:
        return False
    s.release()
    s.report(aborted=why)
    return True
