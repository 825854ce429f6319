import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

import posinfo.job as job_mod
from conftest import run_sweep
from posinfo import cache, encoders
from posinfo.job import run


def test_posenet_job_writes_the_whole_job_directory(make_cfg, tmp_path):
    cfg = make_cfg("backbone=posenet", "target=gau")
    res = run(cfg, tmp_path / "job", choices={"backbone": "posenet", "target": "gau"})
    saved = json.loads((tmp_path / "job" / "result.json").read_text())
    assert saved["status"] == "ok" and saved["error"] is None
    assert saved["choices"]["backbone"] == "posenet" and saved["config"]["target"]["name"] == "gau"
    assert saved["features"] == [{"name": "rgb", "node": "image", "channels": 3, "size": [64, 64]}]
    assert saved["readout_in_channels"] == 3
    assert saved["floor_mae"] == pytest.approx(0.197, abs=0.01)
    assert set(saved["metrics"]) == {"natural", "black", "white", "noise"}
    assert saved["metrics"]["natural"]["n_images"] == 4 and saved["metrics"]["black"]["n_images"] == 1
    # PosENet sees a constant image as a constant: SPC undefined, counted, reported as null
    for kind in ("black", "white"):
        assert saved["metrics"][kind]["spc"] is None and saved["metrics"][kind]["n_nan"] == 1
    per = pd.read_csv(tmp_path / "job" / "per_image.csv")
    assert list(per.columns) == ["input", "image", "spc", "mae"] and len(per) == 7
    nat = per[per.input == "natural"]
    assert nat.mae.mean() == pytest.approx(saved["metrics"]["natural"]["mae"])
    assert per[per.input == "black"].spc.isna().all()
    log = [json.loads(line) for line in (tmp_path / "job" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(math.isfinite(r["loss"]) for r in log)
    sd = torch.load(tmp_path / "job" / "readout.pt", weights_only=True)
    assert sd["0.weight"].shape == (1, 3, 3, 3)
    npz = np.load(tmp_path / "job" / "predictions.npz")
    assert npz["target"].shape == (64, 64) and npz["natural_images"].shape == (4, 64, 64, 3)
    assert npz["natural_pred"].shape == (4, 64, 64) and npz["noise_pred"].shape == (1, 64, 64)
    assert Image.open(tmp_path / "job" / "predictions.png").size[0] > 200
    assert res["metrics"] == saved["metrics"]
    # Border profile: 8 bins of 4 px at 64 px; weighted by their pixels they give the whole-image MAE.
    prof = saved["border_profile"]
    assert prof["start_px"] == [0, 4, 8, 12, 16, 20, 24, 28] and sum(prof["pixel_fraction"]) == pytest.approx(1)
    for kind, m in saved["metrics"].items():
        assert np.dot(m["border_mae"], prof["pixel_fraction"]) == pytest.approx(m["mae"], abs=1e-5), kind
    assert np.dot(prof["floor_mae"], prof["pixel_fraction"]) == pytest.approx(saved["floor_mae"], abs=1e-5)


def test_same_command_twice_gives_identical_metrics(make_cfg, tmp_path):
    a = run(make_cfg("backbone=resnet18", "backbone.weights=random", f"cache.dir={tmp_path}/c1"), tmp_path / "a")
    b = run(make_cfg("backbone=resnet18", "backbone.weights=random", f"cache.dir={tmp_path}/c2"), tmp_path / "b")
    assert a["metrics"] == b["metrics"] and a["train_loss"] == b["train_loss"]
    assert not b["readout_reused"]


def test_cached_and_uncached_runs_agree(make_cfg, tmp_path):
    cached = run(make_cfg("backbone=vgg16", "backbone.weights=random", "input=natural"), tmp_path / "c")
    live = run(make_cfg("backbone=vgg16", "backbone.weights=random", "input=natural", "cache.enabled=false"), tmp_path / "l")
    for k in ("spc", "mae"):
        assert cached["metrics"]["natural"][k] == pytest.approx(live["metrics"]["natural"][k], abs=0.005)
    assert cached["readout_in_channels"] == 1472
    assert [f["size"][0] for f in cached["features"]] == [64, 32, 16, 8, 4]


def test_second_job_of_a_sweep_never_runs_the_encoder(make_cfg, tmp_path, monkeypatch):
    """Train, test and synthetic features all come from the cache in the second job; a
    changed noise seed misses for the synthetic inputs only; metrics of every input
    agree with an uncached run."""
    calls = []
    real = job_mod.FeatureExtractor.__call__

    def spy(self, images):
        calls.append(len(images))
        return real(self, images)

    monkeypatch.setattr(job_mod.FeatureExtractor, "__call__", spy)
    builds = []
    real_build = encoders.build
    monkeypatch.setattr(encoders, "build", lambda *a, **k: (builds.append(a[0].name), real_build(*a, **k))[1])
    common = ("backbone=vgg16", "backbone.weights=random")
    run(make_cfg(*common, "target=hor"), tmp_path / "a")
    assert sum(calls) == 16 + 4 + 3 and builds == ["vgg16"]
    calls.clear()
    builds.clear()
    b = run(make_cfg(*common, "target=gau"), tmp_path / "b")
    assert calls == [] and builds == []  # not even built: its taps are remembered in the cache
    run(make_cfg(*common, "target=gau", "input.noise_seed=1"), tmp_path / "c")
    assert calls == [3] and builds == ["vgg16"]  # built only for the inputs it computes
    live = run(make_cfg(*common, "target=gau", "cache.enabled=false"), tmp_path / "d")
    for kind in ("natural", "black", "white", "noise"):
        for k in ("spc", "mae"):
            assert b["metrics"][kind][k] == pytest.approx(live["metrics"][kind][k], abs=0.005), (kind, k)


def test_a_deferred_encoder_draws_the_random_weights_of_the_jobs_seed(make_cfg, tmp_path, monkeypatch):
    """The encoder is built only when a batch needs it, yet its random weights are the ones a
    build right after seeding gives (encoders.build takes the RNG state at its call)."""
    common = ("backbone=resnet18", "backbone.weights=random", "input=natural")
    run(make_cfg(*common, "train.seed=0"), tmp_path / "first")  # its taps are now remembered
    built = []
    real_build, real_open = encoders.build, job_mod.open_features
    monkeypatch.setattr(encoders, "build", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    # whatever draws from the RNG between the job's seeding and the build must not matter
    monkeypatch.setattr(job_mod, "open_features", lambda *a, **k: (torch.rand(7), real_open(*a, **k))[1])
    run(make_cfg(*common, "train.seed=3"), tmp_path / "j")  # another seed: other weights, built at the first batch
    (enc,) = built
    torch.manual_seed(3)
    ref = encoders.build_encoder("resnet18", "random", lazy=True, image_size=64).materialize()
    got, want = enc.state_dict(), ref.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k].cpu(), want[k]) for k in want)


