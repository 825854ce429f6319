"""posinfo's launchers and sweeper: Hydra's joblib and submitit launchers with two additions,
and Hydra's basic sweeper with one.

Selected by ``hydra/launcher=joblib | submitit_local | submitit_slurm`` and posinfo's
preset ``slurm_gpu`` (conf/hydra/launcher/slurm_gpu.yaml): :class:`PosinfoLaunchers` stores
each plugin's own config under its own name with ``_target_`` set to the subclass below, so
every option of the plugin stays and the commands users know keep working.

* **Dry runs stay local.** With ``dry_run=true`` the jobs are handed to Hydra's basic
  launcher: they are listed in this process and nothing is submitted to a cluster or a
  worker pool.
* **A lost Slurm job is reported, not fatal.** hydra-submitit-launcher waits for the jobs
  in order and raises at the first one that ended without a result (killed, cancelled,
  out of memory, timed out past its requeues, node failure): the launch stops waiting for
  the rest and Hydra skips the summary. Here every job is waited for, and one without a
  result is recorded as failed in its folder (result.json with the Slurm state, the
  status record), so the summary names it and the sweep exits non-zero.
* **Fused training** (``hydra/sweeper=basic``, Hydra's default): as the sweeper hands out a
  batch (``get_job_batch``), it composes the batch's jobs and plans the groups of jobs that
  share their training features and order (posinfo.sweep.fuse); the first job of a group trains
  the group's readouts together. With the basic launcher, which runs jobs in order, and the
  submitit launchers, where each group is one task that runs its jobs in order.

Hydra's internals (the basic sweeper and launcher) come through posinfo.hydra_compat.
"""


import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import OmegaConf, open_dict

from posinfo.hydra_compat import basic_sweeper, launch_here

# Hydra's plugin scan has loaded its basic sweeper before this module: subclass that one.
BasicSweeper, BasicSweeperConf = basic_sweeper()

log = logging.getLogger(__name__)


def _dry_run(launcher: Any) -> bool:
    cfg = getattr(launcher, "config", None)
    return bool(cfg is not None and cfg.get("dry_run"))


def _list_locally(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
    """A dry run: the jobs go through Hydra's basic launcher, in this process."""
    log.info("dry run: listing the jobs here (%s submits nothing)", type(launcher).__name__)
    return launch_here(launcher.hydra_context, launcher.task_function, launcher.config, job_overrides, initial_job_idx)


class PosinfoJoblibLauncher(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        if _dry_run(self):
            return _list_locally(self, job_overrides, initial_job_idx)
        return super().launch(job_overrides, initial_job_idx)


class _WaitsForEveryJob:
    """The submitit launchers' ``launch``, a fused group per task, waiting for every task and
    recording lost ones. It builds its own executor as upstream's ``launch`` does, because that
    ``launch`` offers no hook for either: it maps one task per job and waits with
    ``[j.results()[0] for j in jobs]``, which raises at the first lost task and drops the
    handles of the rest. Each job still runs through upstream's ``__call__``."""

    _EXECUTOR: str
    params: dict
    config: Any
    fuse_groups: dict[int, str] = {}  # job number -> its fused group (set by PosinfoSweeper per batch)

    def _executor(self) -> Any:
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]} if "max_num_timeout" in self.params else {},
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        if _dry_run(self):
            return _list_locally(self, job_overrides, initial_job_idx)
        from hydra.core.singleton import Singleton

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        params = [(list(ov), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
                   Singleton.get_state()) for i, ov in enumerate(job_overrides)]
        # sweep.fuse: the jobs of a fused group (PosinfoSweeper) are one task, run in order, so
        # the first trains the group's readouts and the others reuse them; other jobs, one each.
        groups: dict[Any, list[tuple]] = {}
        for p in params:
            groups.setdefault(self.fuse_groups.get(p[2], ("alone", p[2])), []).append(p)
        tasks = list(groups.values())
        if len(tasks) < len(params):
            log.info("sweep.fuse: %d jobs as %d %s tasks (a fused group is one task)", len(params), len(tasks),
                     self._EXECUTOR)
        jobs = self._executor().map_array(_GroupTask(self), tasks)
        returns: dict[int, Any] = {}
        for job, task in zip(jobs, tasks):
            returns.update(zip((p[2] for p in task), self._wait(job, task)))
        return [returns[p[2]] for p in params]

    def _wait(self, job: Any, task: list[tuple]) -> list[Any]:
        """The task's JobReturns; for a task that ended without them, a failed record in the folder
        of each of its jobs that did not report (posinfo.sweep.status.record_lost)."""
        from hydra.core.utils import JobReturn, JobStatus
        from submitit.core.utils import UncompletedJobError

        from posinfo.sweep.status import record_lost

        try:
            return job.results()[0]
        except KeyboardInterrupt:
            raise
        except Exception as e:
            what = f"{self._EXECUTOR} job {job.job_id}"
            if isinstance(e, UncompletedJobError):  # killed, cancelled, out of time, node failure
                error = f"{what} ended without a result (state {_attr(job, 'state')}; its log: {_attr(job, 'paths.stderr')})"
            else:  # the runner itself raised (the science is caught inside the job)
                lines = [x for x in str(e).strip().splitlines() if x.strip()] or [type(e).__name__]
                error = f"{what} failed: {lines[-1].strip()} (its log: {_attr(job, 'paths.stderr')})"
            error = error[:500]
            for overrides, _, idx, *_ in task:
                try:
                    folder = self._job_dir(overrides, idx)
                    record_lost(folder, error)  # a job of the task that reported keeps its record
                    log.error("job #%d lost: %s (%s)", idx, error, folder)
                except Exception as e2:  # the summary then counts it as never reported
                    log.error("job #%d lost: %s (and its folder could not be determined: %s)", idx, error, e2)
            return [JobReturn(overrides=list(p[0]), status=JobStatus.COMPLETED, _return_value=None) for p in task]

    def _job_dir(self, overrides: Sequence[str], idx: int) -> Path:
        """The folder a job runs in, resolved as Hydra's run_job does."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        return _job_dir_of(cfg, idx)


class _GroupTask:
    """One submitit task: its jobs in order, in this process (each still runs in its own child
    process, as every posinfo job does); their JobReturns. Checkpointable as the launcher
    itself is: preempted or timed out, the whole task is requeued, and its jobs that
    finished skip as done."""

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher

    def __call__(self, task: list[tuple]) -> list[Any]:
        return [self.launcher(*p) for p in task]

    def checkpoint(self, task: list[tuple]) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, task)


def _job_dir_of(cfg: Any, idx: int) -> Path:
    """The folder of job number ``idx`` of a composed sweep config, resolved as Hydra's run_job does."""
    from hydra.core.hydra_config import HydraConfig

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


