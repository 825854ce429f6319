"""``readout.solver=ridge``: the optimal linear readout of the paper's objective, in closed form.

The readout keeps the paper's geometry (k×k kernel, padding, taps, feature size) with a
linear output: y = conv(x̂, w) + b on channel-standardised features x̂, upsampled to the
target's S×S and compared with the target by the mean squared error, the paper's own loss.
Its weights minimise

    L(w, b) = 1/(n·S²) Σᵢ ‖U (Φᵢ w + b) − t‖²  +  λ ‖w‖²,

a quadratic form (Φᵢ: image i's k×k patches, P×D with D = C·k²; U the bilinear upsampling,
whose Gram UᵀU = G_h ⊗ G_w is posinfo.upsampling's). Its normal equations are accumulated
in one pass over the training features: with R = R_h ⊗ R_w a square root of UᵀU (Cholesky
factors of the two small Grams), Σᵢ Φᵢᵀ UᵀU Φᵢ = Σᵢ (RΦᵢ)ᵀ(RΦᵢ), one symmetric product per
chunk of images, and Σᵢ Φᵢᵀ Uᵀt = (Σᵢ Φᵢ)ᵀ Uᵀt, so the target enters only at the end and one
pass serves every target of a fused group (and every target is solved with the same
factorisations). The bias is not penalised (eliminated exactly by
its Schur complement). λ is chosen by K-fold cross-validation over training images (never
test images): the folds' normal equations are kept apart, each fold's fit is the total
minus the fold, and its validation loss is the same quadratic form on the fold. Nothing is
random: no seed, identical results on re-run.

Cost (docs/method.md, "The closed-form readout"): the pass is n·P·(D+1)² multiply-adds
(products of at most ``CHUNK_ROWS`` rows in the features' precision, float32 for cached
features, accumulated in float64), the memory K+1 matrices of (D+1)² float64; the solves
one Cholesky factorisation (D³/3) per fold and λ, and one per λ chosen.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from posinfo.errors import PosinfoError
from posinfo.readout import LinearReadout
from posinfo.upsampling import Upsampling

log = logging.getLogger(__name__)

CHUNK_ROWS = 8192  # rows (images × positions) per symmetric product
# The penalties tried, relative to the mean diagonal of the (normalised) normal matrix:
# from almost none to one that shrinks the weights to almost nothing.
RELATIVE_LAMBDAS = tuple(10.0 ** e for e in range(-6, 3))


@dataclass
class Moments:
    """One fold's sums: H = Σ (RΦ)ᵀ(RΦ) over its images (bias last), s = Σ Φ (P×(D+1)), n images."""

    h: torch.Tensor
    s: torch.Tensor
    n: int = 0


