"""Test helper (not a test module): a real local Slurm cluster for tests.

The cluster is the one of ``scripts/slurm_local.sh`` (munged + slurmctld +
slurmd on this machine, state in ``$POSINFO_SLURM_DIR``, default
``/tmp/posinfo-slurm``). CI installs and starts it in ``.ci/run``; on a
developer machine :func:`ensure_cluster` starts it when Slurm is installed and
we are root.

Usage in a test module::

    from slurm_cluster import slurm_cluster  # noqa: F401  (session fixture)

    def test_something(slurm_cluster):
        ...  # sbatch/srun/submitit work; sacct is the stand-in in scripts/

or, without the fixture::

    from slurm_cluster import require_cluster
    require_cluster()  # skips (or fails when POSINFO_REQUIRE_SLURM=1)

Without accounting the real ``sacct`` fails and submitit would wait forever on
a job that died, so :func:`activate_env` puts ``scripts/`` (which holds a
``sacct`` stand-in) first on ``PATH`` in this process; submitted jobs inherit it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
SCRIPT = SCRIPTS / "slurm_local.sh"
START_TIMEOUT_S = 180

_reason = "ensure_cluster() was not called"
_started_here = False


def state_dir() -> Path:
    return Path(os.environ.get("POSINFO_SLURM_DIR") or "/tmp/posinfo-slurm")


def slurm_required() -> bool:
    """CI sets POSINFO_REQUIRE_SLURM=1: then an unavailable cluster is a failure."""
    return os.environ.get("POSINFO_REQUIRE_SLURM", "").strip().lower() not in ("", "0", "false", "no")


def activate_env() -> None:
    """Put the sacct stand-in first on PATH and point clients at our config."""
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0:1] != [str(SCRIPTS)]:
        os.environ["PATH"] = os.pathsep.join([str(SCRIPTS), path]) if path else str(SCRIPTS)
    conf = state_dir() / "slurm.conf"
    if conf.is_file():
        os.environ["SLURM_CONF"] = str(conf)


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def node_idle() -> bool:
    """True if sinfo shows a node that can take jobs right now."""
    if _which("sinfo") is None or _which("scontrol") is None:
        return False
    try:
        # answers at once; sinfo would retry an absent controller for ~10 s
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if "is UP" not in ping.stdout:
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"],
            capture_output=True, text=True, timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if out.returncode != 0:
        return False
    # exact names: a suffix such as "idle*" (not responding) does not count
    states = {s.strip().lower() for s in out.stdout.split()}
    return bool(states & {"idle", "mixed"})


def ensure_cluster() -> bool:
    """True if a Slurm node is idle, starting the local cluster if we can.

    When it returns False, :func:`unavailable_reason` says why.
    """
    global _reason, _started_here
    activate_env()
    if node_idle():
        _reason = ""
        return True
    missing = [b for b in ("slurmctld", "slurmd", "sinfo", "sbatch", "munged") if _which(b) is None]
    if missing:
        _reason = (f"Slurm is not installed (missing {', '.join(missing)}); "
                   f"run: {SCRIPT.relative_to(REPO)} install && {SCRIPT.relative_to(REPO)} start")
        return False
    if os.geteuid() != 0:
        _reason = f"no idle Slurm node, and starting one needs root ({SCRIPT.relative_to(REPO)} start)"
        return False
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "start"],
            capture_output=True, text=True, timeout=START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        _reason = f"{SCRIPT.name} start did not finish within {START_TIMEOUT_S} s"
        return False
    activate_env()  # the config now exists
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        _reason = f"{SCRIPT.name} start failed (rc={proc.returncode}):\n{tail}"
        return False
    _started_here = True
    if not node_idle():
        _reason = f"{SCRIPT.name} start succeeded but sinfo shows no idle node"
        return False
    _reason = ""
    return True


def unavailable_reason() -> str:
    return _reason


def stop_if_started_here() -> None:
    """Stop the cluster if this process started it (CI's .ci/run stops its own)."""
    global _started_here
    if _started_here:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)
        _started_here = False


def require_cluster() -> None:
    """Skip the calling test when no cluster can be had; fail instead under CI."""
    if ensure_cluster():
        return
    msg = f"no local Slurm cluster: {unavailable_reason()}"
    if slurm_required():
        pytest.fail(f"POSINFO_REQUIRE_SLURM is set but {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def slurm_cluster():
    """Session fixture: a running local cluster (skips, or fails under CI, if none).

    Yields the state folder. Stops the cluster at the end only if it started it.
    """
    require_cluster()
    try:
        yield state_dir()
    finally:
        stop_if_started_here()
