"""One job: train f_pem on frozen features of natural images, evaluate it, write the job directory.

``run(cfg, job_dir)`` is the only function that sees the whole config; it runs five named
stages (validate, open the feature sources, train or reuse the readout, evaluate, write
the outputs), and everything they call takes plain arguments.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import posinfo
from posinfo import cache, location, quicklook, ridge, targets
from posinfo.backbones import build_encoder, overflows_float16
from posinfo.data import CanvasImages, ControlImages, EmbeddedImages, FolderImages, PhotoCrops, SyntheticImages
from posinfo.errors import PosinfoError
from posinfo.features import FeatureExtractor, FeatureSource
from posinfo.io import atomic_path, user_path, write_json
from posinfo.metrics import Scorer, summarize
from posinfo.names import (CHANNELS_CSV, CHANNELS_PNG, DEFAULT_TILES, JOB_LOG, PER_IMAGE_FILE, PREDICTIONS_NPZ, PREDICTIONS_PNG,
                           PROBEFREE_NPZ, PROBEFREE_PNG, READOUT_FILE, RESULT_FILE, STAGING_DIR, SYNTHETIC_KINDS,
                           TRAIN_LOG, utc_now)
from posinfo.names import MODULE_BACKBONE, PYTHON_DATA  # what posinfo.probe sets for Python objects
from posinfo.readout import Standardize, build_readout, output_size
from posinfo.readout import make as make_readout
from posinfo.schema import check_config
from posinfo.sources import CacheSettings, ReadoutStore, blame_features, encoder_taps, open_features
from posinfo.train import fit_many, outcome, predict, resolve_steps

log = logging.getLogger(__name__)

N_FIGURE_IMAGES = 4


# ----------------------------------------------------------------------------- plain-argument helpers


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
    """The images of one split, on their canvas when ``data.canvas.border`` > 0."""
    ds = _source_dataset(data, split)
    border = int(OmegaConf.select(data, "canvas.border", default=0) or 0)
    if border == 0:
        return ds
    return CanvasImages(ds, border, str(OmegaConf.select(data, "canvas.color", default="black")))


def _source_dataset(data: DictConfig, split: str):
    n = data.num_train if split == "train" else data.num_test
    size = int(data.image_size)
    if data.name == "embedded":
        return EmbeddedImages(split, n=n, size=size)
    if data.name == "photos":
        return PhotoCrops(split, n=n, size=size)
    if data.name == PYTHON_DATA:  # images held by this process (posinfo.probe): the key is in *_dir
        from posinfo import userdata

        return userdata.dataset(data.train_dir if split == "train" else data.test_dir, n, size)
    if data.name == "folder":
        root = data.train_dir if split == "train" else data.test_dir
        if root in (None, "", "???"):
            raise PosinfoError(f"data=folder needs data.{split}_dir: set data.{split}_dir=/path/to/images")
        return FolderImages(root, n=n, size=size, identity_by=str(data.get("identity", "content")))
    raise PosinfoError(f"unknown data '{data.name}': use data=embedded, data=photos or data=folder")


def cache_settings(cache_cfg: DictConfig) -> CacheSettings:
    return CacheSettings(bool(cache_cfg.enabled), user_path(cache_cfg.dir), str(cache_cfg.dtype),
                         float(cache_cfg.max_gb), bool(cache_cfg.get("verify", True)), str(cache_cfg.get("memory", "auto")))


def _weights_identity(backbone: DictConfig, seed: int) -> str:
    w = str(backbone.weights)
    if backbone.name in ("posenet", MODULE_BACKBONE):  # a module's weights: its content hash, in its name
        return "none"
    if w == "imagenet" and backbone.name in ("timm", "torchvision"):
        from posinfo.zoo import pretrained_identity

        return pretrained_identity(str(backbone.name), str(backbone.model))
    if w == "imagenet":  # torchvision's V1 weights, or a BagNet's official file
        from posinfo.backbones import imagenet_identity

        return imagenet_identity(str(backbone.name))
    if w == "random":  # torchvision's rules keep the key they always had
        init = str(backbone.get("init", "torchvision"))
        return f"random(seed={seed})" if init == "torchvision" else f"random(seed={seed},init={init})"
    return f"file:{cache.file_digest(user_path(w))}"


def _validate_inputs(inp: DictConfig) -> list[str]:
    kinds = list(inp.kinds)  # each a known kind: checked with the typed config (schema.check_config)
    if inp.get("file") and len([k for k in kinds if k in SYNTHETIC_KINDS]) != 1:
        raise PosinfoError(
            f"input.file={inp.file} needs exactly one synthetic input to replace: use input=noise (or black/white) with it"
        )
    return kinds


def _check_folders(data: DictConfig) -> None:
    """A test set that is the training set measures nothing."""
    if data.name == "folder" and data.train_dir and data.test_dir:
        if user_path(data.train_dir).resolve() == user_path(data.test_dir).resolve():
            raise PosinfoError(f"data.train_dir and data.test_dir are the same folder ({data.train_dir}): "
                               "point data.test_dir at images the readout never trains on")


def _predict_all(readout, source, size: int, batch_size: int) -> np.ndarray:
    preds = []
    with torch.no_grad():
        for feats in source.batches(np.arange(source.n), batch_size):
            preds.append(predict(readout, feats, size)[:, 0].float().cpu().numpy())
    return np.concatenate(preds)


def _prediction_batch_size(device: torch.device) -> int:
    """Readout-only inference on features: larger batches than training, small enough for RAM."""
    return 256 if device.type == "cuda" else 64


# ----------------------------------------------------------------------------- the job


def run(
    cfg: DictConfig,
    job_dir: str | Path,
    choices: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    siblings: list[DictConfig] | None = None,
) -> dict:
    """Run one job into ``job_dir`` and return its result (also written to result.json).

    ``siblings``: the configs of other jobs of its sweep that share its features and training
    order (``sweep.fuse``): the readouts of those not yet stored are trained together with
    this job's, in one pass over the features, and stored for their jobs (_train_together).

    On failure a result.json with status 'failed' and a one-line error is written and
    the exception re-raised; an interrupt leaves no result.json at all.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    # A stale result from an earlier run of this folder must never outlive a re-run.
    for stale in (RESULT_FILE, TRAIN_LOG):
        (job_dir / stale).unlink(missing_ok=True)
    result: dict[str, Any] = {
        "status": "running",
        "error": None,
        "choices": dict(choices or {}),
        "overrides": list(overrides or []),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "started": utc_now(),
        "host": platform.node(),
        "versions": {"posinfo": posinfo.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    try:
        _stages(cfg, job_dir, result, progress, siblings or [])
        result["status"] = "ok"
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result["status"] = "failed"
        result["error"] = msg if isinstance(e, PosinfoError) else f"{type(e).__name__}: {msg}"
        # One line on the console; the full traceback goes to the job's log file.
        # A staged run's log joins its job folder's when it ends (posinfo.sweep.outputs): name that one.
        shown = job_dir.parent if job_dir.name == STAGING_DIR else job_dir
        log.error("job failed: %s (traceback in %s)", result["error"], shown / JOB_LOG)
        with open(job_dir / JOB_LOG, "a") as fh:
            fh.write(traceback.format_exc())
        raise
    finally:
        if result["status"] != "running":
            result["finished"] = utc_now()
            write_json(job_dir / RESULT_FILE, result)
    return result


@dataclass
class Plan:
    """What validation established: plain values the later stages use."""

    device: torch.device
    kinds: list[str]
    target: torch.Tensor
    seed: int
    size: int
    feature_size: int
    train_kwargs: dict
    cells: int | None = None  # target=grid: the grid's side
    labels: torch.Tensor | None = None  # target=grid: each readout output position's cell
    solver: str = "sgd"  # readout.solver

    @property
    def classes(self) -> int | None:
        return None if self.cells is None else self.cells * self.cells

    @property
    def goal(self) -> torch.Tensor:
        """What the readout is trained against: the cell labels (target=grid) or the target map."""
        return self.labels if self.labels is not None else self.target


@dataclass
class Sources:
    """The feature sources of one job and what identifies them."""

    train: FeatureSource | None
    tests: dict[str, tuple[FeatureSource, Any]]  # natural and the controls: (source, image set)
    synth: FeatureSource | None
    synth_ds: Any
    channels: int
    key_fields: dict
    train_images: dict
    settings: CacheSettings
    synth_kinds: list[str] = field(default_factory=list)


def _stages(cfg: DictConfig, job_dir: Path, result: dict, progress: bool, siblings: list[DictConfig]) -> None:
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    result["timing"] = timing
    plan = _validate(cfg, result)
    t0 = time.perf_counter()
    sources = _open_sources(cfg, plan, result, progress)
    timing["features_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    if siblings:
        _train_together(cfg, plan, sources, siblings, result, progress)
    readout = _train_or_reuse(cfg, plan, sources, job_dir, result, progress)
    timing["train_s"] = round(time.perf_counter() - t0, 3)
    channels = bool(OmegaConf.select(cfg, "analysis.channels", default=False))
    probefree = bool(OmegaConf.select(cfg, "analysis.probefree", default=False))
    if not (channels or probefree):
        sources.train = None  # its batch buffer: evaluation holds one batch at a time, not two
    t0 = time.perf_counter()
    rows, arrays, panels = _evaluate(readout, plan, sources, result)
    timing["eval_s"] = round(time.perf_counter() - t0, 3)
    if channels:
        t0 = time.perf_counter()
        _channels(cfg, plan, sources, job_dir, result)
        timing["channels_s"] = round(time.perf_counter() - t0, 3)
    if probefree:
        t0 = time.perf_counter()
        _probefree(cfg, plan, sources, job_dir, result)
        timing["probefree_s"] = round(time.perf_counter() - t0, 3)
    if plan.device.type == "cuda":  # the job's peak, for bench/bench_protocol.py
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(plan.device) / 2**20, 1)
    _write_outputs(cfg, job_dir, result, rows, arrays, panels)
    timing["total_s"] = round(time.perf_counter() - t_start, 3)


def _validate(cfg: DictConfig, result: dict) -> Plan:
    """Cheap checks first: a bad value fails in milliseconds, not after extraction."""
    check_config(cfg)
    tr, ro, data = cfg.train, cfg.readout, cfg.data
    device = resolve_device(cfg.device)
    result["device"] = str(device)
    kinds = _validate_inputs(cfg.input)
    if OmegaConf.select(cfg, "analysis.channels", default=False) and "natural" not in kinds:
        raise PosinfoError(f"analysis.channels=true scores channels on natural test images, but input.kinds={list(kinds)}: "
                           "use input=natural (or any input set with natural)")
    size, fs = int(data.image_size), int(ro.feature_size)
    build_readout(3, int(ro.kernel), int(ro.depth), int(ro.padding), fs)  # validates
    cells = labels = None
    if cfg.target.name == "grid":
        cells = int(cfg.target.get("cells", location.DEFAULT_CELLS))
        labels = location.labels(cells, output_size(fs, int(ro.kernel), int(ro.depth), int(ro.padding)))
        target = location.display_map(cells, size)
        result["floor_mae"], result["chance"] = None, location.chance(cells)
        if OmegaConf.select(cfg, "analysis.channels", default=False):
            raise PosinfoError("analysis.channels=true scores channels against a map target, not target=grid: "
                               "use target=hor or gau with it")
    else:
        target = targets.make(cfg.target.name, size, str(cfg.target.get("range", "unit")))
        result["floor_mae"] = targets.floor_mae(target)
    _check_folders(data)
    late = [int(m) for m in tr.lr_milestones if int(m) >= int(tr.epochs)]
    if late:
        log.warning("train.lr_milestones %s lie at or beyond train.epochs=%d: the lr never drops there", late,
                    int(tr.epochs))
    train_kwargs = dict(
        epochs=int(tr.epochs), batch_size=int(tr.batch_size), lr=float(tr.lr), momentum=float(tr.momentum),
        weight_decay=float(tr.weight_decay), lr_milestones=tuple(int(m) for m in tr.lr_milestones),
        lr_gamma=float(tr.get("lr_gamma", 0.1)), seed=int(tr.seed),
    )
    steps = resolve_steps(tr.get("steps"))
    if steps is not None:  # only then: readouts stored before train.steps keep their keys
        train_kwargs["steps"] = steps
    if str(tr.loss_at) != "image":  # likewise: readouts trained at image resolution keep their keys
        train_kwargs["loss_at"] = str(tr.loss_at)
    solver = str(ro.solver)
    if solver == "ridge":
        ridge.check(int(ro.depth), None if cells is None else cells * cells)
    return Plan(device, kinds, target, int(tr.seed), size, fs, train_kwargs, cells, labels, solver)


def _open_sources(cfg: DictConfig, plan: Plan, result: dict, progress: bool) -> Sources:
    bb, data = cfg.backbone, cfg.data
    torch.manual_seed(plan.seed)
    np.random.seed(plan.seed)
    nodes = bb.get("nodes")
    spec = {"name": str(bb.name), "padding": str(bb.padding), "taps": OmegaConf.to_container(bb.taps) if bb.taps else None,
            "normalize": str(data.normalize), "init": str(bb.get("init", "torchvision")), "model": bb.get("model"),
            "nodes": [str(n) for n in nodes] if nodes else None, "pos_embed": str(bb.get("pos_embed", "keep"))}

    def build():
        # Lazy twice over: built only if some features are not cached, and then its weights are
        # loaded (or drawn) only before its first pass. Random weights come from the job's seed
        # either way (build_encoder takes the RNG state at its call); the job's own RNG is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.seed)
            return build_encoder(spec["name"], str(bb.weights), spec["padding"], spec["taps"], spec["normalize"],
                                 lazy=True, init=spec["init"], model=spec["model"], nodes=spec["nodes"],
                                 pos_embed=spec["pos_embed"], image_size=plan.size)

    # A weights file is checked when the encoder is built, before its first batch; a job whose
    # features are cached under the file's digest (in the key below) needs no check.
    settings = cache_settings(cfg.cache)
    name, taps, built = encoder_taps(settings, spec, plan.size, build)
    precision = str(bb.get("precision", "float32"))
    extractor = FeatureExtractor(built or build, plan.feature_size, plan.device, precision)
    c = sum(t.channels for t in taps)
    result["features"] = [t.as_json() for t in taps]
    result["readout_in_channels"] = c
    result["readout_out_size"] = output_size(plan.feature_size, int(cfg.readout.kernel), int(cfg.readout.depth),
                                             int(cfg.readout.padding))
    log.info("%s taps %s -> %d channels at %d×%d", bb.name, [(t.name, t.size[0]) for t in taps], c,
             plan.feature_size, plan.feature_size)
    key_fields = _key_fields(bb, data, name, taps, plan, precision)
    num_workers = resolve_num_workers(data.get("num_workers", "auto"), plan.device)
    train_ds = make_dataset(data, "train")
    test_ds = make_dataset(data, "test") if any(k not in SYNTHETIC_KINDS for k in plan.kinds) else None
    counts = {split: ds.counts for split, ds in (("train", train_ds), ("test", test_ds)) if hasattr(ds, "counts")}
    if counts:  # folder data: images read, unreadable ones skipped, files of other types ignored
        result["images"] = counts
    tiles, seed = int(cfg.input.get("tiles", DEFAULT_TILES)), int(cfg.input.get("noise_seed", 0))
    test_sets = {k: test_ds if k == "natural" else ControlImages(test_ds, k, tiles=tiles, seed=seed)
                 for k in plan.kinds if k not in SYNTHETIC_KINDS}
    synth_kinds = [k for k in plan.kinds if k in SYNTHETIC_KINDS]
    synth_ds = (SyntheticImages(synth_kinds, plan.size, seed=int(cfg.input.get("noise_seed", 0)), file=cfg.input.get("file"))
                if synth_kinds else None)
    if settings.dtype == "float16" and overflows_float16(bb.name, str(bb.weights), str(bb.padding)):
        log.warning("%s with %s weights and %s padding: features beyond float16's range, cached as float32",
                    bb.name, bb.weights, bb.padding)
        settings = dataclasses.replace(settings, dtype="float32")
    result["cache_dtype"] = settings.dtype

    def source(name, ds, workers):
        return None if ds is None else open_features(name, ds, extractor, c, key_fields, settings, workers, progress)

    tests = {k: (source(k, ds, num_workers), ds) for k, ds in test_sets.items()}
    return Sources(source("train", train_ds, num_workers), tests,
                   source("synthetic", synth_ds, 0),  # a few images already in memory: no workers
                   synth_ds, c, key_fields, train_ds.identity(), settings, synth_kinds)


def _key_fields(bb: DictConfig, data: DictConfig, name: str, taps: list, plan: Plan, precision: str) -> dict:
    """What identifies the features of a backbone configuration in the cache (with the images)."""
    fields = {"backbone": name, "weights": _weights_identity(bb, plan.seed), "padding": str(bb.padding),
              "taps": [t.name for t in taps], "feature_size": plan.feature_size, "image_size": plan.size,
              "normalize": str(data.normalize)}
    if str(bb.get("pos_embed", "keep")) != "keep":  # only then: the keys of every other entry stay as they were
        fields["pos_embed"] = str(bb.pos_embed)
    if precision != "float32":  # likewise
        fields["precision"] = precision
    return fields


def _store(cfg: DictConfig, plan: Plan, sources: Sources) -> ReadoutStore | None:
    """The readout store's slot for this job's readout: its features, target, readout and training."""
    settings = sources.settings
    readout = OmegaConf.to_container(cfg.readout, resolve=True)
    if plan.solver == "sgd":  # SGD readouts stored before the solver existed keep their keys
        readout.pop("solver", None)
        readout.pop("ridge_folds", None)
        train = plan.train_kwargs
    else:  # the closed form depends on no seed, lr or schedule: every seed's job reuses it
        readout.pop("standardize", None)  # ridge always standardises (readout.make)
        train = {"solver": plan.solver, "padding": "raw"}  # zeros around the raw features (LinearReadout)
    # A job that differs only in its evaluation input reuses the trained readout.
    return ReadoutStore.for_training(sources.train, settings, {
        **sources.key_fields, "images": sources.train_images, "dtype": settings.dtype,
        "target": OmegaConf.to_container(cfg.target, resolve=True),
        "readout": readout, "train": train, "device": plan.device.type,
    }, force=bool(cfg.get("force", False)))


def _fit_stats(readout: torch.nn.Module, source, batch_size: int, stats: dict | None = None) -> dict | None:
    """readout.standardize=channel: set the readout's channel statistics from ``source``'s features,
    or from ``stats`` when another readout of the same features already computed them; its
    statistics (None for a readout without them)."""
    if not (isinstance(readout, torch.nn.Sequential) and isinstance(readout[0], Standardize)):
        return None
    if stats is not None:
        readout[0].load_state_dict(stats)
    else:
        readout[0].fit(source.batches(np.arange(source.n), batch_size))
    return readout[0].state_dict()


def _train_together(cfg: DictConfig, plan: Plan, sources: Sources, siblings: list[DictConfig], result: dict,
                    progress: bool) -> None:
    """sweep.fuse: train this job's readout and those of its siblings that are not stored yet in
    one pass over the training features (train.fit_many), and store them all; each job then
    reuses its own. The group key of the sweep (posinfo.sweep.fuse) made the siblings share
    the features and training order; what is stored is keyed by the features actually used,
    so a sibling that differs anyway only misses its entry and trains alone. A readout that
    diverges is not stored: its own job trains it again and fails alone."""
    own = _store(cfg, plan, sources)
    if own is None or own.holds() or not own.can_store():
        return  # no store (features not cached, or read-only), or already trained: nothing to gain
    members = {own.path: (cfg, plan, own)}
    for sib in siblings:
        try:
            p = _validate(sib, {})
        except Exception as e:  # noqa: BLE001  its own job reports it
            log.debug("sibling not fused: %s", e)
            continue
        if (p.train_kwargs, p.device, p.size, p.feature_size) != (plan.train_kwargs, plan.device, plan.size, plan.feature_size):
            continue
        store = _store(sib, p, sources)
        if store is not None and store.path not in members and not store.holds():
            members[store.path] = (sib, p, store)
    if len(members) < 2:
        return
    readouts, stats = [], None
    for c, p, _ in members.values():
        readouts.append(_new_readout(sources.channels, c.readout, p))
        stats = _fit_stats(readouts[-1], sources.train, p.train_kwargs["batch_size"], stats)
    log.info("training %d readouts together (sweep.fuse): this job's and %d siblings'", len(readouts), len(readouts) - 1)
    histories = _fit_group(readouts, [(c, p) for c, p, _ in members.values()], sources.train, progress)
    diverged = 0
    for (_, _, store), readout, history in zip(members.values(), readouts, histories):
        if isinstance(history, Exception):
            diverged += 1
            continue
        store.save(readout, history)
    result["fused"] = {"readouts": len(readouts), "diverged": diverged}


def _fit_group(readouts: list[torch.nn.Module], jobs: list[tuple[DictConfig, Plan]], train: FeatureSource,
               progress: bool, log_paths: list | None = None) -> list:
    """Fit readouts on the same training features: the SGD ones in one pass (train.fit_many),
    the closed-form ones in one pass per readout geometry (posinfo.ridge). Each readout's
    history, or the error that stopped it."""
    out: list = [None] * len(readouts)
    sgd = [i for i, (_, p) in enumerate(jobs) if p.solver == "sgd"]
    if sgd:
        plan = jobs[sgd[0]][1]
        hists = fit_many([readouts[i] for i in sgd], train, [jobs[i][1].goal.to(plan.device) for i in sgd],
                         progress=progress, log_paths=[log_paths[i] for i in sgd] if log_paths else None,
                         **plan.train_kwargs)
        for i, h in zip(sgd, hists):
            out[i] = h
    geometries: dict[tuple, list[int]] = {}
    for i, (c, p) in enumerate(jobs):
        if p.solver == "ridge":
            geometries.setdefault((int(c.readout.kernel), int(c.readout.padding), int(c.readout.ridge_folds)), []).append(i)
    for (kernel, padding, folds), idx in geometries.items():
        plan = jobs[idx[0]][1]
        hists = ridge.fit([readouts[i] for i in idx], train, [jobs[i][1].target.to(plan.device) for i in idx],
                          kernel=kernel, padding=padding, feature_size=plan.feature_size, folds=folds,
                          batch_size=plan.train_kwargs["batch_size"], progress=progress)
        for i, h in zip(idx, hists):
            out[i] = h
            if log_paths and log_paths[i] is not None:
                with open(log_paths[i], "a") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in h)
    return out


def _training_outcome(history: list[dict]) -> dict | None:
    """result.json's ``training``: how SGD ended (train.outcome), or the closed form's fit."""
    last = history[-1]
    if last.get("solver") == "ridge":
        keep = ("solver", "lambda", "lambda_rel", "lambdas_skipped", "folds", "cv", "val_loss", "weights", "pass_s",
                "seconds")
        return {"converged": True, "final_loss": last["loss"], **{k: last[k] for k in keep if k in last}}
    step_losses = [v for h in history for v in h.get("step_losses", [])]
    return outcome(step_losses) if step_losses else None  # None: reused from before steps were logged


def _train_or_reuse(cfg: DictConfig, plan: Plan, sources: Sources, job_dir: Path, result: dict,
                    progress: bool) -> torch.nn.Module:
    """Train f_pem (seeded), or reuse the one trained for this very configuration."""
    store = _store(cfg, plan, sources)
    readout = _new_readout(sources.channels, cfg.readout, plan)
    log_path = job_dir / TRAIN_LOG
    history = store.load(readout, plan.device) if store is not None else None
    result["readout_reused"] = history is not None
    if history is not None:
        with open(log_path, "w") as fh:
            fh.writelines(json.dumps(h) + "\n" for h in history)
    else:
        _fit_stats(readout, sources.train, plan.train_kwargs["batch_size"])
        history = _fit_group([readout], [(cfg, plan)], sources.train, progress, [log_path])[0]
        if isinstance(history, PosinfoError):  # e.g. diverged: on damaged features, say which entry
            raise blame_features(sources.train, history) from history
        if isinstance(history, Exception):
            raise history
        if store is not None:
            store.save(readout, history)
    readout.eval()
    result["train_loss"] = history[-1]["loss"]
    result["training"] = _training_outcome(history)
    with atomic_path(job_dir / READOUT_FILE) as tmp:
        torch.save(readout.state_dict(), tmp)
    return readout


def _new_readout(channels: int, ro: DictConfig, plan: Plan) -> torch.nn.Module:
    """An untrained readout on ``channels`` channels, initialised from the job's seed."""
    torch.manual_seed(plan.seed)
    return make_readout(channels, int(ro.kernel), int(ro.depth), int(ro.padding), plan.feature_size, plan.classes,
                        str(ro.standardize), plan.solver).to(plan.device)


def _channels(cfg: DictConfig, plan: Plan, sources: Sources, job_dir: Path, result: dict) -> None:
    """analysis.channels=true: score each channel alone, retrain on top-k / random-k / the rest."""
    from posinfo import channels as ch

    test_src = sources.tests["natural"][0]
    bs = _prediction_batch_size(plan.device)
    scorer = Scorer(plan.target.numpy())

    def train_eval(idx: np.ndarray) -> tuple[float | None, float]:
        sub = ch.ChannelSubset(sources.train, idx)
        readout = _new_readout(len(idx), cfg.readout, plan)
        _fit_stats(readout, sub, plan.train_kwargs["batch_size"])
        history = _fit_group([readout], [(cfg, plan)], sub, False)[0]
        if isinstance(history, Exception):
            raise history
        readout.eval()
        preds = _predict_all(readout, ch.ChannelSubset(test_src, idx), plan.size, bs)
        summary = summarize([scorer.spc(p) for p in preds], [scorer.mae(p) for p in preds])
        return summary.spc, summary.mae

    scores = ch.channel_scores(sources.train, plan.target)
    counts = [(f["name"], f["channels"]) for f in result["features"]]
    ch.write_csv(job_dir / CHANNELS_CSV, scores, counts)
    out = ch.concentration(scores, train_eval, plan.seed)
    result["channels"] = out
    ch.figure(job_dir / CHANNELS_PNG, out, scores, counts,
              f"{cfg.backbone.name} | {cfg.target.name}: position per channel")
    log.info(ch.summary_line(out))


def _probefree(cfg: DictConfig, plan: Plan, sources: Sources, job_dir: Path, result: dict) -> None:
    """analysis.probefree=true: each tap's measures on the training images' features, no readout."""
    from posinfo import probefree as pf

    taps = [(f["name"], int(f["channels"])) for f in result["features"]]
    records, arrays = pf.measures(sources.train, taps, _prediction_batch_size(plan.device), plan.seed)
    result["probefree"] = records
    pf.write_npz(job_dir / PROBEFREE_NPZ, arrays)
    model = cfg.backbone.get("model")  # timm / torchvision: the model says more than the family
    backbone = f"{cfg.backbone.name}/{model}" if model else cfg.backbone.name
    pf.figure(job_dir / PROBEFREE_PNG, records, arrays, f"{backbone} at {plan.size} px: probe-free measures per tap "
              f"({sources.train.n} training images)")
    log.info(pf.summary_line(records))


def _inputs(plan: Plan, sources: Sources, predict_fn):
    """Each evaluation input: (kind, its predictions, image names, a few images for the figure)."""
    bs = _prediction_batch_size(plan.device)
    synth_preds = predict_fn(sources.synth, bs) if sources.synth else None
    for kind in plan.kinds:
        if kind in sources.tests:
            src, ds = sources.tests[kind]
            yield kind, predict_fn(src, bs), list(ds.names), [ds[i] for i in range(min(N_FIGURE_IMAGES, len(ds)))]
        else:
            j = sources.synth_kinds.index(kind)
            yield kind, synth_preds[j : j + 1], [kind], [sources.synth_ds[j]]


def _logits_all(readout, source, batch_size: int) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for feats in source.batches(np.arange(source.n), batch_size):
            out.append(readout(feats).float().cpu())
    return torch.cat(out)


def _evaluate_grid(readout: torch.nn.Module, plan: Plan, sources: Sources, result: dict):
    """target=grid: location accuracies per image, then the means, for every evaluation input."""
    from posinfo.metrics import border_bins

    lab, cells = plan.labels, plan.cells
    bins, starts = border_bins(*lab.shape)
    rows: list[tuple] = []
    panels: list[tuple[str, np.ndarray, np.ndarray]] = []
    arrays: dict[str, np.ndarray] = {"target": plan.target.numpy()}
    metrics: dict[str, dict] = {}
    for kind, logits, names, images in _inputs(plan, sources, lambda src, bs: _logits_all(readout, src, bs)):
        sc = location.scores(logits, lab, cells)
        rows += [(kind, name, *map(float, v)) for name, v in zip(names, sc)]
        metrics[kind] = {**dict(zip(location.METRICS, sc.mean(axis=0).tolist())), "chance": location.chance(cells),
                         "n_images": len(sc),
                         "border_accuracy": location.border_accuracy(logits, lab, bins).mean(axis=0).round(6).tolist()}
        log.info("%-7s grid accuracy %.3f (chance %.3f)  rows %.3f  columns %.3f  (%d images)", kind,
                 metrics[kind]["accuracy"], location.chance(cells), metrics[kind]["row_accuracy"],
                 metrics[kind]["col_accuracy"], len(sc))
        shown = logits[: len(images)].argmax(dim=1, keepdim=True).float() / (cells * cells - 1)
        preds = torch.nn.functional.interpolate(shown, size=(plan.size, plan.size), mode="nearest")[:, 0].numpy()
        arrays[f"{kind}_images"] = np.stack([quicklook.to_uint8(im) for im in images])
        arrays[f"{kind}_pred"] = preds.astype(np.float32)
        panels += [(kind if kind in SYNTHETIC_KINDS else names[i].replace("test_", "#"), arrays[f"{kind}_images"][i],
                    preds[i]) for i in range(len(images))]
    result["metrics"] = metrics
    scale = plan.size / lab.shape[-1]
    result["border_profile"] = {"start_px": [int(round(s * scale)) for s in starts],
                                "pixel_fraction": (np.bincount(bins.ravel()) / bins.size).round(6).tolist(),
                                "floor_mae": None}
    return rows, arrays, panels


def _evaluate(readout: torch.nn.Module, plan: Plan, sources: Sources, result: dict):
    """Per image, then the mean over images, for every evaluation input."""
    if plan.labels is not None:
        return _evaluate_grid(readout, plan, sources, result)
    target_np = plan.target.numpy()
    scorer = Scorer(target_np)
    rows: list[tuple[str, str, float, float]] = []
    panels: list[tuple[str, np.ndarray, np.ndarray]] = []
    arrays: dict[str, np.ndarray] = {"target": target_np}
    metrics: dict[str, dict] = {}
    bs = _prediction_batch_size(plan.device)
    synth_preds = _predict_all(readout, sources.synth, plan.size, bs) if sources.synth else None
    for kind in plan.kinds:
        if kind in sources.tests:
            src, ds = sources.tests[kind]
            preds, names = _predict_all(readout, src, plan.size, bs), list(ds.names)
            images = [ds[i] for i in range(min(N_FIGURE_IMAGES, len(ds)))]
        else:
            j = sources.synth_kinds.index(kind)
            preds, names, images = synth_preds[j : j + 1], [kind], [sources.synth_ds[j]]
        scores = [(scorer.spc(p), scorer.mae(p)) for p in preds]
        rows += [(kind, name, s, m) for name, (s, m) in zip(names, scores)]
        summary = summarize([s for s, _ in scores], [m for _, m in scores])
        metrics[kind] = summary.as_dict()
        metrics[kind]["border_mae"] = np.mean([scorer.border_mae(p) for p in preds], axis=0).round(6).tolist()
        log.info("%-7s SPC %s  MAE %.3f  (%d images, %d NaN)  floor MAE %.3f", kind,
                 "nan" if summary.spc is None else f"{summary.spc:.3f}", summary.mae, summary.n_images,
                 summary.n_nan, result["floor_mae"])
        arrays[f"{kind}_images"] = np.stack([quicklook.to_uint8(im) for im in images])
        arrays[f"{kind}_pred"] = preds[: len(images)].astype(np.float32)
        panels += [(kind if kind in SYNTHETIC_KINDS else names[i].replace("test_", "#"), arrays[f"{kind}_images"][i],
                    preds[i]) for i in range(len(images))]
    result["metrics"] = metrics
    result["border_profile"] = {  # the bins of every input's border_mae (docs/method.md, "Border profiles")
        "start_px": scorer.bin_starts,
        "pixel_fraction": (scorer.bin_pixels / scorer.bin_pixels.sum()).round(6).tolist(),
        "floor_mae": scorer.floor_border_mae(targets.floor_constant(plan.target)).round(6).tolist(),
    }
    return rows, arrays, panels


def _write_outputs(cfg: DictConfig, job_dir: Path, result: dict, rows: list, arrays: dict, panels: list) -> None:
    import pandas as pd

    columns = ["input", "image", *(location.METRICS if cfg.target.name == "grid" else ("spc", "mae"))]
    with atomic_path(job_dir / PER_IMAGE_FILE) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)
    with atomic_path(job_dir / PREDICTIONS_NPZ) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    ro = cfg.readout
    backbone = result["choices"].get("backbone", cfg.backbone.name)
    title = f"{backbone} | target {cfg.target.name} | readout kernel {ro.kernel}, depth {ro.depth}, padding {ro.padding}"
    quicklook.save(job_dir / PREDICTIONS_PNG, arrays["target"], panels, title)
