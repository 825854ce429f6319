"""cache.memory: training features held in device or host memory, or read from the disk map."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from posinfo import features
from posinfo.features import CachedFeatures, ResidentFeatures, placement
from posinfo.job import run


def _map(tmp_path, n=11):
    arr = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=(n, 4, 4, 3))
    arr[:] = np.random.default_rng(0).standard_normal(arr.shape).astype(np.float16)
    arr.flush()
    return np.load(tmp_path / "f.npy", mmap_mode="r")


@pytest.mark.parametrize("where", ["host", "device"])
def test_resident_features_give_the_batches_of_the_disk_map(tmp_path, where):
    arr = _map(tmp_path)
    order = np.random.default_rng(1).permutation(len(arr))
    disk = [b.clone() for b in CachedFeatures(arr, torch.device("cpu")).batches(order, 4)]
    res = ResidentFeatures(arr, torch.device("cpu"), where)
    assert res._data is None  # nothing loaded before the first batch
    got = list(res.batches(order, 4))
    assert [b.shape for b in got] == [b.shape for b in disk] == [(4, 3, 4, 4), (4, 3, 4, 4), (3, 3, 4, 4)]
    assert all(torch.equal(a, b) and a.dtype == torch.float32 for a, b in zip(got, disk))
    assert res._data.dtype == torch.float16 and res._data.data_ptr() != torch.from_numpy(np.asarray(arr)).data_ptr()


def test_placement_follows_the_budget(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(features, "available_ram", lambda: 20 * 2**30)
    assert placement("auto", 6 * 2**30, cuda) == "device"  # ≤ 60% of 10 GiB free
    assert placement("auto", 7 * 2**30, cuda) == "host"  # > 60% of the GPU's free, ≤ 50% of 20 GiB RAM
    assert placement("auto", 11 * 2**30, cuda) == "disk"
    assert placement("auto", 1, cpu) == "disk"  # a CPU reads the map: the page cache holds what fits
    assert [placement(m, 11 * 2**30, cuda) for m in ("device", "host", "disk")] == ["device", "host", "disk"]


def test_a_job_trains_the_same_from_memory_as_from_the_disk_map(make_cfg, tmp_path, caplog):
    base = ["backbone=posenet", "target=gau", "input=natural", "readout.padding=1"]
    with caplog.at_level(logging.INFO, logger="posinfo.features"):
        disk = run(make_cfg(*base, "cache.memory=disk"), tmp_path / "disk", progress=False)
        assert "held in" not in caplog.text
        host = run(make_cfg(*base, "cache.memory=host", f"cache.dir={tmp_path / 'other'}"), tmp_path / "host",
                   progress=False)
        assert caplog.text.count("training features held in host memory") == 1  # the training set only
    assert not host["readout_reused"]  # its own cache: trained here, from memory
    assert host["metrics"]["natural"]["spc"] == pytest.approx(disk["metrics"]["natural"]["spc"], abs=1e-6)
    assert host["train_loss"] == pytest.approx(disk["train_loss"], abs=1e-7)
