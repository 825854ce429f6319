"""Training the readout f_pem on frozen features (docs/method.md, "5. Upsampling, loss and training")."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posinfo.errors import PosinfoError
from posinfo.features import FeatureSource
from posinfo.names import CONVERGED_REL_CHANGE, PAPER_STEPS
from posinfo.readout import OneMapConv2d, Readout, Standardize, map_convs
from posinfo.upsampling import FeatureLoss

log = logging.getLogger(__name__)


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Readout maps upsampled (bilinear, align_corners=False) to size×size: B×1×size×size."""
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


def predict(readout: nn.Module, features: torch.Tensor, size: int) -> torch.Tensor:
    """The readout's output on ``features``, upsampled to size×size (:func:`upsample`)."""
    return upsample(readout(features), size)




class MapLoss:
    """A map readout's training loss on its output (B×1×Ho×Wo): the MSE against the target map,
    taken after upsampling to the target's size (``at="image"``, the paper's arithmetic) or
    through the upsampling's Gram at the readout's own size (``at="feature"``,
    posinfo.upsampling.FeatureLoss: equal in real arithmetic). Depth-1 map readouts may share
    their last GEMM (``stackable``)."""

    stackable = True

    def __init__(self, target: torch.Tensor, at: str = "image"):
        self.target = target.view(1, 1, *target.shape[-2:])
        self.at = at
        self._feature: FeatureLoss | None = None

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        t = self.target
        if self.at == "feature":
            if self._feature is None or self._feature.g_h.shape[0] != out.shape[-2]:
                self._feature = FeatureLoss(t, out.shape[-2], out.shape[-1])
            return self._feature(out)
        pred = upsample(out, t.shape[-1])
        return F.mse_loss(pred, t.expand_as(pred))


class LabelLoss:
    """A classifier readout's training loss on its logits (B×classes×Ho×Wo): cross-entropy
    against one label per output position, the same for every image (target=grid: its cells)."""

    stackable = False

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        t = self.labels
        return F.cross_entropy(out, t.view(1, *t.shape[-2:]).expand(len(out), *t.shape[-2:]))


def _step(readout: nn.Module, feats: torch.Tensor, loss_fn, opt: torch.optim.Optimizer) -> float:
    """One SGD step of one readout on one batch; its loss."""
    loss = loss_fn(readout(feats))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _stack_parts(readout: nn.Module, loss_fn):
    """(pre, conv, tail) for a readout whose only convolution is its last, a OneMapConv2d
    (depth 1, a map target): ``pre`` its Standardize or None, ``tail`` its BN and sigmoid.
    None for any other readout, which steps alone."""
    pre, r = None, readout
    if isinstance(r, nn.Sequential) and len(r) == 2 and isinstance(r[0], Standardize):
        pre, r = r[0], r[1]
    if not loss_fn.stackable or not (isinstance(r, Readout) and isinstance(r[0], OneMapConv2d)):
        return None
    return pre, r[0], nn.Sequential(*list(r)[1:])  # the same modules (a Readout cannot be sliced)


def _stacks(readouts: list[tuple[int, nn.Module, Any, torch.optim.Optimizer]]) -> list[list]:
    """The readouts split into stacks that step together: depth-1 map readouts on the same
    input (no Standardize, or one with the same statistics) share their GEMM (map_convs);
    every other readout is a stack of one."""
    stacks: list[list] = []
    shared: list[tuple[Standardize | None, list]] = []
    for entry in readouts:
        parts = _stack_parts(entry[1], entry[2])
        if parts is None:
            stacks.append([entry])
            continue
        pre = parts[0]
        for other, members in shared:
            if (pre is None and other is None) or (pre is not None and other is not None and torch.equal(
                    pre.mean, other.mean) and torch.equal(pre.std, other.std)):
                members.append((*entry, parts))
                break
        else:
            shared.append((pre, [(*entry, parts)]))
            stacks.append(shared[-1][1])
    return stacks


def _stacked_step(stack: list, feats: torch.Tensor) -> list[float]:
    """One SGD step of each readout of a stack on one batch, its last layer's GEMM shared
    (readout.map_convs): the same arithmetic as :func:`_step` per readout, the features
    read once. Their losses."""
    pre = stack[0][4][0]
    x = pre(feats) if pre is not None else feats
    maps = map_convs(x, [parts[1] for *_, parts in stack])
    losses = []
    for (_, _, loss_fn, _, parts), out in zip(stack, maps):
        losses.append(loss_fn(parts[2](out)))
    losses = torch.stack(losses)
    for _, _, _, opt, _ in stack:
        opt.zero_grad(set_to_none=True)
    losses.sum().backward()  # parameters are disjoint: each readout gets its own gradient
    for _, _, _, opt, _ in stack:
        opt.step()
    return losses.tolist()


