"""Benchmark: one readout training step on cached features, and reading a batch from the cache.

    python bench/bench_readout.py [--channels 1472] [--batch 32] [--repeats 10]

Side by side in one process, per image (ms), the pieces a cached sweep spends its
training time on (VGG16's 1472 channels at 28×28 by default):

- reading a batch of float16 features from a memory-mapped cache entry into float32:
  posinfo's ``CachedFeatures`` (rows copied into one reused buffer) vs a fancy-indexed
  copy converted with ``.float()`` (a fresh tensor per batch);
- a full SGD step of the default readout (3×3 conv C→1, BatchNorm, sigmoid, bilinear
  upsampling to 224², MSE): ``OneMapConv2d`` (posinfo's GEMM form of the last conv) vs
  ``nn.Conv2d``, on channels-last features, and ``nn.Conv2d`` on NCHW features;
- the forward pass alone, for both convolutions.

It checks that both convolutions give the same output (max |difference| printed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posinfo.features import CachedFeatures  # noqa: E402
from posinfo.readout import build_readout  # noqa: E402


def per_image_ms(fn, repeats: int, batch: int) -> float:
    fn()  # warm-up: allocation, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3 / batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/bench_readout.py", description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=1472)
    p.add_argument("--batch", type=int, default=32, help="train.batch_size")
    p.add_argument("--feature-size", type=int, default=28)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=10, help="timed repeats; the fastest counts")
    a = p.parse_args(argv)
    c, b, fs, size = a.channels, a.batch, a.feature_size, a.image_size
    torch.manual_seed(0)
    print(f"readout step: {c} channels at {fs}×{fs}, batch {b}, target {size}×{size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads (CPU)")
    rows: list[tuple[str, float]] = []

    with tempfile.TemporaryDirectory(prefix="posinfo-bench-readout-") as tmp:
        n = 2 * b
        path = Path(tmp) / "features.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, fs, fs, c))
        arr[:] = np.random.default_rng(0).standard_normal(arr.shape, dtype=np.float32)
        arr.flush()
        del arr
        mm = np.lib.format.open_memmap(path, mode="r")
        idx = np.sort(np.random.default_rng(1).permutation(n)[:b])
        src = CachedFeatures(mm, torch.device("cpu"))
        rows.append(("load: CachedFeatures (reused buffer)", per_image_ms(lambda: next(src.batches(idx, b)), a.repeats, b)))
        rows.append(("load: fancy index + .float()",
                     per_image_ms(lambda: torch.from_numpy(np.ascontiguousarray(mm[idx])).float(), a.repeats, b)))
        x_cl = next(src.batches(idx, b)).clone(memory_format=torch.channels_last)
        del src, mm

    x_nchw = x_cl.contiguous()
    target = torch.rand(1, 1, size, size)
    fast = build_readout(c, 3, 1, 0, fs)
    plain = build_readout(c, 3, 1, 0, fs)
    plain[0] = nn.Conv2d(c, 1, 3)
    plain.load_state_dict(fast.state_dict())

    def step_fn(readout: nn.Module, x: torch.Tensor):
        opt = torch.optim.SGD(readout.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def step() -> None:
            pred = F.interpolate(readout(x), size=(size, size), mode="bilinear", align_corners=False)
            loss = F.mse_loss(pred, target.expand_as(pred))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    rows.append(("step: OneMapConv2d, channels-last", per_image_ms(step_fn(fast, x_cl), a.repeats, b)))
    rows.append(("step: nn.Conv2d, channels-last", per_image_ms(step_fn(plain, x_cl), a.repeats, b)))
    rows.append(("step: nn.Conv2d, NCHW", per_image_ms(step_fn(plain, x_nchw), a.repeats, b)))
    plain.load_state_dict(fast.state_dict())
    with torch.no_grad():
        rows.append(("forward: OneMapConv2d", per_image_ms(lambda: fast[0](x_cl), a.repeats, b)))
        rows.append(("forward: nn.Conv2d", per_image_ms(lambda: plain[0](x_cl), a.repeats, b)))
        diff = (fast[0](x_cl) - plain[0](x_cl)).abs().max().item()

    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  ms/image")
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:8.3f}")
    by = dict(rows)
    print(f"\nload: {by['load: fancy index + .float()'] / by['load: CachedFeatures (reused buffer)']:.1f}x faster; "
          f"step: {by['step: nn.Conv2d, channels-last'] / by['step: OneMapConv2d, channels-last']:.1f}x faster than "
          f"nn.Conv2d (channels-last), {by['step: nn.Conv2d, NCHW'] / by['step: OneMapConv2d, channels-last']:.1f}x than NCHW")
    print(f"OneMapConv2d vs nn.Conv2d output: max |difference| {diff:.2e}")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
