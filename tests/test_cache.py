"""Tests for posinfo.cache: the on-disk, memory-mapped, file-locked feature store."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from posinfo import cache
from posinfo.errors import PosinfoError

REPO = Path(__file__).resolve().parents[1]
SHAPE = (6, 3, 28, 28)


def _fields(**over) -> dict:
    f = {
        "backbone": "vgg16",
        "weights": {"name": "imagenet", "digest": "ab" * 32},
        "padding": "zero",
        "taps": ["f1", "f2"],
        "feature_size": 28,
        "image_size": 224,
        "normalize": "imagenet",
        "data": {"kind": "folder", "files": [["img%04d.png" % i, 1000 + i, 1.5e9] for i in range(3)]},
        "dtype": "float32",
    }
    f.update(over)
    return f


def _expected(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class Filler:
    """A fill callable that writes `values` item by item and counts its calls."""

    def __init__(self, values: np.ndarray, fail_at: int | None = None):
        self.values = values
        self.fail_at = fail_at
        self.calls = 0

    def __call__(self, arr: np.ndarray) -> None:
        self.calls += 1
        assert arr.shape == self.values.shape
        for i in range(arr.shape[0]):
            if self.fail_at is not None and i == self.fail_at:
                raise RuntimeError("boom in fill")
            arr[i] = self.values[i]


def _never(arr):  # pragma: no cover - failing is the point
    raise AssertionError("fill must not be called")


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _cache_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "posinfo.cache" and r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- keys


def test_make_key_is_stable_order_free_and_sensitive(monkeypatch):
    f = _fields()
    k = cache.make_key(f)
    assert len(k) == cache.KEY_LENGTH and int(k, 16) >= 0
    assert cache.make_key(dict(reversed(list(f.items())))) == k
    # the image set changed on disk (an mtime), or the weights file's content
    files = [list(r) for r in f["data"]["files"]]
    files[1][2] += 1.0
    assert cache.make_key(_fields(data={"kind": "folder", "files": files})) != k
    assert cache.make_key(_fields(weights={"name": "imagenet", "digest": "cd" * 32})) != k
    assert cache.make_key(_fields(dtype="float16")) != k
    # the format version is part of every key
    monkeypatch.setattr(cache, "FORMAT_VERSION", cache.FORMAT_VERSION + 1)
    assert cache.make_key(f) != k


def test_make_key_matches_documented_recipe():
    import json

    f = _fields()
    want = hashlib.sha256(
        json.dumps(f | {"format": cache.FORMAT_VERSION}, sort_keys=True).encode()
    ).hexdigest()
    assert want.startswith(cache.make_key(f))


def test_file_digest(tmp_path):
    p = tmp_path / "w.pt"
    data = os.urandom(3 * (1 << 20) + 17)  # several chunks
    p.write_bytes(data)
    assert cache.file_digest(p) == hashlib.sha256(data).hexdigest()
    p.write_bytes(data[:-1] + b"x")
    assert cache.file_digest(p) != hashlib.sha256(data).hexdigest()
    with pytest.raises(PosinfoError, match="missing.pt"):
        cache.file_digest(tmp_path / "missing.pt")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("POSINFO_CACHE_DIR", str(tmp_path / "c"))
    assert cache.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("POSINFO_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path / ".cache" / "posinfo"


# --------------------------------------------------------------------------- round trip


def test_round_trip_float32_then_hit(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="posinfo.cache")
    d = tmp_path / "cache"
    want = _expected()
    fill = Filler(want)
    arr = cache.get_or_create(d, _fields(), SHAPE, "float32", fill, max_gb=1)
    assert fill.calls == 1
    assert isinstance(arr, np.memmap) and arr.shape == SHAPE and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, want)
    with pytest.raises(ValueError):
        arr[0, 0, 0, 0] = 1.0  # read-only
    # the entry is a self-describing .npy
    key = cache.make_key(_fields())
    np.testing.assert_array_equal(np.load(d / f"{key}.npy"), want)

    caplog.clear()
    again = cache.get_or_create(d, _fields(), SHAPE, "float32", _never, max_gb=1)
    np.testing.assert_array_equal(again, want)
    assert any("feature cache hit" in r.getMessage() for r in caplog.records)
    assert not _cache_warnings(caplog)
    assert not [n for n in _files(d) if ".tmp" in n]


def test_round_trip_float16(tmp_path):
    want = _expected()
    arr = cache.get_or_create(tmp_path, _fields(dtype="float16"), SHAPE, "float16", Filler(want), 1)
    assert arr.dtype == np.float16
    np.testing.assert_array_equal(arr, want.astype(np.float16))
    np.testing.assert_allclose(arr.astype(np.float32), want, rtol=1e-3, atol=1e-4)
    again = cache.get_or_create(tmp_path, _fields(dtype="float16"), SHAPE, "float16", _never, 1)
    np.testing.assert_array_equal(again, arr)


def test_different_fields_make_a_new_entry(tmp_path):
    a = cache.get_or_create(tmp_path, _fields(), SHAPE, "float32", Filler(_expected(seed=1)), 1)
    fill = Filler(_expected(seed=2))
    b = cache.get_or_create(
        tmp_path, _fields(weights={"name": "imagenet", "digest": "ef" * 32}), SHAPE, "float32", fill, 1
    )
    assert fill.calls == 1
    np.testing.assert_array_equal(a, _expected(seed=1))
    np.testing.assert_array_equal(b, _expected(seed=2))
    assert len(cache.list_entries(tmp_path)) == 2


def test_entry_with_other_shape_is_recomputed(tmp_path):
    cache.get_or_create(tmp_path, _fields(), SHAPE, "float32", Filler(_expected()), 1)
    shape2 = (4,) + SHAPE[1:]
    fill = Filler(_expected(shape2, seed=3))
    arr = cache.get_or_create(tmp_path, _fields(), shape2, "float32", fill, 1)
    assert fill.calls == 1 and arr.shape == shape2
    np.testing.assert_array_equal(arr, _expected(shape2, seed=3))
    assert len(cache.list_entries(tmp_path)) == 1


# --------------------------------------------------------------------------- crashes


def test_fill_exception_leaves_no_entry_and_next_call_recomputes(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        cache.get_or_create(tmp_path, _fields(), SHAPE, "float32", Filler(_expected(), fail_at=3), 1)
    assert cache.list_entries(tmp_path) == []
    assert [n for n in _files(tmp_path) if not n.endswith(".lock")] == []  # temps cleaned up
    fill = Filler(_expected())
    arr = cache.get_or_create(tmp_path, _fields(), SHAPE, "float32", fill, 1)
    assert fill.calls == 1
    np.testing.assert_array_equal(arr, _expected())


def test_data_without_meta_is_not_a_hit(tmp_path):
    """The meta file is the completeness marker: a data file alone is ignored."""
    key = cache.make_key(_fields())
    np.save(tmp_path / f"{key}.npy", np.zeros(SHAPE, np.float32))
    (tmp_path / f"{key}.123-dead.tmp.npy").write_bytes(b"partial")  # a crashed writer's temp
    fill = Filler(_expected())
    arr = cache.get_or_create(tmp_path, _fields(), SHAPE, "float32", fill, 1)
    assert fill.calls == 1
    np.testing.assert_array_equal(arr, _expected())
    assert not (tmp_path / f"{key}.123-dead.tmp.npy").exists()


WORKER = r"""
import os, sys, time, hashlib
from pathlib import Path
import numpy as np
from posinfo import cache

