"""analysis.probefree: position in the features themselves, no readout (posinfo.probefree)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from posinfo.job import run
from test_channels import FakeSource  # features held in memory, batched as a feature source
from posinfo.probefree import _similarity_curve, accumulate, measures

# The corrected input-independent share of a stationary input through a translation-equivariant
# network is 0 in expectation; 48 noise images of 32×32 leave it within this (uncorrected: ~1/48).
SHARE_TOLERANCE = 0.01


def _features(net, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(images)


def _noise_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _conv_net(padding_mode: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode=padding_mode), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode=padding_mode), torch.nn.ReLU())


def test_a_network_that_ignores_its_input_is_all_input_independent_with_its_ramp_read_exactly():
    # every image gives the same map: channel c is (c + 1) × the column index
    w = torch.arange(8, dtype=torch.float32)
    feats = (torch.arange(1, 5, dtype=torch.float32)[:, None, None] * w).expand(6, 4, 8, 8).clone()
    (rec,), arrays = measures(FakeSource(feats), [("f1", 4)], batch_size=4, seed=0)
    assert rec["input_independent_share"] == pytest.approx(1.0, abs=1e-12)
    # standardised column index: left half mean 1.5, right 5.5, std over positions √5.25
    lr = rec["left_right"]
    assert lr["mean"] == pytest.approx(-4 / np.sqrt(5.25), abs=1e-6) and lr["low"] == pytest.approx(lr["mean"], abs=1e-6)
    assert rec["top_bottom"]["mean"] == pytest.approx(0, abs=1e-9)
    assert np.allclose(arrays["f1_bias_map"][3], (w - 3.5) / np.sqrt(5.25), atol=1e-6)


def test_circular_padding_is_input_independent_share_zero_and_zero_padding_is_not():
    images = _noise_images(48, 32)
    shares = {}
    for mode in ("circular", "zeros"):
        (rec,), _ = measures(FakeSource(_features(_conv_net(mode), images)), [("f1", 8)], batch_size=16, seed=0)
        shares[mode] = rec["input_independent_share"]
    assert abs(shares["circular"]) < SHARE_TOLERANCE
    assert shares["zeros"] > 5 * SHARE_TOLERANCE  # the border is a fixed pattern in every image


def _flip_equivariant_net(same_padding: bool) -> torch.nn.Module:
    """Kernels symmetric under both flips, stride 2: flip-equivariant when the padding is symmetric."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(6, 3, 3, 3, generator=g)
    k = k + k.flip(-1) + k.flip(-2) + k.flip(-1, -2)

    def net(x):
        # TF "SAME" at an even size: the one padded row and column go bottom/right
        x = F.pad(x, (0, 1, 0, 1)) if same_padding else F.pad(x, (1, 1, 1, 1))
        return F.relu(F.conv2d(x, k, stride=2))
    return net


def _flip_closed(images: torch.Tensor) -> torch.Tensor:
    return torch.cat([images, images.flip(-1), images.flip(-2), images.flip(-1, -2)])


@pytest.mark.parametrize("same_padding, size", [(False, 33), (True, 32)])
def test_mean_map_asymmetry_is_zero_for_symmetric_padding_and_not_for_same_padding(same_padding, size):
    # images in [1, 2]: the zero padding stands out from every pixel, as a black border would
    feats = _features(_flip_equivariant_net(same_padding), _flip_closed(_noise_images(8, size) + 1))
    (rec,), arrays = measures(FakeSource(feats), [("f1", 6)], batch_size=16, seed=0)
    lr, tb = rec["left_right"], rec["top_bottom"]
    if same_padding:  # its interval over images excludes 0
        assert lr["high"] < 0 or lr["low"] > 0
        assert tb["high"] < 0 or tb["low"] > 0
    else:
        assert abs(lr["mean"]) < 1e-6 and abs(tb["mean"]) < 1e-6
        assert np.allclose(arrays["f1_bias_map"], arrays["f1_bias_map"][:, ::-1], atol=1e-5)


