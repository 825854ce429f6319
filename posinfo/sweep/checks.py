"""A sweep's checks before any job starts, in the launching process: every job's config is
composed (once per distinct backbone/data/input setting) and checked by posinfo.preflight,
so a grid whose ImageNet weights cannot be fetched fails once, not once per job."""

from __future__ import annotations

import errno
import os
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig

from posinfo import sweepgrid
from posinfo.preflight import job_problems

# Override keys that can change what preflight checks; other axes (target, readout, train)
# share one composition.
_RELEVANT = ("backbone", "data", "input", "experiment", "pretraining", "saliency_weights", "segmentation_weights")


def _relevant(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~").replace("/", ".")
    return key.startswith(_RELEVANT)


def sweep_problems(config: DictConfig) -> list[str]:
    """One line per distinct problem, with how many of the sweep's jobs it stops."""
    from hydra import compose

    jobs = sweepgrid.expand_config(config) or [list(config.hydra.overrides.task)]
    found: Counter[str] = Counter()
    checked: dict[tuple[str, ...], list[str]] = {}
    for overrides in jobs:
        key = tuple(sorted(o for o in overrides if _relevant(o)))
        if key not in checked:
            try:
                cfg = compose(config_name=str(config.hydra.job.config_name), overrides=list(overrides))
            except Exception:  # a job that does not compose fails by itself, with Hydra's message
                cfg = None
            checked[key] = job_problems(cfg) if cfg is not None else []
        found.update(checked[key])
    return [f"{p} ({n} of {len(jobs)} job(s))" for p, n in found.items()]


def folder_problem(folder: Path, key: str) -> str | None:
    """One line if the output folder ``folder`` (the value of ``key``) could not be created or
    written, else None: checked before Hydra creates it, whose failure is a long traceback. Its
    nearest existing folder gets a probe file, written and removed (a folder's mode says nothing
    on a read-only mount, nor to root), and nothing is created: a command that stops leaves no
    empty folder behind."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        probe = existing / f".posinfo_write_probe.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        return (f"{key}={folder} cannot be written ({e.strerror or e}): set {key} to a folder you can write to, "
                "or run from a directory you can write to")
    return None
