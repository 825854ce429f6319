"""posinfo from Python: probe (against sweep.py, on an nn.Module, on feature maps), load / predict /
evaluate on finished jobs (map and grid targets), and the one-line errors of bad job folders."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

import posinfo
from conftest import run_sweep
from posinfo import evaluate as evaluate_cli
from posinfo import predict as predict_cli
from posinfo.api import COLUMNS
from posinfo.data import EmbeddedImages
from posinfo.errors import PosinfoError
from posinfo.job import run
from posinfo.sweep.status import signature
from posinfo.usermodels import module_key

# 32 px, 16 training and 4 test images, 2 epochs of batch 8, on the CPU: for sweep.py and for probe
TINY = ["data.image_size=32", "data.num_train=16", "data.num_test=4", "train.epochs=2", "train.batch_size=8",
        "device=cpu"]
SMALL = dict(image_size=32, overrides=["data.num_train=16", "data.num_test=4"], train={"epochs": 2, "batch_size": 8},
             device="cpu", progress=False)


def _result(job_dir) -> dict:
    return json.loads((Path(job_dir) / "result.json").read_text())


def test_probe_runs_the_job_sweep_py_runs_with_identical_metrics(tmp_path):
    args = ["backbone=resnet18", "backbone.weights=random", "target=hor", "input=natural", *TINY]
    p = run_sweep(*args, f"cache.dir={tmp_path / 'c1'}", f"hydra.run.dir={tmp_path / 'cli'}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    cli = _result(tmp_path / "cli")
    df = posinfo.probe("resnet18", "embedded", targets=("hor",), seeds=(0,), weights="random", inputs="natural",
                       cache=tmp_path / "c2", out=tmp_path / "api", **SMALL)
    assert list(df.columns) == list(COLUMNS) and len(df) == 2 and set(df.status) == {"ok"}
    api = _result(df.job_dir[0])
    assert signature(api["config"]) == signature(cli["config"])  # the very configuration sweep.py ran
    assert not api["readout_reused"]  # computed afresh in its own cache, and still equal to the last digit
    values = df.set_index("metric")["value"]
    assert values["spc"] == cli["metrics"]["natural"]["spc"] and values["mae"] == cli["metrics"]["natural"]["mae"]
    row = df.set_index("metric").loc["spc"]
    assert row["lo"] <= row["value"] <= row["hi"] and row["backbone"] == "resnet18" and row["taps"] == "f1+f2+f3+f4"
    # the CLI's cache serves the API: its trained readout is reused, the numbers are the same
    again = posinfo.probe("resnet18", "embedded", targets=("hor",), seeds=(0,), weights="random", inputs="natural",
                          cache=tmp_path / "c1", out=tmp_path / "api2", **SMALL)
    assert _result(again.job_dir[0])["readout_reused"] and list(again["value"]) == list(df["value"])


class Net(nn.Module):
    def __init__(self, padding: int = 1):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=padding), nn.Conv2d(6, 8, 3, stride=2, padding=padding)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


def test_probe_on_a_custom_module(tmp_path):
    torch.manual_seed(0)
    net, images = Net(), torch.rand(10, 3, 32, 32)
    df = posinfo.probe(net, images, targets=("hor",), seeds=(0,), taps="each", inputs=["natural", "black"],
                       cache=tmp_path / "c", out=tmp_path / "out", **SMALL)
    assert set(df.status) == {"ok"} and len(df) == 2 * 2 * 2  # tap sets × inputs × metrics
    # as for backbone=torchvision: the module outputs that end each resolution (functional relus are not modules)
    assert set(df.taps) == {"conv1", "conv2"} and df.backbone[0].startswith("module/Net-")
    features = {r["features"][0]["name"]: r["features"] for r in map(_result, set(df.job_dir))}
    assert features["conv2"] == [{"name": "conv2", "node": "conv2", "channels": 8, "size": [16, 16]}]
    assert _result(df.job_dir[0])["metrics"]["natural"]["n_images"] == 2  # 10 images, a fifth for testing
    assert net.training and all(p.requires_grad for p in net.parameters())  # the caller's module is untouched
    # the cache identity: equal content, equal key; other weights, other padding (same weights), other key
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.conv1.weight[0, 0, 0, 0] += 1e-3
    unpadded = Net(padding=0)
    unpadded.load_state_dict(net.state_dict())
    assert module_key(copy.deepcopy(net)) == module_key(net)
    assert len({module_key(net), module_key(other), module_key(unpadded)}) == 3
    with pytest.raises(PosinfoError, match=r"^backbone.nodes: relu_9 is not a node of Net; closest: relu_1"):
        posinfo.probe(net, images, taps=["relu_9"], out=tmp_path / "bad", **SMALL)
    with pytest.raises(PosinfoError, match=r"^images: values span \[0.00374, 255\]; posinfo takes RGB in \[0, 1\]"):
        posinfo.probe(net, images * 255, out=tmp_path / "bad", **SMALL)
    assert not (tmp_path / "bad").exists()  # refused before any job


def test_probe_on_a_dict_of_feature_maps(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 20
    ramp = torch.linspace(0, 1, 8).view(1, 1, 1, 8).expand(n, 1, 8, 8)  # position along the width: hor's code
    maps = {"ramp": ramp + 0.05 * torch.randn(n, 1, 8, 8, generator=g), "noise": torch.randn(n, 4, 8, 8, generator=g)}
    df = posinfo.probe(maps, None, targets=("hor",), seeds=(0,), taps={"ramp": ["ramp"], "noise": ["noise"]},
                       cache=tmp_path / "c", out=tmp_path / "out", device="cpu", image_size=32, train={"batch_size": 4},
                       progress=False)
    spc = df[df.metric == "spc"].set_index("taps")["value"]
    assert spc["ramp"] > 0.9 and abs(spc["noise"]) < 0.3 and set(df.input) == {"natural"}
    assert _result(df.job_dir[0])["metrics"]["natural"]["n_images"] == 4
    with pytest.raises(PosinfoError, match="feature maps are scored on their own test images only"):
        posinfo.probe(maps, None, inputs="all", out=tmp_path / "bad", device="cpu", progress=False)
    with pytest.raises(PosinfoError, match="every map must be N×C×H×W with the same N"):
        posinfo.probe({"a": torch.zeros(4, 1, 8, 8), "b": torch.zeros(5, 1, 8, 8)}, None, progress=False)


def _job(make_cfg, tmp_path: Path, *overrides: str) -> Path:
    job_dir = tmp_path / "job"
    run(make_cfg("backbone=resnet18", "backbone.weights=random", "input=natural", "train.seed=1", "data.image_size=32",
                 *overrides), job_dir)
    return job_dir


def _png_folder(tmp_path: Path, n: int = 3) -> Path:
    folder = tmp_path / "new_images"
    folder.mkdir()
    for i in range(n):
        img = (EmbeddedImages("test", n=n, size=80)[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def test_load_predict_evaluate_a_finished_job(make_cfg, tmp_path, capsys):
    job_dir = _job(make_cfg, tmp_path, "target=hor")
    result, saved = _result(job_dir), np.load(job_dir / "predictions.npz")
    trained = posinfo.load(job_dir, device="cpu")
    test = EmbeddedImages("test", n=4, size=32)  # the job's own test images
    # the same random backbone (seed 1, from result.json) and readout: the job's predictions, exactly
    np.testing.assert_allclose(trained.predict(test), saved["natural_pred"], atol=1e-6)
    assert trained.evaluate(test)["spc"] == pytest.approx(result["metrics"]["natural"]["spc"], abs=1e-6)
    folder = _png_folder(tmp_path)
    ev = trained.evaluate(folder)
    assert ev["n_images"] == 3 and [r["image"] for r in ev["per_image"]] == ["img0.png", "img1.png", "img2.png"]
    assert ev["spc_lo"] <= ev["spc"] <= ev["spc_hi"] and ev["mae"] == pytest.approx(np.mean([r["mae"] for r in ev["per_image"]]))
    assert evaluate_cli.main([str(job_dir), "--images", str(folder)]) == 0
    written = json.loads((job_dir / "evaluations" / "new_images.json").read_text())
    assert written["metrics"]["spc"] == pytest.approx(ev["spc"]) and len(written["per_image"]) == 3
    assert capsys.readouterr().out.startswith("SPC ")
    assert predict_cli.main([str(job_dir), str(folder / "img1.png"), "--out", str(tmp_path / "fig")]) == 0
    assert Image.open(tmp_path / "fig" / "img1.png").size[0] == 2 * 224 + 3 * 4


def test_load_predict_evaluate_a_grid_job(make_cfg, tmp_path):
    job_dir = _job(make_cfg, tmp_path, "target=grid", "target.cells=4")
    result, saved = _result(job_dir), np.load(job_dir / "predictions.npz")
    trained = posinfo.load(job_dir, device="cpu")
    test = EmbeddedImages("test", n=4, size=32)
    np.testing.assert_array_equal(trained.predict(test), saved["natural_pred"])  # each position's cell
    ev = trained.evaluate(test)
    for k in ("accuracy", "accuracy_norm", "row_accuracy", "col_accuracy"):
        assert ev[k] == pytest.approx(result["metrics"]["natural"][k], abs=1e-6)
    assert ev["chance"] == 1 / 16 and ev["accuracy_lo"] <= ev["accuracy"] <= ev["accuracy_hi"]
    assert predict_cli.main([str(job_dir), str(_png_folder(tmp_path, 1)), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "img0.png").is_file()


def test_bad_job_folders_are_one_line(make_cfg, tmp_path, capsys, monkeypatch):
    with pytest.raises(PosinfoError, match=r"has no result.json: not a finished posinfo job"):
        posinfo.load(tmp_path)
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "result.json").write_text(json.dumps({"status": "failed", "error": "boom", "config": {}}))
    assert evaluate_cli.main([str(failed), "--images", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("posinfo: error: ") and "the job failed (boom)" in err
    # a job on ImageNet weights, where they cannot be fetched: one line, no random fallback
    job_dir = tmp_path / "imagenet"
    job_dir.mkdir()
    config = OmegaConf.to_container(make_cfg("backbone=resnet18", "backbone.weights=imagenet"), resolve=True)
    (job_dir / "result.json").write_text(json.dumps({"status": "ok", "config": config}))
    (job_dir / "readout.pt").write_bytes(b"")  # never read: the weights fail first
    import torchvision

    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    assert predict_cli.main([str(job_dir), str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load ImageNet weights ResNet18_Weights.IMAGENET1K_V1 for resnet18" in err
