"""Guards on every option that can make a measurement meaningless or a job impossible (issue 22,
items 3 and 6): constant channels under readout.standardize=channel, settings with no effect,
sizes a patch model or the memory cannot take, float16 on a CPU, ``~`` on the command line."""

from __future__ import annotations

import logging

from pathlib import Path

import pytest
import torch

from conftest import CONF
from posinfo import schema
from posinfo.errors import PosinfoError
from posinfo.readout import Standardize


def _old_statistics(batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardize.fit's statistics as they were computed before constant channels were dropped."""
    n, s1, s2 = 0, 0.0, 0.0
    for x in batches:
        x = x.double()
        n += x.shape[0] * x.shape[2] * x.shape[3]
        s1 = s1 + x.sum(dim=(0, 2, 3))
        s2 = s2 + (x * x).sum(dim=(0, 2, 3))
    mean = s1 / n
    return mean.float(), (s2 / n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6).float()


def test_a_channel_constant_over_the_training_set_is_dropped_with_a_warning_counting_it(caplog):
    g = torch.Generator().manual_seed(0)
    train = [torch.rand(4, 3, 5, 5, generator=g) for _ in range(3)]
    for b in train:
        b[:, 1] = 0.25  # e.g. a red channel that is 0 in every training image
    with caplog.at_level(logging.WARNING, logger="posinfo.readout"):
        st = Standardize(3).fit(iter(train))
    assert [r.getMessage() for r in caplog.records] == [
        "readout.standardize=channel: 1 of 3 feature channels are constant over the training set; dropped from the "
        "readout (they carry no position information)"]
    test = torch.rand(2, 3, 5, 5, generator=g)
    out = st(test)
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))  # not (x - .25) / 1e-6, which saturated every prediction
    mean, std = _old_statistics(train)
    assert torch.equal(out[:, [0, 2]], ((test - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))[:, [0, 2]])


