"""Benchmark: the readout's fit on the same features, per solver and per loss.

    python bench/bench_solvers.py [--num-train 500] [--channels 1472] [--kernels 1,3] [--device cpu]
                                  [--targets 1,5] [--epochs 15] [--skip-ridge3]

On one set of random feature maps (N × C × 28 × 28, float32, in memory, so no cache I/O is
timed), side by side in one process:

- ``sgd, image``: the paper's SGD recipe (15 epochs, batch 32, 3×3 readout) with the MSE after
  upsampling to 224×224 (``train.loss_at=image``), for one target and for T fused targets;
- ``sgd, feature``: the same with the loss through the upsampling's Gram (``train.loss_at=feature``);
- ``ridge, k×k``: the closed-form readout (``readout.solver=ridge``), 5-fold CV over 9 penalties,
  for one target and for T targets (one pass serves them all).

It prints wall seconds and ratios; the final training losses of the two SGD losses, which
must agree to float32 rounding; and writes a CSV to ``--out``. Random features give the
arithmetic's cost, not a meaningful score.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from posinfo import ridge, targets  # noqa: E402
from posinfo.readout import LinearReadout, build_readout  # noqa: E402
from posinfo.train import fit_many  # noqa: E402

NAMES = ("hor", "ver", "gau", "horstp", "verstp")


class Features:
    """Features in one tensor, batches in the order asked (a FeatureSource)."""

    def __init__(self, x: torch.Tensor):
        self.x, self.n = x, len(x)

    def batches(self, order, batch_size):
        for lo in range(0, len(order), batch_size):
            yield self.x[torch.as_tensor(order[lo : lo + batch_size])]


def time_sgd(src, maps, loss_at: str, epochs: int, device) -> tuple[float, list[float]]:
    readouts = []
    for i in range(len(maps)):
        torch.manual_seed(i)
        readouts.append(build_readout(src.x.shape[1], 3, 1, 0, 28).to(device))
    t0 = time.perf_counter()
    hist = fit_many(readouts, src, [m.to(device) for m in maps], epochs=epochs, batch_size=32,
                    lr_milestones=(max(1, epochs * 2 // 3),), loss_at=loss_at, progress=False)
    _sync(device)
    return time.perf_counter() - t0, [h[-1]["loss"] for h in hist]


def time_ridge(src, maps, kernel: int, device) -> float:
    readouts = [LinearReadout(src.x.shape[1], kernel, 0).to(device) for _ in maps]
    for r in readouts:
        r[0].fit(src.batches(np.arange(src.n), 64))
    t0 = time.perf_counter()
    ridge.fit(readouts, src, [m.to(device) for m in maps], kernel=kernel, padding=0, feature_size=28, folds=5,
              batch_size=32, progress=False)
    _sync(device)
    return time.perf_counter() - t0


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-train", type=int, default=500)
    p.add_argument("--channels", type=int, default=1472)
    p.add_argument("--kernels", default="1,3", help="ridge kernels to time (3 at 1,472 channels: hours on a CPU)")
    p.add_argument("--targets", default="1,5", help="how many targets fit together")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.num_train, a.channels, 28, 28, generator=g).to(device)
    x = x.contiguous(memory_format=torch.channels_last)  # as cached features are read
    src = Features(x)
    rows = []
    counts = [int(t) for t in a.targets.split(",")]
    warm = Features(x[:32])  # one untimed pass of each path first: allocators, BLAS threads, lazy imports
    for loss_at in ("image", "feature"):
        time_sgd(warm, [targets.make("hor", 224)], loss_at, 1, device)
    for t in counts:
        maps = [targets.make(NAMES[i % len(NAMES)], 224) for i in range(t)]
        for loss_at in ("image", "feature"):
            s, losses = time_sgd(src, maps, loss_at, a.epochs, device)
            rows.append({"run": f"sgd, {loss_at}", "targets": t, "seconds": round(s, 2),
                         "final_losses": " ".join(f"{v:.6f}" for v in losses)})
            print(f"sgd   {loss_at:8s} {t} target(s): {s:7.1f} s   final losses {rows[-1]['final_losses']}", flush=True)
        for k in (int(v) for v in a.kernels.split(",")):
            s = time_ridge(src, maps, k, device)
            rows.append({"run": f"ridge, {k}x{k}", "targets": t, "seconds": round(s, 2), "final_losses": ""})
            print(f"ridge {k}x{k}      {t} target(s): {s:7.1f} s", flush=True)
    by = {(r["run"], r["targets"]): r["seconds"] for r in rows}
    lo, hi = min(counts), max(counts)
    print("\nratios (same process, same features):")
    for run in dict.fromkeys(r["run"] for r in rows):
        if (run, hi) in by and (run, lo) in by and hi != lo:
            print(f"  {run}: {hi} targets / {lo} target = {by[(run, hi)] / by[(run, lo)]:.2f}×")
    for t in counts:
        if ("sgd, image", t) in by:
            print(f"  {t} target(s): image loss / feature loss = {by[('sgd, image', t)] / by[('sgd, feature', t)]:.2f}×")
            for k in a.kernels.split(","):
                if (f"ridge, {k}x{k}", t) in by:
                    print(f"  {t} target(s): ridge {k}x{k} / sgd (feature) = "
                          f"{by[(f'ridge, {k}x{k}', t)] / by[('sgd, feature', t)]:.2f}×")
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"solvers_{socket.gethostname()}_{dt.datetime.now():%Y%m%d_%H%M%S}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["device", "num_train", "channels", "epochs", "run", "targets", "seconds", "final_losses"])
        w.writeheader()
        for r in rows:
            w.writerow({"device": a.device, "num_train": a.num_train, "channels": a.channels, "epochs": a.epochs, **r})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
