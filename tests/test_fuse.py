"""sweep.fuse: readouts of one feature set trained together (train.fit_many, posinfo.sweep.fuse)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from posinfo import location, targets
from posinfo.errors import PosinfoError
from posinfo.names import FUSE_PLAN
from posinfo.readout import Standardize, build_readout, output_size
from posinfo.sweep.fuse import group_key, write_plan
from posinfo.train import LabelLoss, MapLoss, _stacks, fit, fit_many
from sweep_helpers import out, results, summary, sweep


class Features:
    """An in-memory feature source (train.FeatureSource)."""

    def __init__(self, x: torch.Tensor):
        self.x, self.n = x, len(x)

    def batches(self, order: np.ndarray, batch_size: int):
        for i in range(0, len(order), batch_size):
            yield self.x[torch.as_tensor(order[i:i + batch_size])]


# (kernel, depth, padding, target): several readout kinds in one group, the location target among them
# The depth-1 map readouts (kernels 1, 3, 7) share their GEMM (train._stacks); the others step alone.
KINDS = [(1, 1, 0, "hor"), (3, 1, 1, "gau"), (3, 2, 2, "hor"), (3, 1, 1, "grid"), (7, 1, 3, "ver")]


def _group(seed: int = 0):
    torch.manual_seed(123)
    feats = Features(torch.randn(22, 6, 8, 8))
    readouts, goals = [], []
    for k, d, p, t in KINDS:
        torch.manual_seed(seed)  # each readout's own initialisation, as in its job
        cells = 2 if t == "grid" else None
        readouts.append(build_readout(6, k, d, p, 8, None if cells is None else cells * cells))
        goals.append(LabelLoss(location.labels(2, output_size(8, k, d, p))) if t == "grid" else targets.make(t, 16))
    return feats, readouts, goals


@pytest.mark.parametrize("schedule", [dict(epochs=3, lr_milestones=(2,)), dict(epochs=3, steps=13, lr_milestones=(2,))])
def test_fused_training_ends_exactly_where_each_readout_alone_does(schedule):
    kw = dict(batch_size=5, lr=0.05, seed=7, progress=False, **schedule)
    feats, fused, goals = _group()
    histories = fit_many(fused, feats, goals, **kw)
    _, alone, _ = _group()
    for r_f, r_a, goal, h_f in zip(fused, alone, goals, histories):
        h_a = fit(r_a, feats, goal, **kw)
        assert sum((e["step_losses"] for e in h_f), []) == pytest.approx(sum((e["step_losses"] for e in h_a), []), abs=1e-6)
        assert [e["lr"] for e in h_f] == [e["lr"] for e in h_a]
        for name, v in r_a.state_dict().items():
            assert torch.allclose(r_f.state_dict()[name].float(), v.float(), atol=1e-6), name
    if "steps" in schedule:
        assert all(sum(len(e["step_losses"]) for e in h) == 13 for h in histories)


def test_a_diverging_readout_stops_alone_and_the_others_are_unaffected():
    feats, fused, goals = _group()
    goals[1] = goals[1] * 1e30  # its squared error overflows float32: loss inf
    kw = dict(epochs=2, batch_size=5, lr_milestones=(1,), progress=False)
    histories = fit_many(fused, feats, goals, **kw)
    assert isinstance(histories[1], PosinfoError) and "training diverged at epoch 1" in str(histories[1])
    _, alone, _ = _group()
    for i in (0, 2, 3, 4):  # 0 and 4 shared its GEMM
        h = fit(alone[i], feats, goals[i], **kw)
        assert [e["loss"] for e in histories[i]] == pytest.approx([e["loss"] for e in h], abs=1e-6)
    with pytest.raises(PosinfoError, match="training diverged"):
        fit(alone[1], feats, goals[1], **kw)


def test_depth1_map_readouts_on_the_same_input_share_one_step_and_the_rest_step_alone():
    feats, readouts, goals = _group()
    std_a, std_b, std_c = (Standardize(6), Standardize(6), Standardize(6))
    std_b.mean += 1  # other statistics: another input
    extra = [torch.nn.Sequential(s, build_readout(6, 3, 1, 1, 8)) for s in (std_a, std_b, std_c)]
    entries = [(i, r, g if isinstance(g, LabelLoss) else MapLoss(g), None) for i, (r, g) in enumerate(zip(readouts + extra, goals + [goals[0]] * 3))]
    stacks = [[e[0] for e in st] for st in _stacks(entries)]
    assert stacks == [[0, 1, 4], [2], [3], [5, 7], [6]]


def test_only_jobs_with_the_same_features_and_batch_order_are_grouped(tmp_path):
    base = {"backbone": {"name": "vgg16"}, "data": {"num_train": 8}, "train": {"seed": 0, "epochs": 15},
            "readout": {"kernel": 3, "padding": 1, "feature_size": 28}, "target": {"name": "hor"},
            "input": {"kinds": ["natural"]}, "experiment_name": "x"}

    def job(**changes):
        c = json.loads(json.dumps(base))
        for dotted, v in changes.items():
            node = c
            *path, last = dotted.split("__")
            for p in path:
                node = node[p]
            node[last] = v
        return c

    same = [job(target__name="gau"), job(readout__kernel=1, readout__padding=0), job(input__kinds=["black"])]
    other = [job(train__seed=1), job(data__num_train=9), job(train__epochs=30), job(backbone__name="resnet50"),
             job(readout__feature_size=14)]
    assert all(group_key(c) == group_key(base) for c in same)
    assert len({group_key(c) for c in [base, *other]}) == 1 + len(other)
    n = write_plan(tmp_path, [(tmp_path / str(i), c) for i, c in enumerate([base, *same, *other])])
    assert n == 4  # base and its three: the others are alone and not in the plan
    assert write_plan(tmp_path, [(tmp_path / "a", base), (tmp_path / "b", other[0])]) == 0
    assert not (tmp_path / FUSE_PLAN).exists()  # nothing to fuse: no plan left behind


GRID = ["target=hor,grid", "readout.padding=0,1", "data.num_train=12", "train.epochs=2", "input=natural"]


def _metrics(sweep_dir):
    return {n.replace(",sweep.fuse=false", ""): r["metrics"]["natural"] for n, r in results(sweep_dir).items()}


def test_a_fused_sweep_gives_the_numbers_of_an_unfused_one_and_resumes_mid_group(tmp_path):
    fused, alone = tmp_path / "a" / "sw", tmp_path / "b" / "sw"
    r = sweep(fused, *GRID)
    assert r.returncode == 0, out(r)[-3000:]
    plan = json.loads((fused / FUSE_PLAN).read_text())
    assert [len(g) for g in plan["groups"].values()] == [4]
    res = results(fused)
    leaders = {n: r["fused"] for n, r in res.items() if r.get("fused")}
    assert list(leaders.values()) == [{"readouts": 4, "diverged": 0}], leaders
    assert all(r["readout_reused"] for r in res.values())  # the others found theirs stored
    r = sweep(alone, *GRID, "sweep.fuse=false")
    assert r.returncode == 0, out(r)[-3000:]
    assert not (alone / FUSE_PLAN).exists() and not any(r.get("fused") for r in results(alone).values())
    want = _metrics(alone)
    got = _metrics(fused)
    assert got.keys() == want.keys()
    for name in want:
        for m, v in want[name].items():
            if isinstance(v, float) and not np.isnan(v):
                assert got[name][m] == pytest.approx(v, abs=1e-5), (name, m)

    # interrupted mid-group (two jobs unfinished, nothing stored): the rest of the group trains
    # together on resume, the finished jobs are skipped, the numbers are the same
    todo = sorted(n for n in res if "readout.padding=1" in n)
    for n in todo:
        (fused / n / "result.json").unlink()
    shutil.rmtree(tmp_path / "a" / "cache" / "readouts")
    r = sweep(fused, *GRID)
    assert r.returncode == 0, out(r)[-3000:]
    assert summary(r.stdout)[0].endswith("4 job(s): 2 ran (2 succeeded, 0 failed), 2 skipped (done)")
    again = results(fused)
    assert sorted(str(again[n].get("fused")) for n in todo) == ["None", "{'readouts': 2, 'diverged': 0}"]
    for n in todo:
        assert again[n]["metrics"]["natural"]["spc" if "hor" in n else "accuracy"] == pytest.approx(
            res[n]["metrics"]["natural"]["spc" if "hor" in n else "accuracy"], abs=1e-5)


def test_readouts_train_with_denormals_flushed_and_the_setting_is_restored():
    tiny = torch.tensor([1e-39])  # a float32 denormal
    seen = []

    class Probe(torch.nn.Module):  # a readout that records whether denormals are flushed while it trains
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, 6, 1, 1))

        def forward(self, x):
            seen.append(float((tiny * 1.0).item()))
            return (x * self.w).sum(1, keepdim=True)

    feats, _, _ = _group()
    supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(False)
    fit(Probe(), feats, targets.make("hor", 8), epochs=1, batch_size=11, progress=False)
    assert seen and supported  # x86 and ARM both flush; a CPU that cannot would need this test rethought
    assert all(v == 0.0 for v in seen)
    assert (tiny * 1.0).item() != 0.0  # restored afterwards
