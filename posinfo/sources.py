"""Where a job's features come from: the feature cache when it is on and the entry fits,
features computed batch by batch otherwise; and each encoder configuration's taps, remembered.

The job asks for a feature source and never learns which kind it got; its trained readout is
stored (posinfo.readoutstore, reused by jobs that differ only in their evaluation input) only
when its training features came from the cache, since only then is the training set pinned
down by a key.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from posinfo import cache
from posinfo.encoder import Encoder, Tap
from posinfo.features import (CachedFeatures, FeatureExtractor, FeatureSource, LiveFeatures, ResidentFeatures, available_ram,
                               fill, placement)
from posinfo.io import write_json
from posinfo.names import HOST_MEMORY_SHARE

log = logging.getLogger(__name__)


def _versions() -> dict:
    """The versions that decide an architecture's shapes, read without importing the packages."""
    from importlib import metadata

    out = {}
    for pkg in ("torch", "torchvision", "timm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def encoder_taps(settings: "CacheSettings", spec: dict, image_size: int,
                 build: Callable[[], Encoder]) -> tuple[str, list[Tap], Encoder | None]:
    """The encoder's name and taps (Encoder.describe) for its configuration ``spec`` (the
    backbone settings but the weights, which do not change shapes) at
    ``image_size``; and the encoder if it had to be built (None when remembered).

    Remembered in ``cache.dir/encoders/`` with the torch, torchvision and timm versions, so
    that a job whose features are all cached never builds its encoder: building and tracing
    a ResNet-152 on the meta device and its shape pass took 3 s of every such job (2.4 s
    and 0.6 s), the same again for a timm model's import. Without the cache, always built.
    """
    path = None
    if settings.enabled:
        key = cache.make_key({"encoder": spec, "image_size": image_size, "versions": _versions()})
        path = settings.dir / cache.ENCODERS_DIR / f"{key}.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return str(d["name"]), [Tap.from_json(t) for t in d["taps"]], None
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:  # rebuilt and rewritten below
            log.debug("remembered taps %s unreadable (%s): building the encoder", path, e)
    enc = build()
    taps = enc.describe(image_size)
    if path is not None:
        try:
            write_json(path, {"name": enc.name, "taps": [t.as_json() for t in taps]})
        except OSError as e:  # a read-only cache only means the next job builds it again
            log.debug("cannot remember the taps in %s: %s", path, e)
    return enc.name, taps, enc


@dataclass(frozen=True)
class CacheSettings:
    """The ``cache`` config group as plain values."""

    enabled: bool
    dir: Path
    dtype: str
    max_gb: float
    verify: bool = True
    memory: str = "auto"  # where training features live: posinfo.features.placement


def open_features(name: str, dataset: Any, extractor: FeatureExtractor, channels: int, key_fields: dict,
                  settings: CacheSettings, num_workers: int, progress: bool) -> FeatureSource:
    """Cached features when enabled and affordable; live (per-batch) features otherwise."""
    fs = extractor.size
    if settings.enabled:
        fields = {**key_fields, "images": dataset.identity(), "dtype": settings.dtype}
        shape = (len(dataset), fs, fs, channels)  # channels-last: see features.CachedFeatures

        def compute(out: np.ndarray) -> None:
            fill(out, dataset, extractor, num_workers, progress)

        arr = None
        if getattr(dataset, "prefix_stable", False):  # a larger set's entry holds these images first
            arr = cache.get_prefix(settings.dir, fields, shape, settings.dtype, verify=settings.verify)
        if arr is None:
            arr = cache.get_or_create(settings.dir, fields, shape, settings.dtype, compute, settings.max_gb,
                                      verify=settings.verify)
        if arr is None and cache.read_only(settings.dir):
            arr = _in_memory(name, shape, settings.dtype, compute)
        if arr is not None:
            where = placement(settings.memory, arr.nbytes, extractor.device) if name == "train" else "disk"
            return CachedFeatures(arr, extractor.device) if where == "disk" else ResidentFeatures(arr, extractor.device, where)
    log.info("%s features computed per batch (uncached)", name)
    return LiveFeatures(dataset, extractor, num_workers)


def _in_memory(name: str, shape: tuple[int, ...], dtype: str, compute: Callable[[np.ndarray], None]) -> np.ndarray | None:
    """A read-only cache's miss, computed once into RAM for this job (not stored) when it takes at
    most HOST_MEMORY_SHARE of the available RAM: per-batch features would run the encoder again
    every epoch. None (per-batch features) when it does not fit."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > HOST_MEMORY_SHARE * available_ram():
        return None
    log.info("%s features computed into memory (%.2f GB; the cache folder is read-only)", name, nbytes / 1e9)
    arr = np.empty(shape, dtype)
    compute(arr)
    return arr
