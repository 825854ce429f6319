"""What posinfo adds to Hydra's launchers, installed by the SweepSummary callback.

Hydra's own launchers do the launching (``hydra/launcher=joblib``, ``submitit_slurm``,
``submitit_local``, and our preset ``slurm_gpu``); two things are added, in the launching
process only, when a posinfo sweep starts:

* **Dry runs stay local.** With ``dry_run=true`` the joblib and submitit launchers hand
  the jobs to Hydra's basic launcher: the jobs are listed in this process and nothing is
  submitted to a cluster or a worker pool.
* **A lost Slurm job is reported, not fatal.** hydra-submitit-launcher waits for the
  jobs in order and raises at the first one that ended without a result (killed,
  cancelled, out of memory, timed out past its requeues, node failure): the launch
  stops waiting for the rest and Hydra skips the summary. Here every job is waited
  for, and one without a result is recorded as failed in its folder (result.json with
  the Slurm state, ``.posinfo_status.json``), so the summary names it and the sweep
  exits non-zero.

Both are done by replacing the ``launch`` method of the plugins' classes (the class
names Hydra checks stay the same); the submitit one is hydra-submitit-launcher 1.2's
``launch`` with only its last line changed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, List, Sequence

from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)

_MARK = "_posinfo_patched"


def _dry_run(launcher: Any) -> bool:
    cfg = getattr(launcher, "config", None)
    return bool(cfg is not None and cfg.get("dry_run"))


def _launch_basic(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    log.info("dry run: listing the jobs here (%s submits nothing)", type(launcher).__name__)
    basic = BasicLauncher()
    basic.setup(hydra_context=launcher.hydra_context, task_function=launcher.task_function, config=launcher.config)
    return basic.launch(job_overrides, initial_job_idx=initial_job_idx)


def job_dir(launcher: Any, overrides: Sequence[str], idx: int) -> Path:
    """The folder a job of ``launcher`` runs in, resolved as Hydra's run_job does."""
    from hydra.core.hydra_config import HydraConfig

    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.id = f"job_id_for_{idx}"
        cfg.hydra.job.num = idx
    saved = HydraConfig.instance().cfg
    try:
        HydraConfig.instance().set_config(cfg)
        out = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    finally:
        HydraConfig.instance().cfg = saved
    return Path(os.path.abspath(out))


def _wait(launcher: Any, job: Any, overrides: Sequence[str], idx: int) -> Any:
    """The job's JobReturn; for a job that ended without one, a record in its folder."""
    from hydra.core.utils import JobReturn, JobStatus

    from posinfo.runner import record_lost

    try:
        return job.results()[0]
    except KeyboardInterrupt:
        raise
    except Exception as e:
        from submitit.core.utils import UncompletedJobError

        what = f"{launcher._EXECUTOR} job {job.job_id}"
        if isinstance(e, UncompletedJobError):  # killed, cancelled, out of time, node failure
            error = f"{what} ended without a result (state {_state(job)}; its log: {_log_path(job)})"
        else:  # the job raised (the runner itself, not the science: that is caught in the job)
            lines = [x for x in str(e).strip().splitlines() if x.strip()] or [type(e).__name__]
            error = f"{what} failed: {lines[-1].strip()} (its log: {_log_path(job)})"
        error = error[:500]
        try:
            d = job_dir(launcher, overrides, idx)
            record_lost(d, error)
            log.error("job #%d lost: %s (%s)", idx, error, d)
        except Exception as e2:  # the summary then counts it as never reported
            log.error("job #%d lost: %s (and its folder could not be determined: %s)", idx, error, e2)
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)


def _state(job: Any) -> str:
    try:
        return str(job.state)
    except Exception:
        return "unknown"


def _log_path(job: Any) -> str:
    try:
        return str(job.paths.stderr)
    except Exception:
        return "?"


def _submitit_launch(self: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
    """hydra-submitit-launcher 1.2's BaseSubmititLauncher.launch; it waits for every job."""
    if _dry_run(self):
        return _launch_basic(self, job_overrides, initial_job_idx)
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    assert self.config is not None
    num_jobs = len(job_overrides)
    assert num_jobs > 0
    params = self.params
    init_params = {"folder": self.params["submitit_folder"]}
    specific_init_keys = {"max_num_timeout"}
    init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys})
    init_keys = specific_init_keys | {"submitit_folder"}
    executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
    baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {x if x in baseparams else f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x not in init_keys}
    executor.update_parameters(**params)

    log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
    sweep_dir = Path(str(self.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in self.config.hydra.sweep:
        mode = int(str(self.config.hydra.sweep.mode), 8)
        os.chmod(sweep_dir, mode=mode)

    job_params: List[Any] = []
    for idx, overrides in enumerate(job_overrides):
        idx = initial_job_idx + idx
        lst = " ".join(filter_overrides(overrides))
        log.info(f"\t#{idx} : {lst}")
        job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))

    jobs = executor.map_array(self, *zip(*job_params))
    # The plugin returns [j.results()[0] for j in jobs]: the first lost job raises.
    return [_wait(self, j, p[0], p[2]) for j, p in zip(jobs, job_params)]


def _patch_submitit() -> None:
    try:
        from hydra_plugins.hydra_submitit_launcher import submitit_launcher as sl
    except ImportError:
        return
    cls = sl.BaseSubmititLauncher
    if getattr(cls.launch, _MARK, False):
        return
    try:
        from importlib.metadata import version

        v = version("hydra-submitit-launcher")
    except Exception:
        v = "?"
    if v.startswith("1.2."):
        setattr(_submitit_launch, _MARK, True)
        cls.launch = _submitit_launch
        return
    # _submitit_launch is a copy of 1.2's launch: another version keeps its own, dry runs aside
    log.warning("hydra-submitit-launcher %s (not 1.2): a lost Slurm job stops the wait for the others", v)
    cls.launch = _dry_runs_listed_locally(cls.launch)


def _dry_runs_listed_locally(original: Any) -> Any:
    """Wrap a launcher's ``launch`` so a dry run goes through the basic launcher: nothing is submitted."""

    def launch(self: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        if _dry_run(self):
            return _launch_basic(self, job_overrides, initial_job_idx)
        return original(self, job_overrides, initial_job_idx)

    setattr(launch, _MARK, True)
    return launch


def _patch_joblib() -> None:
    try:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
    except ImportError:
        return
    if getattr(JoblibLauncher.launch, _MARK, False):
        return
    JoblibLauncher.launch = _dry_runs_listed_locally(JoblibLauncher.launch)


def install() -> None:
    """Patch the installed launcher plugins (idempotent; a plugin that is absent is skipped)."""
    _patch_submitit()
    _patch_joblib()
