"""A stored readout is reused only for the feature bytes it was trained on; force=true retrains;
a damaged feature entry is named whenever it shows (issue 22, item 1)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from posinfo import cache
from posinfo.errors import PosinfoError


def _job(make_cfg, tmp_path, name, *extra):
    from posinfo.job import run

    cache._VERIFIED.clear()  # each job as in a new process
    return run(make_cfg("backbone=posenet", "input=natural", "target=hor", "data.image_size=32", "train.epochs=1", *extra), tmp_path / name, progress=False)


def _train_entry(tmp_path) -> cache.Entry:
    (entry,) = [e for e in cache.list_entries(tmp_path / "cache") if e.meta["shape"][0] == 16]  # 16 training images
    return entry


def _overwrite(entry: cache.Entry, data: bytes) -> None:
    """Overwrite the items in place: the header, the size and the file's time stamp stay."""
    st = entry.path.stat()
    with open(entry.path, "r+b") as fh:
        fh.seek(st.st_size - len(data))
        fh.write(data)
    os.utime(entry.path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_readout_trained_on_damaged_features_is_not_reused_once_they_are_rebuilt(make_cfg, tmp_path, caplog):
    _job(make_cfg, tmp_path, "a")
    entry = _train_entry(tmp_path)
    n = int(np.prod(entry.meta["shape"])) * 2  # float16 items
    _overwrite(entry, bytes(n))  # zeros
    damaged = _job(make_cfg, tmp_path, "b", "train.seed=1", "cache.verify=false")  # trains on the zeros, stores
    assert damaged["readout_reused"] is False
    with caplog.at_level(logging.WARNING, logger="posinfo.cache"):
        rebuilt = _job(make_cfg, tmp_path, "c", "train.seed=1")  # checked, found corrupt, rebuilt
    assert any("is corrupt" in r.getMessage() and entry.key in r.getMessage() for r in caplog.records)
    assert rebuilt["readout_reused"] is False  # trained again, on the rebuilt bytes
    assert rebuilt["metrics"]["natural"]["mae"] != damaged["metrics"]["natural"]["mae"]
    assert _job(make_cfg, tmp_path, "d", "train.seed=1")["readout_reused"] is True  # ... and stored for them
    forced = _job(make_cfg, tmp_path, "e", "train.seed=1", "force=true")
    assert forced["readout_reused"] is False and forced["metrics"] == rebuilt["metrics"]


def test_training_that_diverges_on_an_entry_damaged_inside_the_trust_window_names_the_entry(
        make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("POSINFO_SWEEP_ID", "sweep-a")  # jobs of one sweep trust one check per file
    _job(make_cfg, tmp_path, "a")
    entry = _train_entry(tmp_path)
    n = int(np.prod(entry.meta["shape"])) * 2
    _overwrite(entry, np.random.default_rng(0).bytes(n))  # float16 NaNs and infinities among them
    with pytest.raises(PosinfoError) as e:
        _job(make_cfg, tmp_path, "b", "train.seed=1")
    msg = str(e.value)
    assert "\n" not in msg and f"feature cache entry {entry.key} in {tmp_path / 'cache'} is corrupt" in msg
    assert "training diverged" in msg and msg.endswith("re-run, and the entry is rebuilt")
    again = _job(make_cfg, tmp_path, "c", "train.seed=1")  # no stamp now: checked, rebuilt, trained
    assert again["status"] == "ok" and again["readout_reused"] is False
