"""Hydra callback that prints a sweep's summary and exits non-zero if any job failed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from posinfo.runner import _now, format_summary, summarize_sweep


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.since = ""
        self.expected: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.since = _now()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        text, ok = format_summary(summarize_sweep(sweep_dir, self.since), self.expected)
        print(text, flush=True)
        if not ok:
            sys.exit(1)
