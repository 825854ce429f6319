"""Shared fixtures: configs composed the way sweep.py composes them, never touching outputs/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FIXTURES = Path(__file__).parent / "fixtures"

# Tiny but real: 64 px images, a handful of them, random-init backbones.
TINY = [
    "data.image_size=64",
    "data.num_train=16",
    "data.num_test=4",
    "train.epochs=2",
    "train.batch_size=8",
    "device=cpu",
]


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) with the cache in tmp_path and tiny defaults."""

    def _make(*overrides: str, tiny: bool = True):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                "config",
                overrides=[f"cache.dir={tmp_path / 'cache'}", *(TINY if tiny else []), *overrides],
            )

    return _make


def run_sweep(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run sweep.py as a user would, in ``cwd`` (outputs land there)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
