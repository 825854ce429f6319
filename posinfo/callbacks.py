"""Hydra callback that prints a sweep's summary and exits non-zero if any job failed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from posinfo.runner import _now, format_summary, summarize_sweep


def expected_jobs(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper will launch: sweeper params, then command-line overrides."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args: dict[str, str] = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
        for o in config.hydra.overrides.task:
            k, _, v = str(o).partition("=")
            args[k] = v
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in args.items()])
        return sum(len(b) for b in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # an unusual sweeper: the summary then counts what reported
        return None


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.since = ""
        self.expected: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.since = _now()
        self.expected = expected_jobs(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        text, ok = format_summary(summarize_sweep(sweep_dir, self.since), self.expected)
        print(text, flush=True)
        if not ok:
            sys.exit(1)
