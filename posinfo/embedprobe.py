"""The embedding probe: how linearly a model's position embedding encodes its own positions
(docs/method.md, "The embedding probe"; after Wang & Chen, EMNLP 2020, who regress the index
from the embedding with 5-fold cross-validation).

Each patch position's vector is regressed onto its normalised (x, y) (column / (cols − 1),
row / (rows − 1), each in [0, 1]) by ridge least squares. The penalty is chosen by K-fold
cross-validation over positions, nested inside an outer K-fold whose held-out predictions are
scored, so no score is measured on positions that chose its penalty. Folds come from a fixed
permutation of the positions: the probe is deterministic. Reported: R² of the held-out (x, y)
(pooled over both coordinates: 1 − Σ‖ŷ − y‖² / Σ‖y − ȳ‖²) and the mean distance between
predicted and true position in patches, beside the distance of always guessing the mean
position (chance). Numpy only.
"""

from __future__ import annotations

import numpy as np

from posinfo.errors import PosinfoError

FOLDS = 5
FOLD_SEED = 0  # the permutation that deals positions into folds
# Penalties relative to the mean eigenvalue of the centred Gram (trace / dim): scale-free, and
# small enough at the low end to leave an exact linear code exact.
RELATIVE_PENALTIES = tuple(10.0 ** k for k in range(-8, 4))


def positions(rows: int, cols: int) -> np.ndarray:
    """(rows·cols, 2) normalised (x, y) of a row-major grid of positions."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    x = c.ravel() / max(cols - 1, 1)
    y = r.ravel() / max(rows - 1, 1)
    return np.stack([x, y], axis=1).astype(np.float64)


def _ridge_predict(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, penalties: tuple[float, ...]) -> np.ndarray:
    """Held-out predictions for each relative penalty: (len(penalties), n_test, 2). Intercept unpenalised."""
    mx, my = xtr.mean(0), ytr.mean(0)
    a, b = xtr - mx, ytr - my
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    scale = float((s ** 2).sum()) / max(a.shape[1], 1) or 1.0
    uty = u.T @ b
    out = []
    for p in penalties:
        lam = p * scale
        coef = vt.T @ ((s / (s ** 2 + lam))[:, None] * uty)
        out.append((xte - mx) @ coef + my)
    return np.stack(out)


def _folds(n: int, k: int) -> list[np.ndarray]:
    perm = np.random.default_rng(FOLD_SEED).permutation(n)
    return [perm[i::k] for i in range(k)]


def _choose_penalty(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """The relative penalty with the least K-fold held-out squared error on (x, y)."""
    err = np.zeros(len(RELATIVE_PENALTIES))
    for held in _folds(len(x), k):
        train = np.setdiff1d(np.arange(len(x)), held)
        pred = _ridge_predict(x[train], y[train], x[held], RELATIVE_PENALTIES)
        err += ((pred - y[held]) ** 2).sum(axis=(1, 2))
    return RELATIVE_PENALTIES[int(np.argmin(err))]  # ties: the smallest penalty


def probe(embedding: np.ndarray, folds: int = FOLDS) -> dict:
    """Score a (rows, cols, dim) position embedding: held-out R², mean distance in patches, and the
    penalties chosen (relative to the mean eigenvalue), one per outer fold."""
    emb = np.asarray(embedding, dtype=np.float64)
    if emb.ndim != 3:
        raise PosinfoError(f"embedding probe: a (rows, cols, dim) embedding is needed, not shape {emb.shape}")
    rows, cols, dim = emb.shape
    n = rows * cols
    if n < 2 * folds:
        raise PosinfoError(f"embedding probe: {n} positions are too few for {folds} nested folds")
    x, y = emb.reshape(n, dim), positions(rows, cols)
    pred = np.zeros_like(y)
    chosen = []
    for held in _folds(n, folds):
        train = np.setdiff1d(np.arange(n), held)
        penalty = _choose_penalty(x[train], y[train], folds)
        chosen.append(penalty)
        pred[held] = _ridge_predict(x[train], y[train], x[held], (penalty,))[0]
    total = float(((y - y.mean(0)) ** 2).sum())
    r2 = 1.0 - float(((pred - y) ** 2).sum()) / total
    return {"r2": r2, "distance_patches": _distance(pred, y, rows, cols),
            "chance_distance_patches": _distance(np.broadcast_to(y.mean(0), y.shape), y, rows, cols),
            "grid": [rows, cols], "dim": dim, "folds": folds, "penalties": chosen}


def _distance(pred: np.ndarray, y: np.ndarray, rows: int, cols: int) -> float:
    """Mean Euclidean distance in patches between predicted and true normalised positions."""
    d = np.hypot((pred[:, 0] - y[:, 0]) * max(cols - 1, 1), (pred[:, 1] - y[:, 1]) * max(rows - 1, 1))
    return float(d.mean())
