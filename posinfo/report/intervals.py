"""95% confidence intervals for a table cell.

Several seeds of a configuration: mean ± t(0.975, n−1)·s/√n over the seeds' means (the
spread that matters when a claim rests on a difference between configurations). One seed:
a percentile bootstrap of the mean over the job's test images (``per_image.csv``), which
says how well the test set pins the number down, not how much training varies: the tables
say which of the two a cell has. Imports nothing of the analysis.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from posinfo.kinds import BOOTSTRAPPED
from posinfo.names import PER_IMAGE_FILE

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the same per_image.csv always gives the same interval
UNSTABLE_SPC = 0.1  # seeds whose SPCs span more than this make a cell "unstable"


def t_interval(values: list[float] | np.ndarray) -> tuple[float, float]:
    """(low, high) of the t interval of the mean; NaN for fewer than two values."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + LEVEL / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def bootstrap_interval(values: list[float] | np.ndarray) -> tuple[float, float]:
    """(low, high) percentile bootstrap interval of the mean over ``values`` (NaNs dropped)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = x[rng.integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - LEVEL / 2, 0.5 + LEVEL / 2])
    return float(lo), float(hi)


def per_image_intervals(job_dir: str | Path) -> dict[str, dict[str, float]]:
    """Bootstrap intervals of SPC and MAE (another target kind's: its own, e.g. target=grid's accuracies)
    per evaluated input of one job (empty if no per_image.csv)."""
    try:
        df = pd.read_csv(Path(job_dir) / PER_IMAGE_FILE)
    except (OSError, ValueError):
        return {}
    out = {}
    measured = [c for c in BOOTSTRAPPED if c in df]  # each kind's per-image headline columns (posinfo.kinds)
    for kind, g in df.groupby("input"):
        out[str(kind)] = {}
        for m in measured:
            out[str(kind)][f"{m}_lo"], out[str(kind)][f"{m}_hi"] = bootstrap_interval(g[m].astype(float).tolist())
    return out


def unstable(seed_spcs: list[float]) -> bool:
    x = [v for v in seed_spcs if not math.isnan(v)]
    return len(x) > 1 and max(x) - min(x) > UNSTABLE_SPC
