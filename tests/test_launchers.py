"""Hydra's launchers with posinfo: GPU spreading, joblib, submitit (local, and a real Slurm).

The Slurm tests run on the local cluster of scripts/slurm_local.sh (tests/slurm_cluster.py):
they skip without one, and fail instead under CI (POSINFO_REQUIRE_SLURM=1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF
from posinfo.sweep.gpus import claim_gpu
from sweep_helpers import env_with, hangs, out, popen_sweep, results, statuses, summary, sweep, wait_for

# ---------------------------------------------------------------------------- GPUs


@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("POSINFO_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return tmp_path / "locks"


def test_concurrent_jobs_get_different_gpus(two_gpus):
    with claim_gpu("auto") as a, claim_gpu("auto") as b:
        assert {a, b} == {"cuda:0", "cuda:1"}
        with claim_gpu("cuda") as c, claim_gpu("auto") as d:  # more jobs than GPUs: shared evenly
            assert sorted([c, d]) == ["cuda:0", "cuda:1"]
    with claim_gpu("auto") as e:  # all released
        assert e == "cuda:0"
    # the CPU and an explicit GPU are left alone
    with claim_gpu("cpu") as f, claim_gpu("cuda:1") as g:
        assert (f, g) == ("cpu", "cuda:1")


def test_one_gpu_or_none_is_left_alone(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("POSINFO_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with claim_gpu("auto") as a, claim_gpu("auto") as b:
        assert a == b == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with claim_gpu("auto") as a:
        assert a == "auto"
    assert not list(tmp_path.iterdir())


def test_a_gpu_is_freed_when_its_job_process_dies(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # lock names follow the physical GPUs
    holder = textwrap.dedent("""
        import sys, time, torch
        torch.cuda.is_available = lambda: True
        torch.cuda.device_count = lambda: 2
        from posinfo.sweep.gpus import claim_gpu
        with claim_gpu("auto") as d:
            print(d, flush=True)
            time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "cuda:0"
        assert (two_gpus / "gpu3.0.lock").exists()
        with claim_gpu("auto") as mine:
            assert mine == "cuda:1"
        proc.send_signal(signal.SIGKILL)  # a job killed outright
        proc.wait(timeout=30)
        with claim_gpu("auto") as mine:
            assert mine == "cuda:0"
    finally:
        proc.kill()


# ---------------------------------------------------------------------------- presets


def test_slurm_gpu_preset_is_submitit_slurm_with_the_usual_fields():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm_gpu", "hydra.launcher.partition=p100"],
                      return_hydra_config=True)
    la = cfg.hydra.launcher
    # posinfo's subclass of the plugin's launcher (hydra_plugins/posinfo_launchers)
    assert la._target_ == "hydra_plugins.posinfo_launchers.launchers.PosinfoSlurmLauncher"
    from hydra.utils import get_class

    # (by name: Hydra's plugin scan loads modules afresh, so class identities differ)
    bases = [f"{c.__module__}.{c.__qualname__}" for c in get_class(la._target_).__mro__]
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in bases
    assert la.partition == "p100" and la.gpus_per_node == 1 and la.cpus_per_task >= 1
    assert la.mem_gb > 0 and la.timeout_min > 0 and la.array_parallelism > 0
    assert la.max_num_timeout > 0  # timed-out jobs are requeued
    text = (CONF / "hydra" / "launcher" / "slurm_gpu.yaml").read_text()
    for key in ("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism"):
        line = next(x for x in text.splitlines() if x.startswith(f"{key}:"))
        assert "#" in line, f"{key} has no comment"


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm_gpu", "joblib"])
def test_dry_run_lists_jobs_here_and_submits_nothing(launcher, tmp_path):
    sd = tmp_path / "sw"
    r = sweep(sd, "target=hor,gau", f"hydra/launcher={launcher}", "dry_run=true")
    assert r.returncode == 0, out(r)[-3000:]
    assert out(r).count("[dry run] would run (missing)") == 2
    assert summary(r.stdout)[0].endswith("2 job(s): 2 would run, 0 already done (nothing was run)")
    assert not (sd / ".submitit").exists()  # nothing was handed to submitit (slurm_gpu's partition need not exist)
    assert not list(sd.rglob("result.json"))


