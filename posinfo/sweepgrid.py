"""The jobs of a sweep, expanded the way Hydra's basic sweeper expands them (the Hydra grid of
``-m key=a,b``; the location target ``target=grid`` is posinfo.location).

Torch-free. Used by the sweep summary (how many jobs to expect), the analysis (which
jobs never started) and the tests (what a preset launches).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

# posinfo's subclass of the basic sweeper: it expands the grid as the basic one does (and plans fused groups).
POSINFO_SWEEPER = "hydra_plugins.posinfo_launchers.launchers.PosinfoSweeper"


def expand(params: Mapping[str, Any] | None, task_overrides: Iterable[str]) -> list[list[str]]:
    """Every job's override list: ``hydra.sweeper.params`` as ``key=value`` overrides, then
    the command line's; a later override of a key replaces an earlier one; the jobs are the
    cartesian product, in the sweeper's order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from posinfo.hydra_compat import split_jobs

    args = [f"{k}={v}" for k, v in (params or {}).items()] + [str(o) for o in task_overrides]
    return split_jobs(OverridesParser.create().parse_overrides(args))


def expand_config(config: Any) -> list[list[str]] | None:
    """The jobs of a composed multirun config (the launching process's, or a sweep folder's
    ``multirun.yaml``); None when another sweeper than the basic one expands the grid."""
    from omegaconf import OmegaConf

    from posinfo.hydra_compat import BASIC_SWEEPER

    if str(config.hydra.sweeper.get("_target_", BASIC_SWEEPER)) not in (BASIC_SWEEPER, POSINFO_SWEEPER):
        return None
    node = config.hydra.sweeper.get("params")  # None for a grid given only on the command line
    params = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    return expand(params, OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