def _epoch(batches, readouts: list[tuple[int, nn.Module, Any, torch.optim.Optimizer]],
           step_scheds: list | None, left: int | None, bar) -> dict[int, list[tuple[float, int]]]:
    """One pass over the batches, each batch used by each readout (index, readout, loss,
    optimiser), at most ``left`` steps; readouts that can share their GEMM step together
    (:func:`_stacks`), the others in turn. With ``step_scheds`` the lr schedules step per
    step (train.steps). Each readout's steps' losses and batch sizes."""
    losses: dict[int, list[tuple[float, int]]] = {i: [] for i, *_ in readouts}
    stacks = _stacks(readouts)
    for feats in batches:
        for stack in stacks:
            if len(stack) == 1:
                i, readout, loss_fn, opt = stack[0][:4]
                losses[i].append((_step(readout, feats, loss_fn, opt), len(feats)))
            else:
                for (i, *_), v in zip(stack, _stacked_step(stack, feats)):
                    losses[i].append((v, len(feats)))
        if step_scheds is not None:
            for i, *_ in readouts:
                step_scheds[i].step()  # per step: milestones in steps
        bar.update(1)
        if left is not None and len(next(iter(losses.values()))) >= left:
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


def fit(readout: nn.Module, source: FeatureSource, target: torch.Tensor, *, log_path: Path | None = None,
        **kwargs) -> list[dict]:
    """MSE against the same ``target`` map (H×W) for every image, or ``target`` a loss object (a
    target kind's, posinfo.kinds: e.g. :class:`LabelLoss`); SGD with a step schedule.

    ``steps``: exactly that many SGD steps whatever the dataset size (the epochs it takes,
    the last one cut short), the lr milestones scaled in proportion (epoch 10 of 15 → step
    2/3 of ``steps``); None: ``epochs`` full epochs, the lr dropping after each milestone
    epoch. Returns one record per epoch, with its steps' losses (also appended as JSON
    lines to ``log_path``). The other keywords: :func:`fit_many`'s.
    """
    history = fit_many([readout], source, [target], log_paths=[log_path], **kwargs)[0]
    if isinstance(history, Exception):
        raise history
    return history


@contextlib.contextmanager
def flush_denormals():
    """Denormal floats (below 1.2e-38) flushed to zero on the CPU while readouts train: a
    softmax or sigmoid that saturates (the grid readout's logits, a confident ramp readout)
    fills its gradients with them, and x86 arithmetic on denormals made each SGD step up to
    ~80× slower (measured: a 768→49-channel step, 0.65 s flushed against 51 s). Values that
    small are below float32's resolution of anything they are added to."""
    changed = torch.set_flush_denormal(True)  # False where the CPU cannot (then nothing changes)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


