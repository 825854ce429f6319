"""Benchmark: what ``backbone.precision`` (bf16 / fp16 autocast) changes, against float32.

    python bench/bench_precision.py [--backbone vgg16] [--weights imagenet] [--precisions float32,bfloat16]
                                    [--targets hor,ver,gau,horstp,verstp] [--seeds 0] [--num-train 500]
                                    [--num-test 100] [--image-size 224] [--device auto] [--out bench/results]

One sweep, ``python sweep.py -m backbone.precision=<each> target=<each> input=all ...``, with a
fresh feature cache (so every precision extracts its own features), then:

* **the features**: for each precision, the training features' relative L2 difference from
  float32's and the largest absolute difference, read from the cache entries;
* **the numbers**: every target × input's SPC and MAE for each precision and its
  difference from float32, and the largest |ΔSPC| and |ΔMAE| per precision. Readouts train
  from the same seed and batch order, so the difference is the precision's alone (through
  the features), not a seed's;
* **the speed**: each precision's extraction time (its first job's feature stage, train +
  test + synthetic inputs) and images/s.

Printed, and written with the machine's description to ``<out>/precision_<host>_<timestamp>.csv``.
``float32`` is always included: it is the reference.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import machine_info, run_child  # noqa: E402  (the same child timing and machine line)

COLUMNS = ["host", "timestamp", "cpu_model", "cpu_cores", "torch", "device", "gpu_name", "backbone", "weights",
           "num_train", "num_test", "image_size", "precision", "seed", "target", "input", "spc", "mae", "d_spc",
           "d_mae", "feature_rel_l2", "feature_max_abs", "extraction_s", "images_per_s"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--weights", default="imagenet", help="imagenet, random or a state-dict file")
    p.add_argument("--precisions", default="float32,bfloat16", help="comma list; float32 is always run")
    p.add_argument("--targets", default="hor,ver,gau,horstp,verstp")
    p.add_argument("--seeds", default="0")
    p.add_argument("--num-train", type=int, default=500)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", nargs="*", default=[], help="more sweep.py overrides")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--keep", action="store_true", help="keep the sweep folder and its cache")
    return p.parse_args(argv)


def feature_differences(cache_dir: Path, precisions: list[str]) -> dict[str, tuple[float, float]]:
    """Per precision: (relative L2, largest |difference|) of its training features against float32's,
    as cached (cache.dtype)."""
    import numpy as np

    from posinfo import cache

    train = {}
    for e in cache.list_entries(cache_dir):
        f = e.meta.get("fields", {})
        images = f.get("images")
        if isinstance(images, dict) and images.get("split") == "train":
            train.setdefault(f.get("precision", "float32"), []).append(e)
    out = {}
    if "float32" not in train:
        return out
    ref_entry = max(train["float32"], key=lambda e: e.meta["shape"][0])
    ref = np.load(ref_entry.path, mmap_mode="r")
    for p in precisions:
        if p == "float32" or p not in train:
            continue
        other = np.load(max(train[p], key=lambda e: e.meta["shape"][0]).path, mmap_mode="r")
        num = den = 0.0
        worst = 0.0
        for i in range(0, ref.shape[0], 32):
            a, b = np.asarray(ref[i:i + 32], np.float64), np.asarray(other[i:i + 32], np.float64)
            num += float(((a - b) ** 2).sum())
            den += float((a ** 2).sum())
            worst = max(worst, float(np.abs(a - b).max()))
        out[p] = (math.sqrt(num / den) if den else float("nan"), worst)
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    precisions = ["float32"] + [p for p in a.precisions.split(",") if p and p != "float32"]
    targets = [t for t in a.targets.split(",") if t]
    info = {**machine_info(a.device), "timestamp": time.strftime("%Y%m%d-%H%M%S")}
    work = Path(tempfile.mkdtemp(prefix="posinfo-bench-precision-"))
    sweep_dir, cache_dir = work / "sweep", work / "cache"
    cmd = [sys.executable, str(ROOT / "sweep.py"), "-m", f"backbone={a.backbone}",
           *([] if a.backbone == "posenet" else [f"backbone.weights={a.weights}"]),
           f"backbone.precision={','.join(precisions)}", f"target={','.join(targets)}", "input=all",
           f"train.seed={a.seeds}", f"train.epochs={a.epochs}", f"data.num_train={a.num_train}",
           f"data.num_test={a.num_test}", f"data.image_size={a.image_size}", f"device={a.device}",
           f"cache.dir={cache_dir}", f"hydra.sweep.dir={sweep_dir}", *a.set]
    print(f"bench_precision: {a.backbone} ({a.weights}), {a.num_train} + {a.num_test} images at {a.image_size} px, "
          f"precisions {', '.join(precisions)}, targets {', '.join(targets)}, seeds {a.seeds}; {info['cpu_model']}, "
          f"device {info['device']} {info['gpu_name'] or ''}", flush=True)
    run = run_child(cmd, work / "sweep.log", work)
    if run["returncode"] != 0:
        print((work / "sweep.log").read_text(errors="replace")[-3000:])
        print(f"bench_precision: the sweep failed (exit {run['returncode']}); its folder: {work}")
        return 1

    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("result.json"))]
    by = {}
    first_features: dict[str, float] = {}
    for r in jobs:
        c = r["config"]
        key = (c["backbone"].get("precision", "float32"), c["train"]["seed"], c["target"]["name"])
        by[key] = r
        feat = r.get("timing", {}).get("features_s", 0.0)
        p = key[0]
        first_features[p] = max(first_features.get(p, 0.0), feat)  # the job that extracted
    feats = feature_differences(cache_dir, precisions)
    n_images = a.num_train + a.num_test
    rows, worst = [], {p: (0.0, 0.0) for p in precisions}
    seeds = sorted({k[1] for k in by})
    kinds = ["natural", "black", "white", "noise"]
    print(f"\nwall {run['wall_s']:.0f} s; {len(jobs)} jobs\n")
    print("| target | seed | input | " + " | ".join(f"{p} SPC" for p in precisions) + " | "
          + " | ".join(f"Δ{p}" for p in precisions[1:]) + " |")
    print("|---|---|---|" + "---:|" * (2 * len(precisions) - 1))
    for t in targets:
        for s in seeds:
            for k in kinds:
                vals = []
                for p in precisions:
                    m = (by.get((p, s, t)) or {}).get("metrics", {}).get(k) or {}
                    vals.append((m.get("spc"), m.get("mae")))
                ref_spc, ref_mae = vals[0]
                deltas = []
                for p, (spc, mae) in zip(precisions, vals):
                    d_spc = None if spc is None or ref_spc is None else spc - ref_spc
                    d_mae = None if mae is None or ref_mae is None else mae - ref_mae
                    if p != "float32":
                        deltas.append(d_spc)
                        w = worst[p]
                        worst[p] = (max(w[0], abs(d_spc or 0.0)), max(w[1], abs(d_mae or 0.0)))
                    fr = feats.get(p, (0.0, 0.0) if p == "float32" else (None, None))
                    ext = first_features.get(p)
                    rows.append({**_info_cols(info), "backbone": a.backbone, "weights": a.weights, "num_train": a.num_train,
                                 "num_test": a.num_test, "image_size": a.image_size, "precision": p, "seed": s,
                                 "target": t, "input": k, "spc": spc, "mae": mae, "d_spc": d_spc, "d_mae": d_mae,
                                 "feature_rel_l2": fr[0], "feature_max_abs": fr[1], "extraction_s": ext,
                                 "images_per_s": n_images / ext if ext else None})
                fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
                print(f"| {t} | {s} | {k} | " + " | ".join(fmt(v[0]) for v in vals) + " | "
                      + " | ".join("–" if d is None else f"{d:+.3f}" for d in deltas) + " |")
    print()
    for p in precisions:
        ext = first_features.get(p)
        line = f"{p:>9}: extraction {ext:.1f} s ({n_images / ext:.1f} train + test images/s)" if ext else f"{p:>9}:"
        if p != "float32":
            fr = feats.get(p)
            if fr:
                line += f"; training features vs float32: relative L2 {fr[0]:.2e}, largest |diff| {fr[1]:.3g}"
            line += f"; largest |ΔSPC| {worst[p][0]:.3f}, |ΔMAE| {worst[p][1]:.3f} (every target and input)"
            if first_features.get("float32") and ext:
                line += f"; extraction {first_features['float32'] / ext:.2f}x float32's speed"
        print(line)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"precision_{info['host']}_{info['timestamp']}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f"\nwritten: {path}")
    if a.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _info_cols(info: dict) -> dict:
    return {k: info.get(k) for k in ("host", "timestamp", "cpu_model", "cpu_cores", "torch", "device", "gpu_name")}


if __name__ == "__main__":
    sys.exit(main())
