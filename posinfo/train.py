"""Training the readout f_pem on frozen features (docs/method.md, "5. Upsampling, loss and training")."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posinfo.errors import PosinfoError
from posinfo.features import FeatureSource

log = logging.getLogger(__name__)


def predict(readout: nn.Module, features: torch.Tensor, size: int) -> torch.Tensor:
    """Readout output upsampled (bilinear, align_corners=False) to size×size: B×1×size×size."""
    return F.interpolate(readout(features), size=(size, size), mode="bilinear", align_corners=False)


def _epoch(readout: nn.Module, batches, tgt: torch.Tensor, opt: torch.optim.Optimizer, bar) -> tuple[float, int]:
    """One pass of SGD steps; the summed loss (weighted by batch size) and the item count."""
    total, count = 0.0, 0
    for feats in batches:
        pred = predict(readout, feats, tgt.shape[-1])
        loss = F.mse_loss(pred, tgt.expand_as(pred))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(feats)
        count += len(feats)
        bar.update(1)
    return total, count


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
    log_path: Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """MSE against the same ``target`` (H×W) for every image; SGD with a step schedule.

    Returns one record per epoch (also appended as JSON lines to ``log_path``).
    """
    from tqdm.auto import tqdm

    tgt = target.view(1, 1, *target.shape[-2:])
    opt = torch.optim.SGD(readout.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(lr_milestones), gamma=lr_gamma)
    gen = torch.Generator().manual_seed(seed)
    readout.train()  # the readout's own BatchNorm learns; the encoder is frozen elsewhere
    history: list[dict] = []
    n_batches = -(-source.n // batch_size)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(source.n, generator=gen).numpy()
        lr_now = opt.param_groups[0]["lr"]
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                   disable=None if progress else True)  # None: a bar only on a terminal
        total, count = _epoch(readout, source.batches(order, batch_size), tgt, opt, bar)
        bar.close()
        sched.step()
        if not np.isfinite(total):
            raise PosinfoError(
                f"training diverged at epoch {epoch} (loss {total}): lower train.lr, or check the feature scale "
                "(random-init ResNets in eval mode reach activations of ~1e8)"
            )
        rec = {"epoch": epoch, "loss": total / count, "lr": lr_now, "seconds": round(time.perf_counter() - t0, 3)}
        history.append(rec)
        log.info("epoch %d/%d  loss %.5f  lr %g  %.1fs", epoch, epochs, rec["loss"], lr_now, rec["seconds"])
        if log_path is not None:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
    readout.eval()
    return history
