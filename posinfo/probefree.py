"""analysis.probefree: position in the features themselves, with no readout trained.

Per tap, from the job's cached feature source (each tap's channels on the readout's
feature_size² grid), in one streaming pass over the images:

- the input-independent share of the variance: the variance over positions of the
  mean-over-images map over the total variance (images × positions), summed over channels,
  with the finite-sample bias of the mean map removed (docs/method.md, "Probe-free measures");
- the mean bias map: per position, the mean over images and channels of the per-channel
  standardised features, and its asymmetry (left − right, top − bottom halves) with a
  t interval over the per-image asymmetries;
- similarity against distance: the mean cosine similarity of two positions' feature vectors
  per distance bin, and the same after one seeded permutation of the positions (the flat
  curve that no spatial structure gives).

Everything is a sum over images, so memory stays one batch plus C×H×W accumulators.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from posinfo.report.intervals import t_interval
from posinfo.io import atomic_path

log = logging.getLogger(__name__)

# A channel whose standard deviation over images and positions is below this is dead: it
# carries nothing to standardise and is left out of the bias map (counted in the result).
DEAD_STD = 1e-12
FFT_CHANNELS = 64  # channels transformed at once


@dataclass
class _Sums:
    """Running sums over images of one feature source (all taps' channels at once)."""

    n: int = 0
    s1: torch.Tensor | None = None  # C×H×W: Σ_i x_i
    s2: torch.Tensor | None = None  # C×H×W: Σ_i x_i²
    g1: torch.Tensor | None = None  # C: Σ_i (spatial mean of x_i)
    g2: torch.Tensor | None = None  # C: Σ_i (spatial mean of x_i)²
    lr: list = field(default_factory=list)  # per image × channel: left-half mean − right-half mean
    tb: list = field(default_factory=list)  # per image × channel: top-half mean − bottom-half mean
    power: dict = field(default_factory=dict)  # (tap, permuted) -> Σ |FFT(unit vectors)|², 2H×(W+1)

    def add(self, x: torch.Tensor) -> None:
        if self.s1 is None:
            self.s1, self.s2 = torch.zeros(x.shape[1:], dtype=x.dtype), torch.zeros(x.shape[1:], dtype=x.dtype)
            self.g1, self.g2 = torch.zeros(x.shape[1], dtype=x.dtype), torch.zeros(x.shape[1], dtype=x.dtype)
        h, w = x.shape[-2:]
        self.n += len(x)
        self.s1 += x.sum(0)
        self.s2 += (x * x).sum(0)
        g = x.mean(dim=(2, 3))
        self.g1 += g.sum(0)
        self.g2 += (g * g).sum(0)
        # Odd sizes: the middle column (row) belongs to neither half.
        self.lr.append((x[..., : w // 2].mean(dim=(2, 3)) - x[..., w - w // 2:].mean(dim=(2, 3))).float())
        self.tb.append((x[..., : h // 2, :].mean(dim=(2, 3)) - x[..., h - h // 2:, :].mean(dim=(2, 3))).float())


def _add_power(sums: _Sums, key: tuple, u: torch.Tensor) -> None:
    """Σ over images and channels of |FFT|² of unit feature vectors, zero-padded to 2H×2W so that
    its inverse is the (non-circular) sum of u(p)·u(p+d) over all pairs at each displacement d."""
    h, w = u.shape[-2:]
    p = torch.zeros(2 * h, w + 1, dtype=torch.float64)
    for c0 in range(0, u.shape[1], FFT_CHANNELS):  # bounded memory: a 1,472-channel batch at once is GBs
        spec = torch.fft.rfft2(u[:, c0:c0 + FFT_CHANNELS].float(), s=(2 * h, 2 * w))
        p += (spec.real ** 2 + spec.imag ** 2).sum(dim=(0, 1)).double()
    sums.power[key] = sums.power.get(key, 0) + p


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Feature vectors scaled to unit length per position (a zero vector stays zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)


def accumulate(source, taps: list[tuple[str, int]], batch_size: int, seed: int) -> tuple[_Sums, np.ndarray]:
    """One pass over ``source`` (``taps``: each tap's name and channel count, in channel order);
    the sums and the seeded permutation of positions used for the control curve."""
    sums, perm = _Sums(), None
    for batch in source.batches(np.arange(source.n), batch_size):
        x = batch.detach().to("cpu", torch.float64)
        if perm is None:
            perm = np.random.default_rng(seed).permutation(x.shape[-2] * x.shape[-1])
        sums.add(x)
        c0 = 0
        for name, c in taps:
            u = _unit(x[:, c0:c0 + c])
            _add_power(sums, (name, False), u)
            flat = u.flatten(2)[:, :, torch.as_tensor(perm)]
            _add_power(sums, (name, True), flat.view_as(u))
            c0 += c
    return sums, perm


def _similarity_curve(power: torch.Tensor, h: int, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean cosine similarity per distance bin (bin k: distances that round to k grid steps, k ≥ 1)."""
    corr = torch.fft.irfft2(power, s=(2 * h, 2 * w)).numpy()
    dy = np.arange(-(h - 1), h)
    dx = np.arange(-(w - 1), w)
    sums = corr[np.ix_(dy % (2 * h), dx % (2 * w))]  # the sum of u(p)·u(p+d) at each displacement d
    pairs = n * np.outer(h - np.abs(dy), w - np.abs(dx))
    bins = np.floor(np.hypot(*np.meshgrid(dy, dx, indexing="ij")) + 0.5).astype(int)
    nb = int(bins.max())
    total = np.bincount(bins.ravel(), weights=sums.ravel(), minlength=nb + 1)[1:]
    count = np.bincount(bins.ravel(), weights=pairs.ravel(), minlength=nb + 1)[1:]
    return np.arange(1, nb + 1), total / count


def input_independent_share(s: _Sums, sl: slice) -> float | None:
    """Σ_c var_p(mean map) / Σ_c var_{i,p}(x), the mean map's variance corrected for its sampling noise.

    The mean map m̂ = μ + ε, ε of covariance Σ/n, so E[var_p(m̂)] = var_p(μ) + (mean_p σ²_p − σ²_g)/n,
    σ²_p the variance over images at position p and σ²_g that of the image's spatial mean: both
    are estimated without bias (n − 1) and subtracted. 1 for features that ignore the input (σ² = 0),
    ~0 (of either sign) for translation-equivariant features with circular padding."""
    n = s.n
    m = s.s1[sl] / n
    hw = m.shape[-2] * m.shape[-1]
    between = m.pow(2).mean(dim=(1, 2)) - m.mean(dim=(1, 2)) ** 2
    total = s.s2[sl].sum(dim=(1, 2)) / (n * hw) - m.mean(dim=(1, 2)) ** 2
    if n > 1:
        var_p = (s.s2[sl] - n * m * m).clamp_min(0) / (n - 1)
        g = s.g1[sl] / n
        var_g = (s.g2[sl] - n * g * g).clamp_min(0) / (n - 1)
        between = between - (var_p.mean(dim=(1, 2)) - var_g) / n
    den = float(total.clamp_min(0).sum())
    return None if den <= 0 else float(between.sum()) / den


def _interval(per_image: np.ndarray) -> dict:
    lo, hi = t_interval(per_image)
    return {"mean": float(per_image.mean()), "low": None if math.isnan(lo) else lo, "high": None if math.isnan(hi) else hi}


def tap_measures(s: _Sums, sl: slice) -> tuple[dict, dict[str, np.ndarray]]:
    """One tap's measures (``sl``: its channels): the compact record and its arrays."""
    n = s.n
    m = s.s1[sl] / n
    hw = m.shape[-2] * m.shape[-1]
    mu = m.mean(dim=(1, 2))
    std = (s.s2[sl].sum(dim=(1, 2)) / (n * hw) - mu ** 2).clamp_min(0).sqrt()
    live = std > DEAD_STD
    if not bool(live.any()):  # constant features: no bias map, no asymmetry to speak of
        none = {"mean": None, "low": None, "high": None}
        return ({"input_independent_share": None, "dead_channels": int(len(live)), "left_right": none,
                 "top_bottom": none}, {"bias_map": np.zeros(m.shape[-2:], np.float32)})
    bias = ((m[live] - mu[live, None, None]) / std[live, None, None]).mean(dim=0).numpy()
    lr = (torch.cat(s.lr)[:, sl][:, live].double() / std[live]).mean(dim=1).numpy()
    tb = (torch.cat(s.tb)[:, sl][:, live].double() / std[live]).mean(dim=1).numpy()
    record = {"input_independent_share": input_independent_share(s, sl), "dead_channels": int((~live).sum()),
              "left_right": _interval(lr), "top_bottom": _interval(tb)}
    arrays = {"bias_map": bias.astype(np.float32), "left_right": lr.astype(np.float32), "top_bottom": tb.astype(np.float32)}
    return record, arrays


def measures(source, taps: list[tuple[str, int]], batch_size: int, seed: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every tap's probe-free measures over the images of ``source``: one record per tap (for
    result.json) and the arrays (``<tap>_bias_map``, ``<tap>_similarity``, … for the npz)."""
    s, _ = accumulate(source, taps, batch_size, seed)
    h, w = s.s1.shape[-2:]
    records, arrays, c0 = [], {}, 0
    for name, c in taps:
        rec, arr = tap_measures(s, slice(c0, c0 + c))
        dist, sim = _similarity_curve(s.power[(name, False)], h, w, s.n)
        _, sim_perm = _similarity_curve(s.power[(name, True)], h, w, s.n)
        far = dist >= max(h, w) / 2
        rec["similarity"] = {"near": float(sim[0]), "far": float(sim[far].mean()) if far.any() else None,
                             "near_permuted": float(sim_perm[0])}
        records.append({"tap": name, "channels": c, **rec})
        arrays.update({f"{name}_{k}": v for k, v in arr.items()})
        arrays[f"{name}_similarity"] = sim.astype(np.float32)
        arrays[f"{name}_similarity_permuted"] = sim_perm.astype(np.float32)
        arrays["distance"] = dist.astype(np.float32)
        c0 += c
    arrays["grid"] = np.array([h, w])
    return records, arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def figure(path: Path, records: list[dict], arrays: dict[str, np.ndarray], title: str) -> None:
    """One figure per job: each tap's bias map (top row) and the similarity-vs-distance curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taps = [r["tap"] for r in records]
    fig = plt.figure(figsize=(max(6.0, 2.0 * len(taps)), 5.2))
    grid = fig.add_gridspec(2, len(taps), height_ratios=[1, 1.2])
    for j, (name, rec) in enumerate(zip(taps, records)):
        ax = fig.add_subplot(grid[0, j])
        b = arrays[f"{name}_bias_map"]
        lim = float(np.abs(b).max()) or 1.0
        ax.imshow(b, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{name}: share {_fmt(rec['input_independent_share'])}\nL−R {_fmt(rec['left_right']['mean'])} "
                     f"T−B {_fmt(rec['top_bottom']['mean'])}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, :])
    side = int(arrays["grid"][1]) - 1  # the grid spans the image: its last position is the far edge
    for name in taps:
        line, = ax.plot(arrays["distance"] / side, arrays[f"{name}_similarity"], label=name)
        ax.plot(arrays["distance"] / side, arrays[f"{name}_similarity_permuted"], "--", color=line.get_color(), lw=0.8)
    ax.set_xlabel("distance (fraction of the image side); dashed: positions permuted")
    ax.set_ylabel("mean cosine similarity")
    ax.legend(fontsize=7, ncol=min(len(taps), 6))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:+.3f}"


def summary_line(records: list[dict]) -> str:
    return "probe-free: " + "  ".join(
        f"{r['tap']} share {_fmt(r['input_independent_share'])} L−R {_fmt(r['left_right']['mean'])}" for r in records)
