"""The task function behind ``sweep.py``: one job with resume, dry run, a GPU slot and
crash isolation; and ``cli``, which runs sweep.py's Hydra main."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from posinfo.errors import PosinfoError
from posinfo.io import read_result
from posinfo.names import utc_now
from posinfo.sweep import fuse
from posinfo.sweep.gpus import claim_gpu
from posinfo.sweep.isolation import Terminated, describe_exit, handle_sigterm, isolate, preload, run_in_child
from posinfo.sweep.lock import SweepLock, job_lock
from posinfo.sweep.outputs import clear_failures, fresh_staging, last_failure, promote, remove_staging, settle_failure
from posinfo.sweep.status import append_log, is_done, record, signature, sweep_id, write_failed_result
from posinfo.sweep.summary import report_unfinished
from posinfo.sweep.warnings import once_per_sweep

log = logging.getLogger(__name__)

def _hydra_context() -> tuple[Path, dict, list[str], bool]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    return Path(hc.runtime.output_dir), choices, list(hc.overrides.task), hc.mode == RunMode.MULTIRUN


def _sweep_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(str(HydraConfig.get().sweep.dir))


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def run_job(cfg: DictConfig, job_dir: Path, choices: dict, overrides: list[str],
            siblings: list[DictConfig] | None = None) -> int:
    """Claim a GPU, run the job into its staging folder and swap the outputs in if it succeeds;
    0 if it succeeded, 1 if it failed (its failed result.json says why: last_failure)."""
    from posinfo import job

    stage = fresh_staging(job_dir)
    try:
        with claim_gpu(str(cfg.device)) as dev:
            if dev != str(cfg.device):
                cfg = cfg.copy()
                OmegaConf.update(cfg, "device", dev, force_add=True)
            res = job.run(cfg, stage, choices=choices, overrides=overrides, siblings=siblings)
        old = read_result(job_dir)
        changed = bool(old and old.get("status") == "ok" and signature(old.get("config") or {}) != signature(res["config"]))
        promote(job_dir, keep_previous=changed)
        return 0
    except Exception as e:
        res = read_result(stage)
        if not res or res.get("status") != "failed":  # failed outside job.run
            append_log(stage, traceback.format_exc())
            with contextlib.suppress(Exception):
                write_failed_result(stage, _first_line(e), OmegaConf.to_container(cfg, resolve=True), choices, overrides)
        settle_failure(job_dir)
        return 1
    finally:
        remove_staging(job_dir)  # an interrupt: the folder keeps what it had


def run(cfg: DictConfig) -> dict | None:
    """The task function behind ``sweep.py``: one job, with resume, dry run and crash isolation."""
    job_dir, choices, overrides, multirun = _hydra_context()
    if not multirun:
        return _run_single(cfg, job_dir, choices, overrides)
    try:
        return _run_in_sweep(cfg, job_dir, choices, overrides)
    except KeyboardInterrupt:
        with contextlib.suppress(BaseException):
            record(job_dir, "interrupted", "interrupted")
        raise
    except Exception as e:  # e.g. submitit's "not requeued: timed-out too many times", or a bug here
        log.exception("posinfo runner failed for %s", job_dir)
        error = _first_line(e)
        with contextlib.suppress(Exception):
            res = read_result(job_dir)
            if not res or res.get("status") not in ("ok", "failed"):
                write_failed_result(job_dir, error, (res or {}).get("config"), choices, overrides)
            record(job_dir, "failed", error)
        return None


def _run_single(cfg: DictConfig, job_dir: Path, choices: dict, overrides: list[str]) -> dict | None:
    config = OmegaConf.to_container(cfg, resolve=True)
    done, why = is_done(job_dir, config)
    if cfg.get("dry_run"):
        print(f"[dry run] {_dry_mark(cfg, done, why):<28} {job_dir}", flush=True)
        return None
    if done and not cfg.get("force"):
        log.info("done, skipped: %s (force=true re-runs it)", job_dir)
        return read_result(job_dir)
    if why == "config changed":
        log.warning("config changed since the last run in %s: re-running", job_dir)
    owner = SweepLock(job_dir)
    try:
        owner.acquire(wait=bool(OmegaConf.select(cfg, "sweep.wait", default=False)))
    except PosinfoError as e:
        print(f"posinfo: error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        clear_failures(job_dir)
        code = run_job(cfg, job_dir, choices, overrides)
    finally:
        owner.release()
    if code != 0:
        error = (last_failure(job_dir) or {}).get("error") or "failed"
        # A single run: one line for the user, the traceback is in the job log.
        print(f"posinfo: error: {error}", file=sys.stderr)
        sys.exit(1)
    return read_result(job_dir)


def _dry_mark(cfg: DictConfig, done: bool, why: str) -> str:
    if done and not cfg.get("force"):
        return "done (would skip)"
    from posinfo.preflight import job_problems

    problems = job_problems(cfg)
    return f"would fail: {problems[0]}" if problems else f"would run ({'force' if done else why})"


def _run_in_sweep(cfg: DictConfig, job_dir: Path, choices: dict, overrides: list[str]) -> dict | None:
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # e.g. a missing mandatory value: this job fails, the sweep goes on
        error = _first_line(e)
        job_dir.mkdir(parents=True, exist_ok=True)
        append_log(job_dir, traceback.format_exc())
        write_failed_result(job_dir, error, None, choices, overrides)
        record(job_dir, "failed", error)
        log.error("job failed: %s", error)
        return None
    done, why = is_done(job_dir, config)
    if cfg.get("dry_run"):
        mark = _dry_mark(cfg, done, why)
        print(f"[dry run] {mark:<28} {job_dir}", flush=True)
        record(job_dir, "dry_run:" + ("done" if mark.startswith("done") else "fail" if mark.startswith("would fail") else "todo"))
        return None
    if done and not cfg.get("force"):
        log.info("done, skipped: %s", job_dir)
        record(job_dir, "skipped")
        return read_result(job_dir)
    if why == "config changed":
        log.warning("config changed since the last run in %s: re-running", job_dir)

    _remove_stale_temporaries(job_dir)
    clear_failures(job_dir)  # so that a failure found after this run is this run's
    siblings = fuse.siblings_of(_sweep_dir(), job_dir) if OmegaConf.select(cfg, "sweep.fuse", default=True) else []
    started = utc_now()
    # The job lock: this job is running, another command must not start on this folder.
    with job_lock(job_dir), once_per_sweep(_sweep_dir(), sweep_id()):
        record(job_dir, "running", started=started)
        if isolate():
            from posinfo import job  # noqa: F401  (imported here, once: children start warm)

            preload()
            code = run_in_child(lambda: run_job(cfg, job_dir, choices, overrides, siblings))
        else:
            code = run_job(cfg, job_dir, choices, overrides, siblings)
    finished = utc_now()
    remove_staging(job_dir)  # a child killed hard leaves its staging folder behind
    res = read_result(job_dir)
    if code == 0 and res and res.get("status") == "ok":
        record(job_dir, "ok", started=started, finished=finished)
        return res
    failure = last_failure(job_dir) if code != 0 else None
    if failure and failure.get("error"):
        error = str(failure["error"])
    else:  # it died without a word: say how, in result.json and the job log
        error = describe_exit(code) if code != 0 else "job ended without writing an ok result.json"
        write_failed_result(job_dir, error, config, choices, overrides,
                            started=started)
        log.error("job failed: %s", error)
        append_log(job_dir, f"posinfo: {error}")
    record(job_dir, "failed", error, started=started, finished=finished)
    return None


def _remove_stale_temporaries(job_dir: Path) -> None:
    """Temporary files (``.<name>.<random>.tmp``, posinfo.io.atomic_path) left by a job that
    was killed outright (SIGKILL: e.g. joblib kills its workers' process trees on an
    interrupt). Nothing else works in this folder now: this job is about to run."""
    for p in Path(job_dir).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
    remove_staging(job_dir)


def check_command_line(argv: list[str], conf_dir: Path) -> str | None:
    """One line for the first bad override of a sweep.py command line, else None."""
    from posinfo.hydra_compat import args_parser
    from posinfo.schema import check_overrides

    args, _ = args_parser().parse_known_args(argv)
    if args.multirun and args.cfg:
        return f"--cfg {args.cfg} prints the config of one job: drop -m (e.g. python sweep.py KEY=VALUE ... --cfg job)"
    return check_overrides(list(args.overrides), conf_dir)


def _export_checkout(root: Path) -> None:
    """Put the checkout that holds sweep.py on PYTHONPATH for the processes the launchers start.
    Hydra finds posinfo's launchers there (``hydra_plugins/``) because sweep.py's folder is on
    this process's path; a submitit job unpickles them in a new interpreter, started in the
    sweep's folder, which needs them importable too (an editable install maps ``posinfo``
    but not the ``hydra_plugins`` namespace)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(root) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *paths])


def cli(main: Callable[[], Any], conf_dir: Path) -> None:
    """Run sweep.py's Hydra ``main``: bad values stop it with one line before Hydra composes
    anything; SIGTERM as an interrupt; a summary even for an aborted sweep."""
    from posinfo.schema import expand_home

    sys.argv[1:] = expand_home(sys.argv[1:])  # Hydra reads sys.argv itself
    error = check_command_line(sys.argv[1:], conf_dir)
    if error:
        print(f"posinfo: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    _export_checkout(conf_dir.parent)
    handle_sigterm()
    try:
        main()
    except KeyboardInterrupt as e:
        term = isinstance(e, Terminated)
        with contextlib.suppress(BaseException):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            report_unfinished("interrupted")
            print(f"posinfo: interrupted ({'SIGTERM' if term else 'Ctrl-C'}); jobs that did not finish have no ok "
                  "result.json: re-run the same command to resume", file=sys.stderr, flush=True)
        sys.exit(128 + (signal.SIGTERM if term else signal.SIGINT))
    except SystemExit as e:  # Hydra reports an error (e.g. a launcher that raised) and exits 1
        if report_unfinished("aborted") and not e.code:
            sys.exit(1)
        raise
