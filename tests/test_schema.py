"""The typed config: every group has a schema, and a bad value is one line naming key, value and fix."""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, run_sweep
from posinfo import schema
from posinfo.errors import PosinfoError

BAD = [
    (["readout.kernel=2.5"], "readout.kernel=2.5: must be an integer ≥ 1"),
    (["train.epochs=1.5"], "train.epochs=1.5: must be an integer ≥ 1"),
    (["readout.kernel=abc"], "readout.kernel=abc: must be an integer ≥ 1"),
    (["train.lr=nan"], "train.lr=nan: must be a finite number > 0"),
    (["readout.padding=0,1,-1"], "readout.padding=-1: must be an integer ≥ 0"),  # every value of a sweep
    (["backbone=vgg17"], "backbone=vgg17: no such option (did you mean vgg16?); choose one of bagnet17, bagnet33, bagnet9, posenet, resnet101, "
                         "resnet152, resnet18, resnet34, resnet50, timm, torchvision, vgg16"),
    (["readout.kernl=3"], "readout.kernl: no such key (did you mean readout.kernel?); the keys of readout are kernel, "
                          "depth, padding, feature_size, standardize, solver, ridge_folds"),
    (["data.num_workers=-2"], "data.num_workers=-2: must be auto or an integer ≥ 0"),
    (["forse=true"], "forse: no such key (did you mean force?); the top-level keys are analysis, backbone, cache, data, device, "
                     "dry_run, experiment, force, input, name, readout, sweep, target, train"),
    (["cache.dtype=float64"], "cache.dtype=float64: must be one of float16, float32"),
    (["device=gpu"], "device=gpu: must be auto, cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_override_is_one_line_naming_key_value_and_fix(overrides, message):
    assert schema.check_overrides(overrides, CONF) == message


@pytest.mark.parametrize("overrides", [["readout.kernel=5", "train.lr=0.01", "data.num_workers=2"],
                                       ["target=hor,gau"], ["backbone.taps=[1,5]"], ["data.num_train=null"],
                                       ["hydra/launcher=joblib", "experiment=table1", "+experiment/table4=posenet_pad0"],
                                       ["experiment=table6", "saliency_weights=/w/a.pt", "pretraining=saliency"]])
def test_good_overrides_pass(overrides):
    assert schema.check_overrides(overrides, CONF) is None


def test_every_option_of_every_group_is_typed_by_its_schema():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for group, cls in schema.GROUPS.items():
            for option in schema.group_options(CONF, group):
                extra = ["data.train_dir=/a", "data.test_dir=/b"] if option == "folder" else []
                cfg = compose("config", overrides=[f"{group}={option}", *extra])
                assert OmegaConf.get_type(cfg[group]) is cls, (group, option)
                schema.check_config(cfg)  # the shipped options are all valid


def test_composed_values_are_checked_too():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config")
    cfg.train.lr = math.inf
    with pytest.raises(PosinfoError, match=r"^train\.lr=inf: must be a finite number > 0$"):
        schema.check_config(cfg)
    cfg.train.lr = 0.1
    cfg.train.lr_milestones = [0]
    with pytest.raises(PosinfoError, match=r"^train\.lr_milestones=\[0\]: must be a list of epochs"):
        schema.check_config(cfg)


def test_the_command_line_rejects_a_bad_value_before_hydra_composes(tmp_path):
    p = run_sweep("readout.kernel=2.5", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip() == "posinfo: error: readout.kernel=2.5: must be an integer ≥ 1"
    assert not (tmp_path / "outputs").exists()


def test_a_result_written_before_an_option_existed_is_still_done():
    from posinfo.sweep.status import signature

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        new = OmegaConf.to_container(compose("config"), resolve=True)
    old = {**new, "input": {k: v for k, v in new["input"].items() if k != "tiles"},
           "train": {k: v for k, v in new["train"].items() if k != "steps"}}
    assert signature(old) == signature(new)
    changed = {**new, "input": {**new["input"], "tiles": 8}}
    assert signature(changed) != signature(new)
