"""Per-image SPC and MAE (docs/method.md, "Metrics"), with the constant-prediction rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

# A prediction whose range is below this is constant. Bilinear upsampling of a constant
# map leaves ~1e-7 ripples that spearmanr would rank as real signal (0.154 was seen);
# 1e-5 is far below anything a trained readout varies by (1/400 of an 8-bit step).
CONSTANT_ATOL = 1e-5


def is_constant(pred: np.ndarray, atol: float = CONSTANT_ATOL) -> bool:
    return float(pred.max()) - float(pred.min()) <= atol


class Scorer:
    """Scores predictions against one fixed target; the target's ranks are computed once."""

    def __init__(self, target: np.ndarray):
        self.target = np.asarray(target, dtype=np.float64).ravel()
        r = rankdata(self.target)
        self._t_rank = (r - r.mean()) / np.linalg.norm(r - r.mean())

    def spc(self, pred: np.ndarray) -> float:
        """Spearman's rho of the flattened maps (= scipy.stats.spearmanr), NaN if constant."""
        p = np.asarray(pred, dtype=np.float64).ravel()
        if is_constant(p):
            return math.nan
        r = rankdata(p)
        r = r - r.mean()
        return float(np.dot(r, self._t_rank) / np.linalg.norm(r))

    def mae(self, pred: np.ndarray) -> float:
        return float(np.abs(np.asarray(pred, dtype=np.float64).ravel() - self.target).mean())


@dataclass
class Summary:
    spc: float | None  # mean over images with a defined SPC; None if there is none
    mae: float
    n_images: int
    n_nan: int

    def as_dict(self) -> dict:
        return {"spc": self.spc, "mae": self.mae, "n_images": self.n_images, "n_nan": self.n_nan}


def summarize(spcs: list[float], maes: list[float]) -> Summary:
    """Mean over images; NaN SPCs are skipped and counted, never averaged in."""
    s = np.asarray(spcs, dtype=np.float64)
    ok = ~np.isnan(s)
    return Summary(
        spc=float(s[ok].mean()) if ok.any() else None,
        mae=float(np.mean(maes)),
        n_images=len(maes),
        n_nan=int((~ok).sum()),
    )