def test_statistics_without_constant_channels_are_unchanged_bit_for_bit(caplog):
    train = [torch.randn(4, 6, 7, 7, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="posinfo.readout"):
        st = Standardize(6).fit(iter(train))
    mean, std = _old_statistics(train)
    assert torch.equal(st.mean.flatten(), mean) and torch.equal(st.std.flatten(), std) and not caplog.records


def test_one_tile_is_refused_since_the_shuffled_control_would_equal_natural():
    assert schema.check_overrides(["input=controls", "input.tiles=1"], CONF) == \
        "input.tiles=1: must be an integer ≥ 2 (1 tile leaves the image as it is)"
    assert schema.check_overrides(["input=controls", "input.tiles=2"], CONF) is None


@pytest.mark.parametrize("overrides, message", [
    (["target=grid", "target.range=signed"],
     "target.range=signed has no effect on target=grid: it applies to the stripes (horstp, verstp) only; drop "
     "target.range (or use target.range=unit)"),
    (["data=photos", "data.train_dir=/data/imgs"],
     "data.train_dir=/data/imgs has no effect with data=photos, whose images are its own: use data=folder to read "
     "that folder, or drop data.train_dir"),
    (["data.test_dir=/data/test"],  # data=embedded
     "data.test_dir=/data/test has no effect with data=embedded, whose images are its own: use data=folder to read "
     "that folder, or drop data.test_dir"),
])
def test_a_setting_with_no_effect_is_refused_by_the_job_and_before_a_sweep(make_cfg, overrides, message):
    from posinfo.preflight import job_problems

    cfg = make_cfg("backbone=posenet", *overrides)  # posenet: no weights to look for
    with pytest.raises(PosinfoError) as e:
        schema.check_config(cfg)
    assert str(e.value) == message
    assert job_problems(cfg) == [message]  # the sweep's check before any job, and dry runs


def test_sizes_beyond_memory_are_refused_with_an_estimate_before_anything_is_allocated(make_cfg, monkeypatch):
    from posinfo import guards

    monkeypatch.setattr(guards, "available_ram", lambda: 16 * 10**9)
    schema.check_config(make_cfg("data.canvas.border=100"))  # tiny: fine
    with pytest.raises(PosinfoError) as e:
        schema.check_config(make_cfg("data.canvas.border=100000"))
    assert str(e.value) == ("data.canvas.border=100000: one image on its 200064×200064 canvas takes 480.3 GB, more "
                            "than the 16.0 GB of memory available: use data.canvas.border≤18225")
    with pytest.raises(PosinfoError) as e:
        schema.check_config(make_cfg("data.image_size=100000"))  # TINY: 4 test images
    assert str(e.value) == ("data.image_size=100000: the job holds 5 maps and an image of 100000×100000 pixels (the "
                            "target, 4 test prediction(s)), about 320.0 GB, more than the 16.0 GB of memory available: "
                            "use data.image_size≤22360")


def test_a_patch_model_refuses_an_image_size_it_cannot_cut_into_patches_before_the_job(make_cfg):
    from posinfo.preflight import job_problems
    from posinfo.encoders import build_encoder
    from posinfo.encoders.zoo import image_size_problem

    line = ("data.image_size=100: timm's vit_tiny_patch16_224 cuts images into 16×16 patches, and 100 is no multiple "
            "of 16: use data.image_size=96 or 112")
    cfg = make_cfg("backbone=timm", "backbone.model=vit_tiny_patch16_224", "backbone.weights=random", "data.image_size=100")
    assert job_problems(cfg) == [line]
    with pytest.raises(PosinfoError) as e:  # the job itself, before its first image
        build_encoder("timm", "random", model="vit_tiny_patch16_224", lazy=True, image_size=100)
    assert str(e.value) == line
    assert image_size_problem("timm", "vit_tiny_patch16_224", 96) is None


def test_float16_on_a_cpu_is_warned_as_slow_once(caplog):
    from posinfo.encoders import build_encoder
    from posinfo.features import FeatureExtractor

    torch.manual_seed(0)
    extract = FeatureExtractor(build_encoder("resnet18", "random", lazy=True), 4, torch.device("cpu"), "float16")
    with caplog.at_level(logging.WARNING, logger="posinfo.features"):
        for _ in range(2):
            extract(torch.rand(1, 3, 32, 32))
    assert [r.getMessage() for r in caplog.records if r.name == "posinfo.features"] == [
        "backbone.precision=float16 on a CPU: the features are right, but CPUs have no fast float16 arithmetic and "
        "extraction runs many times slower than in float32 (23× for one job measured): use backbone.precision=float32 "
        "on a CPU"]


def test_a_tilde_on_the_command_line_is_expanded_as_the_shell_would_have(monkeypatch):
    monkeypatch.setenv("HOME", "/home/me")
    assert schema.expand_home(["-m", "data.train_dir=~/tr", "data.test_dir=~/a,~/b", "x=~", "--cfg", "job"]) == \
        ["-m", "data.train_dir=/home/me/tr", "data.test_dir=/home/me/a,/home/me/b", "x=/home/me", "--cfg", "job"]
    kept = ['data.train_dir="~/tr"', "~cache.dir", "name=a~b", "backbone.taps=[1,2]"]  # quoted, delete, not leading
    assert schema.expand_home(kept) == kept
    monkeypatch.setenv("HOME", "/home/my data")  # a space: quoted, so that Hydra reads one value
    assert schema.expand_home(["data.train_dir=~/tr"]) == ["data.train_dir='/home/my data/tr'"]


def test_a_folder_under_tilde_runs_from_the_command_line(tmp_path, monkeypatch):
    import shutil
    import tempfile

    from conftest import run_sweep

    # A short home: a long one (pytest-xdist's tmp paths) shortens the folder name to a hash.
    home = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))
    try:
        monkeypatch.setenv("HOME", str(home))
        for d in ("tr", "te"):
            (home / d).mkdir()
        p = run_sweep("backbone=posenet", "data=folder", "data.train_dir=~/tr", "data.test_dir=~/te", "dry_run=true",
                      cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert "[dry run] would run" in p.stdout  # not Hydra's refusal of an unquoted '~'
        assert "data.train_dir=" + str(home / "tr").replace("/", "_") in p.stdout  # the folder named after the path
    finally:
        shutil.rmtree(home, ignore_errors=True)
