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
from posinfo import embedprobe, encoders, placement, quicklook, ridge
from posinfo.data import CanvasImages, ControlImages, EmbeddedImages, FolderImages, PhotoCrops, SyntheticImages
from posinfo.errors import PosinfoError
from posinfo.features import FeatureExtractor, FeatureSource
from posinfo.io import atomic_path, user_path, write_json
from posinfo.kinds import Kind
from posinfo.kinds import make as make_kind
from posinfo.metrics import summarize
from posinfo.names import (CHANNELS_CSV, CHANNELS_PNG, JOB_LOG, PER_IMAGE_FILE, PREDICTIONS_NPZ, PREDICTIONS_PNG,
                           PROBEFREE_NPZ, PROBEFREE_PNG, READOUT_FILE, RESULT_FILE, STAGING_DIR,
                           SYNTHETIC_KINDS, TRAIN_LOG, utc_now)
from posinfo.names import PYTHON_DATA  # what posinfo.probe sets for Python objects
from posinfo.readout import Standardize, build_readout, output_size
from posinfo.readout import make as make_readout
from posinfo.schema import BackboneConfig, CacheConfig, DataConfig, InputConfig, ReadoutConfig
from posinfo.readoutstore import ReadoutStore, blame_features
from posinfo.sources import CacheSettings, encoder_taps, open_features
from posinfo.spec import JobSpec, job_spec
from posinfo.train import fit_many, outcome, resolve_steps

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


def make_dataset(data: DataConfig, split: str):
    """The images of one split, on their canvas when ``data.canvas.border`` > 0."""
    ds = _source_dataset(data, split)
    if data.canvas.border == 0:
        return ds
    return CanvasImages(ds, data.canvas.border, data.canvas.color)


def _source_dataset(data: DataConfig, split: str):
    n = data.num_train if split == "train" else data.num_test
    size = data.image_size
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
        return FolderImages(root, n=n, size=size, identity_by=data.identity)
    raise PosinfoError(f"unknown data '{data.name}': use data=embedded, data=photos or data=folder")


def cache_settings(cache_cfg: CacheConfig) -> CacheSettings:
    return CacheSettings(cache_cfg.enabled, user_path(cache_cfg.dir), cache_cfg.dtype, cache_cfg.max_gb, cache_cfg.verify,
                         cache_cfg.memory)


def _weights_identity(backbone: BackboneConfig, seed: int) -> str:
    """The weights' part of the feature cache key: the backbone's adapter says (posinfo.encoders)."""
    bb = encoders.Backbone.of(backbone)
    return encoders.adapter(bb.name).identity(bb, seed)


def _validate_inputs(inp: InputConfig) -> list[str]:
    kinds = list(inp.kinds)  # each a known kind: checked with the typed config (schema.check_config)
    if inp.file and len([k for k in kinds if k in SYNTHETIC_KINDS]) != 1:
        raise PosinfoError(
            f"input.file={inp.file} needs exactly one synthetic input to replace: use input=noise (or black/white) with it"
        )
    return kinds


def _check_folders(data: DataConfig) -> None:
    """A test set that is the training set measures nothing."""
    if data.name == "folder" and data.train_dir and data.test_dir:
        if user_path(data.train_dir).resolve() == user_path(data.test_dir).resolve():
            raise PosinfoError(f"data.train_dir and data.test_dir are the same folder ({data.train_dir}): "
                               "point data.test_dir at images the readout never trains on")


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
    kind: Kind  # the target's kind, bound to the image and readout output sizes (posinfo.kinds)
    seed: int
    size: int
    feature_size: int
    train_kwargs: dict
    solver: str = "sgd"  # readout.solver
    loss_at: str = "image"  # train.loss_at (in train_kwargs only when not image: older store keys stay)

    def loss(self):
        """The readout's training loss (the target kind's), on the job's device."""
        return self.kind.loss(self.loss_at, self.device)


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