cache_dir, markers, ready, nproc, mode = sys.argv[1:6]
markers, ready = Path(markers), Path(ready)
(ready / str(os.getpid())).touch()
deadline = time.time() + 60
while len(list(ready.iterdir())) < int(nproc) and time.time() < deadline:
    time.sleep(0.005)

shape = (5, 2, 28, 28)

def fill(arr):
    (markers / f"fill-{os.getpid()}").touch()
    for i in range(arr.shape[0]):
        if mode == "crash" and i == 2:
            arr.flush()
            os._exit(3)  # a hard crash: no cleanup runs
        arr[i] = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28) / 7 + i
        time.sleep(0.1)

fields = {"backbone": "vgg16", "data": {"kind": "synthetic"}, "dtype": "float32"}
arr = cache.get_or_create(Path(cache_dir), fields, shape, "float32", fill, max_gb=1)
print(hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
"""


def _spawn(tmp_path: Path, n: int, mode: str) -> list[subprocess.Popen]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    markers, ready = tmp_path / "markers", tmp_path / f"ready-{mode}"
    markers.mkdir(exist_ok=True)
    ready.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(script), str(tmp_path / "cache"), str(markers), str(ready), str(n), mode]
    return [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]


def _worker_expected() -> np.ndarray:
    base = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28) / 7
    return np.stack([base + i for i in range(5)])


def test_two_processes_compute_once(tmp_path):
    procs = _spawn(tmp_path, 2, "ok")
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip())
    fills = list((tmp_path / "markers").iterdir())
    assert len(fills) == 1, f"fill ran {len(fills)} times"
    want = hashlib.sha256(_worker_expected().tobytes()).hexdigest()
    assert outs == [want, want]
    assert len(cache.list_entries(tmp_path / "cache")) == 1


def test_hard_crash_mid_fill_leaves_no_complete_entry(tmp_path):
    (p,) = _spawn(tmp_path, 1, "crash")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 3, err
    d = tmp_path / "cache"
    assert cache.list_entries(d) == []
    assert [n for n in _files(d) if ".tmp" in n], "expected the crashed writer's temp file"
    fields = {"backbone": "vgg16", "data": {"kind": "synthetic"}, "dtype": "float32"}
    fill = Filler(_worker_expected())
    arr = cache.get_or_create(d, fields, (5, 2, 28, 28), "float32", fill, 1)
    assert fill.calls == 1
    np.testing.assert_array_equal(arr, _worker_expected())
    assert not [n for n in _files(d) if ".tmp" in n]  # leftovers cleaned


# --------------------------------------------------------------------------- size guard


def test_size_guard_max_gb(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="posinfo.cache")
    d = tmp_path / "cache"
    assert cache.get_or_create(d, _fields(), SHAPE, "float32", _never, max_gb=1e-6) is None
    warns = _cache_warnings(caplog)
    assert len(warns) == 1
    msg = warns[0].getMessage()
    assert "running uncached" in msg and "max_gb" in msg and "MB" in msg
    assert cache.list_entries(d) == []


def test_size_guard_free_disk(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="posinfo.cache")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 10**6, 10**6))
    assert cache.get_or_create(tmp_path, _fields(), SHAPE, "float32", _never, max_gb=50) is None
    warns = _cache_warnings(caplog)
    assert len(warns) == 1
    assert "free disk" in warns[0].getMessage() and "running uncached" in warns[0].getMessage()
    assert cache.list_entries(tmp_path) == []


def test_existing_entry_is_used_even_over_the_limit(tmp_path):
    cache.get_or_create(tmp_path, _fields(), SHAPE, "float32", Filler(_expected()), 1)
    arr = cache.get_or_create(tmp_path, _fields(), SHAPE, "float32", _never, max_gb=1e-9)
    np.testing.assert_array_equal(arr, _expected())


def test_bad_arguments(tmp_path):
    with pytest.raises(PosinfoError, match="float64"):
        cache.get_or_create(tmp_path, _fields(), SHAPE, "float64", _never, 1)
    with pytest.raises(PosinfoError, match="shape"):
        cache.get_or_create(tmp_path, _fields(), (2, -1), "float32", _never, 1)


# --------------------------------------------------------------------------- management / CLI


def _populate(d: Path, n: int) -> list[str]:
    keys = []
    for i in range(n):
        shape = (i + 1, 2, 28, 28)
        cache.get_or_create(d, _fields(image_size=200 + i), shape, "float32",
                            Filler(_expected(shape, seed=i)), 1)
        keys.append(cache.make_key(_fields(image_size=200 + i)))
    return keys


def test_list_remove_clear(tmp_path):
    assert cache.list_entries(tmp_path / "nope") == []
    keys = _populate(tmp_path, 3)
    entries = cache.list_entries(tmp_path)
    assert sorted(e.key for e in entries) == sorted(keys)
    e0 = next(e for e in entries if e.key == keys[0])
    assert e0.size_bytes == e0.path.stat().st_size > 2 * 28 * 28 * 4
    assert e0.meta["fields"]["image_size"] == 200 and e0.meta["shape"] == [1, 2, 28, 28]

    with pytest.raises(PosinfoError, match="no feature cache entry"):
        cache.remove(tmp_path, "zzzz")
    with pytest.raises(PosinfoError):
        cache.remove(tmp_path, "")
    removed = cache.remove(tmp_path, keys[0][:8])
    assert [e.key for e in removed] == [keys[0]]
    assert sorted(e.key for e in cache.list_entries(tmp_path)) == sorted(keys[1:])

    (tmp_path / f"{keys[1]}.99-dead.tmp.npy").write_bytes(b"x")
    assert cache.clear(tmp_path) == 2
    assert cache.list_entries(tmp_path) == []
    assert [n for n in _files(tmp_path) if not n.endswith(".lock")] == []


def test_remove_ambiguous_prefix(tmp_path):
    # find two field sets whose keys share a first hex digit
    seen: dict[str, dict] = {}
    for i in range(100):
        f = _fields(image_size=i)
        c = cache.make_key(f)[0]
        if c in seen:
            pair = [seen[c], f]
            break
        seen[c] = f
    for f in pair:
        cache.get_or_create(tmp_path, f, (1, 1, 28, 28), "float32", lambda a: a.fill(1), 1)
    with pytest.raises(PosinfoError, match="ambiguous"):
        cache.remove(tmp_path, c)
    assert len(cache.list_entries(tmp_path)) == 2


def test_cli(tmp_path, capsys):
    d = str(tmp_path)
    assert cache.main(["--dir", d, "ls"]) == 0
    assert "no feature cache entries" in capsys.readouterr().out

    many = {"kind": "folder", "files": [[f"/data/images/img{i:05d}.png", 12345, 1.7e9] for i in range(500)]}
    cache.get_or_create(tmp_path, _fields(data=many), SHAPE, "float32", Filler(_expected()), 1)
    key = cache.make_key(_fields(data=many))
    assert cache.main(["--dir", d, "ls"]) == 0
    out = capsys.readouterr().out
    assert key in out and "MB" in out
    row = next(line for line in out.splitlines() if key in line)
    for word in ("vgg16", "imagenet", "zero", "224", "folder", str(SHAPE[0])):
        assert word in row
    assert max(len(line) for line in out.splitlines()) < 200  # file list is not printed

    assert cache.main(["--dir", d, "rm", "nosuchkey"]) == 2
    assert "no feature cache entry" in capsys.readouterr().err
    assert cache.main(["--dir", d, "rm", key[:6]]) == 0
    assert key in capsys.readouterr().out
    assert cache.list_entries(tmp_path) == []

    _populate(tmp_path, 2)
    assert cache.main(["--dir", d, "clear"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert cache.list_entries(tmp_path) == []


def test_cli_module_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "posinfo.cache", "--dir", str(tmp_path), "ls"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "no feature cache entries" in r.stdout


@pytest.mark.parametrize("staging", [False, True])  # True: the GPU path (stored dtype, converted after the copy)
def test_cached_features_batches_are_the_map_in_float32_one_buffer_reused(tmp_path, staging):
    import torch

    from posinfo.features import CachedFeatures

    rng = np.random.default_rng(0)
    path = tmp_path / "f.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(10, 4, 4, 6))
    arr[:] = rng.standard_normal(arr.shape)
    arr.flush()
    mm = np.lib.format.open_memmap(path, mode="r")
    src = CachedFeatures(mm, torch.device("cpu"), staging=staging)
    ptrs = set()
    for epoch in range(2):
        order = rng.permutation(10)
        for k, batch in enumerate(src.batches(order, 4)):
            idx = np.sort(order[4 * k : 4 * k + 4])
            want = torch.from_numpy(np.asarray(mm[idx], dtype=np.float32)).permute(0, 3, 1, 2)
            assert batch.dtype == torch.float32 and torch.equal(batch, want)
            assert batch.is_contiguous(memory_format=torch.channels_last)
            ptrs.add(src._buf.data_ptr())
    assert len(ptrs) == 1 and len(src._buf) == 4  # one batch-sized buffer for every batch of every epoch


def test_cli_lists_and_clears_a_jobs_entries_and_its_stored_readout(make_cfg, tmp_path, capsys):
    from posinfo.job import run

    cfg = make_cfg("backbone=posenet", "input=natural")
    run(cfg, tmp_path / "job", progress=False)
    d = str(tmp_path / "cache")
    assert cache.main(["--dir", d, "ls"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.split(" ")[0] in {e.key for e in cache.list_entries(d)}]
    assert len(rows) == 2 and all("embedded" in r for r in rows)  # the job's image sets: train and test
    assert "1 stored readout" in out
    assert cache.main(["--dir", d, "clear"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert cache.list_entries(d) == [] and cache.list_readouts(d) == []


def test_prefix_of_a_larger_entry_serves_a_smaller_set(tmp_path):
    """Same fields but a larger images.n: its first items, no fill; any other difference: no."""
    big = _expected((8, 4, 4, 3))
    fields = _fields(images={"kind": "embedded", "split": "train", "n": 8})
    cache.get_or_create(tmp_path, fields, big.shape, "float32", Filler(big), max_gb=1)
    small = {**fields, "images": {"kind": "embedded", "split": "train", "n": 5}}
    arr = cache.get_prefix(tmp_path, small, (5, 4, 4, 3), "float32")
    assert arr.shape == (5, 4, 4, 3) and np.array_equal(arr, big[:5])
    other = {**fields, "images": {"kind": "embedded", "split": "test", "n": 5}}
    assert cache.get_prefix(tmp_path, other, (5, 4, 4, 3), "float32") is None
    assert cache.get_prefix(tmp_path, {**small, "padding": "reflect"}, (5, 4, 4, 3), "float32") is None
    larger = {**fields, "images": {"kind": "embedded", "split": "train", "n": 9}}
    assert cache.get_prefix(tmp_path, larger, (9, 4, 4, 3), "float32") is None
    # An exact entry, once there, is the one used.
    cache.get_or_create(tmp_path, small, (5, 4, 4, 3), "float32", Filler(big[:5] + 1), max_gb=1)
    assert cache.get_prefix(tmp_path, small, (5, 4, 4, 3), "float32") is None


def test_job_on_fewer_embedded_images_reuses_the_larger_entry(make_cfg, tmp_path):
    """A data.num_train sweep extracts its largest set once; the smaller job's readout and
    metrics equal those of a job that extracted its own images."""
    from posinfo.job import run

    run(make_cfg("backbone=posenet", "input=natural", "data.num_train=12"), tmp_path / "big", progress=False)
    entries = len(cache.list_entries(tmp_path / "cache"))
    small = run(make_cfg("backbone=posenet", "input=natural", "data.num_train=7"), tmp_path / "small", progress=False)
    assert len(cache.list_entries(tmp_path / "cache")) == entries  # nothing extracted
    alone = run(make_cfg("backbone=posenet", "input=natural", "data.num_train=7", f"cache.dir={tmp_path / 'c2'}"),
                tmp_path / "alone", progress=False)
    assert small["metrics"]["natural"]["spc"] == pytest.approx(alone["metrics"]["natural"]["spc"], abs=1e-6)
    assert small["metrics"]["natural"]["mae"] == pytest.approx(alone["metrics"]["natural"]["mae"], abs=1e-6)
