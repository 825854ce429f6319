"""Target position maps (docs/method.md, "Targets"), generated analytically on an N×N grid.

Naming trap kept from the paper: ``hor`` varies along x, while ``horstp`` (horizontal
stripes) varies along y.
"""

from __future__ import annotations

import math

import torch

from posinfo.errors import PosinfoError
from posinfo.names import MAP_TARGETS as NAMES
from posinfo.names import STRIPES
from posinfo.names import TARGET_RANGES as RANGES

# sigma of the authors' Gaussian as a fraction of N: a least-squares fit to their
# 256 px gt_gau.png gives 126.8 px.
GAU_SIGMA_FRACTION = 126.8 / 256
# Stripes are a DCT-II basis of this frequency (2.5 periods across the image).
STRIPE_FREQUENCY = 5


def make(name: str, size: int = 224, range: str = "unit") -> torch.Tensor:
    """Return the ``size``×``size`` float32 target map ``name``.

    ``range='unit'`` (default) maps into [0, 1], as the authors' PNGs. ``range='signed'``
    is only for the stripes: the cosine basis divided by its max, in [-1, 1], as the
    authors' 2020 generator left it; it reproduces the paper's stripe MAEs (docs/method.md).
    """
    if name not in NAMES:
        raise PosinfoError(f"unknown target '{name}': choose one of {', '.join(NAMES)}")
    if range not in RANGES:
        raise PosinfoError(f"unknown target.range '{range}': choose 'unit' or 'signed'")
    if range == "signed" and name not in STRIPES:
        raise PosinfoError(
            f"target.range=signed applies to the stripes only, not to '{name}': use target.range=unit"
        )
    if size < 2:
        raise PosinfoError(f"target size {size} is too small: use at least 2 pixels")
    n = size
    idx = torch.arange(n, dtype=torch.float64)
    if name in ("hor", "ver"):
        ramp = idx / (n - 1)
        m = ramp.expand(n, n) if name == "hor" else ramp[:, None].expand(n, n)
    elif name == "gau":
        c = (n - 1) / 2
        sigma = GAU_SIGMA_FRACTION * n
        d2 = (idx[None, :] - c) ** 2 + (idx[:, None] - c) ** 2
        g = torch.exp(-d2 / (2 * sigma**2))
        m = (g - g.min()) / (g.max() - g.min())
    else:
        basis = torch.cos(STRIPE_FREQUENCY * math.pi * (2 * idx + 1) / (2 * n))
        basis = basis / basis.abs().max()
        profile = basis if range == "signed" else 0.5 + 0.5 * basis
        m = profile[:, None].expand(n, n) if name == "horstp" else profile.expand(n, n)
    return m.contiguous().to(torch.float32)


def floor_mae(target: torch.Tensor) -> float:
    """MAE of the best constant prediction in [0, 1]: the no-information level.

    The L1-optimal constant is the median, clipped to the sigmoid's range [0, 1].
    """
    t = target.flatten().to(torch.float64)
    return float((t - floor_constant(target)).abs().mean())


def floor_constant(target: torch.Tensor) -> float:
    """The no-information prediction: the target's median, clipped to [0, 1]."""
    return float(target.flatten().to(torch.float64).median().clamp(0.0, 1.0))
