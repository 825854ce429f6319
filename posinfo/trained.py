"""A finished job's trained readout with its backbone, applied to new images: ``posinfo.load(job_dir)``.

The backbone is rebuilt from the job's result.json exactly as the job built it (posinfo.job:
the same backbone settings under the job's seed, so random weights are the same draw);
its weights must load here (ImageNet weights offline: one line, no fallback). The readout is
the job's ``readout.pt``. Features pass through the job's cache dtype (float16 by default) before
the readout, as the job's own test features did, so a job's test images give back its predictions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posinfo.errors import PosinfoError
from posinfo.io import user_path
from posinfo.names import MODULE_BACKBONE, READOUT_FILE, RESULT_FILE
from posinfo.spec import JobSpec

log = logging.getLogger(__name__)

BATCH = 16


def finished_result(job_dir: Path) -> dict:
    """The result.json of a finished (ok) job; one line for any other folder."""
    if not job_dir.is_dir():
        raise PosinfoError(f"{job_dir}: no such folder: give the folder of a finished job (the one with its result.json)")
    try:
        result = json.loads((job_dir / RESULT_FILE).read_text())
    except FileNotFoundError:
        raise PosinfoError(f"{job_dir} has no {RESULT_FILE}: not a finished posinfo job: give a job's own folder, "
                           "e.g. outputs/runs/<overrides> or outputs/sweeps/<preset>/<overrides>") from None
    except (OSError, ValueError) as e:
        raise PosinfoError(f"{job_dir / RESULT_FILE} is unreadable ({type(e).__name__}): re-run the job") from None
    status = result.get("status") if isinstance(result, dict) else None
    if status == "failed":
        raise PosinfoError(f"{job_dir}: the job failed ({result.get('error') or 'no error recorded'}): only a finished "
                           "job has a trained readout; fix the cause and re-run it")
    if status != "ok" or not isinstance(result.get("config"), dict):
        raise PosinfoError(f"{job_dir}: the job has not finished (status {status}): wait for it, or re-run it")
    if not (job_dir / READOUT_FILE).is_file():
        raise PosinfoError(f"{job_dir} has no {READOUT_FILE}: re-run the job (force=true) to write it")
    return result


def job_encoder(cfg: JobSpec, seed: int | None = None):
    """The encoder of a job's config, lazily (taps and checks, no weights), with the random weights
    the job drew: built under ``seed`` (default ``train.seed``) as posinfo.job builds it."""
    from posinfo import encoders

    seed = cfg.train.seed if seed is None else seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return encoders.build(encoders.Backbone.of(cfg.backbone, seed), cfg.data.normalize,
                              cfg.data.image_size, lazy=True)


def _register_module(cfg: JobSpec, module: Any) -> None:
    """A job of a user's nn.Module needs that module in this process (posinfo.usermodels)."""
    from posinfo import usermodels

    key = cfg.backbone.model
    if key.startswith("FeatureTable-"):
        raise PosinfoError(f"this job probed precomputed feature maps ({key}): there is no model to apply to new images")
    if module is None:
        usermodels.lookup(key)  # registered by a probe in this process, or one line saying how
        return
    got = usermodels.register(module)
    if got != key:
        raise PosinfoError(f"module: its content gives {got}, but the job probed {key}: pass the very module it "
                           "probed (same classes, forward and weights)")


def _readout(cfg: JobSpec, result: dict, job_dir: Path, device: torch.device, kind) -> torch.nn.Module:
    """The job's readout (readout.pt) in the shape its result.json describes."""
    from posinfo.readout import make

    ro, channels = cfg.readout, int(result["readout_in_channels"])
    readout = make(channels, ro.kernel, ro.depth, ro.padding, ro.feature_size, kind.outputs, ro.standardize, ro.solver)
    try:
        readout.load_state_dict(torch.load(job_dir / READOUT_FILE, map_location="cpu", weights_only=True))
    except Exception as e:  # truncated file, another readout's parameters
        raise PosinfoError(f"{job_dir / READOUT_FILE} does not hold the readout its result.json describes "
                           f"({type(e).__name__}): re-run the job (force=true)") from None
    return readout.to(device).eval()