# ---------------------------------------------------------------------------- joblib


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s)


def test_joblib_runs_jobs_in_parallel_and_contains_a_crash(tmp_path):
    sd = tmp_path / "sw"
    # Every job sleeps 1 s first, so that two workers surely overlap; one job's process
    # dies with os._exit (no result, no traceback).
    hook = [("", "sleep:1"), ("readout.padding=1,target=gau", "exit")]
    r = sweep(sd, "target=hor,gau", "readout.padding=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", hook=hook)
    assert r.returncode == 1, out(r)[-3000:]
    res, st = results(sd), statuses(sd)
    assert sorted(v["status"] for v in res.values()) == ["failed", "ok", "ok", "ok"]
    (crashed,) = [n for n, v in res.items() if v["status"] == "failed"]
    assert "readout.padding=1,target=gau" in crashed
    assert res[crashed]["error"] == "job process exited with status 3 without writing its result"
    assert f"  FAILED {sd / crashed}: job process exited with status 3" in r.stdout
    assert summary(r.stdout)[0].endswith("4 job(s): 4 ran (3 succeeded, 1 failed), 0 skipped (done)")
    # in parallel: two workers (processes), and jobs whose run times overlap
    ok = [st[n] for n, v in res.items() if v["status"] == "ok"]
    assert len({s["pid"] for s in st.values()}) == 2 and os.getpid() not in {s["pid"] for s in st.values()}
    spans = [(_t(s["started"]), _t(s["finished"])) for s in ok]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:]), spans


# ---------------------------------------------------------------------------- submitit


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    pytest.importorskip("submitit")
    sd = tmp_path / "sw"
    r = sweep(sd, "target=hor,gau", "data.num_train=6,8", "hydra/launcher=submitit_local",
              "hydra.launcher.timeout_min=10")
    assert r.returncode == 0, out(r)[-3000:]
    res = results(sd)
    assert sorted(v["status"] for v in res.values()) == ["ok"] * 4
    assert summary(r.stdout)[0].endswith("4 job(s): 4 ran (4 succeeded, 0 failed), 0 skipped (done)")
    # sweep.fuse: each fused group (same training data, two targets) is one submitit task,
    # whose first job trains both readouts
    assert "sweep.fuse: 4 jobs as 2 local tasks" in out(r)
    assert len([p for p in (sd / ".submitit").iterdir() if p.is_dir() and p.name.isdigit()]) == 2  # (and "%j")
    assert sorted((v.get("fused") or {}).get("readouts", 0) for v in res.values()) == [0, 0, 2, 2]


def _slurm_env(tmp: Path, hook=None) -> dict:
    from slurm_cluster import activate_env, require_cluster

    require_cluster()
    activate_env()  # the sacct stand-in first on PATH; sbatch passes the environment on
    return env_with(tmp, hook)


