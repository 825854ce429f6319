"""scripts/solver_study.py in its smoke mode, on its PosENet parts (no backbone to extract):
both solvers run through sweep.py and the report puts them side by side."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_solver_study_smoke_runs_both_solvers_and_reports_them_side_by_side(tmp_path):
    weights = tmp_path / "weights"  # the PosENet parts read no weights; the script checks the files exist
    weights.mkdir()
    for name in ("vgg16_imagenet.pth", "vgg16_hed.pth", "efficientnet_lite0_imagenet.pth"):
        (weights / name).write_bytes(b"")
    doc = tmp_path / "solvers.md"
    env = {**os.environ, "POSINFO_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "solver_study.py"), "--smoke", "--out",
                           str(tmp_path / "out"), "--doc", str(doc), "--weights", str(weights),
                           "--parts", "posenet_sgd,posenet_ridge3"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = doc.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| PosENet, readout padding 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] != "–" and cells[-1] != "–"  # the SGD column and the 3×3 ridge column both filled
    assert "ᵇ" in cells[-1]  # ridge on PosENet has no seed: one run, a bootstrap interval
    assert "### (c) What the SGD recipe misses" in text
