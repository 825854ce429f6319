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


def _cells(tmp_path, rows):
    """Study cells as load_cells makes them, each with one job folder whose result.json holds its SPC."""
    import json

    import pandas as pd

    out = []
    for i, (part, n, label, spc) in enumerate(rows):
        d = tmp_path / f"job{i}"
        d.mkdir()
        (d / "result.json").write_text(json.dumps({"metrics": {"natural": {"spc": spc}}}))
        out.append({"part": part, "data.num_train": n, "label": label, "target": "hor", "input": "natural",
                    "spc": spc, "spc_lo": spc - 0.02, "spc_hi": spc + 0.02, "ci": "images", "job_dirs": [str(d)]})
    cells = pd.DataFrame(out)
    cells["variant"] = [p.split("_", 1)[1] for p in cells.part]
    cells["images"] = ["photos" if p.startswith("photo") else "embedded" for p in cells.part]
    return cells


def test_the_3x3_optimum_at_the_main_size_is_the_main_tables_cell_and_each_size_gets_its_recipe_cost(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import solver_study as st

    cells = _cells(tmp_path, [
        ("vgg16_ridge1", 500, "VGG16 ImageNet", 0.51), ("vgg16_sgd", 500, "VGG16 ImageNet", 0.49),
        ("curve_ridge3", 250, "VGG16 ImageNet", 0.67), ("curve_ridge3", 500, "VGG16 ImageNet", 0.72),
        ("curve_sgd", 250, "VGG16 ImageNet", 0.44), ("curve_sgd", 500, "VGG16 ImageNet", 0.50),
        ("photos_ridge1", 240, "VGG16 ImageNet", 0.37)])
    main = st.main_cells(cells)
    # the 500-image 3×3 optimum joins the main parts (same size); the 250-image one and SGD's curve do not
    assert sorted(zip(main.part, main["data.num_train"])) == [("curve_ridge3", 500), ("vgg16_ridge1", 500),
                                                              ("vgg16_sgd", 500)]
    assert list(st.main_cells(cells, "photos").part) == ["photos_ridge1"]
    table = "\n".join(st.section_main(cells, ["hor"]))
    assert "| VGG16 ImageNet | .490 [.47, .51] ᵇ | .510 [.49, .53] ᵇ | .720 [.70, .74] ᵇ |" in table
    # (c) takes the widest optimum that ran: the 3×3 one, +.230 over SGD
    assert "+0.230" in "\n".join(st.conclusion_c(cells, ["hor"]))
    cost = st._recipe_cost({"ridge3": st._curve_points(cells, "ridge3")}, {}, cells)
    assert "at N = 250, 0.670 against SGD's 0.440" in cost and "at N = 500, 0.720 against SGD's 0.500" in cost
    assert cost.count("the recipe costs") == 2 and "+0.230" in cost and "+0.220" in cost
    # the SGD curve's limit below both optima: said once
    cost = st._recipe_cost({"ridge3": st._curve_points(cells, "ridge3")}, {"sgd": (0.6, 0.58, 0.62, (0.64, 1.0, 0.5))},
                           cells)
    assert cost.count("reaches neither (its limit a = 0.640)") == 1
    # against the paper: the largest-N optimum, the SGD curve's value at the paper's size, the paper's number
    text = st._optimum_against_paper({"ridge3": [(250, 0.669, []), (500, 0.723, [])]}, (0.697, 0.67, 0.72, None))
    assert "on 500 images (0.723) extracts more than" in text and f"{st.PAPER_HOR - 0.723:.3f} below" in text
    assert "the readout's recipe, more than the number of images" in text
    text = st._optimum_against_paper({"ridge3": [(500, 0.70, [])]}, (0.697, 0.67, 0.72, None))
    assert "extracts as much as" in text and "the readout's recipe" not in text