def _stages(config: DictConfig, job_dir: Path, result: dict, progress: bool, siblings: list[DictConfig]) -> None:
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    result["timing"] = timing
    cfg = job_spec(config)  # the entrance: below it, typed objects only (posinfo.spec)
    plan = _validate(cfg, result)
    t0 = time.perf_counter()
    sources = _open_sources(cfg, plan, result, progress)
    timing["features_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    if siblings:
        _train_together(cfg, plan, sources, siblings, result, progress)
    readout = _train_or_reuse(cfg, plan, sources, job_dir, result, progress)
    timing["train_s"] = round(time.perf_counter() - t0, 3)
    channels = cfg.analysis.channels
    per_tap = cfg.target.per_tap
    probefree = cfg.analysis.probefree
    if not (channels or per_tap or probefree or plan.kind.pooled):  # the shuffle control reads it again
        sources.train = None  # its batch buffer: evaluation holds one batch at a time, not two
    t0 = time.perf_counter()
    rows, arrays, panels = _evaluate(readout, plan, sources, result)
    timing["eval_s"] = round(time.perf_counter() - t0, 3)
    if plan.kind.pooled:
        _shuffled_control(cfg, plan, sources, result)
    if per_tap:
        t0 = time.perf_counter()
        _per_tap(cfg, plan, sources, result)
        timing["per_tap_s"] = round(time.perf_counter() - t0, 3)
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
    _write_outputs(cfg, job_dir, result, rows, arrays, panels, plan.kind)
    timing["total_s"] = round(time.perf_counter() - t_start, 3)


def _validate(cfg: JobSpec, result: dict) -> Plan:
    """Cheap checks first: a bad value fails in milliseconds, not after extraction (the config's
    own values were checked at the entrance, posinfo.spec.job_spec)."""
    tr, ro, data = cfg.train, cfg.readout, cfg.data
    device = resolve_device(cfg.device)
    result["device"] = str(device)
    inputs = _validate_inputs(cfg.input)
    if cfg.analysis.channels and "natural" not in inputs:
        raise PosinfoError(f"analysis.channels=true scores channels on natural test images, but input.kinds={list(inputs)}: "
                           "use input=natural (or any input set with natural)")
    size, fs = data.image_size, ro.feature_size
    build_readout(3, ro.kernel, ro.depth, ro.padding, fs)  # validates
    kind = make_kind(cfg.target, size, output_size(fs, ro.kernel, ro.depth, ro.padding))
    result.update({"floor_mae": None, **kind.floor()})
    if cfg.analysis.channels and not kind.channels:
        raise PosinfoError(f"analysis.channels=true scores channels against a map target, not target={cfg.target.name}: "
                           "use target=hor or gau with it")
    _check_folders(data)
    late = [m for m in tr.lr_milestones if m >= tr.epochs]
    if late:
        log.warning("train.lr_milestones %s lie at or beyond train.epochs=%d: the lr never drops there", late, tr.epochs)
    train_kwargs = dict(
        epochs=tr.epochs, batch_size=tr.batch_size, lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay,
        lr_milestones=tuple(tr.lr_milestones), lr_gamma=tr.lr_gamma, seed=tr.seed,
    )
    steps = resolve_steps(tr.steps)
    if steps is not None:  # only then: readouts stored before train.steps keep their keys
        train_kwargs["steps"] = steps
    if tr.loss_at != "image":  # likewise: readouts trained at image resolution keep their keys
        train_kwargs["loss_at"] = tr.loss_at
    solver = ro.solver
    if solver == "ridge":
        ridge.check(ro.depth, kind)
    if kind.pooled:
        _check_pooled(cfg, inputs)
    return Plan(device, inputs, kind, tr.seed, size, fs, train_kwargs, solver, tr.loss_at)


def _check_pooled(cfg: JobSpec, inputs) -> None:
    """A placement target is read by the convex logistic readout of pooled features, on natural images."""
    if cfg.readout.solver != "ridge":
        raise PosinfoError(f"readout.solver={cfg.readout.solver} with target={cfg.target.name}: its readout is the "
                           "certified-optimal logistic regression of pooled features (a convex fit, like ridge); "
                           "use readout.solver=ridge")
    if list(inputs) != ["natural"]:
        raise PosinfoError(f"input.kinds={list(inputs)} with target={cfg.target.name}: only natural images are placed "
                           "on the canvas; use input=natural")


def _open_sources(cfg: JobSpec, plan: Plan, result: dict, progress: bool) -> Sources:
    bb, data = cfg.backbone, cfg.data
    torch.manual_seed(plan.seed)
    np.random.seed(plan.seed)
    spec = {"name": bb.name, "padding": bb.padding, "taps": bb.taps or None, "normalize": data.normalize,
            "init": bb.init, "model": bb.model, "nodes": bb.nodes or None, "pos_embed": bb.pos_embed}

    backbone = encoders.Backbone.of(bb, plan.seed)

    def build():
        # Lazy twice over: built only if some features are not cached, and then its weights are
        # loaded (or drawn) only before its first pass. Random weights come from the job's seed
        # either way (encoders.build takes the RNG state at its call); the job's own RNG is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.seed)
            return encoders.build(backbone, spec["normalize"], plan.size, lazy=True)

    # A weights file is checked when the encoder is built, before its first batch; a job whose
    # features are cached under the file's digest (in the key below) needs no check.
    settings = cache_settings(cfg.cache)
    name, taps, built = encoder_taps(settings, spec, plan.size, build)
    built = _embed_probe(cfg, backbone, built, build, result)
    precision = bb.precision
    extractor = FeatureExtractor(built or build, plan.feature_size, plan.device, precision)
    c = sum(t.channels for t in taps)
    result["features"] = [t.as_json() for t in taps]
    result["readout_in_channels"] = c
    result["readout_out_size"] = output_size(plan.feature_size, cfg.readout.kernel, cfg.readout.depth,
                                             cfg.readout.padding)
    log.info("%s taps %s -> %d channels at %d×%d", bb.name, [(t.name, t.size[0]) for t in taps], c,
             plan.feature_size, plan.feature_size)
    key_fields = _key_fields(bb, data, name, taps, plan, precision)
    num_workers = resolve_num_workers(data.num_workers, plan.device)
    train_ds = plan.kind.place(make_dataset(data, "train"), "train")  # a placement kind: onto its canvas
    test_ds = plan.kind.place(make_dataset(data, "test"), "test") if any(k not in SYNTHETIC_KINDS for k in plan.kinds) else None
    counts = {split: ds.counts for split, ds in (("train", train_ds), ("test", test_ds)) if hasattr(ds, "counts")}
    if counts:  # folder data: images read, unreadable ones skipped, files of other types ignored
        result["images"] = counts
    tiles, seed = cfg.input.tiles, cfg.input.noise_seed
    test_sets = {k: test_ds if k == "natural" else ControlImages(test_ds, k, tiles=tiles, seed=seed)
                 for k in plan.kinds if k not in SYNTHETIC_KINDS}
    synth_kinds = [k for k in plan.kinds if k in SYNTHETIC_KINDS]
    synth_ds = (SyntheticImages(synth_kinds, plan.size, seed=cfg.input.noise_seed, file=cfg.input.file)
                if synth_kinds else None)
    if settings.dtype == "float16" and not encoders.adapter(backbone.name).float16_safe(backbone):
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


def _embed_probe(cfg: JobSpec, backbone: encoders.Backbone, built, build, result: dict):
    """analysis.embed_probe: how linearly the position embedding itself encodes its (x, y)
    (posinfo.embedprobe), where the backbone's adapter has one. Returns the encoder (built here if it
    had to be, so the features reuse it)."""
    adapter = encoders.adapter(backbone.name)
    if not cfg.analysis.embed_probe or not adapter.may_have_pos_embed(backbone):
        return built
    encoder = built or build()
    try:
        embedding = adapter.pos_embed(encoder)  # its weights, controls applied
    except PosinfoError as e:  # an embedding posinfo cannot lay out on a grid: the probe only is skipped
        log.warning("analysis.embed_probe skipped: %s", e)
        return encoder
    if embedding is not None:
        result["pos_embed_probe"] = embedprobe.probe(embedding.numpy())
        log.info("position embedding probe: R² %.3f, %.2f patches off (chance %.2f)", result["pos_embed_probe"]["r2"],
                 result["pos_embed_probe"]["distance_patches"], result["pos_embed_probe"]["chance_distance_patches"])
    return encoder


def _key_fields(bb: BackboneConfig, data: DataConfig, name: str, taps: list, plan: Plan, precision: str) -> dict:
    """What identifies the features of a backbone configuration in the cache (with the images)."""
    fields = {"backbone": name, "weights": _weights_identity(bb, plan.seed), "padding": bb.padding,
              "taps": [t.name for t in taps], "feature_size": plan.feature_size, "image_size": plan.size,
              "normalize": data.normalize}
    pos_embed = encoders.Backbone.of(bb, plan.seed).pos_embed_key()
    if pos_embed is not None:  # only then: the keys of every other entry stay as they were
        fields["pos_embed"] = pos_embed
    if precision != "float32":  # likewise
        fields["precision"] = precision
    return fields


def _store(cfg: JobSpec, plan: Plan, sources: Sources) -> ReadoutStore | None:
    """The readout store's slot for this job's readout: its features, target, readout and training."""
    settings = sources.settings
    readout = dataclasses.asdict(cfg.readout)
    if plan.solver == "sgd":  # SGD readouts stored before the solver existed keep their keys
        readout.pop("solver", None)
        readout.pop("ridge_folds", None)
        train = plan.train_kwargs
    else:  # the closed form depends on no seed, lr or schedule: every seed's job reuses it
        readout.pop("standardize", None)  # ridge always standardises (readout.make)
        train = {"solver": plan.solver, "padding": "raw"}  # zeros around the raw features (LinearReadout)
    target = dataclasses.asdict(cfg.target)
    target.pop("per_tap", None)
    if not plan.kind.pooled:  # target.layout means nothing to them: their readouts keep their keys
        target.pop("layout", None)  # the per-tap probes are not stored; the job's readout keeps its key
    # A job that differs only in its evaluation input reuses the trained readout.
    return ReadoutStore.for_training(sources.train, settings, {
        **sources.key_fields, "images": sources.train_images, "dtype": settings.dtype,
        "target": target,
        "readout": readout, "train": train, "device": plan.device.type,
    }, force=cfg.force)


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


def _train_together(cfg: JobSpec, plan: Plan, sources: Sources, siblings: list[DictConfig], result: dict,
                    progress: bool) -> None:
    """sweep.fuse: train this job's readout and those of its siblings that are not stored yet in
    one pass over the training features (train.fit_many), and store them all; each job then
    reuses its own. The group key of the sweep (posinfo.sweep.fuse) made the siblings share
    the features and training order; what is stored is keyed by the features actually used,
    so a sibling that differs anyway only misses its entry and trains alone. A readout that
    diverges is not stored: its own job trains it again and fails alone."""
    if plan.kind.pooled:  # its labels belong to its own placed images: it trains alone
        return
    own = _store(cfg, plan, sources)
    if own is None or own.holds() or not own.can_store():
        return  # no store (features not cached, or read-only), or already trained: nothing to gain
    members = {own.path: (cfg, plan, own)}
    for sib in siblings:
        try:
            sib = job_spec(sib)
            p = _validate(sib, {})
        except Exception as e:  # noqa: BLE001  its own job reports it
            log.debug("sibling not fused: %s", e)
            continue
        if p.kind.pooled or (p.train_kwargs, p.device, p.size, p.feature_size) != (plan.train_kwargs, plan.device,
                                                                                     plan.size, plan.feature_size):
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


def _fit_group(readouts: list[torch.nn.Module], jobs: list[tuple[JobSpec, Plan]], train: FeatureSource,
               progress: bool, log_paths: list | None = None) -> list:
    """Fit readouts on the same training features: the SGD ones in one pass (train.fit_many),
    the closed-form ones in one pass per readout geometry (posinfo.ridge). Each readout's
    history, or the error that stopped it."""
    out: list = [None] * len(readouts)
    sgd = [i for i, (_, p) in enumerate(jobs) if p.solver == "sgd" and not p.kind.pooled]
    if sgd:
        plan = jobs[sgd[0]][1]
        hists = fit_many([readouts[i] for i in sgd], train, [jobs[i][1].loss() for i in sgd],
                         progress=progress, log_paths=[log_paths[i] for i in sgd] if log_paths else None,
                         **plan.train_kwargs)
        for i, h in zip(sgd, hists):
            out[i] = h
    for i, (c, p) in enumerate(jobs):
        if p.kind.pooled:  # posinfo.placement: the logistic readout of pooled features
            out[i] = placement.fit_readout(readouts[i], train, train.n, p.kind.labels_of["train"], p.kind.outputs,
                                           c.readout.ridge_folds, p.train_kwargs["batch_size"])
    # One pass per geometry and target side: the normal equations carry the upsampling to the
    # target's side (a map's image size; xy's own readout resolution, no upsampling).
    geometries: dict[tuple, list[int]] = {}
    for i, (c, p) in enumerate(jobs):
        if p.solver == "ridge" and not p.kind.pooled:
            side = int(p.kind.goal().shape[-1])
            geometries.setdefault((c.readout.kernel, c.readout.padding, c.readout.ridge_folds, side), []).append(i)
    for (kernel, padding, folds, _), idx in geometries.items():
        plan = jobs[idx[0]][1]
        hists = ridge.fit([readouts[i] for i in idx], train, [jobs[i][1].kind.goal().to(plan.device) for i in idx],
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
    if last.get("solver") in ("ridge", "logistic"):
        keep = ("solver", "lambda", "lambda_rel", "lambdas_skipped", "folds", "cv", "val_loss", "weights", "pass_s",
                "seconds", "gap_bound", "gap_tolerance", "iterations")
        return {"converged": True, "final_loss": last["loss"], **{k: last[k] for k in keep if k in last}}
    step_losses = [v for h in history for v in h.get("step_losses", [])]
    return outcome(step_losses) if step_losses else None  # None: reused from before steps were logged


def _train_or_reuse(cfg: JobSpec, plan: Plan, sources: Sources, job_dir: Path, result: dict,
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


def _new_readout(channels: int, ro: ReadoutConfig, plan: Plan) -> torch.nn.Module:
    """An untrained readout on ``channels`` channels, initialised from the job's seed."""
    torch.manual_seed(plan.seed)
    if plan.kind.pooled:
        return placement.PooledReadout(channels, plan.kind.outputs).to(plan.device)
    return make_readout(channels, ro.kernel, ro.depth, ro.padding, plan.feature_size, plan.kind.outputs, ro.standardize,
                        plan.solver).to(plan.device)


def _channels(cfg: JobSpec, plan: Plan, sources: Sources, job_dir: Path, result: dict) -> None:
    """analysis.channels=true: score each channel alone, retrain on top-k / random-k / the rest."""
    from posinfo import channels as ch

    test_src = sources.tests["natural"][0]
    bs = _prediction_batch_size(plan.device)
    scorer = plan.kind.scorer  # a map kind: analysis.channels is refused on the others (_validate)

    def train_eval(idx: np.ndarray) -> tuple[float | None, float]:
        sub = ch.ChannelSubset(sources.train, idx)
        readout = _new_readout(len(idx), cfg.readout, plan)
        _fit_stats(readout, sub, plan.train_kwargs["batch_size"])
        history = _fit_group([readout], [(cfg, plan)], sub, False)[0]
        if isinstance(history, Exception):
            raise history
        readout.eval()
        preds = _outputs_all(readout, plan.kind, ch.ChannelSubset(test_src, idx), bs).numpy()
        summary = summarize([scorer.spc(p) for p in preds], [scorer.mae(p) for p in preds])
        return summary.spc, summary.mae

    scores = ch.channel_scores(sources.train, plan.kind.map)
    counts = [(f["name"], f["channels"]) for f in result["features"]]
    ch.write_csv(job_dir / CHANNELS_CSV, scores, counts)
    out = ch.concentration(scores, train_eval, plan.seed)
    result["channels"] = out
    ch.figure(job_dir / CHANNELS_PNG, out, scores, counts,
              f"{cfg.backbone.name} | {cfg.target.name}: position per channel")
    log.info(ch.summary_line(out))


def _per_tap(cfg: JobSpec, plan: Plan, sources: Sources, result: dict) -> None:
    """target.per_tap: one probe per tap, trained on that tap's features alone (resized to the
    readout's feature size as all taps are; the job's readout, kind, solver and seed), scored on
    every evaluation input: result.json's ``per_tap``, the scores over depth. The job's headline
    stays the probe on all taps. A tap whose probe fails says so in its entry; the others go on."""
    from posinfo.channels import ChannelSubset

    entries, start = [], 0
    for tap in result["features"]:
        idx = np.arange(start, start + int(tap["channels"]))
        start += len(idx)
        entry: dict[str, Any] = {"tap": tap["name"], "channels": len(idx)}
        readout = _new_readout(len(idx), cfg.readout, plan)
        train = ChannelSubset(sources.train, idx)
        _fit_stats(readout, train, plan.train_kwargs["batch_size"])
        history = _fit_group([readout], [(cfg, plan)], train, False)[0]
        if isinstance(history, Exception):
            entry["error"] = str(history).splitlines()[0]
            log.warning("per-tap probe on %s failed: %s", tap["name"], entry["error"])
            entries.append(entry)
            continue
        readout.eval()
        inputs = _inputs(plan, sources, lambda src, bs: _outputs_all(readout, plan.kind, ChannelSubset(src, idx), bs))
        entry["metrics"] = {kind: plan.kind.score(outputs)[1] for kind, outputs, _, _ in inputs}
        first = next(iter(entry["metrics"]))
        log.info("tap %-10s %-7s %s", tap["name"], first, plan.kind.describe(entry["metrics"][first]))
        entries.append(entry)
    result["per_tap"] = entries


def _shuffled_control(cfg: JobSpec, plan: Plan, sources: Sources, result: dict) -> None:
    """target=placement: the channel-shuffle control, on the natural test images (posinfo.placement)."""
    src, ds = sources.tests["natural"]
    k = plan.kind
    acc = placement.shuffled_control(sources.train, src, sources.train.n, len(ds), k.labels_of["train"],
                                     k.labels_of["test"], k.outputs, cfg.readout.ridge_folds, plan.seed)
    result["metrics"]["natural"].update({"shuffled_accuracy": acc["acc"], "shuffled_accuracy_lo": acc["acc_lo"],
                                         "shuffled_accuracy_hi": acc["acc_hi"]})
    log.info("natural channels shuffled: accuracy %.3f [%.3f, %.3f] (chance %.3f)", acc["acc"], acc["acc_lo"],
             acc["acc_hi"], k.floor()["chance"])


def _probefree(cfg: JobSpec, plan: Plan, sources: Sources, job_dir: Path, result: dict) -> None:
    """analysis.probefree=true: each tap's measures on the training images' features, no readout."""
    from posinfo import probefree as pf

    taps = [(f["name"], int(f["channels"])) for f in result["features"]]
    records, arrays = pf.measures(sources.train, taps, _prediction_batch_size(plan.device), plan.seed)
    result["probefree"] = records
    pf.write_npz(job_dir / PROBEFREE_NPZ, arrays)
    model = cfg.backbone.model  # timm / torchvision: the model says more than the family
    backbone = f"{cfg.backbone.name}/{model}" if model else cfg.backbone.name
    pf.figure(job_dir / PROBEFREE_PNG, records, arrays, f"{backbone} at {plan.size} px: probe-free measures per tap "
              f"({sources.train.n} training images)")
    log.info(pf.summary_line(records))


def _inputs(plan: Plan, sources: Sources, predict_fn):
    """Each evaluation input: (kind, its outputs, image names, a few images for the figure)."""
    bs = _prediction_batch_size(plan.device)
    synth_preds = predict_fn(sources.synth, bs) if sources.synth else None
    for kind in plan.kinds:
        if kind in sources.tests:
            src, ds = sources.tests[kind]
            yield kind, predict_fn(src, bs), list(ds.names), [ds[i] for i in range(min(N_FIGURE_IMAGES, len(ds)))]
        else:
            j = sources.synth_kinds.index(kind)
            yield kind, synth_preds[j : j + 1], [kind], [sources.synth_ds[j]]


def _outputs_all(readout, kind: Kind, source, batch_size: int) -> torch.Tensor:
    """The readout's outputs on every image of ``source``, as the target kind scores them."""
    out = []
    with torch.no_grad():
        for feats in source.batches(np.arange(source.n), batch_size):
            out.append(kind.forward(readout, feats))
    return torch.cat(out)


def _norms_all(source, batch_size: int) -> torch.Tensor:
    """Each position's feature norm (over every channel the readout reads), N×h×w."""
    out = []
    with torch.no_grad():
        for feats in source.batches(np.arange(source.n), batch_size):
            out.append(feats.float().norm(dim=1).cpu())
    return torch.cat(out)


def _evaluate(readout: torch.nn.Module, plan: Plan, sources: Sources, result: dict):
    """Per image, then the mean over images, for every evaluation input, as the target kind scores them."""
    tk = plan.kind
    rows: list[tuple] = []
    panels: list[tuple[str, np.ndarray, np.ndarray]] = []
    arrays: dict[str, np.ndarray] = {"target": tk.display}
    metrics: dict[str, dict] = {}
    # Per-position kinds whose output positions are the feature map's: scored apart by feature norm too.
    norms = _inputs(plan, sources, _norms_all) if tk.splits_by_norm and tk.out_size == plan.feature_size else None
    for kind, outputs, names, images in _inputs(plan, sources, lambda src, bs: _outputs_all(readout, tk, src, bs)):
        per_image, metrics[kind] = tk.score(outputs)
        if norms is not None:
            metrics[kind]["by_norm"] = tk.by_norm(outputs, next(norms)[1])
        rows += [(kind, name, *v) for name, v in zip(names, per_image)]
        log.info("%-7s %s", kind, tk.describe(metrics[kind]))
        preds = tk.picture(outputs[: len(images)])
        arrays[f"{kind}_images"] = np.stack([quicklook.to_uint8(im) for im in images])
        arrays[f"{kind}_pred"] = preds.astype(np.float32)
        panels += [(kind if kind in SYNTHETIC_KINDS else names[i].replace("test_", "#"), arrays[f"{kind}_images"][i],
                    preds[i]) for i in range(len(images))]
    result["metrics"] = metrics
    result["border_profile"] = tk.border_profile()
    return rows, arrays, panels


def _write_outputs(cfg: JobSpec, job_dir: Path, result: dict, rows: list, arrays: dict, panels: list,
                   kind: Kind) -> None:
    import pandas as pd

    columns = ["input", "image", *kind.columns]
    with atomic_path(job_dir / PER_IMAGE_FILE) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)
    with atomic_path(job_dir / PREDICTIONS_NPZ) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    ro = cfg.readout
    backbone = result["choices"].get("backbone", cfg.backbone.name)
    title = f"{backbone} | target {cfg.target.name} | readout kernel {ro.kernel}, depth {ro.depth}, padding {ro.padding}"
    quicklook.save(job_dir / PREDICTIONS_PNG, arrays["target"], panels, title)
