"""Sweeps that survive: folders, resume, dry run, failures, hard crashes, interrupts (basic launcher).

The end-to-end tests run ``python sweep.py -m`` in a subprocess with tiny PosENet jobs
(tests/sweep_helpers.py); faults are injected by a sitecustomize hook.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from conftest import CONF
from posinfo.names import SWEEP_ID_ENV
from posinfo.sweep import status as sweep_status
from posinfo.sweep.folders import MAX_DIRNAME_BYTES, job_dirname, sweep_name
from posinfo.sweep.status import format_summary, summarize_sweep
from posinfo.sweep.summary import expected_jobs
from sweep_helpers import ROOT, TINY, env_with, hangs, out, popen_sweep, results, statuses, summary, sweep, wait_for

# ---------------------------------------------------------------------------- folder names


def test_job_folder_names_are_flat_readable_and_valid(tmp_path):
    assert job_dirname("+experiment/table4=posenet_pad0,target=hor") == "experiment.table4=posenet_pad0,target=hor"
    assert job_dirname("++train.lr=0.1,readout.padding=1") == "train.lr=0.1,readout.padding=1"
    assert job_dirname("backbone.taps=[1,2],target=gau") == "backbone.taps=[1,2],target=gau"
    # a path value would nest folders; quotes and spaces are awkward in a shell
    assert job_dirname("data.train_dir=/data/DUTS-TR,target=hor") == "data.train_dir=_data_DUTS-TR,target=hor"
    assert job_dirname("name='my run'") == "name=_my_run_"
    assert job_dirname("") == job_dirname(None) == "default"
    for name in ("experiment.table4=posenet_pad0,target=hor", "data.train_dir=_data_DUTS-TR,target=hor"):
        (tmp_path / name).mkdir()  # one folder each, directly in the sweep folder
    assert len(list(tmp_path.iterdir())) == 2


def test_very_long_folder_names_become_a_prefix_and_a_hash(tmp_path):
    many = ",".join(f"train.option_number_{i:02d}=value_{i:02d}" for i in range(40))
    name = job_dirname(many)
    assert len(name.encode()) <= MAX_DIRNAME_BYTES < 255
    prefix, _, digest = name.rpartition("--")
    # a readable prefix that ends at a whole override, then a hash of the whole name
    assert many.startswith(prefix + ",") and len(prefix) > 150 and len(digest) == 12
    assert job_dirname(many) == name  # deterministic: a re-run lands in the same folder
    assert job_dirname(many + ",x=1") != name  # a different job: a different hash
    (tmp_path / name).mkdir()
    # multi-byte characters are counted in bytes and never cut in half
    uni = job_dirname("target=" + "é" * 300)
    assert len(uni.encode()) <= MAX_DIRNAME_BYTES
    (tmp_path / uni).mkdir()


def test_sweep_folder_is_the_experiment_and_the_optional_name():
    assert sweep_name("table1", None) == "table1"
    assert sweep_name("table1", "mytag") == "table1-mytag"
    assert sweep_name(None, None) == "default"
    assert sweep_name(None, "mytag") == "default-mytag"
    assert sweep_name("table1", "a/b c") == "table1-a_b_c"


def _hydra_cfg(*overrides: str, task: list[str] | None = None):
    """The master config of ``sweep.py -m <overrides>`` with ``task`` as the task overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    if task is not None:
        with open_dict(cfg):
            cfg.hydra.overrides.task = task
    return cfg


def test_preset_sweeps_land_in_deterministic_folders():
    cfg = _hydra_cfg("experiment=table1", "name=mytag")
    assert str(cfg.hydra.sweep.dir) == "outputs/sweeps/table1-mytag"
    assert str(_hydra_cfg("experiment=table1").hydra.sweep.dir) == "outputs/sweeps/table1"
    assert str(_hydra_cfg("target=gau").hydra.sweep.dir) == "outputs/sweeps/default"
    job = _hydra_cfg("experiment=table4", "+experiment/table4=posenet_pad0", "target=hor", "device=cpu", "force=true")
    # experiment, device and force are not part of the job's folder name
    assert str(job.hydra.sweep.subdir) == "experiment.table4=posenet_pad0,target=hor"