def load(job_dir: str | Path, device: str = "auto", module: torch.nn.Module | None = None) -> "Trained":
    """A finished job's readout with its backbone: ``.predict(images)`` -> maps, ``.evaluate(images)``
    -> metrics. ``module``: the nn.Module a probe job ran on, when this process has not probed it."""
    from omegaconf import OmegaConf

    from posinfo.features import FeatureExtractor
    from posinfo.job import resolve_device
    from posinfo.kinds import make as make_kind
    from posinfo.readout import output_size
    from posinfo.schema import with_defaults
    from posinfo.spec import typed

    job_dir = user_path(job_dir)
    result = finished_result(job_dir)
    # A result written before an option existed used its default (with_defaults), then typed.
    cfg = typed(OmegaConf.create(with_defaults(result["config"])))
    if cfg.backbone.name == MODULE_BACKBONE:
        _register_module(cfg, module)
    dev = resolve_device(device)
    ro = cfg.readout
    kind = make_kind(cfg.target, cfg.data.image_size, output_size(ro.feature_size, ro.kernel, ro.depth, ro.padding))
    encoder = job_encoder(cfg).materialize()  # weights now: one line if they cannot load here
    extractor = FeatureExtractor(encoder, cfg.readout.feature_size, dev, cfg.backbone.precision)
    return Trained(job_dir, result, cfg, extractor, _readout(cfg, result, job_dir, dev, kind), kind)


class Trained:
    """A job's trained readout f_pem on its frozen backbone (see :func:`load`)."""

    def __init__(self, job_dir: Path, result: dict, cfg: JobSpec, extractor, readout: torch.nn.Module, kind):
        self.job_dir, self.result, self.cfg = job_dir, result, cfg
        self.extractor, self.readout = extractor, readout
        self.size = cfg.data.image_size
        self.kind = kind  # the target's kind (posinfo.kinds): its scorer and pictures
        self.target = kind.display
        # cache_dtype: what the job cached (float32 where float16 overflows); absent in results before it was recorded
        self._dtype = getattr(torch, result.get("cache_dtype", cfg.cache.dtype)) if cfg.cache.enabled else None

    @property
    def backbone(self) -> dict:
        """The backbone's configuration (name, model, weights, padding, taps…) and the taps it reads."""
        return {**dataclasses.asdict(self.cfg.backbone), "features": self.result.get("features")}

    def images(self, images: Any):
        """``images`` (a folder, files, a tensor, a Dataset) as the job saw its own: at its image size,
        on its canvas if it had one."""
        from posinfo.data import CanvasImages
        from posinfo.userdata import image_set

        ds = image_set(images, self.size)
        border = self.cfg.data.canvas.border
        return CanvasImages(ds, border, self.cfg.data.canvas.color) if border else ds

    @torch.no_grad()
    def outputs(self, ds) -> torch.Tensor:
        """The readout's raw outputs on every image of ``ds``: maps at its output size (N×1×h×w in
        [0, 1]), or cell logits (N×cells²×h×w) for target=grid."""
        out = []
        for start in range(0, len(ds), BATCH):
            batch = torch.stack([ds[i] for i in range(start, min(start + BATCH, len(ds)))])
            feats = self.extractor(batch)
            if self._dtype is not None:  # what the job's readout saw: features stored in the cache's dtype
                feats = feats.to(self._dtype).float()
            out.append(self.readout(feats).float().cpu())
        return torch.cat(out)

    def predict(self, images: Any) -> np.ndarray:
        """N×size×size float32 maps: the predicted position map (in [0, 1]), or for target=grid each
        position's predicted cell index over cells² − 1 (the target's own picture)."""
        return self.maps(self.outputs(self.images(images)))

    def maps(self, outputs: torch.Tensor) -> np.ndarray:
        """Raw outputs (:meth:`outputs`) as :meth:`predict`'s maps."""
        return self.kind.picture(self.kind.prepare(outputs))

    def evaluate(self, images: Any) -> dict:
        """The job's metrics on ``images``: as result.json's per-input metrics (SPC, MAE, border MAE;
        or the grid accuracies), with 95% bootstrap intervals over the images (``<metric>_lo``/``_hi``)
        and ``per_image`` rows."""
        from posinfo.report.intervals import bootstrap_interval

        ds = self.images(images)
        metrics, per_image = self.score(self.outputs(ds))
        for m in self.kind.bootstrapped:
            metrics[f"{m}_lo"], metrics[f"{m}_hi"] = bootstrap_interval([float(r[m]) for r in per_image])
        return {**metrics, "per_image": [{"image": n, **r} for n, r in zip(ds.names, per_image)]}

    def score(self, outputs: torch.Tensor) -> tuple[dict, list[dict]]:
        """The mean metrics over images and each image's, as the job scores its test images."""
        kind = self.kind
        values, metrics = kind.score(kind.prepare(outputs))
        return {**metrics, **kind.floor()}, [dict(zip(kind.columns, v)) for v in values]


def cli(main) -> int:
    """Run a command-line ``main()``: a PosinfoError is one line on stderr and exit status 1."""
    import sys

    logging.basicConfig(level=logging.WARNING, format="posinfo: %(message)s")
    try:
        return main()
    except PosinfoError as e:
        print(f"posinfo: error: {e}", file=sys.stderr)
        return 1
