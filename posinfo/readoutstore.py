"""The readout store: trained readouts kept beside the feature cache (``cache.dir/readouts/``),
keyed by everything that determines them, so a job that differs from another only in what it
evaluates reuses the other's readout; and ``blame_features``, which names the cache entry a
failed training read.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from posinfo import cache
from posinfo.errors import PosinfoError
from posinfo.features import CachedFeatures, FeatureSource
from posinfo.io import atomic_path
from posinfo.names import SWEEP_ID_ENV
from posinfo.sources import CacheSettings

log = logging.getLogger(__name__)


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
