"""Test helper (not a test module): run ``sweep.py -m`` as a user would, with tiny jobs.

Faults are injected with a ``sitecustomize`` hook put on the children's PYTHONPATH, so
that every process of a sweep (the sweep itself, joblib workers, submitit and Slurm
jobs) gets it. ``hook`` is a list of ``(substring of the job folder, action)``:

``kill``        the job's process SIGKILLs itself (the out-of-memory killer)
``exit``        the job's process calls ``os._exit(3)``
``sleep:S``     the job sleeps S seconds before it runs (to make overlaps certain)
``hang``        the job hangs inside job.run while it writes readout.pt: the temporary
                file exists, the final one not yet; ``<hook dir>/hang-<pid>`` marks it
``hang-once``   ``hang``, unless ``<hook dir>/once-<n>`` exists (a requeued job then runs)

The action runs in the job's own process (posinfo.sweep.task.run_job, in the forked child).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "sweep.py"
TINY = ["backbone=posenet", "data.image_size=32", "data.num_train=8", "data.num_test=4", "train.epochs=1",
        "train.batch_size=4", "device=cpu"]

HOOK = textwrap.dedent('''
    import os
    _rules = os.environ.get("POSINFO_TEST_HOOK")
    if _rules:
        import contextlib, signal, time
        from pathlib import Path
        import posinfo.sweep.task as _task

        _dir = Path(os.environ["POSINFO_TEST_HOOK_DIR"])
        _orig = _task.run_job

        def _hang(job_dir, n, once):
            import posinfo.job as J
            if once and (_dir / f"once-{n}").exists():
                return
            orig_atomic = J.atomic_path

            @contextlib.contextmanager
            def atomic_path(path):
                with orig_atomic(path) as tmp:
                    if Path(path).name == "readout.pt":
                        Path(tmp).write_bytes(b"partial")
                        env = {k: v for k, v in os.environ.items() if k.startswith("SLURM_")}
                        info = {"pid": os.getpid(), "job_dir": str(job_dir), "tmp": str(tmp), "slurm": env}
                        (_dir / f"once-{n}").write_text("")
                        (_dir / f"hang-{os.getpid()}.tmpjson").write_text(__import__("json").dumps(info))
                        os.replace(_dir / f"hang-{os.getpid()}.tmpjson", _dir / f"hang-{os.getpid()}.json")
                        time.sleep(600)
                    yield tmp

            J.atomic_path = atomic_path

        def _run_job(cfg, job_dir, choices, overrides, *rest):
            for n, rule in enumerate(_rules.split(";")):
                match, _, action = rule.rpartition("|")
                if match not in str(job_dir):
                    continue
                if action == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                elif action == "exit":
                    os._exit(3)
                elif action.startswith("sleep:"):
                    time.sleep(float(action.split(":")[1]))
                elif action in ("hang", "hang-once"):
                    _hang(job_dir, n, action == "hang-once")
            return _orig(cfg, job_dir, choices, overrides, *rest)

        _task.run_job = _run_job
''')


def env_with(tmp: Path, hook: list[tuple[str, str]] | None = None, **extra: str) -> dict:
    """The environment for a sweep child: this checkout importable, the hook if any."""
    env = dict(os.environ)
    paths = [str(ROOT)]
    if hook:
        hook_dir = tmp / "hook"
        hook_dir.mkdir(parents=True, exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(HOOK)
        paths.insert(0, str(hook_dir))
        env["POSINFO_TEST_HOOK"] = ";".join(f"{m}|{a}" for m, a in hook)
        env["POSINFO_TEST_HOOK_DIR"] = str(hook_dir)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    env["POSINFO_GPU_LOCK_DIR"] = str(tmp / "gpu-locks")
    env.update(extra)
    return env


def sweep_args(sweep_dir: Path, *args: str, tiny: bool = True) -> list[str]:
    return [sys.executable, str(SWEEP), "-m", *(TINY if tiny else []), *args,
            f"hydra.sweep.dir={sweep_dir}", f"cache.dir={sweep_dir.parent / 'cache'}"]


def sweep(sweep_dir: Path, *args: str, hook=None, timeout: int = 300, env: dict | None = None,
          tiny: bool = True) -> subprocess.CompletedProcess:
    """``python sweep.py -m <tiny> <args> hydra.sweep.dir=<sweep_dir>``, run in its parent folder."""
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(sweep_args(sweep_dir, *args, tiny=tiny), cwd=sweep_dir.parent, capture_output=True,
                          text=True, timeout=timeout, env=env or env_with(sweep_dir.parent, hook))


def popen_sweep(sweep_dir: Path, *args: str, hook=None, env: dict | None = None, log: Path) -> subprocess.Popen:
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "w")
    return subprocess.Popen(sweep_args(sweep_dir, *args), cwd=sweep_dir.parent, stdout=fh, stderr=subprocess.STDOUT,
                            text=True, env=env or env_with(sweep_dir.parent, hook))


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep exited ({proc.returncode}) before {what}:\n"
                                 + (log.read_text()[-3000:] if log else ""))
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def hangs(tmp: Path) -> list[dict]:
    """The jobs hanging in the hook now (see ``hang``)."""
    return [json.loads(p.read_text()) for p in sorted((tmp / "hook").glob("hang-*.json"))]


def results(sweep_dir: Path) -> dict[str, dict]:
    """result.json of every job folder, by folder name."""
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}


def statuses(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/.posinfo_status.json")}


def out(p: subprocess.CompletedProcess) -> str:
    return p.stdout + p.stderr


def summary(text: str) -> list[str]:
    """The summary's lines (the first starts with 'posinfo sweep' or 'posinfo dry run')."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("posinfo sweep", "posinfo dry run")):
            return [line] + [x for x in lines[i + 1:] if x.startswith("  ")]
    return []
