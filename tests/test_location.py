"""target=grid: the location target (posinfo.location)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from posinfo import location
from posinfo.report import figures
from posinfo.report.cells import aggregate
from posinfo.report.collect import collect
from posinfo.errors import PosinfoError
from posinfo.job import run


def test_labels_put_each_output_position_in_the_cell_of_its_centre():
    lab = location.labels(7, 26)
    assert lab.shape == (26, 26) and lab.dtype == torch.long
    assert lab[0, 0] == 0 and lab[0, 25] == 6 and lab[25, 0] == 42 and lab[25, 25] == 48
    assert torch.equal(torch.bincount(lab.flatten()).sort().values[[0, -1]], torch.tensor([9, 16]))  # 3–4 per side
    assert torch.equal(location.labels(4, 4), torch.arange(16).view(4, 4))
    with pytest.raises(PosinfoError, match=r"target.cells=9 but the readout's output map is 7×7.*target.cells≤7"):
        location.labels(9, 7)


def test_scores_on_known_logits():
    lab = location.labels(2, 4)  # four 2×2 cells
    logits = torch.zeros(2, 4, 4, 4)
    logits[0].scatter_(0, lab[None], 1.0)  # image 0: every position right
    logits[1, 1] = 1.0  # image 1: always cell 1 (row 0, column 1)
    s = location.scores(logits, lab, 2)
    assert s[0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert s[1] == pytest.approx([0.25, 0.0, 0.5, 0.5])  # right on a quarter; rows right on half; columns too


BASE = ["target=grid", "input=natural", "data.num_train=48", "data.num_test=8", "train.epochs=8",
        "train.lr_milestones=[6]"]


def test_posenet_without_padding_is_at_chance_and_with_padding_above(make_cfg, tmp_path):
    acc = {}
    for pad in (0, 2):
        r = run(make_cfg(*BASE, "backbone=posenet", f"readout.padding={pad}"), tmp_path / str(pad), progress=False)
        acc[pad] = r["metrics"]["natural"]
        assert acc[pad]["chance"] == pytest.approx(1 / 49)
    assert abs(acc[0]["accuracy"] - 1 / 49) < 0.015  # no padding anywhere: chance
    assert acc[2]["accuracy"] > 2 / 49 and acc[2]["accuracy_norm"] > 0.02
    per = pd.read_csv(tmp_path / "2" / "per_image.csv")
    assert list(per.columns) == ["input", "image", "accuracy", "accuracy_norm", "row_accuracy", "col_accuracy"]
    assert per.accuracy.mean() == pytest.approx(acc[2]["accuracy"])
    # analyze.py: a bar per configuration of the normalised accuracy (no SPC bars: grid has no SPC)
    cells = aggregate(collect([tmp_path / "0", tmp_path / "2"]))
    assert sorted(cells.accuracy_norm) == pytest.approx(sorted(a["accuracy_norm"] for a in acc.values()))
    names = [f.path.name for f in figures.draw_all(cells, tmp_path / "figs")]
    assert any(n.endswith("_grid_bars.png") for n in names) and not any(n.endswith("_spc_bars.png") for n in names)


VIT = ["backbone=timm", "backbone.model=vit_tiny_patch16_224", "backbone.weights=random", "backbone.taps=[0]",
       "data.image_size=224", "readout.feature_size=14", "readout.kernel=1", "readout.standardize=channel",
       "target=grid", "input=natural", "data.num_train=48", "data.num_test=8", "train.epochs=10",
       "train.lr_milestones=[8]", "train.batch_size=8", "device=cpu"]


def test_a_vit_without_its_position_embedding_is_at_chance_and_with_a_random_one_above(make_cfg, tmp_path):
    """Block 0 of a random ViT-Tiny at 224 px, 14×14 tokens, 2×2 tokens per cell (chance 1/49): a random learned
    position embedding is found; zeroed, nothing is left to find."""
    keep = run(make_cfg(*VIT, tiny=False), tmp_path / "keep", progress=False)["metrics"]["natural"]
    zero = run(make_cfg(*VIT, "backbone.pos_embed=zero", tiny=False), tmp_path / "zero", progress=False)["metrics"]["natural"]
    assert abs(zero["accuracy"] - 1 / 49) < 0.02  # stated tolerance: 1 point of accuracy ≈ the test set's spread
    assert keep["accuracy"] > 5 / 49


def test_channels_with_grid_is_one_line(make_cfg, tmp_path):
    with pytest.raises(PosinfoError, match="analysis.channels=true scores channels against a map target"):
        run(make_cfg("backbone=posenet", "target=grid", "input=natural", "analysis.channels=true"), tmp_path / "j",
            progress=False)
