"""Where is the image? Each image shrunk into one cell of a black canvas, its cell the class.

The follow-ups' location tasks (docs/method.md, "Placement tasks"):

- ``grid`` (GAPNet, Islam et al., ICCV 2021): the canvas is a k×k grid, the image fills one of
  its k² cells; the class is the cell.
- ``diagonal`` (the quadrant task of Kayhan & van Gemert, CVPR 2020, "4QI"): a 2×2 grid whose
  image sits top-left or bottom-right; two classes.

Cells are dealt out evenly: image i of n gets class ``permutation(n)[i] mod classes`` of a
permutation drawn from ``seed``, so every class has ⌊n/classes⌋ or ⌈n/classes⌉ images and the
labels are known without loading an image. Nothing else of the image changes: its content is
the base set's, so a probe that names the cell reads position from the network, not from what
the picture shows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from posinfo.errors import PosinfoError
from posinfo.names import PLACEMENT_LAYOUTS as LAYOUTS


# Each split's classes come from its own permutation: test labels are not a copy of the training ones.
SPLIT_SEEDS = {"train": 0, "test": 1}


def classes(layout: str, cells: int) -> int:
    if layout not in LAYOUTS:
        raise PosinfoError(f"data.placement.layout={layout}: choose one of {', '.join(LAYOUTS)}")
    if layout == "diagonal":
        return 2
    if not isinstance(cells, int) or cells < 2:
        raise PosinfoError(f"data.placement.cells={cells}: must be an integer ≥ 2 (the canvas is a cells×cells grid)")
    return cells * cells


def cell_rc(layout: str, cells: int, label: int) -> tuple[int, int, int]:
    """(row, column, side) of class ``label``'s cell on a side×side grid."""
    if layout == "diagonal":
        return (0, 0, 2) if label == 0 else (1, 1, 2)
    return label // cells, label % cells, cells


def cell_pictures(layout: str, cells: int, size: int, named: list[int]) -> np.ndarray:
    """size×size float32 pictures: 1 on the cell named, 0 elsewhere (predictions.png)."""
    out = np.zeros((len(named), size, size), np.float32)
    for j, label in enumerate(named):
        r, c, side = cell_rc(layout, cells, int(label))
        cell = size // side
        out[j, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = 1.0
    return out


def cell_map(layout: str, cells: int, size: int) -> np.ndarray:
    """Each class's cell drawn at its class index over the canvas, scaled to [0, 1] (the 'target' panel)."""
    k = classes(layout, cells)
    out = np.zeros((size, size), np.float32)
    for label in range(k):
        out += cell_pictures(layout, cells, size, [label])[0] * (label + 1) / k
    return out


def labels(n: int, layout: str, cells: int, seed: int = 0) -> np.ndarray:
    k = classes(layout, cells)
    return np.random.default_rng(seed).permutation(n) % k


class PlacedImages(torch.utils.data.Dataset):
    """The images of ``base`` (3×S×S), each shrunk to S/side and placed in its class's cell of a
    black S×S canvas. ``labels`` gives the classes; ``identity()`` enters the feature cache key."""

    def __init__(self, base: torch.utils.data.Dataset, layout: str, cells: int, seed: int = 0) -> None:
        self.base, self.layout, self.cells, self.seed = base, layout, cells, seed
        self.classes = classes(layout, cells)
        self.labels = labels(len(base), layout, cells, seed)
        self.names = list(base.names)  # each image keeps its name: per_image.csv rows match the base set's

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i) -> torch.Tensor:
        img = self.base[i]
        size = img.shape[-1]
        r, c, side = cell_rc(self.layout, self.cells, int(self.labels[i]))
        cell = size // side
        if cell < 1:
            raise PosinfoError(f"data.image_size={size} is too small for a {side}×{side} placement grid: "
                               f"use data.image_size ≥ {side}")
        small = F.interpolate(img[None], size=(cell, cell), mode="bilinear", align_corners=False, antialias=True)[0]
        out = torch.zeros_like(img)
        out[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = small
        return out

    def identity(self) -> dict:
        return {**self.base.identity(), "placement": {"layout": self.layout, "cells": self.cells, "seed": self.seed}}


def pooled(source, n: int, batch_size: int = 64) -> np.ndarray:
    """Global average pooling of each image's feature maps (n×C, float64): what GAPNet's classifier sees."""
    out = [f.to(torch.float64).mean(dim=(2, 3)).cpu().numpy() for f in source.batches(np.arange(n), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0))


def _accuracy(hit: np.ndarray, seed: int = 0, draws: int = 2000) -> dict:
    """Accuracy with a 95% bootstrap interval over the test images."""
    rng = np.random.default_rng(seed)
    boot = hit[rng.integers(0, len(hit), (draws, len(hit)))].mean(1)
    return {"acc": float(hit.mean()), "acc_lo": float(np.quantile(boot, 0.025)), "acc_hi": float(np.quantile(boot, 0.975))}


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, n_classes: int,
          folds: int = 5, seed: int = 0) -> dict:
    """The logistic readout of pooled features for the cell, scored on test images, and the channel-shuffle
    control (each image's channels in their own random order, train and test alike: the readout is refit)."""
    from posinfo import logistic

    fitted = logistic.fit(train_x, train_y, n_classes, n_folds=folds)
    out = {**_accuracy(fitted.predict(test_x) == test_y), "chance": 1.0 / n_classes, "classes": n_classes,
           "per_class": [float((fitted.predict(test_x[test_y == c]) == c).mean()) if (test_y == c).any() else None
                         for c in range(n_classes)],
           "training": fitted.record}
    out["shuffled"] = _shuffled_accuracy(train_x, train_y, test_x, test_y, n_classes, folds, seed)
    return out


