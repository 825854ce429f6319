"""A sweep's checks before any job starts, in the launching process: every job's config is
composed (once per distinct backbone/data/input setting) and checked by posinfo.preflight,
so a grid whose ImageNet weights cannot be fetched fails once, not once per job."""

from __future__ import annotations

from collections import Counter

from omegaconf import DictConfig

from posinfo import grid
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

    jobs = grid.expand_config(config) or [list(config.hydra.overrides.task)]
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
