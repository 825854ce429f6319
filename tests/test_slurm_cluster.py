"""A real Slurm job through submitit, on the local cluster of scripts/slurm_local.sh.

Skips when no cluster can be had, unless POSINFO_REQUIRE_SLURM=1 (CI), where
that is a failure.
"""

from __future__ import annotations

import time

import pytest

from slurm_cluster import slurm_cluster  # noqa: F401  (session fixture)

JOB_DEADLINE_S = 120
STATE_DEADLINE_S = 30


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")  # one Slurm node: its tests run in one worker, in turn
def test_submitit_job_on_local_slurm(slurm_cluster, tmp_path):  # noqa: F811
    submitit = pytest.importorskip("submitit")

    def answer() -> int:  # nested: cloudpickle ships it by value
        return 42

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j")
    assert executor.cluster == "slurm"
    executor.update_parameters(timeout_min=5, slurm_job_name="posinfo-slurm-test")
    job = executor.submit(answer)

    deadline = time.monotonic() + JOB_DEADLINE_S
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"slurm job {job.job_id} not done after {JOB_DEADLINE_S} s "
                        f"(state {job.state}); stderr:\n{job.stderr()}")
        time.sleep(0.5)
    assert job.result() == 42
    # the sacct stand-in (first on PATH) is what submitit asks for the state. The
    # result file is written from inside the job, so Slurm may still say RUNNING
    # for a moment after it appears: wait for a final state, then require it to
    # be COMPLETED.
    deadline = time.monotonic() + STATE_DEADLINE_S
    state = job.watcher.get_state(job.job_id, mode="force")
    while state in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING", "UNKNOWN"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
        state = job.watcher.get_state(job.job_id, mode="force")
    assert state == "COMPLETED"
