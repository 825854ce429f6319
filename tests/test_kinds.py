"""Target kinds (posinfo.kinds): the per-position probes target=rowcol and target=xy, their scorers
on hand-built outputs, and the probes on a random ViT-Tiny (position embedding kept or zeroed)
and on a random CNN with zero padding."""

from __future__ import annotations

import json
import math

import pytest
import torch

from posinfo import kinds


def _target(name: str, **kw):
    from omegaconf import OmegaConf

    return OmegaConf.create({"name": name, "range": "unit", "cells": 7, "per_tap": False, **kw})


def _rowcol_logits(rows: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    """B×2n×n×n logits naming (rows, cols) at each position (B×n×n each)."""
    return torch.cat([torch.nn.functional.one_hot(rows, n).permute(0, 3, 1, 2).float(),
                      torch.nn.functional.one_hot(cols, n).permute(0, 3, 1, 2).float()], dim=1)


def test_every_target_name_has_one_kind_and_the_vocabulary_agrees():
    from posinfo.names import TARGETS

    assert set(kinds.TARGET_KINDS) == set(TARGETS)
    assert kinds.format_of("grid") is kinds.CellKind and kinds.format_of("rowcol") is kinds.RowColKind
    assert kinds.lookup(None) is None and kinds.lookup("nope") is None


def test_rowcol_scores_on_hand_built_logits():
    kind = kinds.make(_target("rowcol"), 32, 2)
    assert kind.outputs == 4  # two row logits, two column logits
    true_r, true_c = kind.rows[None].clone(), kind.cols[None].clone()
    # image 0 names every position right; image 1 names every row right and every column wrong
    # (column 1 - c), so each position is off by one cell
    logits = _rowcol_logits(torch.cat([true_r, true_r]), torch.cat([true_c, 1 - true_c]), 2)
    rows, m = kind.score(logits)
    assert rows[0] == (1.0, 1.0, 1.0, 0.0)
    assert rows[1] == (0.0, 1.0, 0.0, 1.0)
    # image 2: position (0,0) names (1,1): both wrong, distance √2; the others right
    r, c = true_r.clone(), true_c.clone()
    r[0, 0, 0], c[0, 0, 0] = 1, 1
    (row,), _ = kind.score(_rowcol_logits(r, c, 2))
    assert row == pytest.approx((0.75, 0.75, 0.75, math.sqrt(2) / 4))
    assert m["accuracy"] == 0.5 and m["distance"] == 0.5 and m["n_images"] == 2
    # chance: 1/n² both, 1/n each, and a uniform guess's mean distance over the 2×2 positions
    assert m["chance"] == 0.25 and m["chance_line"] == 0.5
    assert m["chance_distance"] == pytest.approx((2 + math.sqrt(2)) / 4)


def test_scores_split_by_feature_norm_score_the_top_2_percent_apart():
    kind = kinds.make(_target("rowcol"), 32, 3)
    r, c = kind.rows[None].repeat(2, 1, 1), kind.cols[None].repeat(2, 1, 1)
    r[1, 2, 2] = 0  # one position named wrong (row 0 for row 2: two cells off) ...
    norms = torch.arange(18, dtype=torch.float32).view(2, 3, 3)  # ... the one of highest norm, alone in the top 2%
    split = kind.by_norm(_rowcol_logits(r, c, 3), norms)
    assert (split["n_high"], split["n_rest"]) == (1, 17)
    assert split["high"] == {"accuracy": 0.0, "row_accuracy": 0.0, "col_accuracy": 1.0, "distance": 2.0}
    assert split["rest"] == {"accuracy": 1.0, "row_accuracy": 1.0, "col_accuracy": 1.0, "distance": 0.0}


def test_xy_scores_on_hand_built_outputs():
    kind = kinds.make(_target("xy"), 64, 4)
    exact = kind.xy[None].clone()
    centre = torch.full_like(exact, 0.5)  # the mean position: the best constant
    shifted = exact.clone()
    shifted[:, 0] += 0.25  # every x off by a quarter of the image: 16 px
    rows, m = kind.score(torch.cat([exact, centre, shifted]))
    assert rows[0] == pytest.approx((1.0, 0.0))
    assert rows[1][0] == pytest.approx(0.0, abs=1e-12) and rows[1][1] == pytest.approx(m["floor_px"])
    assert rows[2][1] == pytest.approx(16.0)
    # R² = 1 − SSE/SST over both coordinates: SSE 16 · 0.25², SST 2 · 4 · Σ(x − .5)² over the 4 centres
    sst = 2 * 4 * sum(((i + 0.5) / 4 - 0.5) ** 2 for i in range(4))
    assert rows[2][0] == pytest.approx(1 - 16 * 0.0625 / sst)


def test_ridge_refuses_the_row_column_classifier_with_one_line(make_cfg, tmp_path):
    from posinfo.errors import PosinfoError
    from posinfo.job import run

    with pytest.raises(PosinfoError, match="readout.solver=ridge with target=rowcol: .*use readout.solver=sgd"):
        run(make_cfg("backbone=posenet", "readout.solver=ridge", "target=rowcol"), tmp_path / "rowcol")


VIT = ["backbone=timm", "backbone.model=vit_tiny_patch16_224", "backbone.weights=random", "backbone.taps=[0]",
       "data.image_size=112", "data.num_train=96", "data.num_test=8", "target=rowcol", "target.per_tap=false",
       "readout.kernel=1", "readout.feature_size=7", "readout.standardize=channel", "train.epochs=6",
       "train.lr_milestones=[5]", "train.batch_size=16", "input=natural"]


def test_xy_in_closed_form_finds_each_tokens_position_with_its_embedding_and_none_without(make_cfg, tmp_path):
    """target=xy with readout.solver=ridge (the optimal per-position probe): a random ViT-Tiny's tokens
    give their position away with the learned embedding kept, and nothing with it zeroed."""
    from posinfo.job import run

    xy = [o for o in VIT if not o.startswith(("target=", "readout.standardize", "train."))]
    out = {}
    for pe in ("keep", "zero"):
        res = run(make_cfg(*xy, "target=xy", "readout.solver=ridge", f"backbone.pos_embed={pe}"), tmp_path / pe,
                  progress=False)
        assert res["training"]["solver"] == "ridge" and len(res["training"]["lambda"]) == 2  # x and y
        out[pe] = res["metrics"]["natural"]
    assert out["keep"]["r2"] > 0.1 and abs(out["zero"]["r2"]) < 0.02
    assert out["keep"]["distance_px"] < out["zero"]["distance_px"]


def test_rowcol_decodes_a_vit_tokens_position_with_its_embedding_and_not_without(make_cfg, tmp_path):
    """A random ViT-Tiny at 112 px (7×7 tokens): its learned position embedding, random but a fixed
    vector per position, names each token's row and column; zeroed, the tokens are exchangeable
    and the probe sits at chance."""
    from posinfo.job import run

    kept = run(make_cfg(*VIT), tmp_path / "keep", progress=False)["metrics"]["natural"]
    zero = run(make_cfg(*VIT, "backbone.pos_embed=zero"), tmp_path / "zero", progress=False)["metrics"]["natural"]
    assert kept["chance"] == pytest.approx(1 / 49) and kept["chance_line"] == pytest.approx(1 / 7)
    # kept (measured: both .12, rows .35, columns .31, distance 2.8 of chance 3.6 cells)
    assert kept["accuracy"] > 3 * kept["chance"]
    assert min(kept["row_accuracy"], kept["col_accuracy"]) > 1.8 * kept["chance_line"]
    assert kept["distance"] < 0.9 * kept["chance_distance"]
    # at chance: within 0.07 of 1/7 for rows and columns (8 test images × 49 tokens), both below 2.5× 1/49
    assert abs(zero["row_accuracy"] - zero["chance_line"]) < 0.07
    assert abs(zero["col_accuracy"] - zero["chance_line"]) < 0.07
    assert zero["accuracy"] < 2.5 * zero["chance"]


def test_rowcol_on_a_zero_padded_cnn_decodes_position_and_scores_each_tap(make_cfg, tmp_path):
    """A random ResNet-18 with zero padding: its maps carry position (the paper's finding), so the
    all-taps probe names rows and columns far above chance; per_tap (rowcol's default) adds one probe
    per tap, and the per-image file has the kind's columns."""
    from posinfo.job import run

    res = run(make_cfg("backbone=resnet18", "backbone.weights=random", "target=rowcol", "readout.kernel=1",
                       "readout.feature_size=8", "readout.standardize=channel", "data.num_train=32",
                       "data.num_test=8", "train.epochs=6", "train.lr_milestones=[5]", "train.batch_size=16",
                       "input=natural"), tmp_path / "j", progress=False)
    m = res["metrics"]["natural"]
    assert m["accuracy"] > 10 * m["chance"] and res["chance"] == m["chance"] == 1 / 64
    assert [e["tap"] for e in res["per_tap"]] == ["f1", "f2", "f3", "f4"]
    assert [e["channels"] for e in res["per_tap"]] == [64, 128, 256, 512]
    assert all(e["metrics"]["natural"]["accuracy"] > e["metrics"]["natural"]["chance"] for e in res["per_tap"])
    split = m["by_norm"]  # kernel 1: each output position is one feature position, so split by its norm
    assert split["n_high"] + split["n_rest"] == 8 * 64 and 0 < split["n_high"] <= 0.05 * 8 * 64
    header = (tmp_path / "j" / "per_image.csv").read_text().splitlines()[0]
    assert header == "input,image,accuracy,row_accuracy,col_accuracy,distance"
    saved = json.loads((tmp_path / "j" / "result.json").read_text())
    assert saved["per_tap"] == res["per_tap"]


def test_per_tap_is_scored_over_depth_by_the_analysis(make_cfg, tmp_path):
    """analyze: the per-tap scores become per_tap.csv, a tables.md section and a depth figure."""
    from posinfo.report import write_report
    from posinfo.job import run

    for seed in (0, 1):
        run(make_cfg("backbone=resnet18", "backbone.weights=random", "backbone.taps=[1,2]", "target=xy",
                     "readout.kernel=1", "readout.feature_size=4", "data.num_train=16", "data.num_test=4",
                     "input=natural", f"train.seed={seed}"), tmp_path / "sweep" / f"s{seed}", progress=False)
    written = write_report([tmp_path / "sweep"], echo=False)
    import pandas as pd

    taps = pd.read_csv(written["per_tap.csv"])
    assert list(taps.tap) == ["f1", "f2"] and set(taps.metric) == {"r2"} and set(taps.n_runs) == {2}
    assert (taps.lo <= taps.value).all() and (taps.value <= taps.hi).all()
    assert "## Scores per tap" in written["tables.md"].read_text()
    assert any(name.endswith("_depth.png") for name in written)


def test_per_tap_leaves_the_readout_store_key_as_it_was(make_cfg, tmp_path):
    """target.per_tap adds probes, not a new readout: a job with it reuses the readout stored by the
    same job without it (the store's key leaves per_tap out, so readouts stored before it existed
    keep theirs), and its headline metrics are the same."""
    from posinfo.job import run

    args = ("backbone=posenet", "readout.padding=1", "target=xy", "readout.feature_size=8", "data.image_size=32",
            "input=natural")
    without = run(make_cfg(*args, "target.per_tap=false"), tmp_path / "a", progress=False)
    with_taps = run(make_cfg(*args, "target.per_tap=true"), tmp_path / "b", progress=False)
    assert not without["readout_reused"] and with_taps["readout_reused"]
    assert with_taps["metrics"] == without["metrics"] and "per_tap" not in without
    assert [e["tap"] for e in with_taps["per_tap"]] == [f["name"] for f in with_taps["features"]]