def fit_many(
    readouts: list[nn.Module],
    source: FeatureSource,
    targets: list[Any],
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
    loss_at: str = "image",
    log_paths: list[Path | None] | None = None,
    progress: bool = True,
) -> list[list[dict] | PosinfoError]:
    """Fused training (``sweep.fuse``): every readout in one pass over the features, each batch
    read once and used by each readout in turn. Each readout has its own optimiser and lr
    schedule, and sees the batches in the same order (from ``seed``) as it would alone, so
    each ends exactly where :func:`fit` would take it. A readout whose loss is not finite at
    the end of an epoch stops there: its entry is the PosinfoError :func:`fit` would raise,
    the others go on. An epoch's ``seconds`` is the time of the whole group's epoch. ``targets``:
    each a map (H×W, the MSE at ``loss_at``) or a loss object (a target kind's, posinfo.kinds).
    """
    from tqdm.auto import tqdm

    tgts = [MapLoss(t, loss_at) if isinstance(t, torch.Tensor) else t for t in targets]
    n_batches = -(-source.n // batch_size)
    opts, scheds, n_epochs = _optimisers(readouts, lr, momentum, weight_decay, epochs, steps, n_batches,
                                         lr_milestones, lr_gamma)
    gen = torch.Generator().manual_seed(seed)
    paths = log_paths or [None] * len(readouts)
    with flush_denormals():
        out: list[list[dict] | PosinfoError] = [[] for _ in readouts]
        live = list(range(len(readouts)))
        done = 0
        for epoch in range(1, n_epochs + 1):
            t0 = time.perf_counter()
            order = torch.randperm(source.n, generator=gen).numpy()
            lrs = {i: opts[i].param_groups[0]["lr"] for i in live}
            left = None if steps is None else steps - done
            with tqdm(total=n_batches if left is None else min(n_batches, left), desc=f"epoch {epoch}/{n_epochs}",
                      unit="batch", leave=False, disable=None if progress else True) as bar:  # a bar only on a terminal
                losses = _epoch(source.batches(order, batch_size), [(i, readouts[i], tgts[i], opts[i]) for i in live],
                                scheds if steps is not None else None, left, bar)
            done += len(losses[live[0]])
            seconds = round(time.perf_counter() - t0, 3)
            _close_epoch(live, losses, out, scheds if steps is None else None, epoch, lrs, seconds, paths,
                         n_epochs if len(readouts) == 1 else None)
            if len(readouts) > 1:
                log.info("epoch %d/%d  %d readouts fused  losses %s  %.1fs", epoch, n_epochs, len(live),
                         " ".join(f"{out[i][-1]['loss']:.5f}" for i in live), seconds)
            if not live:
                break
    for r in readouts:
        r.eval()
    return out


def _optimisers(readouts: list[nn.Module], lr: float, momentum: float, weight_decay: float, epochs: int,
                steps: int | None, n_batches: int, lr_milestones: tuple[int, ...], lr_gamma: float):
    """Each readout's SGD optimiser and lr schedule, and the number of epochs; the readouts set to
    train mode (their own BatchNorm learns; the encoder is frozen elsewhere)."""
    opts = [torch.optim.SGD(r.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay) for r in readouts]
    scheds = [_schedule(opt, epochs, steps, n_batches, lr_milestones, lr_gamma)[0] for opt in opts]
    for r in readouts:
        r.train()
    return opts, scheds, _schedule(None, epochs, steps, n_batches, lr_milestones, lr_gamma)[1]


def _close_epoch(live: list[int], losses: dict, out: list, scheds: list | None, epoch: int, lrs: dict, seconds: float,
                 paths: list, n_epochs: int | None) -> None:
    """Each live readout's epoch: its lr schedule stepped (``scheds``: per epoch; None when they
    step per step), its record appended to ``out``, or its error in its place and it leaves ``live``."""
    for i in list(live):
        if scheds is not None:
            scheds[i].step()
        rec = _record(losses[i], epoch, lrs[i], seconds, paths[i], n_epochs)
        if isinstance(rec, PosinfoError):
            live.remove(i)
            out[i] = rec
        else:
            out[i].append(rec)


def _record(losses: list[tuple[float, int]], epoch: int, lr: float, seconds: float,
            path: Path | None, n_epochs: int | None) -> dict | PosinfoError:
    """One readout's epoch record from its steps' (loss, batch size), appended as a JSON line to
    ``path`` and logged when ``n_epochs`` is given (a readout training alone); the PosinfoError
    that stops it when the epoch's loss is not finite."""
    total, count = sum(v * n for v, n in losses), sum(n for _, n in losses)
    if not np.isfinite(total):
        return _diverged(total, epoch)
    rec = {"epoch": epoch, "loss": total / count, "lr": lr, "seconds": seconds, "step_losses": [v for v, _ in losses]}
    if n_epochs is not None:
        log.info("epoch %d/%d  loss %.5f  lr %g  %.1fs", epoch, n_epochs, rec["loss"], lr, seconds)
    if path is not None:
        with open(path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return rec


def _schedule(opt: torch.optim.Optimizer | None, epochs: int, steps: int | None, n_batches: int,
              lr_milestones: tuple[int, ...], lr_gamma: float) -> tuple[torch.optim.lr_scheduler.MultiStepLR | None, int]:
    """The lr schedule (None without ``opt``) and the number of epochs: milestones in epochs, or scaled into steps."""
    if steps is None:
        milestones, n_epochs = list(lr_milestones), epochs
    else:
        milestones, n_epochs = [round(m / epochs * steps) for m in lr_milestones], -(-steps // n_batches)
    sched = None if opt is None else torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=lr_gamma)
    return sched, n_epochs


def _diverged(total: float, epoch: int) -> PosinfoError:
    return PosinfoError(
        f"training diverged at epoch {epoch} (loss {total}): lower train.lr, or check the feature scale "
        "(random-init ResNets in eval mode reach activations of ~1e8)"
    )
