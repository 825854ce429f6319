"""The channels that carry position (``analysis.channels=true``; Islam et al., ICCV 2021, show
position is encoded channel-wise).

1. **Score** every feature channel by the position information it carries alone: the R² of the
   best single-channel linear fit ``target ≈ a·x_c + b`` over every position of every training
   image, the target resized to the feature map (area average). One pass over the cached
   training features, sums in float64.
2. **Concentration**: retrain the job's readout (same kind, seed, schedule) on the top-k
   channels, on k random channels (``DRAWS`` draws) and on all channels but the top k, for
   k in ``KS`` and all, and score each on the natural test images. Channels keep their
   original order in every subset, so k = all is exactly the job's own readout.
3. ``k90``: the smallest k whose top-k readout reaches 90% of the full readout's SPC.

Written to the job folder: ``channels.csv`` (tap, channel, score, rank), ``channels.png`` and
``result.json["channels"]``.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from posinfo.report.intervals import t_interval

log = logging.getLogger(__name__)

KS = (1, 4, 16, 64, 256)
DRAWS = 3
SHARE = 0.9  # k90: the top-k readout's SPC reaches this share of the full readout's


PRELOAD_BYTES = 1 << 30  # a subset this small is read from the source once and kept in memory


class ChannelSubset:
    """A feature source restricted to some channels (kept in their original order). A small
    subset is gathered in one pass and served from memory: otherwise every epoch of a top-k
    readout would read all channels of every image to keep k of them. Batches are the same
    sets in the same order as the source's (a batch's rows sorted, as CachedFeatures does)."""

    def __init__(self, source, channels: np.ndarray):
        self.source, self.n = source, source.n
        self.index = torch.as_tensor(np.sort(np.asarray(channels, dtype=np.int64)))
        self._data: torch.Tensor | None = None
        first = next(iter(source.batches(np.arange(min(1, source.n)), 1)), None)
        if first is not None and self.n * len(self.index) * first[0, 0].numel() * 4 <= PRELOAD_BYTES:
            self._data = torch.cat([f.index_select(1, self.index.to(f.device)).contiguous()
                                    for f in source.batches(np.arange(self.n), 64)])

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        if self._data is None:
            for feats in self.source.batches(order, batch_size):
                yield feats.index_select(1, self.index.to(feats.device))
            return
        for i in range(0, len(order), batch_size):
            yield self._data[torch.as_tensor(np.sort(order[i:i + batch_size]))]


@torch.no_grad()
def channel_scores(source, target: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """R² of each channel's best linear fit of ``target`` (H×W, resized to the maps) over all
    positions of every image of ``source``; 0 for a constant channel."""
    sums = None
    y = None
    for x in source.batches(np.arange(source.n), batch_size):
        x = x.double().cpu()
        if y is None:
            y = F.interpolate(target.double().cpu().view(1, 1, *target.shape[-2:]), size=x.shape[-2:], mode="area")[0, 0]
            sums = [torch.zeros(x.shape[1], dtype=torch.float64) for _ in range(3)] + [0]
        sums[0] += x.sum(dim=(0, 2, 3))
        sums[1] += (x * x).sum(dim=(0, 2, 3))
        sums[2] += (x * y).sum(dim=(0, 2, 3))
        sums[3] += x.shape[0]
    s1, s2, sxy, n_img = sums
    n = n_img * y.numel()
    ym, yv = float(y.mean()), float(y.var(unbiased=False))
    xm = s1 / n
    xv = (s2 / n - xm * xm).clamp_min(0)
    cov = sxy / n - xm * ym
    r2 = torch.where(xv > 1e-12, cov * cov / (xv * yv).clamp_min(1e-30), torch.zeros_like(cov))
    return r2.clamp(0, 1).numpy()


def _tap_of(channel_counts: list[tuple[str, int]]) -> tuple[list[str], list[int]]:
    taps, local = [], []
    for name, c in channel_counts:
        taps += [name] * c
        local += list(range(c))
    return taps, local


def concentration(scores: np.ndarray, train_eval: Callable[[np.ndarray], tuple[float, float]], seed: int,
                  ks: tuple[int, ...] = KS, draws: int = DRAWS) -> dict:
    """Top-k, random-k and top-k-removed readouts for every k (and all): SPC and MAE of each.
    ``train_eval(channels)`` trains a readout on those channels and returns (SPC, MAE)."""
    c = len(scores)
    order = np.argsort(-scores, kind="stable")
    kk = [k for k in ks if k < c] + [c]
    out: dict = {"k": kk, "top_spc": [], "top_mae": [], "random_spc": [], "random_mae": [], "removed_spc": [],
                 "removed_mae": []}
    for k in kk:
        log.info("channels: readouts on the top %d of %d channels, %d random draws and the rest", k, c, draws)
        s, m = train_eval(order[:k])
        out["top_spc"].append(s), out["top_mae"].append(m)
        if k == c:
            out["random_spc"].append([s]), out["random_mae"].append([m])
            out["removed_spc"].append(None), out["removed_mae"].append(None)
            continue
        rs = [train_eval(np.random.default_rng([seed, k, d]).choice(c, k, replace=False)) for d in range(draws)]
        out["random_spc"].append([v[0] for v in rs]), out["random_mae"].append([v[1] for v in rs])
        s, m = train_eval(order[k:])
        out["removed_spc"].append(s), out["removed_mae"].append(m)
    full = out["top_spc"][-1]
    out["random_spc_ci"] = [list(t_interval([v for v in r if v is not None])) if len(r) > 1 else None
                            for r in out["random_spc"]]
    out["k90"] = next((k for k, s in zip(kk, out["top_spc"]) if full is not None and s is not None
                       and full > 0 and s >= SHARE * full), None)
    return out


def write_csv(path, scores: np.ndarray, channel_counts: list[tuple[str, int]]) -> None:
    import pandas as pd

    from posinfo.io import atomic_path

    taps, local = _tap_of(channel_counts)
    rank = np.empty(len(scores), dtype=np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    df = pd.DataFrame({"tap": taps, "channel": local, "score": scores.round(6), "rank": rank})
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def figure(path, result: dict, scores: np.ndarray, channel_counts: list[tuple[str, int]], title: str) -> None:
    """SPC vs k (top-k, random-k with 95% intervals, top-k removed), and each tap's share of the
    top-ranked channels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posinfo.io import atomic_path

    kk = result["k"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7, 2.6), gridspec_kw={"width_ratios": [3, 2]})
    nan = float("nan")
    ax.plot(kk, [nan if v is None else v for v in result["top_spc"]], "o-", ms=3, label="top-k channels")
    means = [np.mean(r) for r in result["random_spc"]]
    lo = [m - (ci[0] if ci else m) for m, ci in zip(means, result["random_spc_ci"])]
    hi = [(ci[1] if ci else m) - m for m, ci in zip(means, result["random_spc_ci"])]
    ax.errorbar(kk, means, yerr=[lo, hi], fmt="s-", ms=3, capsize=2, label=f"random k ({DRAWS} draws, 95% CI)")
    ax.plot(kk[:-1], [nan if v is None else v for v in result["removed_spc"][:-1]], "v--", ms=3,
            label="all but the top k")
    ax.set_xscale("log")
    ax.set_xlabel("channels k (log)")
    ax.set_ylabel("SPC (natural)")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=6)
    ax.set_title(title, fontsize=7)
    taps, _ = _tap_of(channel_counts)
    top = np.argsort(-scores, kind="stable")[: min(64, len(scores))]
    names = [n for n, _ in channel_counts]
    counts = [sum(taps[i] == n for i in top) / c for n, c in channel_counts]
    ax2.bar(names, counts)
    ax2.set_ylabel(f"share of its channels in the top {len(top)}")
    ax2.set_title("where the position channels are", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)


def summary_line(result: dict) -> str:
    full = result["top_spc"][-1]
    return (f"channels: full SPC {full:.3f}; k90 = {result['k90']}; top-1 {result['top_spc'][0]:.3f}, "
            f"random-1 {np.mean(result['random_spc'][0]):.3f}" if full is not None and not math.isnan(full)
            else "channels: full readout has no SPC")