def _shuffled_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                       n_classes: int, folds: int, seed: int) -> dict:
    """The channel-shuffle control on pooled features: each image's channels in their own random order
    (train and test drawn apart), the readout refit; test accuracy with its bootstrap interval."""
    from posinfo import logistic

    fitted = logistic.fit(logistic.shuffle_channels(train_x, seed), train_y, n_classes, n_folds=folds)
    return _accuracy(fitted.predict(logistic.shuffle_channels(test_x, seed + 1)) == np.asarray(test_y))


class PooledReadout(torch.nn.Module):
    """Globally pooled features, standardised with the training images' statistics, read by a linear
    map to one logit per class: the placement readout, fitted by :func:`fit_readout`."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        for name, shape in (("mean", (channels,)), ("std", (channels,)), ("weight", (n_classes, channels)),
                            ("bias", (n_classes,))):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.float64))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        z = (feats.to(torch.float64).mean(dim=(2, 3)) - self.mean) / self.std
        return z @ self.weight.T + self.bias


def fit_readout(readout: PooledReadout, source, n: int, train_labels: np.ndarray, n_classes: int, folds: int,
                batch_size: int = 64) -> list[dict]:
    """Fit ``readout`` on the training images' pooled features (posinfo.logistic); its history record."""
    from posinfo import logistic

    fitted = logistic.fit(pooled(source, n, batch_size), train_labels, n_classes, n_folds=folds)
    with torch.no_grad():
        for name in ("mean", "std", "weight", "bias"):
            getattr(readout, name).copy_(getattr(fitted, name))
    return [{**fitted.record, "loss": fitted.record["final_loss"]}]


def shuffled_control(train_source, test_source, n_train: int, n_test: int, train_labels: np.ndarray,
                     test_labels: np.ndarray, n_classes: int, folds: int, seed: int, batch_size: int = 64) -> dict:
    """The channel-shuffle control: each image's pooled channels in their own random order, the
    readout refit on them; accuracy on the test images with its bootstrap interval."""
    return _shuffled_accuracy(pooled(train_source, n_train, batch_size), train_labels,
                              pooled(test_source, n_test, batch_size), test_labels, n_classes, folds, seed)
