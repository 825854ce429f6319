"""Hydra callback that prints a sweep's summary and exits non-zero if any job failed.

Hydra calls ``on_multirun_start`` / ``on_multirun_end`` in the launching process, for
every launcher (basic, joblib, submitit): the jobs' own processes only ever write their
``.posinfo_status.json``; this callback reads them once the launcher has returned.

If the sweep does not reach ``on_multirun_end`` (an interrupt, or a launcher that
raised), ``posinfo.runner.cli`` calls :func:`report_unfinished`, which prints the same
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

from posinfo.runner import SWEEP_ID_ENV, _now, format_summary, summarize_sweep

_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def expected_jobs(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper launches, computed the way it does.

    BasicSweeper.sweep: ``hydra.sweeper.params`` (resolved, as the sweeper is
    instantiated with them) as ``key=value`` overrides, then the command line's task
    overrides; a later override of the same key replaces an earlier one; the jobs are the
    cartesian product. None for another sweeper, or if the grid cannot be expanded.
    """
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if str(config.hydra.sweeper.get("_target_", _BASIC_SWEEPER)) != _BASIC_SWEEPER:
            return None
        params = config.hydra.sweeper.get("params")
        params = OmegaConf.to_container(params, resolve=True) if params is not None else {}
        args = [f"{k}={v}" for k, v in params.items()]
        args += [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
        return sum(len(b) for b in batches)
    except Exception:  # an unusual grid: the summary then counts what reported
        return None


_active: "SweepSummary | None" = None


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.since = ""
        self.sweep_id: str | None = None
        self.expected: int | None = None
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _active
        from posinfo import launchers
        from posinfo.job import missing_values_error

        err = missing_values_error(config)
        if err is not None:  # before the sweeper resolves its params into a Hydra traceback
            print(f"posinfo: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

        launchers.install()
        self.since = _now()
        self.sweep_id = uuid.uuid4().hex[:16]
        # Jobs tag their status records with it: joblib workers and submitit jobs
        # (local processes, sbatch with its default --export=ALL) inherit the environment.
        os.environ[SWEEP_ID_ENV] = self.sweep_id
        self.expected = expected_jobs(config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        _active = self

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
        print(text, flush=True)
        return ok

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _active
        _active = None
        if not self.report():
            sys.exit(1)


def report_unfinished(why: str) -> bool:
    """Print the summary of a sweep that never reached on_multirun_end; False if there was none."""
    global _active
    s, _active = _active, None
    if s is None or s.sweep_dir is None:
        return False
    s.report(aborted=why)
    return True
