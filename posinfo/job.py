"""One job: train f_pem on frozen features of natural images, evaluate it, write the job directory.

``run(cfg, job_dir)`` is the only function that sees the whole config; everything it
calls takes plain arguments.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import posinfo
from posinfo import cache, targets
from posinfo.backbones import build_encoder
from posinfo.data import EmbeddedImages, FolderImages, SyntheticImages
from posinfo.errors import PosinfoError
from posinfo.features import CachedFeatures, FeatureExtractor, LiveFeatures, fill
from posinfo.io import RESULT_FILE, atomic_path, write_json
from posinfo.metrics import Scorer, summarize
from posinfo.readout import build_readout, output_size
from posinfo.train import fit, predict

log = logging.getLogger(__name__)

INPUT_KINDS = ("natural", "black", "white", "noise")
N_FIGURE_IMAGES = 4
JOB_LOG = "job.log"  # hydra.job.name is "job" (conf/hydra/default.yaml)


def resolve_device(spec: str) -> torch.device:
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PosinfoError(f"device={spec} but no CUDA GPU is visible to PyTorch: use device=cpu or device=auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PosinfoError(f"device={spec} but only {torch.cuda.device_count()} GPU(s) are visible: use device=cuda or cuda:0")
        return dev
    raise PosinfoError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N")


def resolve_num_workers(spec: Any, device: torch.device) -> int:
    """'auto': decode/generate images in workers when a GPU waits for them, inline on a CPU."""
    if spec in (None, "auto"):
        return min(8, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0
    try:
        n = int(spec)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise PosinfoError(f"data.num_workers={spec} is not valid: use auto or a number >= 0")
    return n


def make_dataset(data: DictConfig, split: str):
    n = data.num_train if split == "train" else data.num_test
    size = int(data.image_size)
    if data.name == "embedded":
        return EmbeddedImages(split, n=n, size=size)
    if data.name == "folder":
        root = data.train_dir if split == "train" else data.test_dir
        if root in (None, "", "???"):
            raise PosinfoError(f"data=folder needs data.{split}_dir: set data.{split}_dir=/path/to/images")
        return FolderImages(root, n=n, size=size)
    raise PosinfoError(f"unknown data '{data.name}': use data=embedded or data=folder")


def _weights_identity(backbone: DictConfig, seed: int) -> str:
    w = str(backbone.weights)
    if backbone.name == "posenet":
        return "none"
    if w == "imagenet":
        import torchvision

        return str(torchvision.models.get_model_weights(backbone.name).IMAGENET1K_V1)
    if w == "random":
        return f"random(seed={seed})"
    return f"file:{cache.file_digest(Path(w).expanduser())}"


def missing_values_error(cfg: DictConfig) -> str | None:
    """One line naming every required value (``???``) left unset, or None."""
    missing: list[str] = []

    def walk(node: DictConfig, prefix: str) -> None:
        for k in node.keys():
            if not prefix and k == "hydra":  # Hydra's own node, with runtime-only values
                continue
            if OmegaConf.is_missing(node, k):
                missing.append(f"{prefix}{k}")
                continue
            try:
                child = node[k]
            except Exception:  # an interpolation to a missing value: its target is listed
                continue
            if isinstance(child, DictConfig):
                walk(child, f"{prefix}{k}.")

    walk(cfg, "")
    missing.sort()
    if not missing:
        return None
    return f"missing required value(s) {', '.join(missing)}: set them on the command line, e.g. {missing[0]}=/path/to/..."


def _validate_inputs(inp: DictConfig) -> list[str]:
    kinds = list(inp.kinds)
    bad = [k for k in kinds if k not in INPUT_KINDS]
    if bad or not kinds:
        raise PosinfoError(f"unknown input kind(s) {bad or kinds}: choose from {', '.join(INPUT_KINDS)} (or input=all)")
    if inp.get("file") and len([k for k in kinds if k != "natural"]) != 1:
        raise PosinfoError(
            f"input.file={inp.file} needs exactly one synthetic input to replace: use input=noise (or black/white) with it"
        )
    return kinds


def _feature_source(name, dataset, extractor, c, key_fields, cache_cfg, num_workers, progress):
    """Cached features when enabled and affordable; live (per-batch) features otherwise."""
    fs = extractor.size
    if cache_cfg.enabled:
        fields = {**key_fields, "images": dataset.identity(), "dtype": str(cache_cfg.dtype)}
        arr = cache.get_or_create(
            Path(str(cache_cfg.dir)).expanduser(),
            fields,
            (len(dataset), fs, fs, c),  # channels-last: see features.CachedFeatures
            str(cache_cfg.dtype),
            lambda out: fill(out, dataset, extractor, num_workers, progress),
            float(cache_cfg.max_gb),
        )
        if arr is not None:
            return CachedFeatures(arr, extractor.device)
    log.info("%s features computed per batch (uncached)", name)
    return LiveFeatures(dataset, extractor, num_workers)


def _predict_all(readout, source, size: int, batch_size: int) -> np.ndarray:
    preds = []
    with torch.no_grad():
        for feats in source.batches(np.arange(source.n), batch_size):
            preds.append(predict(readout, feats, size)[:, 0].float().cpu().numpy())
    return np.concatenate(preds)


def _prediction_batch_size(device: torch.device) -> int:
    """Readout-only inference on features: larger batches than training, small enough for RAM."""
    return 256 if device.type == "cuda" else 64


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


FIGURE_TILE = 112  # px per panel of predictions.png


def _gray(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _save_figure(path: Path, target: np.ndarray, panels: list[tuple[str, np.ndarray, np.ndarray]], title: str) -> None:
    """Top row: the target, then each input image; bottom row: the readout's prediction
    for it, on the target's gray scale. Drawn with PIL: a job's quick look costs
    milliseconds, not the ~0.4 s of a matplotlib figure (analyze.py draws the paper's)."""
    from PIL import Image, ImageDraw, ImageFont

    t, pad = FIGURE_TILE, 4
    font = ImageFont.load_default(size=11)
    title_h, label_h = 18, 15
    cols = len(panels) + 1
    width = cols * (t + pad) + pad
    height = title_h + 2 * (label_h + t) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, 3), title, fill="black", font=font, anchor="ma")
    lo, hi = min(0.0, float(target.min())), 1.0
    rows = [("target", _gray(target, lo, hi), None)] + [(label, img, pred) for label, img, pred in panels]
    y_top, y_bottom = title_h + label_h, title_h + 2 * label_h + t
    for c, (label, top, pred) in enumerate(rows):
        x = pad + c * (t + pad)
        tile = Image.fromarray(top).convert("RGB").resize((t, t), Image.Resampling.BILINEAR)
        canvas.paste(tile, (x, y_top))
        draw.rectangle((x - 1, y_top - 1, x + t, y_top + t), outline=(160, 160, 160))  # a white input stays visible
        draw.text((x + t / 2, y_top - 2), label, fill="black", font=font, anchor="md")
        if pred is not None:
            canvas.paste(Image.fromarray(_gray(pred, lo, hi)).resize((t, t), Image.Resampling.BILINEAR), (x, y_bottom))
            draw.rectangle((x - 1, y_bottom - 1, x + t, y_bottom + t), outline=(160, 160, 160))
    draw.text((pad + t / 2, y_bottom + t / 2), "prediction", fill="black", font=font, anchor="mm")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def run(
    cfg: DictConfig,
    job_dir: str | Path,
    choices: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Run one job into ``job_dir`` and return its result (also written to result.json).

    On failure a result.json with status 'failed' and a one-line error is written and
    the exception re-raised; an interrupt leaves no result.json at all.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    # A stale result from an earlier run of this folder must never outlive a re-run.
    for stale in (RESULT_FILE, "train_log.jsonl"):
        (job_dir / stale).unlink(missing_ok=True)
    result: dict[str, Any] = {
        "status": "running",
        "error": None,
        "choices": dict(choices or {}),
        "overrides": list(overrides or []),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "versions": {"posinfo": posinfo.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    try:
        _run(cfg, job_dir, result, progress)
        result["status"] = "ok"
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result["status"] = "failed"
        result["error"] = msg if isinstance(e, PosinfoError) else f"{type(e).__name__}: {msg}"
        # One line on the console; the full traceback goes to the job's log file.
        log.error("job failed: %s (traceback in %s)", result["error"], job_dir / JOB_LOG)
        with open(job_dir / JOB_LOG, "a") as fh:
            fh.write(traceback.format_exc())
        raise
    finally:
        if result["status"] != "running":
            result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            write_json(job_dir / RESULT_FILE, result)
    return result


def _run(cfg: DictConfig, job_dir: Path, result: dict, progress: bool) -> None:
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    result["timing"] = timing
    bb, tr, ro, data = cfg.backbone, cfg.train, cfg.readout, cfg.data
    seed = int(tr.seed)
    size, fs = int(data.image_size), int(ro.feature_size)

    # Cheap validation first: a bad value fails in milliseconds, not after extraction.
    missing = missing_values_error(cfg)
    if missing:
        raise PosinfoError(missing)
    device = resolve_device(cfg.device)
    result["device"] = str(device)
    kinds = _validate_inputs(cfg.input)
    target = targets.make(cfg.target.name, size, str(cfg.target.get("range", "unit")))
    build_readout(3, int(ro.kernel), int(ro.depth), int(ro.padding), fs)  # validates
    if int(tr.epochs) < 1 or int(tr.batch_size) < 1:
        raise PosinfoError(f"train.epochs={tr.epochs}, train.batch_size={tr.batch_size}: both must be at least 1")
    result["floor_mae"] = targets.floor_mae(target)

    torch.manual_seed(seed)
    np.random.seed(seed)
    # Lazy: the weights are loaded (or drawn) only if some features are not in the cache.
    encoder = build_encoder(bb.name, str(bb.weights), str(bb.padding), bb.taps, str(data.normalize), lazy=True)
    extractor = FeatureExtractor(encoder, fs, device)
    taps = encoder.describe(size)
    c = sum(t.channels for t in taps)
    result["features"] = [{"name": t.name, "node": t.node, "channels": t.channels, "size": list(t.size)} for t in taps]
    result["readout_in_channels"] = c
    result["readout_out_size"] = output_size(fs, int(ro.kernel), int(ro.depth), int(ro.padding))
    log.info("%s taps %s -> %d channels at %d×%d", bb.name, [(t.name, t.size[0]) for t in taps], c, fs, fs)

    key_fields = {
        "backbone": bb.name,
        "weights": _weights_identity(bb, seed),
        "padding": str(bb.padding),
        "taps": [t.name for t in taps],
        "feature_size": fs,
        "image_size": size,
        "normalize": str(data.normalize),
    }
    num_workers = resolve_num_workers(data.get("num_workers", "auto"), device)
    t0 = time.perf_counter()
    train_ds = make_dataset(data, "train")
    test_ds = make_dataset(data, "test") if "natural" in kinds else None
    synth_kinds = [k for k in kinds if k != "natural"]
    synth_ds = (
        SyntheticImages(synth_kinds, size, seed=int(cfg.input.get("noise_seed", 0)), file=cfg.input.get("file"))
        if synth_kinds
        else None
    )

    def source(name, ds, workers):
        return None if ds is None else _feature_source(name, ds, extractor, c, key_fields, cfg.cache, workers, progress)

    train_src = source("train", train_ds, num_workers)
    test_src = source("test", test_ds, num_workers)
    synth_src = source("synthetic", synth_ds, 0)  # a few images already in memory: no workers
    timing["features_s"] = round(time.perf_counter() - t0, 3)

    # f_pem: seeded so the same command gives the same readout.
    torch.manual_seed(seed)
    readout = build_readout(c, int(ro.kernel), int(ro.depth), int(ro.padding), fs).to(device)
    tgt = target.to(device)
    t0 = time.perf_counter()
    train_kwargs = dict(
        epochs=int(tr.epochs),
        batch_size=int(tr.batch_size),
        lr=float(tr.lr),
        momentum=float(tr.momentum),
        weight_decay=float(tr.weight_decay),
        lr_milestones=tuple(int(m) for m in tr.lr_milestones),
        lr_gamma=float(tr.get("lr_gamma", 0.1)),
        seed=seed,
    )
    reuse_path = None
    if cfg.cache.enabled and isinstance(train_src, CachedFeatures):
        # A job that differs only in its evaluation input reuses the trained readout.
        rkey = cache.make_key(
            {
                **key_fields,
                "images": train_ds.identity(),
                "dtype": str(cfg.cache.dtype),
                "target": OmegaConf.to_container(cfg.target, resolve=True),
                "readout": OmegaConf.to_container(ro, resolve=True),
                "train": train_kwargs,
                "device": device.type,
            }
        )
        reuse_path = Path(str(cfg.cache.dir)).expanduser() / "readouts" / f"{rkey}.pt"
    log_path = job_dir / "train_log.jsonl"
    if reuse_path is not None and reuse_path.is_file():
        saved = torch.load(reuse_path, map_location=device, weights_only=True)
        readout.load_state_dict(saved["state_dict"])
        history = saved["history"]
        with open(log_path, "w") as fh:
            fh.writelines(json.dumps(h) + "\n" for h in history)
        readout.eval()
        log.info("reusing the readout trained for this configuration (%s)", reuse_path.name)
        result["readout_reused"] = True
    else:
        history = fit(readout, train_src, tgt, log_path=log_path, progress=progress, **train_kwargs)
        result["readout_reused"] = False
        if reuse_path is not None:
            reuse_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(reuse_path) as tmp:
                torch.save({"state_dict": readout.state_dict(), "history": history}, tmp)
    timing["train_s"] = round(time.perf_counter() - t0, 3)
    del train_src  # its batch buffer: evaluation holds one batch at a time, not two
    result["train_loss"] = history[-1]["loss"]
    with atomic_path(job_dir / "readout.pt") as tmp:
        torch.save(readout.state_dict(), tmp)

    # Evaluation: per image, then the mean over images.
    t0 = time.perf_counter()
    readout.eval()
    target_np = target.numpy()
    scorer = Scorer(target_np)
    rows: list[tuple[str, str, float, float]] = []
    metrics: dict[str, dict] = {}
    panels: list[tuple[str, np.ndarray, np.ndarray]] = []
    arrays: dict[str, np.ndarray] = {"target": target_np}
    synth_preds = _predict_all(readout, synth_src, size, _prediction_batch_size(device)) if synth_src else None
    for kind in kinds:
        if kind == "natural":
            preds = _predict_all(readout, test_src, size, _prediction_batch_size(device))
            names = list(test_ds.names)
            images = [test_ds[i] for i in range(min(N_FIGURE_IMAGES, len(test_ds)))]
        else:
            j = synth_kinds.index(kind)
            preds, names, images = synth_preds[j : j + 1], [kind], [synth_ds[j]]
        spcs, maes = [], []
        for name, p in zip(names, preds):
            s, m = scorer.spc(p), scorer.mae(p)
            spcs.append(s)
            maes.append(m)
            rows.append((kind, name, s, m))
        summary = summarize(spcs, maes)
        metrics[kind] = summary.as_dict()
        log.info(
            "%-7s SPC %s  MAE %.3f  (%d images, %d NaN)  floor MAE %.3f",
            kind,
            "nan" if summary.spc is None else f"{summary.spc:.3f}",
            summary.mae,
            summary.n_images,
            summary.n_nan,
            result["floor_mae"],
        )
        arrays[f"{kind}_images"] = np.stack([_to_uint8(im) for im in images])
        arrays[f"{kind}_pred"] = preds[: len(images)].astype(np.float32)
        panels += [(kind if kind != "natural" else names[i].replace("test_", "#"), arrays[f"{kind}_images"][i], preds[i]) for i in range(len(images))]
    timing["eval_s"] = round(time.perf_counter() - t0, 3)
    result["metrics"] = metrics

    import pandas as pd

    with atomic_path(job_dir / "per_image.csv") as tmp:
        pd.DataFrame(rows, columns=["input", "image", "spc", "mae"]).to_csv(tmp, index=False)
    with atomic_path(job_dir / "predictions.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    choice = result["choices"]
    title = f"{choice.get('backbone', bb.name)} | target {cfg.target.name} | readout kernel {ro.kernel}, depth {ro.depth}, padding {ro.padding}"
    _save_figure(job_dir / "predictions.png", target_np, panels, title)
    timing["total_s"] = round(time.perf_counter() - t_start, 3)

