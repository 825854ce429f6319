"""Per-image SPC and MAE (docs/method.md, "Metrics"), with the constant-prediction rule, and
the MAE as a function of a pixel's distance to the nearest image border (border profiles)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

# A prediction whose range is below this is constant. Bilinear upsampling of a constant
# map leaves ~1e-7 ripples that spearmanr would rank as real signal (0.154 was seen);
# 1e-5 is far below anything a trained readout varies by (1/400 of an 8-bit step).
CONSTANT_ATOL = 1e-5
# Border profiles: distances 0 … ⌈min(H, W)/2⌉ − 1 px to the nearest border in this many equal-width bins
# (224 px: 14 px per bin; bin 1 is the outer ring, the last bin the centre).
BORDER_BINS = 8


def border_distance(h: int, w: int) -> np.ndarray:
    """Each pixel's distance (in pixels) to the nearest image border: 0 on the outermost ring."""
    y = np.minimum(np.arange(h), np.arange(h)[::-1])[:, None]
    x = np.minimum(np.arange(w), np.arange(w)[::-1])[None, :]
    return np.minimum(y, x)


def border_bins(h: int, w: int, n_bins: int = BORDER_BINS) -> tuple[np.ndarray, list[int]]:
    """The bin of each pixel (h×w ints, 0 = outer ring) and the bins' first distances (px)."""
    d = border_distance(h, w)
    span = int(d.max()) + 1
    n_bins = min(n_bins, span)
    labels = d * n_bins // span
    starts = [int(np.ceil(b * span / n_bins)) for b in range(n_bins)]
    return labels.astype(np.int64), starts


def is_constant(pred: np.ndarray, atol: float = CONSTANT_ATOL) -> bool:
    return float(pred.max()) - float(pred.min()) <= atol


class Scorer:
    """Scores predictions against one fixed target; the target's ranks are computed once."""

    def __init__(self, target: np.ndarray):
        target = np.asarray(target, dtype=np.float64)
        self.target = target.ravel()
        r = rankdata(self.target)
        self._t_rank = (r - r.mean()) / np.linalg.norm(r - r.mean())
        labels, self.bin_starts = border_bins(*target.shape[-2:])
        self._bins = labels.ravel()
        self.bin_pixels = np.bincount(self._bins)

    def border_mae(self, pred: np.ndarray) -> np.ndarray:
        """MAE within each border-distance bin (outer ring first). Weighted by ``bin_pixels`` they
        average to :meth:`mae`."""
        err = np.abs(np.asarray(pred, dtype=np.float64).ravel() - self.target)
        return np.bincount(self._bins, weights=err) / self.bin_pixels

    def floor_border_mae(self, constant: float) -> np.ndarray:
        """The no-information predictor's (``constant``) MAE per bin."""
        return self.border_mae(np.full_like(self.target, constant))

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