def test_job_with_cached_features_never_loads_the_weights(make_cfg, tmp_path, monkeypatch):
    """ImageNet weights (VGG16: 528 MB) are fetched by the first job only; jobs whose
    features are all cached never load them."""
    from posinfo.encoders.paper import PaperAdapter

    loads = []

    def fake_imagenet(self, name):
        loads.append(name)
        torch.manual_seed(0)
        return torchvision.models.get_model(name).state_dict()

    monkeypatch.setattr(PaperAdapter, "imagenet_state_dict", fake_imagenet)
    a = run(make_cfg("backbone=vgg16", "backbone.weights=imagenet", "target=hor"), tmp_path / "a")
    assert loads == ["vgg16"] and a["status"] == "ok"
    b = run(make_cfg("backbone=vgg16", "backbone.weights=imagenet", "target=ver"), tmp_path / "b")
    assert loads == ["vgg16"] and b["readout_in_channels"] == 1472 and b["status"] == "ok"


def test_backbone_batchnorm_statistics_never_move(make_cfg, tmp_path, monkeypatch):
    built = []
    real = encoders.build

    def spy(*a, **k):
        built.append(real(*a, **k))
        return built[-1]

    monkeypatch.setattr(encoders, "build", spy)
    # uncached: the encoder runs in every training batch, the authors' way
    cfg = make_cfg("backbone=resnet18", "backbone.weights=random", "cache.enabled=false", "input=natural")
    torch.manual_seed(0)
    enc0 = encoders.build_encoder("resnet18", "random")
    stats0 = {k: v.clone() for k, v in enc0.state_dict().items()}
    run(cfg, tmp_path / "job")
    after = built[0].state_dict()
    assert any("running_mean" in k for k in after)
    for k, v in stats0.items():
        assert torch.equal(v, after[k].cpu()), k


