"""posinfo.hydra_compat: the Hydra internals posinfo uses, pinned to the Hydra they were written against.

Written against hydra-core 1.3.8 (pyproject allows >=1.3,<1.4). A failure here after a Hydra
upgrade means an internal posinfo relies on moved or changed: re-read it in the new Hydra,
mend posinfo/hydra_compat.py (the only module that imports ``hydra._internal``), then update
WRITTEN_AGAINST.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class

from posinfo import hydra_compat
from posinfo.hydra_compat import BASIC_SWEEPER

WRITTEN_AGAINST = "1.3.8"
ROOT = Path(__file__).resolve().parents[1]


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_the_installed_hydra_is_the_minor_release_the_internals_were_checked_against():
    major_minor = ".".join(WRITTEN_AGAINST.split(".")[:2])
    assert hydra.__version__.startswith(major_minor + "."), (
        f"hydra-core {hydra.__version__}: posinfo.hydra_compat was checked against {WRITTEN_AGAINST}")


def test_the_internals_still_exist_with_the_signatures_posinfo_calls():
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    BasicSweeper, BasicSweeperConf = hydra_compat.basic_sweeper()
    assert get_class(BASIC_SWEEPER) is BasicSweeper  # the _target_ a composed config names
    assert BasicSweeperConf._target_ == BASIC_SWEEPER
    assert _params(BasicSweeper.split_arguments) == ["overrides", "max_batch_size"]
    assert _params(BasicSweeper.get_job_batch) == []  # PosinfoSweeper plans each batch here
    assert _params(BasicSweeper.sweep) == ["arguments"]
    assert _params(BasicLauncher.setup) == ["hydra_context", "task_function", "config"]
    assert _params(BasicLauncher.launch) == ["job_overrides", "initial_job_idx"]
    args, rest = hydra_compat.args_parser().parse_known_args(["-m", "--cfg", "job", "a=1", "b=2,3"])
    assert (args.multirun, args.cfg, args.overrides, rest) == (True, "job", ["a=1", "b=2,3"], [])


def test_split_jobs_is_the_basic_sweepers_cartesian_product_in_its_order():
    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x,y", "c=3"])
    assert hydra_compat.split_jobs(parsed) == [["a=1", "b=x", "c=3"], ["a=1", "b=y", "c=3"],
                                               ["a=2", "b=x", "c=3"], ["a=2", "b=y", "c=3"]]


def test_no_other_module_imports_hydra_internals():
    pattern = re.compile(r"hydra\._internal")
    offenders = [str(p.relative_to(ROOT)) for folder in ("posinfo", "hydra_plugins", "scripts", "bench")
                 for p in sorted((ROOT / folder).rglob("*.py"))
                 if p.name != "hydra_compat.py" and pattern.search(p.read_text())]
    assert offenders == []