def _attr(obj: Any, dotted: str) -> str:
    try:
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return str(obj)
    except Exception:
        return "unknown"


class PosinfoLocalLauncher(_WaitsForEveryJob, LocalLauncher):
    pass


class PosinfoSlurmLauncher(_WaitsForEveryJob, SlurmLauncher):
    pass


class PosinfoSweeper(BasicSweeper):
    """Hydra's basic sweeper; with ``sweep.fuse=true`` and the basic or a submitit launcher, each
    batch it hands out is planned first (posinfo.sweep.fuse): the groups of jobs that train their
    readouts together; a submitit launcher gets the groups too. Validation and launch are Hydra's."""

    def sweep(self, arguments: list[str]) -> Any:
        from posinfo.sweep import fuse

        launcher = str(OmegaConf.select(self.config, "hydra.launcher._target_", default=""))
        wanted = bool(OmegaConf.select(self.config, "sweep.fuse", default=True)) and not _dry_run(self)
        # Jobs that run in order: the basic launcher's, or a submitit task's (one per group).
        self._fuse = wanted and launcher.endswith(("BasicLauncher", "PosinfoLocalLauncher", "PosinfoSlurmLauncher"))
        self._next_idx = 0
        if not self._fuse and not _dry_run(self):
            fuse.clear_plan(Path(str(self.config.hydra.sweep.dir)))
        return super().sweep(arguments)

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        """The next batch (Hydra's), its fuse plan written before Hydra validates and launches it.
        Its jobs are composed here for the plan and again by Hydra's check: a job that does not
        compose leaves the plan unwritten, and Hydra's check reports it."""
        batch = super().get_job_batch()
        first, self._next_idx = self._next_idx, self._next_idx + len(batch)
        if getattr(self, "_fuse", False):
            loader = self.hydra_context.config_loader
            try:
                configs = [(first + i, loader.load_sweep_config(master_config=self.config,
                                                                sweep_overrides=list(overrides)))
                           for i, overrides in enumerate(batch)]
            except Exception:  # Hydra's validate_batch_is_legal raises it next, in its own words
                return batch
            self._write_plan(configs)
        return batch

    def _write_plan(self, configs: list[tuple[int, Any]]) -> None:
        from posinfo.sweep import fuse

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            jobs = []
            for idx, cfg in configs:  # each job's folder and its resolved config (without ``hydra``)
                folder = _job_dir_of(cfg, idx)
                with open_dict(cfg):
                    del cfg["hydra"]
                jobs.append((folder, OmegaConf.to_container(cfg, resolve=True)))
            keys = [fuse.group_key(c) for _, c in jobs]
            n = fuse.write_plan(sweep_dir, jobs, keys)
            if n:
                log.info("sweep.fuse: %d jobs in groups that train their readouts together", n)
            if isinstance(self.launcher, _WaitsForEveryJob):  # a group is one submitit task
                self.launcher.fuse_groups = {idx: key for (idx, _), key in zip(configs, keys)}
        except Exception as e:  # the jobs then train alone: slower, the same numbers
            log.warning("sweep.fuse: the groups could not be planned (%s: %s): every job trains alone",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            fuse.clear_plan(sweep_dir)


class PosinfoLaunchers(SearchPathPlugin):
    """Makes ``hydra/launcher=joblib | submitit_local | submitit_slurm`` and ``hydra/sweeper=basic``
    posinfo's subclasses.

    Hydra calls ``manipulate_search_path`` once every plugin module has been imported (they
    store their own configs then), and before any config is composed: storing ours here is
    deterministic, whatever the order in which the plugins were found. The search path
    itself is left as it is. Workers and Slurm jobs receive the ConfigStore with Hydra's
    pickled state.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        here = __name__
        cs = ConfigStore.instance()
        for name, node in (("joblib", JobLibLauncherConf(_target_=f"{here}.PosinfoJoblibLauncher")),
                           ("submitit_local", LocalQueueConf(_target_=f"{here}.PosinfoLocalLauncher")),
                           ("submitit_slurm", SlurmQueueConf(_target_=f"{here}.PosinfoSlurmLauncher"))):
            cs.store(group="hydra/launcher", name=name, node=node, provider="posinfo")
        cs.store(group="hydra/sweeper", name="basic", node=BasicSweeperConf(_target_=f"{here}.PosinfoSweeper"),
                 provider="posinfo")