def test_job_differing_only_in_input_reuses_the_trained_readout(make_cfg, tmp_path):
    first = run(make_cfg("backbone=posenet", "input=all"), tmp_path / "a")
    second = run(make_cfg("backbone=posenet", "input=noise"), tmp_path / "b")
    assert not first["readout_reused"] and second["readout_reused"]
    assert second["metrics"]["noise"] == first["metrics"]["noise"]
    third = run(make_cfg("backbone=posenet", "input=noise", "readout.kernel=1"), tmp_path / "c")
    assert not third["readout_reused"]


def test_posenet_without_padding_has_no_position_information(make_cfg, tmp_path):
    # The control the paper rests on: no padding, no encoder -> translation equivariant.
    cfg = make_cfg(
        "backbone=posenet", "target=hor", "input=controls", "data.num_train=96", "data.num_test=24",
        "train.epochs=6", "train.batch_size=16",
    )
    res = run(cfg, tmp_path / "job")
    assert set(res["metrics"]) == {"natural", "shuffled", "rotated"}
    for kind, m in res["metrics"].items():  # at the floor on every control too
        assert abs(m["mae"] - res["floor_mae"]) < 0.01 and abs(m["spc"]) < 0.1, (kind, m)
    per_image = pd.read_csv(tmp_path / "job" / "per_image.csv")
    assert per_image.groupby("input").size().to_dict() == {"natural": 24, "rotated": 24, "shuffled": 24}


def test_input_file_replaces_the_synthetic_image(make_cfg, tmp_path):
    img = tmp_path / "gray.png"
    Image.new("RGB", (40, 30), (128, 128, 128)).save(img)
    res = run(make_cfg("backbone=posenet", "input=noise", f"input.file={img}"), tmp_path / "job")
    assert res["metrics"]["noise"]["n_nan"] == 1  # a flat gray file is constant for PosENet
    npz = np.load(tmp_path / "job" / "predictions.npz")
    assert np.all(npz["noise_images"] == 128)


def test_failed_job_writes_a_failed_result(make_cfg, tmp_path):
    with pytest.raises(Exception):
        run(make_cfg("backbone=vgg16", "backbone.weights=/nonexistent/w.pt"), tmp_path / "job")
    res = json.loads((tmp_path / "job" / "result.json").read_text())
    assert res["status"] == "failed" and "'/nonexistent/w.pt' does not exist" in res["error"]


