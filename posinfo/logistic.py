"""The convex readout for class targets: multinomial logistic regression, solved to a stated tolerance.

Rows ``X`` (n×D, e.g. one per image of globally pooled features, or one per readout position)
name one of ``classes`` each (``y``). The fit minimises

    L(W, b) = 1/n Σᵢ CE(softmax(W xᵢ + b), yᵢ) + λ/2 (‖W‖² + ‖b‖²)

on features standardised with the training rows' mean and std. Every parameter is penalised,
intercepts included, so L is λ-strongly convex and its optimality gap is bounded by the
gradient: L(θ) − L* ≤ ‖∇L(θ)‖² / (2λ). The solver (L-BFGS with a strong-Wolfe line search, in
float64) stops when that bound is below ``GAP_TOLERANCE``, and the result records the bound it
reached, so no fit is reported as optimal without its certificate.

λ is chosen by K-fold cross-validation over the rows' groups (the training images: group g is
in fold g mod K, as ``posinfo.ridge`` folds images), by the mean validation cross-entropy;
test rows are never seen. Deterministic: no seed, the same result on every run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from posinfo.errors import PosinfoError

log = logging.getLogger(__name__)

LAMBDAS = tuple(10.0 ** e for e in range(-4, 3))  # tried from strong to weak, each warm-starting the next
GAP_TOLERANCE = 1e-8  # certified optimality gap of the penalised mean cross-entropy, in nats
MAX_ITER = 2000


@dataclass
class Probe:
    """A fitted logistic readout: standardisation, weights (classes×D) and bias, and how it was found."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    record: dict = field(default_factory=dict)

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        z = (torch.as_tensor(np.asarray(x), dtype=torch.float64) - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.logits(x).argmax(1).numpy()


def _standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = x.mean(0), x.std(0, unbiased=False)
    # A constant column carries nothing; dividing by 1 leaves it at 0 instead of NaN.
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _objective(theta: torch.Tensor, z: torch.Tensor, y: torch.Tensor, classes: int, lam: float) -> torch.Tensor:
    w = theta.view(classes, z.shape[1] + 1)
    logits = z @ w[:, :-1].T + w[:, -1]
    return F.cross_entropy(logits, y) + 0.5 * lam * theta.pow(2).sum()


def _minimise(z: torch.Tensor, y: torch.Tensor, classes: int, lam: float, start: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    theta = (start.clone() if start is not None else torch.zeros(classes * (z.shape[1] + 1), dtype=torch.float64))
    theta.requires_grad_(True)
    # max|g| ≤ this guarantees ‖g‖²/(2λ) ≤ GAP_TOLERANCE: L-BFGS stops as soon as the gap is certified.
    grad_tol = math.sqrt(2 * lam * GAP_TOLERANCE / theta.numel())
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=100, history_size=20, tolerance_grad=grad_tol,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _objective(theta, z, y, classes, lam)
        loss.backward()
        return loss

    bound = math.inf
    while opt.state[theta].get("n_iter", 0) < MAX_ITER:
        opt.step(closure)
        loss = closure()
        bound = float(theta.grad.pow(2).sum()) / (2 * lam)
        if bound <= GAP_TOLERANCE:
            break
    it = int(opt.state[theta].get("n_iter", 0))
    if bound > GAP_TOLERANCE:
        log.warning("logistic readout at λ=%.0e: optimality gap bound %.1e after %d iterations (tolerance %.0e)",
                    lam, bound, it, GAP_TOLERANCE)
    return theta.detach(), {"loss": float(loss.detach()), "gap_bound": bound, "iterations": it}


def _validation_loss(theta: torch.Tensor, z: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    return float(_objective(theta, z, y, classes, 0.0))


def _cv(z: torch.Tensor, y: torch.Tensor, folds: np.ndarray, n_folds: int, classes: int) -> dict[float, float]:
    curve = {lam: 0.0 for lam in LAMBDAS}
    for k in range(n_folds):
        val = torch.as_tensor(folds == k)
        start = None
        for lam in sorted(LAMBDAS, reverse=True):  # strong to weak: each solution warm-starts the next
            start, _ = _minimise(z[~val], y[~val], classes, lam, start)
            curve[lam] += _validation_loss(start, z[val], y[val], classes) * int(val.sum()) / len(y)
    return curve


def fit(x: np.ndarray, y: np.ndarray, classes: int, groups: np.ndarray | None = None, n_folds: int = 5) -> Probe:
    """The cross-validated, certified-optimal logistic readout of ``x`` (n×D) for labels ``y`` in
    [0, classes). ``groups`` (default: each row its own) keeps the rows of one image in one fold."""
    x_t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    groups = np.arange(len(y_t)) if groups is None else np.asarray(groups)
    if len(np.unique(groups)) < n_folds:
        raise PosinfoError(f"readout.ridge_folds={n_folds}: more folds than the {len(np.unique(groups))} training "
                           f"images; use at most that many folds, or more training images")
    if int(y_t.min()) < 0 or int(y_t.max()) >= classes:
        raise ValueError(f"labels must lie in [0, {classes})")
    mean, std = _standardiser(x_t)
    z = (x_t - mean) / std
    folds = groups % n_folds
    curve = _cv(z, y_t, folds, n_folds, classes)
    lam = min(curve, key=curve.get)
    theta, rec = _minimise(z, y_t, classes, lam, None)
    w = theta.view(classes, z.shape[1] + 1)
    record = {"solver": "logistic", "lambda": lam, "folds": n_folds, "gap_tolerance": GAP_TOLERANCE,
              "cv": {f"{k:.0e}": v for k, v in sorted(curve.items())}, "final_loss": rec["loss"],
              "gap_bound": rec["gap_bound"], "iterations": rec["iterations"], "weights": int(theta.numel())}
    return Probe(mean, std, w[:, :-1].clone(), w[:, -1].clone(), record)


def shuffle_channels(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each row's entries in its own random order (Islam et al., ICCV 2021: position encoded
    channel-wise survives global pooling; shuffling channels per image removes it)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x)
    return np.take_along_axis(x, np.argsort(rng.random(x.shape), axis=1), axis=1)
