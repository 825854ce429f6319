"""``sweep.fuse`` (default true): jobs of one sweep that share their training features and
training order, and differ only in target, readout or evaluation input, have their readouts
trained together, one pass over the features updating every readout (posinfo.train.fit_many).

How it runs: before launching, posinfo's sweeper composes every job's config, groups them by
:func:`group_key` and writes the groups to ``<sweep dir>/.posinfo_fuse.json`` (FUSE_PLAN).
The first job of a group to run trains its own readout and those of its siblings that are
neither done nor stored, and stores them in the readout store (the feature cache's
``readouts/``); each sibling then runs as its own job, in its own folder and process,
reusing its stored readout: resume, dry runs, crash isolation and the summary stay as they
are. A readout that diverges is not stored, so only its own job fails. Fusion needs the
feature cache (cache.enabled=true) and jobs of a group that run one after another: the basic
launcher, or the submitit launchers, which make each group one task; with the joblib
launcher the jobs train alone, as they do with ``sweep.fuse=false``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posinfo.io import write_json
from posinfo.names import FUSE_PLAN

log = logging.getLogger(__name__)

# What a group's members may differ in: neither the features nor the batch order depend on them.
FREE_KEYS = ("target", "input", "readout", "analysis", "experiment_name", "name", "force", "dry_run", "sweep", "hydra")


def group_key(config: dict) -> str:
    """Jobs with the same key read the same training features in the same order: everything in
    the resolved config but FREE_KEYS (readout.feature_size stays: it shapes the features)."""
    kept = {k: v for k, v in config.items() if k not in FREE_KEYS}
    kept["feature_size"] = (config.get("readout") or {}).get("feature_size")
    blob = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def write_plan(sweep_dir: Path, jobs: list[tuple[Path, dict]], keys: list[str] | None = None) -> int:
    """The groups of two or more jobs, each job as its folder and resolved config (``keys``: their
    group keys, when the caller has them already); the number of jobs in such groups (0: no plan
    is left behind)."""
    groups: dict[str, list[dict]] = {}
    for (folder, config), key in zip(jobs, keys or [group_key(c) for _, c in jobs]):
        groups.setdefault(key, []).append({"dir": str(Path(folder).resolve()), "config": config})
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    path = Path(sweep_dir) / FUSE_PLAN
    if not groups:
        path.unlink(missing_ok=True)
        return 0
    write_json(path, {"version": 1, "groups": groups})
    return sum(len(v) for v in groups.values())


def clear_plan(sweep_dir: Path) -> None:
    (Path(sweep_dir) / FUSE_PLAN).unlink(missing_ok=True)


def siblings_of(sweep_dir: Path, job_dir: Path) -> list[DictConfig]:
    """The configs of the other jobs in ``job_dir``'s group that are not done yet (or all of them
    under force=true); [] without a
    plan, or when the plan cannot be read (the job then trains alone: slower, same numbers)."""
    from posinfo.sweep.status import is_done

    path = Path(sweep_dir) / FUSE_PLAN
    try:
        plan: Any = json.loads(path.read_text())
        groups = plan["groups"].values()
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, AttributeError) as e:
        log.warning("sweep.fuse: %s is unreadable (%s): this job trains alone", path, e)
        return []
    me = str(Path(job_dir).resolve())
    for members in groups:
        if any(m.get("dir") == me for m in members):
            # force=true re-runs done jobs too: their readouts are retrained with this one's
            return [OmegaConf.create(m["config"]) for m in members if m.get("dir") != me
                    and (m["config"].get("force") or not is_done(Path(m["dir"]), m["config"])[0])]
    return []