def _patches(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Φ for a batch of (already padded) features: B×P×(D+1), each output position's k×k patch
    of every channel (the conv weight's order: channel, row, column) and a 1 for the bias."""
    cols = F.unfold(x, kernel).transpose(1, 2)  # B×P×D
    return torch.cat([cols, cols.new_ones(*cols.shape[:2], 1)], dim=2)


def moments(batches, folds: np.ndarray, n_folds: int, kernel: int, out_hw: tuple[int, int], size: int,
            features: Callable[[torch.Tensor], torch.Tensor], progress=None) -> list[Moments]:
    """The normal equations of each fold, in one pass over ``batches`` (feature batches in
    image order; ``folds[i]`` is image i's fold); ``features`` turns a batch into what the
    convolution reads (LinearReadout.features: padded, standardised)."""
    g_h, g_w = Upsampling.of(*out_hw, size).gram()
    r_h = torch.linalg.cholesky(g_h).t()  # G_h = R_hᵀR_h
    r_w = torch.linalg.cholesky(g_w).t()
    out: list[Moments] | None = None
    at = 0
    for x in batches:
        phi = _patches(features(x), kernel)  # in the features' precision
        b, p, d = phi.shape
        if out is None:
            out = [Moments(phi.new_zeros(d, d, dtype=torch.float64), phi.new_zeros(p, d, dtype=torch.float64))
                   for _ in range(n_folds)]
        rh, rw = r_h.to(phi), r_w.to(phi)  # R in the features' precision, on their device
        h, w = out_hw  # R = R_h ⊗ R_w as two batched products (4× faster here than one einsum)
        rphi = (rw @ (rh @ phi.view(b, h, w * d)).view(b * h, w, d)).view(b, p, d)
        f = folds[at : at + b]
        for k in np.unique(f):
            sel = torch.from_numpy(np.flatnonzero(f == k)).to(phi.device)
            m = out[k]
            rows = rphi[sel].reshape(-1, d)
            for lo in range(0, len(rows), CHUNK_ROWS):
                m.h += _upper_gram(rows[lo : lo + CHUNK_ROWS])
            m.s += phi[sel].sum(dim=0).double()
            m.n += len(sel)
        at += b
        if progress is not None:
            progress(b)
    if out is None:
        raise PosinfoError("readout.solver=ridge found no training images")
    return [Moments(_symmetric(m.h), m.s, m.n) for m in out]  # on the features' device: a GPU solves there too


def _upper_gram(chunk: torch.Tensor) -> torch.Tensor:
    """chunkᵀchunk in float64, its upper triangle (the rest is not used): BLAS's symmetric rank-k
    update on a CPU (half a matrix product's work; measured 3.6× faster than torch's product
    here), a matrix product on a GPU."""
    if chunk.device.type == "cpu":
        from scipy.linalg import blas

        a = chunk.numpy()
        syrk = blas.dsyrk if a.dtype == np.float64 else blas.ssyrk
        return torch.from_numpy(syrk(1.0, a.T, trans=0, lower=0)).double()
    return (chunk.t() @ chunk).double()


def _symmetric(upper: torch.Tensor) -> torch.Tensor:
    return torch.triu(upper) + torch.triu(upper, 1).t()


@dataclass
class Problem:
    """A quadratic problem over the fold set ``h``: w minimises wᵀMw − 2qᵀw + λ‖w‖², the bias follows."""

    m: torch.Tensor  # D×D Schur complement of the bias
    c: torch.Tensor  # D   the bias column
    d: float  # the bias's own entry
    g: torch.Tensor  # (D+1)×T right-hand sides, one per target

    @classmethod
    def of(cls, h: torch.Tensor, g: torch.Tensor) -> "Problem":
        c, d = h[:-1, -1], float(h[-1, -1])
        return cls(h[:-1, :-1] - torch.outer(c, c) / d, c, d, g)

    def rhs(self) -> torch.Tensor:
        return self.g[:-1] - torch.outer(self.c, self.g[-1]) / self.d

    def weights(self, w: torch.Tensor) -> torch.Tensor:
        """(D+1)×T: w and the optimal bias for it."""
        b = (self.g[-1] - self.c @ w) / self.d
        return torch.cat([w, b.unsqueeze(0)], dim=0)


def _solutions(prob: Problem, lambdas: list[float]) -> list[torch.Tensor | None]:
    """θ(λ) ((D+1)×T) for each λ: one Cholesky factorisation of M + λI per λ (on this CPU a
    1,473-weight factorisation took 0.2 s, an eigendecomposition serving every λ 11 s). None
    where M + λI is not numerically positive definite: a penalty below the rounding of the
    normal equations (accumulated from float32 products) on nearly collinear features, e.g.
    the 3×3 shifts of a tap upsampled 4× to the feature size."""
    q = prob.rhs()
    out: list[torch.Tensor | None] = []
    for lam in lambdas:
        a = prob.m.clone()
        a.diagonal().add_(lam)  # M + λI without a dense identity: one D×D matrix less (1.4 GB at D = 13,249)
        factor, info = torch.linalg.cholesky_ex(a)
        del a
        out.append(prob.weights(torch.cholesky_solve(q, factor)) if int(info) == 0 else None)
    return out


def _losses(theta: torch.Tensor, h: torch.Tensor, g: torch.Tensor, n: int, tt: torch.Tensor, pixels: int) -> torch.Tensor:
    """The mean squared error per target of θ on a fold set with sums (h, g, n): 1/(n·S²) Σᵢ ‖UΦᵢθ − t‖²."""
    quad = (theta * (h @ theta)).sum(dim=0)
    lin = (theta * g).sum(dim=0)
    return (quad - 2 * lin + n * tt) / (n * pixels)


def solve(folds: list[Moments], maps: list[torch.Tensor], up: Upsampling, lambdas_rel=RELATIVE_LAMBDAS,
          lambdas: list[float] | None = None) -> list[dict]:
    """Cross-validate λ for each target map (S×S) and fit on all folds. One dict per target:
    ``weights`` ((D+1) vector, bias last), ``lambda``, ``cv`` (λ → mean validation MSE),
    ``train_loss``, ``val_loss``. ``lambdas``: absolute penalties instead of the relative grid."""
    r = torch.stack([up.adjoint(t.double().reshape(up.size, up.size)).reshape(-1) for t in maps], dim=1)  # P×T
    tt = torch.tensor([float((t.double() ** 2).sum()) for t in maps], dtype=torch.float64, device=r.device)
    pixels = up.size * up.size
    total_h = sum(f.h for f in folds)
    total_s = sum(f.s for f in folds)
    n = sum(f.n for f in folds)
    scale = float(torch.diagonal(total_h)[:-1].mean()) / (n * pixels)  # the normalised matrix's mean diagonal
    if lambdas is None:
        lambdas = [rel * scale for rel in lambdas_rel]
    else:
        lambdas_rel = [lam / scale for lam in lambdas]
    val = torch.zeros(len(lambdas), len(maps), dtype=torch.float64, device=r.device)
    used = [f for f in folds if f.n > 0]
    if len(used) < 2:
        raise PosinfoError(f"readout.solver=ridge needs at least 2 training images per fold: {n} images give "
                           f"{len(used)} non-empty fold(s); use more images (data.num_train) or readout.ridge_folds=2")
    for f in used:
        rest_n = n - f.n
        prob = Problem.of((total_h - f.h) / (rest_n * pixels), (total_s - f.s).t() @ r / (rest_n * pixels))
        for j, theta in enumerate(_solutions(prob, lambdas)):
            val[j] += math.inf if theta is None else _losses(theta, f.h, f.s.t() @ r, f.n, tt, pixels) * f.n / n
    if not torch.isfinite(val).any():
        raise PosinfoError("readout.solver=ridge: the normal equations are not positive definite at any penalty tried "
                           "(non-finite or overflowing features?); check the features, e.g. cache.dtype=float32")
    best = [int(j) for j in val.argmin(dim=0)]
    prob = Problem.of(total_h / (n * pixels), total_s.t() @ r / (n * pixels))
    chosen = sorted(set(best))
    final = dict(zip(chosen, _solutions(prob, [lambdas[j] for j in chosen])))  # one factorisation per λ chosen
    out = []
    for t in range(len(maps)):
        j = best[t]
        if final[j] is None:
            raise PosinfoError(f"readout.solver=ridge: the normal equations of all training images are not positive "
                               f"definite at the penalty cross-validation chose ({lambdas[j]:.2e}); check the features")
        theta = final[j][:, t]
        out.append({
            "weights": theta, "lambda": lambdas[j], "lambda_rel": lambdas_rel[j],
            "cv": {f"{lam:.3e}": (float(v) if math.isfinite(v) else None) for lam, v in zip(lambdas, val[:, t])},
            "train_loss": float(_losses(theta.unsqueeze(1), total_h, total_s.t() @ r[:, t : t + 1], n, tt[t : t + 1], pixels)),
            "val_loss": float(val[j, t]),
            "at_edge": j == len(lambdas) - 1 or (j == 0 and math.isfinite(val[0, t])),
            "skipped": int((~torch.isfinite(val[:, t])).sum()),
        })
    return out


def fold_of(n: int, n_folds: int) -> np.ndarray:
    """Image i's fold: i mod K (images are exchangeable; deterministic, no seed)."""
    return np.arange(n) % n_folds


def fit(readouts: list[LinearReadout], source, maps: list[torch.Tensor], *, kernel: int, padding: int,
        feature_size: int, folds: int, batch_size: int, progress: bool = True) -> list[list[dict]]:
    """Fit each LinearReadout (standardisation already set, all equal) to its target map (S×S),
    or to its maps (T×S×S, one per output: target=xy) by ridge, each map its own cross-validated
    penalty; one pass over ``source``'s features serves all. A map S×S whose side is the
    readout's output side is fitted there (U is the identity). Returns each readout's history:
    one record, as :func:`posinfo.train.fit` returns one per epoch (a readout of several
    outputs: its maps' mean losses, and their penalties as lists)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    n = source.n
    if n < 2 * folds:
        raise PosinfoError(f"readout.ridge_folds={folds} needs at least {2 * folds} training images, "
                           f"data.num_train gives {n}: lower readout.ridge_folds (>= 2) or use more images")
    side = feature_size + 2 * padding - kernel + 1
    size = maps[0].shape[-1]
    if any(m.shape[-1] != size for m in maps):
        raise ValueError("ridge.fit: every map of one pass must have the same side (posinfo.job groups them so)")
    stacks = [m.reshape(-1, size, size) for m in maps]  # each readout's maps, T_i × S × S
    bar = tqdm(total=n, desc="ridge: normal equations", unit="img", leave=False, disable=None if progress else True)
    sums = moments(source.batches(np.arange(n), batch_size), fold_of(n, folds), folds, kernel, (side, side), size,
                   readouts[0].features, bar.update)
    bar.close()
    t_pass = time.perf_counter() - t0
    device = sums[0].h.device
    fits = solve(sums, [t.to(device) for st in stacks for t in st], Upsampling.of(side, side, size, device=device))
    seconds = round(time.perf_counter() - t0, 3)
    histories, at = [], 0
    for readout, st in zip(readouts, stacks):
        res, at = fits[at : at + len(st)], at + len(st)
        theta = torch.stack([r.pop("weights") for r in res], dim=1)  # (D+1)×T
        conv = readout[1]
        with torch.no_grad():
            conv.weight.copy_(theta[:-1].t().reshape(conv.weight.shape).to(conv.weight))
            conv.bias.copy_(theta[-1].to(conv.bias))
        for r in res:
            if r["at_edge"]:
                log.warning("ridge: the cross-validated penalty %.2e lies at the edge of the grid tried (%g relative): "
                            "the optimum may lie beyond it", r["lambda"], r["lambda_rel"])
        histories.append([{"epoch": 1, "loss": _mean(res, "train_loss"), "solver": "ridge", **_each(res),
                           "val_loss": _mean(res, "val_loss"), "folds": folds, "weights": int(theta.numel()),
                           "pass_s": round(t_pass, 3), "seconds": seconds}])
    log.info("ridge: %d readout(s), %d weights each, normal equations %.1fs, solves %.1fs", len(readouts),
             histories[0][0]["weights"], t_pass, seconds - t_pass)
    return histories


def _mean(res: list[dict], key: str) -> float:
    """A readout's loss over its maps: their mean (the MSE over all its outputs, as SGD's loss)."""
    return float(np.mean([r[key] for r in res]))


def _each(res: list[dict]) -> dict:
    """The penalty and its cross-validation curve: a value for one map, a list for several."""
    keys = {"lambda": "lambda", "lambda_rel": "lambda_rel", "cv": "cv", "lambdas_skipped": "skipped"}
    if len(res) == 1:
        return {k: res[0][v] for k, v in keys.items()}
    return {k: [r[v] for r in res] for k, v in keys.items()}


def check(depth: int, kind) -> None:
    """What the closed-form readout cannot be: one line each. ``kind``: the target's (posinfo.kinds)."""
    if depth != 1:
        raise PosinfoError(f"readout.solver=ridge with readout.depth={depth}: a deeper readout is not linear, so it "
                           "has no closed form; use readout.depth=1 with ridge, or readout.solver=sgd")
    if kind.ridge_refusal is not None:
        raise PosinfoError(f"readout.solver=ridge with target={kind.target}: {kind.ridge_refusal}; "
                           f"use readout.solver=sgd with target={kind.target}")