def test_every_run_control_key_is_left_out_of_job_folder_names():
    """Hydra matches exact keys: a typed key below a run-control key that is not listed puts the
    same job in a second folder, which the analysis then counted as a second seed (issue 20:
    cache.memory=host)."""
    from posinfo.names import RUN_CONTROL_KEYS, covered_by
    from posinfo.schema import folder_excluded_keys, rules

    excluded = set(folder_excluded_keys())
    assert {k for k in rules() if covered_by(k, RUN_CONTROL_KEYS)} <= excluded
    # what was left out before still is: existing folders keep their names (resume relies on them)
    assert {"experiment", "name", "force", "dry_run", "device", "cache", "cache.dir", "cache.enabled", "cache.max_gb",
            "cache.dtype", "data.num_workers", "data.identity", "saliency_weights", "segmentation_weights", "sweep",
            "sweep.wait", "sweep.fuse"} <= excluded
    assert "input.kinds" not in excluded  # it changes what a job evaluates
    for extra in ([], ["cache.memory=host"], ["cache.verify=false"], ["sweep.fuse=false", "cache.max_gb=1"]):
        assert str(_hydra_cfg("target=gau", "readout.padding=1", *extra).hydra.sweep.subdir) == "readout.padding=1,target=gau"


@pytest.mark.parametrize(
    "preset, task, n",
    [
        ("table4", [], 45),
        ("table4", ["target=hor"], 15),  # a command-line value replaces the preset's axis
        ("table4", ["+experiment/table4=posenet_pad0,vgg16_pad", "target=hor,gau"], 12),
        ("quickstart", ["readout.padding=0,1", "train.epochs=1,2"], 24),  # and adds new axes
        ("table1", ["train.epochs=1"], 45),
        ("table2a", ["backbone=resnet18"], 27),
    ],
)
def test_expected_job_count_matches_the_basic_sweeper(preset, task, n):
    from test_presets import expand

    cfg = _hydra_cfg(f"experiment={preset}", task=[f"experiment={preset}", *task])
    assert expected_jobs(cfg) == n == len(expand(preset, *task))


def test_expected_job_count_without_a_preset():
    cfg = _hydra_cfg("hydra/launcher=joblib", task=["target=hor,gau", "readout.padding=0,1", "device=cpu"])
    assert expected_jobs(cfg) == 4


# ---------------------------------------------------------------------------- summary (unit)


def test_summary_counts_and_names_failures(tmp_path):
    s = {"ok": [(tmp_path / "a", None)], "failed": [(tmp_path / "b", "ValueError: bad")],
         "skipped": [(tmp_path / "c", None)], "running": [(tmp_path / "d", None)]}
    text, ok = format_summary(s, expected=5, sweep_dir=tmp_path)
    assert not ok
    lines = text.splitlines()
    assert lines[0] == (f"posinfo sweep in {tmp_path}: 5 job(s): 3 ran (1 succeeded, 2 failed), "
                        "1 skipped (done), 1 never reported")
    assert f"  FAILED {tmp_path / 'b'}: ValueError: bad" in lines
    assert any(line.startswith(f"  FAILED {tmp_path / 'd'}: job process died") for line in lines)
    assert "  1 job(s) never reported (not started, killed, or lost by the launcher)" in lines
    text, ok = format_summary({"ok": [(tmp_path / "a", None)], "skipped": [(tmp_path / "c", None)]}, expected=2)
    assert ok and text == "posinfo sweep: 2 job(s): 1 ran (1 succeeded, 0 failed), 1 skipped (done)"


def test_summary_reads_only_this_sweeps_records(tmp_path, monkeypatch):
    for name, sid, status in [("a", "this", "ok"), ("b", "other", "failed"), ("c", "this", "failed")]:
        (tmp_path / name).mkdir()
        monkeypatch.setenv(SWEEP_ID_ENV, sid)
        sweep_status.record(tmp_path / name, status, "boom" if status == "failed" else None)
    s = summarize_sweep(tmp_path, "this", since="9999")
    assert [d.name for d, _ in s["ok"]] == ["a"] and [d.name for d, _ in s["failed"]] == ["c"]


# ---------------------------------------------------------------------------- end to end


