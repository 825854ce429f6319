"""Training the readout f_pem on frozen features (docs/method.md, "5. Upsampling, loss and training")."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posinfo.errors import PosinfoError
from posinfo.features import FeatureSource
from posinfo.names import CONVERGED_REL_CHANGE, PAPER_STEPS

log = logging.getLogger(__name__)


def predict(readout: nn.Module, features: torch.Tensor, size: int) -> torch.Tensor:
    """Readout output upsampled (bilinear, align_corners=False) to size×size: B×1×size×size."""
    return F.interpolate(readout(features), size=(size, size), mode="bilinear", align_corners=False)




def _epoch(readout: nn.Module, batches, tgt: torch.Tensor, opt: torch.optim.Optimizer, bar,
           max_steps: int | None = None, after_step=None) -> list[tuple[float, int]]:
    """SGD steps over the batches (at most ``max_steps``); each step's loss and batch size."""
    losses: list[tuple[float, int]] = []
    for feats in batches:
        if tgt.dtype == torch.long:  # the location target: cell labels at the readout's own resolution
            logits = readout(feats)
            loss = F.cross_entropy(logits, tgt.view(1, *tgt.shape[-2:]).expand(len(feats), *tgt.shape[-2:]))
        else:
            pred = predict(readout, feats, tgt.shape[-1])
            loss = F.mse_loss(pred, tgt.expand_as(pred))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        losses.append((loss.item(), len(feats)))
        bar.update(1)
        if max_steps is not None and len(losses) >= max_steps:
            break
    return losses


def resolve_steps(steps: int | str | None) -> int | None:
    """``train.steps``: null (the epochs as given), an integer, or ``paper`` (PAPER_STEPS)."""
    if steps in (None, "null", "none"):
        return None
    return PAPER_STEPS if steps == "paper" else int(steps)


def outcome(step_losses: list[float]) -> dict:
    """How training ended: the mean loss of the last tenth of the steps, its relative change
    from the tenth before (both inside the last 20%, after the lr drop), and ``converged``:
    that change is at most CONVERGED_REL_CHANGE."""
    n = len(step_losses)
    tenth = max(1, n // 10)
    last = float(np.mean(step_losses[-tenth:]))
    before = float(np.mean(step_losses[-2 * tenth:-tenth])) if n >= 2 * tenth and n > 1 else math.nan
    change = (before - last) / before if before and math.isfinite(before) else math.nan
    return {"steps": n, "final_loss": last, "rel_change_last20": change,
            "converged": bool(math.isfinite(change) and change <= CONVERGED_REL_CHANGE)}


def fit(
    readout: nn.Module,
    source: FeatureSource,
    target: torch.Tensor,
    *,
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    lr_milestones: tuple[int, ...] = (10,),
    lr_gamma: float = 0.1,
    seed: int = 0,
    steps: int | None = None,
    log_path: Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """MSE against the same ``target`` (H×W) for every image, or cross-entropy when ``target`` is a
    long map of class labels at the readout's output size (the location target); SGD with a step schedule.

    ``steps``: exactly that many SGD steps whatever the dataset size (the epochs it takes,
    the last one cut short), the lr milestones scaled in proportion (epoch 10 of 15 → step
    2/3 of ``steps``); None: ``epochs`` full epochs, the lr dropping after each milestone
    epoch. Returns one record per epoch, with its steps' losses (also appended as JSON
    lines to ``log_path``).
    """
    from tqdm.auto import tqdm

    tgt = target if target.dtype == torch.long else target.view(1, 1, *target.shape[-2:])
    opt = torch.optim.SGD(readout.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n_batches = -(-source.n // batch_size)
    sched, epochs = _schedule(opt, epochs, steps, n_batches, lr_milestones, lr_gamma)
    gen = torch.Generator().manual_seed(seed)
    readout.train()  # the readout's own BatchNorm learns; the encoder is frozen elsewhere
    history: list[dict] = []
    done = 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(source.n, generator=gen).numpy()
        lr_now = opt.param_groups[0]["lr"]
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                   disable=None if progress else True)  # None: a bar only on a terminal
        losses = _epoch(readout, source.batches(order, batch_size), tgt, opt, bar,
                        max_steps=None if steps is None else steps - done,
                        after_step=None if steps is None else sched.step)  # per step: milestones in steps
        bar.close()
        done += len(losses)
        if steps is None:
            sched.step()
        total, count = sum(v * n for v, n in losses), sum(n for _, n in losses)
        _check_finite(total, epoch)
        rec = {"epoch": epoch, "loss": total / count, "lr": lr_now, "seconds": round(time.perf_counter() - t0, 3),
               "step_losses": [v for v, _ in losses]}
        history.append(rec)
        log.info("epoch %d/%d  loss %.5f  lr %g  %.1fs", epoch, epochs, rec["loss"], lr_now, rec["seconds"])
        if log_path is not None:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
    readout.eval()
    return history


def _schedule(opt: torch.optim.Optimizer, epochs: int, steps: int | None, n_batches: int,
              lr_milestones: tuple[int, ...], lr_gamma: float) -> tuple[torch.optim.lr_scheduler.MultiStepLR, int]:
    """The lr schedule and the number of epochs: milestones in epochs, or scaled into steps."""
    if steps is None:
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(lr_milestones), gamma=lr_gamma), epochs
    milestones = [round(m / epochs * steps) for m in lr_milestones]
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=lr_gamma), -(-steps // n_batches)


def _check_finite(total: float, epoch: int) -> None:
    if not np.isfinite(total):
        raise PosinfoError(
            f"training diverged at epoch {epoch} (loss {total}): lower train.lr, or check the feature scale "
            "(random-init ResNets in eval mode reach activations of ~1e8)"
        )
