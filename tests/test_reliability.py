"""Nothing lost, nothing silently wrong: caches that verify themselves, a full disk, corrupt
and unwritable readout stores, images replaced in place, 16-bit PNGs, paths with ~ and $HOME,
group-readable results, quiet output off a terminal."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CONF, run_sweep
from posinfo import cache, schema
from posinfo.data import FolderImages, _load_resized
from posinfo.errors import PosinfoError

SHAPE = (6, 3, 28, 28)


def _fill(arr: np.ndarray) -> None:
    arr[...] = np.arange(arr.size, dtype=np.float32).reshape(arr.shape) % 97


def test_a_feature_entry_changed_in_place_is_rebuilt_with_one_warning(tmp_path, caplog):
    fields = {"backbone": "vgg16", "n": 6}
    cache.get_or_create(tmp_path, fields, SHAPE, "float32", _fill, 1)
    data = next(tmp_path.glob("*.npy"))
    with open(data, "r+b") as fh:  # zero the items, keep the header and the size
        fh.seek(data.stat().st_size - 4 * int(np.prod(SHAPE)))
        fh.write(bytes(4 * int(np.prod(SHAPE))))
    cache._VERIFIED.clear()  # as in a new process
    calls = []
    with caplog.at_level(logging.WARNING, logger="posinfo.cache"):
        arr = cache.get_or_create(tmp_path, fields, SHAPE, "float32", lambda a: (calls.append(1), _fill(a)), 1)
    assert calls == [1]  # recomputed
    expected = np.empty(SHAPE, np.float32)
    _fill(expected)
    np.testing.assert_array_equal(arr, expected)
    warnings = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(warnings) == 1 and "chunk 1 of 1 fails its checksum" in warnings[0]
    # verified once per process: the next open reads nothing more, and finds the rebuilt entry sound
    assert cache.get_or_create(tmp_path, fields, SHAPE, "float32", lambda a: calls.append(2), 1) is not None
    assert calls == [1]


def test_a_sweep_checks_each_entry_once_and_again_when_the_file_changes(tmp_path, monkeypatch):
    """Jobs of one sweep ($POSINFO_SWEEP_ID) trust the check another of its processes made,
    while the file is unchanged; another sweep, or a file written since, is checked again."""
    checks = []
    real = cache._corrupt_chunk
    monkeypatch.setattr(cache, "_corrupt_chunk", lambda *a: (checks.append(1), real(*a))[1])
    monkeypatch.setenv("POSINFO_SWEEP_ID", "sweep-a")
    fields = {"backbone": "vgg16", "n": 7}
    cache.get_or_create(tmp_path, fields, SHAPE, "float32", _fill, 1)  # written: stamped, not read back
    assert checks == [] and (tmp_path / f"{cache.make_key(fields)}.verified").is_file()

    def open_in_new_process():
        cache._VERIFIED.clear()
        return cache.get_or_create(tmp_path, fields, SHAPE, "float32", lambda a: checks.append("rebuilt"), 1)

    assert open_in_new_process() is not None and checks == []  # same sweep, same file: trusted
    monkeypatch.setenv("POSINFO_SWEEP_ID", "sweep-b")
    assert open_in_new_process() is not None and checks == [1]  # another sweep checks it once
    assert open_in_new_process() is not None and checks == [1]
    data = next(tmp_path.glob("*.npy"))
    time.sleep(0.05)  # past the file system's clock tick, as any later write is
    with open(data, "r+b") as fh:  # written in place since: checked, found corrupt, rebuilt
        fh.seek(data.stat().st_size - 4)
        fh.write(b"\xff\xff\xff\xff")
    open_in_new_process()
    assert checks[:3] == [1, 1, 1] and checks[3:] in ([1, "rebuilt"], ["rebuilt"])  # (checked again under the lock)
    checks.clear()
    assert open_in_new_process() is not None and checks == []  # the rebuilt file is this sweep's: trusted
    monkeypatch.delenv("POSINFO_SWEEP_ID")  # outside a sweep: every process checks
    open_in_new_process()
    assert checks == [1]
    cache.clear(tmp_path)
    assert not list(tmp_path.glob("*.verified"))


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]}); CI runs this as root")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            raise AssertionError(f"{mnt} still busy after the test: something kept a file open on it")


def test_a_disk_too_small_for_an_entry_fails_with_one_line_and_no_temp_file(tiny_disk, monkeypatch):
    # The free-space check before writing is fooled (another writer filled the disk meanwhile):
    # the space is reserved before the memory map is filled, so it fails there, not with SIGBUS.
    monkeypatch.setattr(cache, "DISK_MARGIN_BYTES", 0)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 0, 10**12))
    with pytest.raises(PosinfoError) as e:
        cache.get_or_create(tiny_disk, {"k": 1}, (4, 1024, 256), "float32", _fill, 1)
    msg = str(e.value)
    assert "\n" not in msg and f"no space left in {tiny_disk}" in msg and "(4.2 MB needed)" in msg
    assert [p.name for p in tiny_disk.iterdir() if not p.name.endswith(".lock")] == []


def _job(make_cfg, tmp_path, name, *extra):
    from posinfo.job import run

    return run(make_cfg("backbone=posenet", "input=natural", *extra), tmp_path / name, progress=False)


def test_a_corrupt_stored_readout_is_retrained_with_one_warning(make_cfg, tmp_path, caplog):
    first = _job(make_cfg, tmp_path, "a")
    (entry,) = cache.list_readouts(tmp_path / "cache")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="posinfo.readoutstore"):
        again = _job(make_cfg, tmp_path, "b")
    assert again["status"] == "ok" and again["readout_reused"] is False
    assert [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()][0].endswith("retraining it")
    assert again["metrics"] == first["metrics"]  # same seed, same training: the same readout
    assert _job(make_cfg, tmp_path, "c")["readout_reused"] is True  # stored again, whole


def test_a_readout_store_that_cannot_be_written_only_disables_storing(make_cfg, tmp_path, caplog):
    _job(make_cfg, tmp_path, "a")  # the features are cached
    shutil.rmtree(tmp_path / "cache" / "readouts")
    (tmp_path / "cache" / "readouts").write_text("not a folder")  # as unwritable as a read-only mount, even for root
    with caplog.at_level(logging.WARNING, logger="posinfo.readoutstore"):
        res = _job(make_cfg, tmp_path, "b")
    assert res["status"] == "ok"
    assert any("cannot store the trained readout" in r.getMessage() for r in caplog.records)


def _png(path: Path, value: int, size=(16, 16)) -> None:
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)


def test_an_image_replaced_by_another_of_the_same_size_and_time_changes_the_content_identity(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", 40 * i)
    st = os.stat(tmp_path / "1.png")
    by_content, by_stat = FolderImages(tmp_path, size=16).identity(), FolderImages(tmp_path, size=16, identity_by="stat").identity()
    _png(tmp_path / "1.png", 200)  # same size in bytes? make sure, then restore the time stamp
    assert os.stat(tmp_path / "1.png").st_size == st.st_size
    os.utime(tmp_path / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert FolderImages(tmp_path, size=16).identity() != by_content
    assert FolderImages(tmp_path, size=16, identity_by="stat").identity() == by_stat  # what stat cannot see


def test_folder_counts_and_ignores_other_file_types(tmp_path, caplog):
    _png(tmp_path / "a.png", 10)
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "b.PNG", 20)
    (tmp_path / "c.gif").write_bytes(b"GIF89a")
    (tmp_path / "d.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger="posinfo.data"):
        ds = FolderImages(tmp_path, size=16)
    assert ds.names == ["a.png", "sub/b.PNG"] and ds.counts == {"read": 2, "unreadable": 0, "ignored": 2}
    assert any("ignored 2 file(s)" in r.getMessage() and ".gif" in r.getMessage() for r in caplog.records)


def test_a_16_bit_png_keeps_its_gray_level(tmp_path):
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img = _load_resized(tmp_path / "g16.png", 8)
    np.testing.assert_allclose(img.numpy(), 128 / 255, atol=1 / 255)  # not clipped to white


def test_tilde_and_home_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs" / "a.png", 10)
    assert FolderImages("~/imgs", size=16).root == tmp_path / "imgs"
    assert FolderImages("$HOME/imgs", size=16).root == tmp_path / "imgs"
    hint = schema.check_overrides(["data.train_dir=~/imgs"], CONF)
    assert hint.startswith("data.train_dir=~/imgs: Hydra's override syntax does not allow an unquoted '~'")
    assert "data.train_dir=$HOME/imgs" in hint
    assert schema.check_overrides(['data.train_dir="~/imgs"'], CONF) is None


def test_the_same_folder_for_training_and_testing_is_refused(make_cfg, tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        _png(tmp_path / "imgs" / f"{i}.png", 30 * i)
    with pytest.raises(PosinfoError, match="data.train_dir and data.test_dir are the same folder"):
        _job(make_cfg, tmp_path, "j", "data=folder", f"data.train_dir={tmp_path}/imgs", f"data.test_dir={tmp_path}/imgs/.")


def test_result_files_are_readable_by_the_group(make_cfg, tmp_path):
    old = os.umask(0o022)
    try:
        _job(make_cfg, tmp_path, "j")
    finally:
        os.umask(old)
    for name in ("result.json", "per_image.csv", "readout.pt", "predictions.png"):
        assert (tmp_path / "j" / name).stat().st_mode & 0o777 == 0o644, name


def test_output_off_a_terminal_has_no_progress_bars(tmp_path):
    p = run_sweep("backbone=posenet", "data.image_size=32", "data.num_train=64", "data.num_test=4",
                  "train.epochs=2", "train.batch_size=4", "device=cpu", f"cache.dir={tmp_path}/c", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    text = p.stdout + p.stderr
    assert "\r" not in text and "batch/s" not in text and "img/s" not in text
    assert "epoch 2/2" in text  # a log line per epoch instead


def test_analyze_reads_a_result_whose_metrics_entry_is_null(tmp_path):
    from posinfo.report.collect import collect

    job = tmp_path / "j"
    job.mkdir()
    (job / "result.json").write_text(json.dumps({
        "status": "ok", "config": {"backbone": {"name": "posenet"}, "target": {"name": "hor"}},
        "metrics": {"natural": None, "black": {"spc": None, "mae": 0.25, "n_images": 1, "n_nan": 1}}}))
    df = collect([tmp_path])
    assert set(df.input) == {"natural", "black"} and df.set_index("input").loc["black", "mae"] == 0.25


def test_offline_imagenet_weights_stop_the_sweep_once_before_any_job(tmp_path):
    from sweep_helpers import env_with, sweep

    # An empty torch hub and a proxy that refuses: offline, wherever the test runs.
    env = env_with(tmp_path, TORCH_HOME=str(tmp_path / "torch"), https_proxy="http://127.0.0.1:9",
                   HTTPS_PROXY="http://127.0.0.1:9")
    sd = tmp_path / "sw"
    r = sweep(sd, "backbone=vgg16", "backbone.weights=imagenet", "target=hor,gau", env=env)
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("posinfo: error:")]
    assert "cannot load ImageNet weights VGG16_Weights.IMAGENET1K_V1" in line and line.endswith("(2 of 2 job(s))")
    assert "Traceback" not in r.stderr and not list(sd.glob("*/result.json"))
    r = sweep(sd, "backbone=vgg16", "backbone.weights=imagenet", "target=hor,gau", "dry_run=true", env=env)
    assert r.returncode == 0 and r.stdout.count("[dry run] would fail: cannot load ImageNet weights") == 2
    assert "2 job(s): 0 would run, 2 would fail, 0 already done" in r.stdout


def test_a_warning_every_job_logs_is_shown_once_with_its_count(tmp_path):
    from sweep_helpers import sweep

    for split, n in (("train", 10), ("test", 4)):
        (tmp_path / split).mkdir()
        for i in range(n):
            _png(tmp_path / split / f"{i}.png", 20 * i, size=(40, 40))
    (tmp_path / "train" / "0broken.png").write_bytes(b"not a png")  # among the first 8 read
    sd = tmp_path / "sw"
    r = sweep(sd, "data=folder", f"data.train_dir={tmp_path}/train", f"data.test_dir={tmp_path}/test",
              "target=hor,gau,ver")
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    shown = [x for x in text.splitlines() if "skipping unreadable image" in x and "WARNING in" not in x]
    assert len(shown) == 1, text[-3000:]
    assert any(x.startswith("  WARNING in 3 jobs (shown once above): skipping unreadable image") for x in text.splitlines())
    for job in sd.glob("*/job.log"):  # each job's own log keeps it
        assert "skipping unreadable image" in job.read_text()
    assert not (sd / ".posinfo_warnings").exists()


def test_a_folders_content_identity_reads_each_file_once_per_image_set(tmp_path, monkeypatch):
    import posinfo.data as data_mod
    from posinfo.data import ControlImages

    for i in range(3):
        _png(tmp_path / f"{i}.png", 40 * i)
    reads = []
    real = data_mod._file_hash
    monkeypatch.setattr(data_mod, "_file_hash", lambda p: (reads.append(p), real(p))[1])
    ds = FolderImages(tmp_path, size=16)
    first = ds.identity()
    # the cache key, the readout store and two controls all ask for it
    assert ds.identity() == first and ControlImages(ds, "rotated").identity()["base"] == first
    assert ControlImages(ds, "shuffled", tiles=2).identity()["base"] == first
    assert len(reads) == 3