def _mtimes(sweep_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/result.json")}


def test_failure_is_contained_reported_and_resumed(tmp_path):
    sd = tmp_path / "sw"
    # readout.kernel=29 passes the command-line check (an integer ≥ 1) and fails in its job:
    # the 28×28 feature map is smaller than the kernel
    grid = ["readout.kernel=1,3,29"]
    bad, good = "readout.kernel=29", ["readout.kernel=1", "readout.kernel=3"]

    # a dry run lists the jobs and runs none
    r = sweep(sd, *grid, "dry_run=true")
    assert r.returncode == 0, out(r)[-3000:]
    assert out(r).count("[dry run] would run (missing)") == 3
    assert summary(r.stdout)[0].endswith("3 job(s): 3 would run, 0 already done (nothing was run)")
    assert not list(sd.rglob("result.json"))

    # the failing job does not stop the others; the summary names it; exit status 1
    r = sweep(sd, *grid)
    assert r.returncode == 1, out(r)[-3000:]
    lines = summary(r.stdout)
    assert lines[0] == f"posinfo sweep in {sd}: 3 job(s): 3 ran (2 succeeded, 1 failed), 0 skipped (done)", lines
    res = results(sd)
    kernel = {n: next(p for p in n.split(",") if p.startswith("readout.kernel=")) for n in res}
    assert {kernel[n]: v["status"] for n, v in res.items()} == {bad: "failed", **{g: "ok" for g in good}}
    (failed_dir,) = [n for n in res if kernel[n] == bad]
    error = res[failed_dir]["error"]
    assert "larger than the 28×28 feature map" in error and "\n" not in error
    assert f"  FAILED {sd / failed_dir}: {error}" in lines
    assert "Traceback (most recent call last)" in (sd / failed_dir / "job.log").read_text()
    first = _mtimes(sd)

    # the dry run now marks the finished jobs, and still runs nothing
    r = sweep(sd, *grid, "dry_run=true")
    assert r.returncode == 0
    assert out(r).count("done (would skip)") == 2 and out(r).count("would run (failed)") == 1
    assert _mtimes(sd) == first

    # a re-run skips what finished and re-runs the failed job
    r = sweep(sd, *grid)
    assert r.returncode == 1
    assert out(r).count("done, skipped") == 2
    assert summary(r.stdout)[0].endswith("3 job(s): 1 ran (0 succeeded, 1 failed), 2 skipped (done)")
    again = _mtimes(sd)
    assert all(again[n] == first[n] for n in first if n != failed_dir) and again[failed_dir] != first[failed_dir]

    # a job whose config changed under the same folder is re-run, never mixed
    changed = next(n for n in res if kernel[n] == good[0])
    p = sd / changed / "result.json"
    doc = json.loads(p.read_text())
    doc["config"]["train"]["lr"] = 0.5
    p.write_text(json.dumps(doc))
    r = sweep(sd, *grid)
    assert "config changed since the last run" in out(r) and out(r).count("done, skipped") == 1
    assert json.loads(p.read_text())["config"]["train"]["lr"] != 0.5
    # ... and the result it replaced is kept beside it, with its files
    kept = sd / changed / "previous"
    assert json.loads((kept / "result.json").read_text())["config"]["train"]["lr"] == 0.5
    assert (kept / "readout.pt").exists() and (kept / "per_image.csv").exists()

    # force=true re-runs everything
    r = sweep(sd, *grid, "force=true")
    assert "done, skipped" not in out(r)
    assert summary(r.stdout)[0].endswith("3 job(s): 3 ran (2 succeeded, 1 failed), 0 skipped (done)")


def test_a_bad_value_anywhere_in_the_grid_stops_the_sweep_before_any_job(tmp_path):
    sd = tmp_path / "sw"
    for args in (["train.epochs=1,2,0"], ["train.epochs=1,2,0", "dry_run=true"]):
        r = sweep(sd, *args)
        assert r.returncode == 2, out(r)[-3000:]
        assert r.stderr.strip() == "posinfo: error: train.epochs=0: must be an integer ≥ 1", out(r)[-3000:]
        assert not sd.exists()


def test_a_job_killed_hard_is_reported_and_the_others_finish(tmp_path):
    sd = tmp_path / "sw"
    r = sweep(sd, "readout.padding=0,1,2", hook=[("readout.padding=1", "kill")])
    assert r.returncode == 1, out(r)[-3000:]
    res = results(sd)
    assert sorted(v["status"] for v in res.values()) == ["failed", "ok", "ok"]
    (killed,) = [n for n, v in res.items() if v["status"] == "failed"]
    assert "readout.padding=1" in killed
    assert res[killed]["error"] == "job process killed by SIGKILL (out of memory? see `dmesg`)"
    assert f"  FAILED {sd / killed}: job process killed by SIGKILL" in r.stdout
    assert summary(r.stdout)[0].endswith("3 job(s): 3 ran (2 succeeded, 1 failed), 0 skipped (done)")
    assert "killed by SIGKILL" in (sd / killed / "job.log").read_text()


def test_sigterm_during_a_forced_rerun_keeps_the_old_result_and_leaves_no_partial_files(tmp_path):
    sd = tmp_path / "sw"
    grid = ["target=hor,gau"]
    r = sweep(sd, *grid)
    assert r.returncode == 0, out(r)[-3000:]
    gau = next(n for n in results(sd) if "target=gau" in n)
    old_readout = (sd / gau / "readout.pt").read_bytes()
    old_result = (sd / gau / "result.json").read_text()

    # force=true re-runs both; the gau job hangs while it writes readout.pt
    log = tmp_path / "sweep.log"
    proc = popen_sweep(sd, *grid, "force=true", hook=[("target=gau", "hang")], log=log)
    try:
        (hang,) = wait_for(lambda: hangs(tmp_path), 120, "the gau job to hang", proc, log)
        assert Path(hang["tmp"]).exists()
        assert (sd / gau / "result.json").read_text() == old_result  # the re-run writes aside, in .staging/
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert "posinfo: interrupted (SIGTERM)" in text
    assert "INTERRUPTED" in text and "1 interrupted" in text
    # the job's own process is gone, its temporary files removed; the old result is intact
    wait_for(lambda: not os.path.exists(f"/proc/{hang['pid']}"), 10, "the job process to exit")
    assert not Path(hang["tmp"]).exists()
    assert not [p for p in sd.rglob("*") if p.name.endswith(".tmp") or p.name == ".staging"]
    assert (sd / gau / "result.json").read_text() == old_result
    assert (sd / gau / "readout.pt").read_bytes() == old_readout
    assert results(sd)[next(n for n in results(sd) if "target=hor" in n)]["status"] == "ok"

    # the interrupted job still has its (old, ok) result: a plain re-run skips both
    r = sweep(sd, *grid)
    assert r.returncode == 0, out(r)[-3000:]
    assert summary(r.stdout)[0].endswith("2 job(s): 0 ran (0 succeeded, 0 failed), 2 skipped (done)")



def test_single_run_outside_a_sweep_still_resumes(tmp_path):
    args = [sys.executable, str(ROOT / "sweep.py"), *TINY, f"cache.dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    env = env_with(tmp_path)
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, out(r)[-2000:]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "ok"
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "done, skipped" in out(r)
    assert statuses(tmp_path) == {}  # single runs keep no sweep records


def test_a_second_command_on_a_sweep_folder_refuses_and_a_killed_owner_leaves_no_lock(tmp_path):
    sd = tmp_path / "sw"
    log = tmp_path / "first.log"
    first = popen_sweep(sd, "target=hor,gau", hook=[("target=gau", "hang")], log=log)
    try:
        wait_for(lambda: hangs(tmp_path), 120, "the gau job to hang", first, log)
        r = sweep(sd, "target=hor,gau")
        assert r.returncode == 2, out(r)[-3000:]
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("posinfo: error:")]
        assert f"sweep folder {sd} is in use by pid {first.pid}" in line and "sweep.wait=true" in line
        assert "Traceback" not in out(r)
        first.kill()  # SIGKILL: no clean-up; the OS drops its locks, the job's child follows (PDEATHSIG)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    wait_for(lambda: not hangs_alive(tmp_path), 30, "the hanging job to exit")
    r = sweep(sd, "target=hor,gau")
    assert r.returncode == 0, out(r)[-3000:]
    assert sorted(v["status"] for v in results(sd).values()) == ["ok", "ok"]


def hangs_alive(tmp: Path) -> bool:
    return any(os.path.exists(f"/proc/{h['pid']}") for h in hangs(tmp))


def test_sweep_wait_true_waits_for_the_owner_then_resumes(tmp_path):
    sd = tmp_path / "sw"
    log = tmp_path / "first.log"
    first = popen_sweep(sd, "target=hor,gau", hook=[("target=", "sleep:4")], log=log)
    try:
        wait_for(lambda: (sd / ".posinfo_sweep.json").exists(), 60, "the first sweep to own the folder", first, log)
        r = sweep(sd, "target=hor,gau", "sweep.wait=true")
        assert first.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert r.returncode == 0, out(r)[-3000:]
    assert "is in use by pid" in r.stderr and "waiting (sweep.wait=true)" in r.stderr
    assert summary(r.stdout)[0].endswith("2 job(s): 0 ran (0 succeeded, 0 failed), 2 skipped (done)")