BAD = [
    (["readout.kernel=0"], "readout.kernel=0"),
    (["readout.kernel=29"], "readout.kernel=29"),
    (["readout.padding=-1"], "readout.padding=-1"),
    (["readout.depth=0"], "readout.depth=0"),
    (["backbone=resnet50", "backbone.weights=random", "backbone.padding=none"], "backbone.padding=none"),
    (["data=folder", "data.train_dir=/no/such/dir", "data.test_dir=/no/such/dir"], "/no/such/dir"),
    (["backbone=vgg16", "backbone.weights=/no/weights.pt"], "/no/weights.pt"),
    (["backbone=vgg16", "backbone.weights={bad_weights}"], "missing keys"),
    (["data=folder", "data.train_dir={empty}", "data.test_dir={empty}"], "{empty}"),
    (["data.canvas.border=-8"], "data.canvas.border=-8: must be an integer ≥ 0"),
    (["data.canvas.border=8", "data.canvas.color=grey"], "data.canvas.color=grey: must be one of black, white, mean, noise"),
    (["backbone.padding=partial"], "backbone.padding=partial does not apply to posenet"),
]
if not torch.cuda.is_available():
    BAD.append((["device=cuda"], "device=cuda"))


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line(args, needle, make_cfg, tmp_path):
    from posinfo.errors import PosinfoError

    empty = tmp_path / "empty"
    empty.mkdir()
    bad_weights = tmp_path / "w.pt"
    torch.save({"features.0.weight": torch.zeros(1)}, bad_weights)
    fmt = dict(empty=empty, bad_weights=bad_weights)
    cfg = make_cfg("backbone=posenet", *[a.format(**fmt) for a in args])
    with pytest.raises(PosinfoError) as e:
        run(cfg, tmp_path / "job")
    assert "\n" not in str(e.value) and needle.format(**fmt) in str(e.value)
    assert json.loads((tmp_path / "job" / "result.json").read_text())["error"] == str(e.value)


@pytest.mark.slow
def test_bad_input_on_the_command_line_exits_with_one_line_and_no_traceback(tmp_path):
    for args, needle in [(["readout.kernel=29"], "readout.kernel=29"), (["data=folder", "data.train_dir=/no/such/dir", "data.test_dir=/no/such/dir"], "/no/such/dir")]:
        p = run_sweep("backbone=posenet", *args, "data.image_size=32", f"cache.dir={tmp_path}/c", cwd=tmp_path)
        assert p.returncode != 0, args
        assert "Traceback" not in p.stderr + p.stdout, (args, p.stderr[-2000:])
        err = [line for line in p.stderr.splitlines() if line.startswith("posinfo: error:")]
        assert len(err) == 1 and needle in err[0], (args, p.stderr[-2000:])


def test_features_known_to_exceed_float16_are_cached_as_float32(make_cfg, tmp_path):
    # A random-init ResNet-152 in eval mode: activations ~1e7, far beyond float16, at 64 px.
    # It used to fail after computing its features; it is predicted and cached as float32.
    cfg = make_cfg("backbone=resnet152", "backbone.weights=random", "input=natural", "data.num_train=4")
    res = run(cfg, tmp_path / "job", progress=False)
    assert res["status"] == "ok" and res["cache_dtype"] == "float32"
    assert all(e.meta["dtype"] == "float32" for e in cache.list_entries(tmp_path / "cache"))


def test_partial_padding_features_are_cached_as_float32(make_cfg, tmp_path):
    """Partial padding's border re-weighting compounds over layers (1.5e5 seen with ImageNet VGG16)."""
    res = run(make_cfg("backbone=resnet18", "backbone.weights=random", "backbone.padding=partial", "input=natural",
                       "data.num_train=4"), tmp_path / "job", progress=False)
    assert res["status"] == "ok" and res["cache_dtype"] == "float32"


def test_features_beyond_float16_that_were_not_predicted_fail_with_a_fix():
    from posinfo.features import _check_float16_range

    _check_float16_range(np.full(3, 6e4, np.float32), "m")
    with pytest.raises(Exception, match="beyond float16's range.*cache.dtype=float32"):
        _check_float16_range(np.array([1.0, 7e4], np.float32), "m")


