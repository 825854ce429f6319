"""Where a job's features and trained readouts come from: the feature cache when it is on
and the entry fits, features computed batch by batch otherwise, and the readout store.

The job asks for a feature source and a readout store and never learns which kind of
source it got; a readout is stored (and reused by jobs that differ only in their
evaluation input) only when its training features came from the cache, since only then
is the training set pinned down by a key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from posinfo import cache
from posinfo.encoder import Encoder, Tap
from posinfo.errors import PosinfoError
from posinfo.features import (CachedFeatures, FeatureExtractor, FeatureSource, LiveFeatures, ResidentFeatures, available_ram,
                               fill, placement)
from posinfo.io import atomic_path, write_json
from posinfo.names import HOST_MEMORY_SHARE, SWEEP_ID_ENV

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


class ReadoutStore:
    """Trained readouts keyed by everything that determines them (``cache.dir/readouts/``).

    The key includes the identity of the feature entry the readout was trained on
    (cache.content_id: its key, when it was written, its CRC-32s), not only the fields that
    name the entry: an entry damaged on disk is rebuilt under the same key, and a readout
    trained on the damaged bytes (with ``cache.verify=false``, or inside a sweep's trust window)
    must not outlive them. Keying by content rather than deleting the readouts of a rebuilt entry
    needs no index of which readouts used which entry and works on a store shared read-only;
    the readouts of an earlier build are left to ``python -m posinfo.cache clear``.
    """

    def __init__(self, path: Path, entry: str | None = None, force: bool = False):
        self.path = path
        self.entry = entry  # the feature entry it is trained on, for the log
        # force=true re-runs everything: a readout stored before this command is not reused,
        # only one that this very sweep stored (its fused group's, trained for this job moments ago).
        self.force = force

    @classmethod
    def for_training(cls, source: FeatureSource, settings: CacheSettings, fields: dict,
                     force: bool = False) -> "ReadoutStore | None":
        """The store's slot for a readout trained on ``source``; None unless its features are a
        cache entry on disk (only then are the bytes it learns from pinned down)."""
        if not (settings.enabled and isinstance(source, CachedFeatures)):
            return None
        features = cache.content_id(source.array)
        if features is None:
            return None
        key = cache.make_key({**fields, "features": features})
        return cls(settings.dir / cache.READOUTS_DIR / f"{key}.pt", features["entry"], force)

    def holds(self) -> bool:
        """Whether a readout that this job may reuse is stored (see ``force``)."""
        if not self.path.is_file():
            return False
        return not self.force or self._stored_by_this_sweep()

    def can_store(self) -> bool:
        """Whether a readout can be stored here now (a probe file is written and removed): a fused
        group trains its siblings' readouts only to store them, which a read-only cache cannot."""
        probe = self.path.with_name(f".probe.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            probe.touch()
            probe.unlink()
        except OSError as e:
            if not cache.note_read_only(self.path.parent.parent, e):
                log.warning("cannot store trained readouts in %s (%s): this job trains its own alone",
                            self.path.parent, e.strerror or e)
            return False
        return True

    def _stored_by_this_sweep(self) -> bool:
        sweep = os.environ.get(SWEEP_ID_ENV)
        if not sweep:
            return False
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True, mmap=True).get("sweep") == sweep
        except Exception:  # noqa: BLE001  unreadable: not reusable either
            return False

    def load(self, readout: torch.nn.Module, device: torch.device) -> list[dict] | None:
        """Load the stored readout into ``readout``; its training history, or None if absent
        or unreadable (a corrupt entry is removed with one warning and retrained)."""
        if not self.holds():
            if self.path.is_file():
                log.info("force=true: retraining the readout stored for this configuration (%s)", self.path.name)
            return None
        try:
            saved = torch.load(self.path, map_location=device, weights_only=True)
            state, own, history = saved["state_dict"], readout.state_dict(), list(saved["history"])
            if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
                raise ValueError("parameters of another readout")  # checked first: never a partial load
            readout.load_state_dict(state)
        except Exception as e:  # truncated zip, wrong contents: whatever it is, it is not a readout
            log.warning("stored readout %s is unreadable (%s: %s): retraining it", self.path,
                        type(e).__name__, str(e).splitlines()[0][:120] if str(e) else "")
            with contextlib.suppress(OSError):
                self.path.unlink()
            return None
        log.info("reusing the readout trained for this configuration on feature cache entry %s (%s)", self.entry,
                 self.path.name)
        return history

    def save(self, readout: torch.nn.Module, history: list[dict]) -> None:
        """Store the readout; a store that cannot be written (read-only, full) only disables storing."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                torch.save({"state_dict": readout.state_dict(), "history": history,
                            "sweep": os.environ.get(SWEEP_ID_ENV)}, tmp)
        except OSError as e:
            if not cache.note_read_only(self.path.parent.parent, e):  # a read-only cache warns once, for all
                log.warning("cannot store the trained readout in %s (%s): not stored, results unaffected",
                            self.path.parent, e.strerror or e)


def blame_features(source: FeatureSource | None, error: Exception) -> Exception:
    """``error`` (training failed, e.g. diverged) as one line naming the training features'
    cache entry when that entry fails its checksum now: a sweep trusts one check per file, so
    bytes damaged in place inside its trust window reach training unchecked. Else ``error``."""
    problem = cache.recheck(source.array) if isinstance(source, CachedFeatures) else None
    if problem is None:
        return error
    return PosinfoError(f"{problem}, and training on it failed ({error}): re-run, and the entry is rebuilt")
