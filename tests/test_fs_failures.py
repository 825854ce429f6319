"""Every failure of a file system in one line with its fix (issue 22, item 4): a read-only
feature cache is read and not written to, read-only output folders, a disk that fills while an
entry is written, an existing file as analyze.py's --out, a reader that closes its pipe early.

Tests run as root, where a folder's mode stops no write: writes are refused by fault injection
(an OSError as a read-only mount raises it), or a folder is put where a file is."""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from posinfo import cache
from posinfo.errors import PosinfoError


def _refuse_writes_below(monkeypatch, root: Path) -> None:
    """Every write below ``root`` fails as on a read-only mount (EROFS); reads go on."""
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def check(path) -> None:
        if str(Path(os.fspath(path)).absolute()).startswith(str(root)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def fake_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            check(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            check(path)
        return real_os_open(path, flags, *a, **k)

    def fake_mkdir(path, *a, **k):
        check(path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_a_read_only_cache_serves_its_hits_and_computes_its_misses_in_memory_with_one_warning(
        make_cfg, tmp_path, monkeypatch, caplog):
    from posinfo.job import run

    base = ("backbone=posenet", "input=natural", "data.image_size=32", "train.epochs=1")
    store = tmp_path / "cache"
    run(make_cfg(*base, "target=hor"), tmp_path / "a", progress=False)  # fills the cache
    before = sorted(store.rglob("*"))
    monkeypatch.setattr(cache, "_READ_ONLY", set())
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING):
        _refuse_writes_below(m, store)
        hits = run(make_cfg(*base, "target=gau"), tmp_path / "b", progress=False,  # readouts it cannot store:
                   siblings=[make_cfg(*base, "target=ver")])  # no fused group trains its siblings' in vain
        misses = run(make_cfg(*base, "target=hor", "data.num_train=20"), tmp_path / "c", progress=False)
    assert hits["status"] == misses["status"] == "ok" and "fused" not in hits
    assert sorted(store.rglob("*")) == before  # nothing written, not even a lock file
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "cache" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"feature cache {store} cannot be written (Read-only file system)")
    stored = run(make_cfg(*base, "target=hor", "data.num_train=20"), tmp_path / "d", progress=False)  # writable again
    assert stored["metrics"] == misses["metrics"]  # the features computed in memory are the cached ones


def test_a_disk_that_fills_while_an_entry_is_written_stops_with_one_line_naming_the_folder(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache.json, "dump", full)  # the meta file, written after the data
    with pytest.raises(PosinfoError) as e:
        cache.get_or_create(tmp_path, {"k": 1}, (4, 8, 8, 3), "float32", lambda a: a.fill(1), 1)
    assert str(e.value) == (f"no space left in {tmp_path} for feature cache entry {cache.make_key({'k': 1})} "
                            "(0.0 MB needed): free space there, set cache.dir to a larger disk, or cache.enabled=false")
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_failed_staged_run_points_at_the_log_its_job_folder_keeps(make_cfg, tmp_path, caplog):
    from posinfo.job import run

    with pytest.raises(PosinfoError), caplog.at_level(logging.ERROR, logger="posinfo.job"):
        run(make_cfg("backbone=posenet", "device=cuda:7"), tmp_path / "job" / ".staging", progress=False)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job failed")]
    assert line.endswith(f"(traceback in {tmp_path / 'job' / 'job.log'})")


def _sweep_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    tiny = ["backbone=posenet", "data.image_size=32", "data.num_train=8", "data.num_test=4", "train.epochs=1",
            "device=cpu", f"cache.dir={cwd / 'cache'}"]
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args, *tiny], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_output_folders_that_cannot_be_written_stop_the_command_with_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder cannot be made below a file, even by root
    for flag, key in (("-m", "hydra.sweep.dir"), ("dry_run=false", "hydra.run.dir")):
        r = _sweep_py(flag, f"{key}={blocker / 'out'}", cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert r.stderr.strip() == (f"posinfo: error: {key}={blocker / 'out'} cannot be written (Not a directory): "
                                    f"set {key} to a folder you can write to, or run from a directory you can write to")


def test_analyze_into_an_existing_file_is_refused_with_one_line(tmp_path, capsys):
    import analyze

    from posinfo.io import write_json

    write_json(tmp_path / "sw" / "job" / "result.json", {
        "status": "ok", "config": {"backbone": {"name": "posenet"}, "target": {"name": "hor"}},
        "metrics": {"black": {"spc": None, "mae": 0.25, "n_images": 1, "n_nan": 1}}})
    (tmp_path / "out.txt").write_text("mine")
    assert analyze.main([str(tmp_path / "sw"), "--out", str(tmp_path / "out.txt"), "--no-figures"]) == 1
    assert capsys.readouterr().err == (f"analyze: error: {tmp_path / 'out.txt'} is a file: give --out a folder that "
                                       "can be written (new or existing)\n")
    assert (tmp_path / "out.txt").read_text() == "mine"


def test_cache_ls_into_a_pipe_its_reader_closed_ends_quietly(tmp_path):
    reader, writer = os.pipe()
    p = subprocess.Popen([sys.executable, "-m", "posinfo.cache", "--dir", str(tmp_path), "ls"], stdout=writer,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    os.close(writer)
    os.close(reader)  # the reader went away before the first line (`| head -0`)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "Error" not in err and "Traceback" not in err, err