def test_readout_standardize_channel_stores_the_training_statistics_with_the_readout(make_cfg, tmp_path):
    from posinfo import cache as cache_mod

    cfg = make_cfg("backbone=vgg16", "backbone.weights=random", "input=natural", "readout.standardize=channel")
    res = run(cfg, tmp_path / "job", progress=False)
    assert res["status"] == "ok"
    sd = torch.load(tmp_path / "job" / "readout.pt", weights_only=True)
    (entry,) = [e for e in cache_mod.list_entries(tmp_path / "cache") if e.meta["fields"]["images"]["split"] == "train"]
    feats = np.load(entry.path).astype(np.float64)  # N×H×W×C, as cached
    np.testing.assert_allclose(sd["0.mean"].flatten().numpy(), feats.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    constant = feats.min(axis=(0, 1, 2)) == feats.max(axis=(0, 1, 2))  # dead channels of a random VGG16: dropped
    std = sd["0.std"].flatten().numpy()
    np.testing.assert_allclose(std[~constant], np.maximum(feats.std(axis=(0, 1, 2)), 1e-6)[~constant], rtol=1e-3)
    assert constant.any() and np.isinf(std[constant]).all()
    again = run(cfg, tmp_path / "job2", progress=False)  # reused from the store, statistics included
    assert again["readout_reused"] and again["metrics"] == res["metrics"]
    plain = run(make_cfg("backbone=vgg16", "backbone.weights=random", "input=natural"), tmp_path / "job3", progress=False)
    assert not plain["readout_reused"] and plain["metrics"] != res["metrics"]


def test_canvas_border_changes_the_images_and_their_cache_key_and_border_0_changes_nothing(make_cfg, tmp_path):
    from posinfo.job import make_dataset

    plain = make_cfg("backbone=posenet", "input=natural")
    zero = make_cfg("backbone=posenet", "input=natural", "data.canvas.border=0", "data.canvas.color=white")
    wide = make_cfg("backbone=posenet", "input=natural", "data.canvas.border=16", "data.canvas.color=white")
    assert make_dataset(zero.data, "test").identity() == make_dataset(plain.data, "test").identity()
    ds = make_dataset(wide.data, "test")
    assert ds.identity()["canvas"] == {"border": 16, "color": "white"} and len(ds) == 4
    img = ds[0]
    assert img.shape == (3, 64, 64) and torch.all(img[:, :5, :] > 0.99)  # 16 of 96 px → 10 of 64: white
    a = run(plain, tmp_path / "a", progress=False)
    b = run(wide, tmp_path / "b", progress=False)
    assert a["metrics"]["natural"]["spc"] != b["metrics"]["natural"]["spc"]
    assert len(cache.list_entries(tmp_path / "cache")) == 4  # two image sets each


def test_remembered_taps_are_used_rebuilt_when_unreadable_and_skipped_without_a_cache(tmp_path):
    from posinfo.encoders import build_encoder
    from posinfo.sources import CacheSettings, encoder_taps

    builds = []

    def build():
        builds.append(1)
        return build_encoder("resnet18", "random", lazy=True, image_size=64)

    on = CacheSettings(enabled=True, dir=tmp_path, dtype="float16", max_gb=1.0)
    spec = {"name": "resnet18", "padding": "zeros"}
    name, taps, enc = encoder_taps(on, spec, 64, build)
    assert builds == [1] and enc is not None and name == "resnet18"
    assert [t.channels for t in taps] == [64, 128, 256, 512]
    again = encoder_taps(on, spec, 64, build)
    assert builds == [1] and again == (name, taps, None)  # remembered: not built
    assert encoder_taps(on, spec, 32, build)[1][0].size == (8, 8) and builds == [1, 1]  # another size: its own
    (memo,) = [p for p in (tmp_path / "encoders").glob("*.json") if json.loads(p.read_text())["taps"][0]["size"] == [16, 16]]  # the 64 px one
    memo.write_text("{not json")
    assert encoder_taps(on, spec, 64, build)[1] == taps and builds == [1, 1, 1]  # unreadable: built again, rewritten
    assert encoder_taps(on, spec, 64, build)[2] is None and builds == [1, 1, 1]
    off = CacheSettings(enabled=False, dir=tmp_path, dtype="float16", max_gb=1.0)
    assert encoder_taps(off, spec, 64, build)[2] is not None and builds == [1, 1, 1, 1]
