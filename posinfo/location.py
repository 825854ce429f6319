"""The location target (``target=grid``): where on a cells×cells grid is each position?

The readout outputs, at each position of its output map, logits over the cells² grid cells,
trained with cross-entropy against the cell that position's centre falls in (docs/method.md,
"The location target"). A ramp readout (``hor``/``gau``) asks for a position code that varies
smoothly and monotonically; this one asks only that positions be told apart, so it also sees
codes that are not ramps (e.g. a learned ViT position embedding). Metrics, per image then the
mean over images: accuracy over positions, chance 1/cells², normalised accuracy
(acc − chance)/(1 − chance), and row-only and column-only accuracy.
"""

from __future__ import annotations

import numpy as np
import torch

from posinfo.errors import PosinfoError


def labels(cells: int, out_size: int) -> torch.Tensor:
    """(out_size × out_size) long: the cell (row·cells + column) of each output position's centre."""
    if cells < 2:
        raise PosinfoError(f"target.cells={cells}: must be an integer ≥ 2")
    if out_size < cells:
        raise PosinfoError(f"target.cells={cells} but the readout's output map is {out_size}×{out_size}: the grid is "
                           f"finer than the map can resolve; use target.cells≤{out_size} (or a larger readout.feature_size)")
    idx = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * cells / out_size).floor().long().clamp(max=cells - 1)
    return idx[:, None] * cells + idx[None, :]


def display_map(cells: int, size: int) -> torch.Tensor:
    """The target as a picture (size×size in [0, 1]): each pixel's cell index over cells² − 1."""
    return labels(cells, size).float() / (cells * cells - 1)


def chance(cells: int) -> float:
    return 1.0 / (cells * cells)


def scores(logits: torch.Tensor, lab: torch.Tensor, cells: int) -> np.ndarray:
    """Per image (B×4): accuracy, normalised accuracy, row accuracy, column accuracy (kinds.CellKind.columns)."""
    pred = logits.argmax(dim=1)  # B×h×w
    lab = lab.to(pred.device).expand_as(pred)
    acc = (pred == lab).float().mean(dim=(1, 2))
    row = (pred // cells == lab // cells).float().mean(dim=(1, 2))
    col = (pred % cells == lab % cells).float().mean(dim=(1, 2))
    c = chance(cells)
    return torch.stack([acc, (acc - c) / (1 - c), row, col], dim=1).cpu().numpy().astype(np.float64)


def border_accuracy(logits: torch.Tensor, lab: torch.Tensor, bins: np.ndarray) -> np.ndarray:
    """Per image (B × n_bins): accuracy within each border-distance bin of the output map."""
    hit = (logits.argmax(dim=1) == lab.to(logits.device).expand(logits.shape[0], *lab.shape)).cpu().numpy()
    flat = bins.ravel()
    counts = np.bincount(flat)
    return np.stack([np.bincount(flat, weights=h.ravel().astype(np.float64)) / counts for h in hit])

