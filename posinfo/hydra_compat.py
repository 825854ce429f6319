"""Every use of Hydra's internals (``hydra._internal``), in one place.

Hydra keeps its basic sweeper, its basic launcher and its command-line parser under
``hydra._internal``: no stability promise across releases. posinfo subclasses the sweeper
(fused training plans each batch), lists a dry run's jobs through the launcher, expands a
grid with the sweeper's own code and reads sweep.py's command line with Hydra's parser.
Importing them here only means a Hydra upgrade has one module to re-check, and
tests/test_hydra_compat.py pins the names and signatures used below to the Hydra version
this was written against (pyproject: hydra-core>=1.3,<1.4).
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable, Sequence

__all__ = ["BASIC_SWEEPER", "args_parser", "basic_sweeper", "launch_here", "split_jobs"]

# The basic sweeper's ``_target_``, as a composed config (and a sweep's multirun.yaml) names it.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

# Every import below happens at call time, not here: Hydra's plugin scan re-executes its core
# plugin modules (``load_module``), so a class imported before the scan is not the one Hydra
# then uses, and BasicSweeper.__init__ calls ``super(BasicSweeper, self)`` with the module's
# current class: a subclass of the earlier one fails to instantiate.


def basic_sweeper() -> tuple[type, type]:
    """Hydra's basic sweeper and its config dataclass, as they are now (after any plugin scan)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf

    return BasicSweeper, BasicSweeperConf


def split_jobs(overrides: Iterable[Any]) -> list[list[str]]:
    """Every job's override list for parsed overrides, in the basic sweeper's order (its own
    cartesian product, one batch: no ``max_batch_size``)."""
    batches = basic_sweeper()[0].split_arguments(list(overrides), None)
    return [list(job) for batch in batches for job in batch]


def launch_here(hydra_context: Any, task_function: Any, config: Any,
                job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
    """The jobs run in this process, in order, by Hydra's basic launcher; their JobReturns."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    basic = BasicLauncher()
    basic.setup(hydra_context=hydra_context, task_function=task_function, config=config)
    return basic.launch(job_overrides, initial_job_idx=initial_job_idx)


def args_parser() -> argparse.ArgumentParser:
    """Hydra's own command-line parser (``-m``, ``--cfg``, the overrides), as @hydra.main parses."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()