def test_similarity_against_distance_matches_every_pair_counted_by_hand():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64) + 1.0
    sums, perm = accumulate(FakeSource(feats), [("f1", 4)], batch_size=2, seed=3)
    dist, sim = _similarity_curve(sums.power[("f1", False)], 5, 6, 3)
    _, sim_perm = _similarity_curve(sums.power[("f1", True)], 5, 6, 3)
    yy, xx = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], 1)
    d = np.floor(np.hypot(*(pos[:, None] - pos[None]).transpose(2, 0, 1)) + 0.5).astype(int)
    for permuted, curve in ((False, sim), (True, sim_perm)):
        u = F.normalize(feats.flatten(2), dim=1).numpy()
        if permuted:
            u = u[:, :, perm]
        cos = np.einsum("ncp,ncq->npq", u, u)
        want = [cos[:, d == k].mean() for k in dist]
        assert np.allclose(curve, want, atol=1e-5)


def test_job_writes_probe_free_measures_per_tap(make_cfg, tmp_path):
    res = run(make_cfg("backbone=vgg16", "backbone.weights=random", "backbone.taps=[1,3]", "data.image_size=32",
                       "data.num_train=8", "input=natural", "analysis.probefree=true"), tmp_path / "job", progress=False)
    recs = res["probefree"]
    assert [r["tap"] for r in recs] == [f["name"] for f in res["features"]]
    assert all(-1.5 < r["input_independent_share"] <= 1 and r["left_right"]["low"] <= r["left_right"]["high"] for r in recs)
    arrays = np.load(tmp_path / "job" / "probefree.npz")
    assert arrays[f"{recs[0]['tap']}_bias_map"].shape == (28, 28) and len(arrays[f"{recs[0]['tap']}_left_right"]) == 8
    assert (tmp_path / "job" / "probefree.png").stat().st_size > 0
    assert json.loads((tmp_path / "job" / "result.json").read_text())["probefree"] == recs


def _job(tmp_path, name: str, lr: float, share: float) -> str:
    rec = {"tap": "f1", "channels": 8, "input_independent_share": share, "dead_channels": 0,
           "left_right": {"mean": lr, "low": lr - 0.1, "high": lr + 0.1},
           "top_bottom": {"mean": 0.0, "low": -0.1, "high": 0.1},
           "similarity": {"near": 0.9, "far": 0.2, "near_permuted": 0.3}}
    (tmp_path / name).mkdir()
    (tmp_path / name / "result.json").write_text(json.dumps({"status": "ok", "probefree": [rec]}))
    return str(tmp_path / name)


def test_analysis_counts_one_set_of_features_once_and_random_seeds_as_replicates(tmp_path):
    import pandas as pd

    from posinfo.report.probefree import probefree_rows, to_markdown

    rows = [("vgg16", "random", 0, "hor", _job(tmp_path, "r0h", 0.2, 0.1)),
            ("vgg16", "random", 0, "ver", _job(tmp_path, "r0v", 0.2, 0.1)),  # the same features as r0h
            ("vgg16", "random", 1, "hor", _job(tmp_path, "r1h", 0.4, 0.3)),
            ("vgg16", "/w/vgg16.pth", 0, "hor", _job(tmp_path, "p0", -0.5, 0.6)),
            ("vgg16", "/w/vgg16.pth", 1, "hor", _job(tmp_path, "p1", -0.5, 0.6))]  # pretrained: no seed draws them
    df = pd.DataFrame(rows, columns=["backbone", "backbone.weights", "train.seed", "target", "job_dir"]).assign(status="ok")
    pf = probefree_rows(df).set_index("backbone.weights")
    assert pf.loc["random", "n"] == 2 and pf.loc["random", "left_right"] == pytest.approx(0.3)
    assert pf.loc["random", "left_right_lo"] == pytest.approx(0.3 - 12.706 * 0.1, abs=1e-3)  # t(0.975, 1)·s/√2
    assert pf.loc["/w/vgg16.pth", "n"] == 1 and pf.loc["/w/vgg16.pth", "left_right_lo"] == pytest.approx(-0.6)
    md = to_markdown(pf.reset_index())
    assert "| random | f1 | 8 | .200 [-1.071, 1.471] | .300 [-.971, 1.571] |" in md and "t over 2 seeds" in md