# timeout_min above 10: submitit takes any signal to a job with <= 10 min as a timeout
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=30", "hydra.launcher.name=posinfo-test"]


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")  # one Slurm node: its tests run in one worker, in turn
def test_slurm_sweep_reports_killed_jobs_and_resumes(tmp_path):
    """On the real local Slurm: two of four jobs are killed mid-job (scancel, and SIGKILL to
    the Slurm task's process, as the out-of-memory killer would); the others finish; the
    summary names both; a re-run re-runs exactly those two and every job ends ok."""
    sd, log = tmp_path / "sw", tmp_path / "sweep.log"
    grid = ["target=hor,gau", "readout.padding=0,1", "sweep.fuse=false", *SLURM]  # a task per job
    env = _slurm_env(tmp_path, hook=[("readout.padding=1", "hang")])
    proc = popen_sweep(sd, *grid, env=env, log=log)
    try:
        hung = wait_for(lambda: len(hangs(tmp_path)) == 2 and hangs(tmp_path), 240, "two Slurm jobs to hang", proc, log)
        for h in hung:
            if "target=hor" in h["job_dir"]:
                jid = f"{h['slurm']['SLURM_ARRAY_JOB_ID']}_{h['slurm']['SLURM_ARRAY_TASK_ID']}"
                subprocess.run(["scancel", jid], check=True, env=env, timeout=30)
            else:  # the task's own process (the job's parent), so nobody is left to report
                os.kill(_ppid(h["pid"]), signal.SIGKILL)
        rc = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 1, text[-3000:]
    res = results(sd)
    assert sorted(v["status"] for v in res.values()) == ["failed", "failed", "ok", "ok"], text[-3000:]
    failed = sorted(n for n, v in res.items() if v["status"] == "failed")
    assert all("readout.padding=1" in n for n in failed)
    lines = summary(text)
    assert lines[0].endswith("4 job(s): 4 ran (2 succeeded, 2 failed), 0 skipped (done)"), lines
    for n in failed:
        assert any(line.startswith(f"  FAILED {sd / n}: ") for line in lines), lines
    cancelled = next(n for n in failed if "target=hor" in n)
    assert res[cancelled]["error"].startswith("job process interrupted (SIGTERM: Slurm cancelled the job")
    # the task died with the job: submitit has no result; the launcher records the Slurm state
    killed = next(n for n in failed if "target=gau" in n)
    assert res[killed]["error"].startswith("slurm job ") and "ended without a result" in res[killed]["error"]

    r = sweep(sd, *grid, env=_slurm_env(tmp_path))
    assert r.returncode == 0, out(r)[-3000:]
    assert summary(r.stdout)[0].endswith("4 job(s): 2 ran (2 succeeded, 0 failed), 2 skipped (done)")
    assert [v["status"] for v in results(sd).values()] == ["ok"] * 4


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no parent for {pid}")


def _requeue_delay_s() -> int:
    """How long Slurm holds a requeued job: AuthInfo's cred_expire (default 120 s) + 1."""
    try:
        text = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 121
    for line in text.splitlines():
        if line.startswith("AuthInfo") and "cred_expire=" in line:
            return int(line.split("cred_expire=")[1].split(",")[0].strip()) + 1
    return 121


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_slurm_preempted_job_is_requeued_and_finishes(tmp_path):
    env = _slurm_env(tmp_path, hook=[("target=gau", "hang-once")])
    delay = _requeue_delay_s()
    if delay > 40 and os.environ.get("POSINFO_TEST_REQUEUE") != "1":
        pytest.skip(f"this Slurm holds a requeued job {delay} s (AuthInfo cred_expire); "
                    "POSINFO_TEST_REQUEUE=1 runs the test anyway")
    sd, log = tmp_path / "sw", tmp_path / "sweep.log"
    proc = popen_sweep(sd, "target=hor,gau", *SLURM, env=env, log=log)  # one fused task: requeued whole
    try:
        (h,) = wait_for(lambda: hangs(tmp_path), 240, "the gau job to hang", proc, log)
        sl = h["slurm"]  # one task (the fused group) is submitted as a plain job, not an array
        jid = f"{sl['SLURM_ARRAY_JOB_ID']}_{sl['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_JOB_ID" in sl else sl["SLURM_JOB_ID"]
        # what Slurm sends before a preemption or the time limit (submitit's --signal=USR2@...)
        subprocess.run(["scancel", "--signal=USR2", jid], check=True, env=env, timeout=30)
        rc = proc.wait(timeout=delay + 240)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert sorted(v["status"] for v in results(sd).values()) == ["ok", "ok"]
    assert "Restarts=1" in subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True,
                                          env=env).stdout


@pytest.mark.parametrize("launcher, cls", [("joblib", "PosinfoJoblibLauncher"), ("submitit_local", "PosinfoLocalLauncher"),
                                           ("submitit_slurm", "PosinfoSlurmLauncher")])
def test_the_plugins_launcher_names_select_posinfos_subclasses_with_every_plugin_option(launcher, cls):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        la = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True).hydra.launcher
    assert la._target_ == f"hydra_plugins.posinfo_launchers.launchers.{cls}"
    assert ("n_jobs" in la) if launcher == "joblib" else ("timeout_min" in la and "submitit_folder" in la)
