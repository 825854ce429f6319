"""analysis.channels: per-channel position scores and the top-k / random-k concentration."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from posinfo.channels import ChannelSubset, channel_scores, concentration
from posinfo.errors import PosinfoError
from posinfo.job import run
from posinfo.targets import make


class FakeSource:
    def __init__(self, feats: torch.Tensor):
        self.feats, self.n = feats, len(feats)

    def batches(self, order, batch_size):
        for i in range(0, len(order), batch_size):
            yield self.feats[torch.as_tensor(order[i:i + batch_size])]


def test_a_planted_position_channel_ranks_first():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(20, 16, 14, 14, generator=g)
    target = make("hor", 56)
    ramp = torch.nn.functional.interpolate(target.view(1, 1, 56, 56), size=(14, 14), mode="area")[0, 0]
    feats[:, 9] = 3 * ramp + 0.3 * torch.randn(20, 14, 14, generator=g)  # position, plus noise
    feats[:, 4] = 5.0  # constant: no information, no division by zero
    scores = channel_scores(FakeSource(feats), target, batch_size=6)
    assert np.argmax(scores) == 9 and scores[9] == pytest.approx(0.75 / (0.75 + 0.09), abs=0.03)  # var(signal) / var(all)
    assert scores[4] == 0 and np.all(np.delete(scores, [9]) < 0.1)
    sub = next(ChannelSubset(FakeSource(feats), np.array([9, 2])).batches(np.arange(3), 3))
    assert torch.equal(sub, feats[:3][:, [2, 9]])  # original channel order kept


def test_concentration_trains_top_random_and_the_rest_for_every_k():
    scores = np.array([0.1, 0.9, 0.0, 0.5, 0.2, 0.3])
    seen = []

    def train_eval(idx):
        seen.append(sorted(idx.tolist()))
        return float(scores[idx].sum() / scores.sum()), 0.1  # a stand-in: SPC = share of the total score

    out = concentration(scores, train_eval, seed=0, ks=(1, 4), draws=2)
    assert out["k"] == [1, 4, 6]
    assert seen[0] == [1] and seen[3] == [0, 2, 3, 4, 5]  # top-1, then two random draws, then the rest
    assert out["top_spc"] == pytest.approx([0.9 / 2, 1.9 / 2, 1.0])
    assert out["removed_spc"][0] == pytest.approx(1.1 / 2) and out["removed_spc"][-1] is None
    assert len(out["random_spc"][0]) == 2 and out["k90"] == 4  # top-4: .95 of the full


def test_job_with_channels_k_all_is_the_job_readout(make_cfg, tmp_path):
    res = run(make_cfg("backbone=posenet", "input=natural", "analysis.channels=true"), tmp_path / "job", progress=False)
    ch = res["channels"]
    assert ch["k"] == [1, 3]  # PosENet: the 3 RGB channels
    assert ch["top_spc"][-1] == pytest.approx(res["metrics"]["natural"]["spc"], abs=1e-5)
    assert ch["top_mae"][-1] == pytest.approx(res["metrics"]["natural"]["mae"], abs=1e-5)
    csv = pd.read_csv(tmp_path / "job" / "channels.csv")
    assert list(csv.columns) == ["tap", "channel", "score", "rank"] and sorted(csv["rank"]) == [1, 2, 3]
    assert (tmp_path / "job" / "channels.png").stat().st_size > 1000
    assert json.loads((tmp_path / "job" / "result.json").read_text())["channels"]["k"] == [1, 3]


def test_channels_without_natural_images_is_one_line(make_cfg, tmp_path):
    with pytest.raises(PosinfoError, match="analysis.channels=true scores channels on natural test images"):
        run(make_cfg("backbone=posenet", "input=black", "analysis.channels=true"), tmp_path / "job", progress=False)


def test_a_sweep_keeps_the_channel_files_in_the_job_folder(tmp_path):
    """The sweep writes into .staging and swaps the outputs in: channels.csv/png are outputs too."""
    from conftest import run_sweep

    r = run_sweep("-m", "backbone=posenet", "input=natural", "analysis.channels=true", "data.image_size=64",
                  "data.num_train=16", "data.num_test=4", "train.epochs=1", "device=cpu",
                  f"cache.dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    job = next(p.parent for p in (tmp_path / "sweep").rglob("result.json"))
    assert (job / "channels.csv").is_file() and (job / "channels.png").is_file()
