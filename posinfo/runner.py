"""Sweep plumbing around ``job.run``: job folders, resume, dry run, crash isolation, GPU choice, summary.

Hydra 1.3 re-raises only the first failure of a multirun, after the whole batch, and
skips ``on_multirun_end`` when a job raised. So in a multirun a job never raises: it
records its outcome in ``<job_dir>/.posinfo_status.json`` and returns; the
``SweepSummary`` callback (posinfo.callbacks) reads those files at the end, prints the
summary and sets the exit status.

Crash isolation: in a multirun each job runs in a forked child process. A job that
dies hard (``os._exit``, SIGKILL from the out-of-memory killer, a segfault in a native
library) takes only that child down; the parent (the sweep process, a joblib worker
or a Slurm task) records the failure, writes a failed ``result.json`` and goes on with
the next job. The parent never runs torch computations itself: GNU OpenMP is not
fork-safe once it has started its threads, so a parent that had computed would hang
its children. ``POSINFO_ISOLATE=0`` runs jobs in-process (e.g. to use a debugger); that
is the default where fork is not safe (macOS) or absent (Windows).

Interrupts: ``Ctrl-C`` raises KeyboardInterrupt and SIGTERM raises :class:`Terminated`
(a KeyboardInterrupt), in the sweep process (``cli``) and in a job's child, so every
``finally`` runs: temporary files are removed, no ``result.json`` is written (job.run
writes it only once the job has finished or failed), and a re-run re-runs the job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import re
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from posinfo.io import RESULT_FILE, _jsonable, read_result, write_json

log = logging.getLogger(__name__)

STATUS_FILE = ".posinfo_status.json"
JOB_LOG = "job.log"  # hydra.job.name is "job" (conf/hydra/default.yaml)
SWEEP_ID_ENV = "POSINFO_SWEEP_ID"  # set by the SweepSummary callback; inherited by workers and Slurm jobs
ISOLATE_ENV = "POSINFO_ISOLATE"
GPU_LOCK_DIR_ENV = "POSINFO_GPU_LOCK_DIR"
# Keys that steer how a job runs, not what it computes: they never make a job "changed".
RUN_CONTROL_KEYS = ("force", "dry_run", "device", "name", "cache", "experiment_name")
RUN_CONTROL_DATA_KEYS = ("num_workers",)
# A folder name longer than this (in bytes) becomes a readable prefix + a hash of the whole
# name. File systems allow 255 bytes per component; some (eCryptfs) fewer.
MAX_DIRNAME_BYTES = 200
# Seconds a job's child has to clean up after SIGTERM before it is killed.
STOP_GRACE_S = 30.0


# --------------------------------------------------------------------------- folder names


# An override's key at the start of an item of Hydra's override_dirname ("+experiment/table4=")
_KEY = re.compile(r"(^|,)(?:\+\+|\+)?([\w.@/-]+)=")
# Anything but these becomes "_": "/" (it would nest folders), spaces, quotes, shell specials.
_UNSAFE = re.compile(r"[^\w.,=+@%~\[\]-]")


def _shorten(name: str, whole: str, limit: int = MAX_DIRNAME_BYTES) -> str:
    """``name`` if it fits in ``limit`` bytes, else a readable prefix + '--' + a hash of ``whole``."""
    if len(name.encode("utf-8")) <= limit:
        return name
    digest = hashlib.sha256(whole.encode("utf-8")).hexdigest()[:12]
    keep = limit - len(digest) - 2
    prefix = name.encode("utf-8")[:keep].decode("utf-8", "ignore")
    cut = prefix.rfind(",")
    if cut >= keep // 2:  # end the prefix at a whole override when that keeps most of it
        prefix = prefix[:cut]
    return f"{prefix}--{digest}"


def job_dirname(override_dirname: Any) -> str:
    """A job's folder name from Hydra's ``override_dirname`` (``k=v,k=v``, sorted).

    ``+experiment/table4=posenet_pad0,target=hor`` -> ``experiment.table4=posenet_pad0,target=hor``:
    no ``+`` prefixes, group paths with dots, every character that is not safe in a folder
    name (``/`` in a path value, spaces, quotes) replaced by ``_``; longer than
    MAX_DIRNAME_BYTES: a prefix and a hash of the full name. Deterministic, so the same
    command always lands in the same folder.
    """
    raw = "" if override_dirname is None else str(override_dirname)
    name = _KEY.sub(lambda m: f"{m.group(1)}{m.group(2).replace('/', '.')}=", raw)
    name = _UNSAFE.sub("_", name)
    if not name:
        return "default"
    if name[0] in ".-":
        name = "_" + name
    return _shorten(name, raw)


def sweep_name(experiment: Any = None, tag: Any = None) -> str:
    """A sweep's folder name: the preset's ``experiment_name`` (else 'default'), then ``-<name>``."""
    base = "default" if experiment in (None, "") else _UNSAFE.sub("_", str(experiment))
    if tag not in (None, ""):
        base = f"{base}-{_UNSAFE.sub('_', str(tag))}"
    if base[0] in ".-":
        base = "_" + base
    return _shorten(base, base)


def register_resolvers() -> None:
    """``${posinfo.job_dirname:...}`` and ``${posinfo.sweep_name:...}`` (conf/hydra/default.yaml)."""
    OmegaConf.register_new_resolver("posinfo.job_dirname", job_dirname, replace=True)
    OmegaConf.register_new_resolver("posinfo.sweep_name", sweep_name, replace=True)


register_resolvers()


# --------------------------------------------------------------------------- resume


def _plain(config: dict) -> dict:
    """The config as it reads back from result.json (JSON types, NaN as null)."""
    return json.loads(json.dumps(_jsonable(config), default=str))


def signature(config: dict) -> dict:
    """The part of a resolved config that determines a job's science."""
    sig = {k: v for k, v in _plain(config).items() if k not in RUN_CONTROL_KEYS}
    if isinstance(sig.get("data"), dict):
        sig["data"] = {k: v for k, v in sig["data"].items() if k not in RUN_CONTROL_DATA_KEYS}
    return sig


def is_done(job_dir: Path, config: dict) -> tuple[bool, str]:
    """Whether ``job_dir`` holds an ok result for this very configuration."""
    res = read_result(job_dir)
    if res is None:
        return False, "missing"
    if res.get("status") != "ok":
        return False, str(res.get("status", "unknown"))
    if signature(res.get("config") or {}) != signature(config):
        return False, "config changed"
    return True, "done"


# --------------------------------------------------------------------------- status records


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def sweep_id() -> str | None:
    return os.environ.get(SWEEP_ID_ENV) or None


def read_status(job_dir: Path) -> dict | None:
    try:
        st = json.loads((Path(job_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return st if isinstance(st, dict) else None


def record(job_dir: Path, status: str, error: str | None = None, **extra: Any) -> None:
    """Write the job's status for the sweep summary (atomically)."""
    write_json(
        Path(job_dir) / STATUS_FILE,
        {"status": status, "error": error, "sweep_id": sweep_id(), "time": _now(),
         "host": platform.node(), "pid": os.getpid(), **extra},
    )


def write_failed_result(job_dir: Path, error: str, config: dict | None = None, choices: dict | None = None,
                        overrides: list | None = None, started: str | None = None) -> None:
    """A failed result.json for a job that could not write its own (killed, crashed hard)."""
    write_json(
        Path(job_dir) / RESULT_FILE,
        {"status": "failed", "error": error, "choices": dict(choices or {}), "overrides": list(overrides or []),
         "config": config, "started": started,
         "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node()},
    )


def _append_log(job_dir: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        with open(Path(job_dir) / JOB_LOG, "a") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")


def record_lost(job_dir: Path, error: str) -> None:
    """A launcher lost a job (its process or Slurm job died): record it as failed.

    A job that reported in this sweep keeps its record; an ok result.json is kept.
    """
    st = read_status(job_dir)
    if st and st.get("sweep_id") == sweep_id() and st.get("status") in ("ok", "failed", "skipped"):
        return
    res = read_result(job_dir)
    if not res or res.get("status") != "ok":
        res = res or {}
        write_failed_result(job_dir, error, res.get("config"), res.get("choices"), res.get("overrides"), res.get("started"))
    _append_log(job_dir, f"posinfo: {error}")
    record(job_dir, "failed", error)


# --------------------------------------------------------------------------- signals


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` runs (temporary files are removed)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"received {signal.Signals(signum).name}")


def handle_sigterm() -> None:
    """In the sweep process: SIGTERM (and SIGHUP, unless ignored) raise :class:`Terminated`."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        signal.signal(signal.SIGHUP, _raise_terminated)


def _child_interrupt(signum: int, frame: Any) -> None:
    # Unwind once: a second signal (the parent forwarding SIGTERM after a Ctrl-C that
    # reached both) must not cut the clean-up short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(f"received {signal.Signals(signum).name}")


# --------------------------------------------------------------------------- the job's child process


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for logger in [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]:
        for h in logger.handlers:
            with contextlib.suppress(Exception):
                h.flush()


def _child_setup(parent: int) -> None:
    signal.signal(signal.SIGTERM, _child_interrupt)
    signal.signal(signal.SIGINT, _child_interrupt)
    # submitit's preemption/timeout signal is the parent's business (it requeues the Slurm
    # job); the child must neither requeue a second time nor die of it.
    for name in ("SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if hasattr(signal, "SIGCONT"):
        signal.signal(signal.SIGCONT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        # The job holds the memory: let the out-of-memory killer take it, not the sweep.
        with contextlib.suppress(OSError, ValueError):
            p = Path("/proc/self/oom_score_adj")
            p.write_text(str(min(1000, max(int(p.read_text()), 0) + 500)))
    if os.getppid() != parent:  # the parent died before PDEATHSIG was set
        raise Terminated("the sweep process is gone")


def run_in_child(fn: Callable[[], int]) -> int:
    """Run ``fn`` in a forked child; return its exit code (negative: killed by that signal).

    An interrupt of the parent while it waits stops the child (SIGTERM, then SIGKILL after
    STOP_GRACE_S) before it propagates.
    """
    _flush_all()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never return into the parent's stack
        code = 1
        try:
            _child_setup(parent)
            code = int(fn() or 0)
        except Terminated:
            code = 128 + signal.SIGTERM
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                _flush_all()
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        stop_child(pid)
        raise
    return os.waitstatus_to_exitcode(status)


def stop_child(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            time.sleep(0.05)


def describe_exit(code: int) -> str:
    """One line for a job process that ended without writing its result."""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        hint = " (out of memory? see `dmesg`)" if -code == signal.SIGKILL else ""
        return f"job process killed by {name}{hint}"
    if code == 128 + signal.SIGTERM:
        if os.environ.get("SLURM_JOB_ID"):
            return "job process interrupted (SIGTERM: Slurm cancelled the job, or it ran out of time)"
        return "job process interrupted (SIGTERM)"
    if code == 128 + signal.SIGINT:
        return "job process interrupted (SIGINT)"
    return f"job process exited with status {code} without writing its result"


def _isolate() -> bool:
    """Fork a child per job: by default on Linux (fork is unsafe on macOS, absent on Windows)."""
    default = "1" if sys.platform.startswith("linux") else "0"
    return hasattr(os, "fork") and os.environ.get(ISOLATE_ENV, default).strip().lower() not in ("0", "false", "no", "off")


_PRELOADED = False


def _preload() -> None:
    """Import, once in the parent, what every job imports, so that forked children start warm.

    Imports only: the parent must never compute with torch (see the module docstring).
    """
    global _PRELOADED
    if _PRELOADED:
        return
    _PRELOADED = True
    with contextlib.suppress(Exception):
        import pandas  # noqa: F401
        import PIL.ImageDraw  # noqa: F401
        import PIL.ImageFont  # noqa: F401
        import tqdm.auto  # noqa: F401


# --------------------------------------------------------------------------- GPUs


def gpu_lock_dir() -> Path:
    env = os.environ.get(GPU_LOCK_DIR_ENV)
    if env:
        return Path(env)
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"posinfo-gpus-{uid}"


def _gpu_ids(n: int) -> list[str]:
    """Names of the visible GPUs for the lock files: physical ids when CUDA_VISIBLE_DEVICES says."""
    vis = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [re.sub(r"[^\w.-]", "_", v) for v in vis[:n]] if len(vis) >= n else [str(i) for i in range(n)]


@contextlib.contextmanager
def claim_gpu(device: str, max_jobs_per_gpu: int = 256) -> Iterator[str]:
    """On a machine with several GPUs, give each concurrent job the least busy GPU.

    For ``device=auto`` or ``cuda`` with two or more visible GPUs, the job holds a lock
    file ``gpu<id>.<slot>.lock`` (in ``$POSINFO_GPU_LOCK_DIR``, default
    ``$TMPDIR/posinfo-gpus-<uid>``) for as long as it runs, taking slot 0 of every GPU
    before slot 1 of any: parallel jobs (joblib) spread over the GPUs instead of piling
    onto GPU 0, and more jobs than GPUs share them evenly. A lock dies with its process.
    One GPU, the CPU, or an explicit ``cuda:N`` are left as they are.
    """
    device = str(device)
    if device not in ("auto", "cuda"):
        yield device
        return
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        yield device
        return
    from filelock import FileLock, Timeout

    lock_dir = gpu_lock_dir()
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        probe = lock_dir / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        log.warning("cannot use %s for GPU locks (%s): not spreading jobs over the GPUs", lock_dir, e)
        yield device
        return
    ids = _gpu_ids(n)
    for slot in range(max_jobs_per_gpu):
        for i in range(n):
            lock = FileLock(str(lock_dir / f"gpu{ids[i]}.{slot}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                log.info("using GPU %d of %d%s", i, n, f" (shared by {slot + 1} jobs)" if slot else "")
                yield f"cuda:{i}"
            finally:
                lock.release()
            return
    yield device  # more than max_jobs_per_gpu jobs per GPU: give up spreading


# --------------------------------------------------------------------------- the task function


def _hydra_context() -> tuple[Path, dict, list[str], bool]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    return Path(hc.runtime.output_dir), choices, list(hc.overrides.task), hc.mode == RunMode.MULTIRUN


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _run_job(cfg: DictConfig, job_dir: Path, choices: dict, overrides: list[str]) -> int:
    """Claim a GPU, run the job; 0 if it succeeded, 1 if it failed (result.json says why)."""
    from posinfo import job

    try:
        with claim_gpu(str(cfg.device)) as dev:
            if dev != str(cfg.device):
                cfg = cfg.copy()
                OmegaConf.update(cfg, "device", dev, force_add=True)
            job.run(cfg, job_dir, choices=choices, overrides=overrides)
        return 0
    except Exception as e:
        res = read_result(job_dir)
        if not res or res.get("status") != "failed":  # failed outside job.run
            _append_log(job_dir, traceback.format_exc())
            with contextlib.suppress(Exception):
                write_failed_result(job_dir, _first_line(e), OmegaConf.to_container(cfg, resolve=True), choices, overrides)
        return 1


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
    if _run_job(cfg, job_dir, choices, overrides) != 0:
        error = (read_result(job_dir) or {}).get("error") or "failed"
        # A single run: one line for the user, the traceback is in the job log.
        print(f"posinfo: error: {error}", file=sys.stderr)
        sys.exit(1)
    return read_result(job_dir)


def _dry_mark(cfg: DictConfig, done: bool, why: str) -> str:
    return "done (would skip)" if done and not cfg.get("force") else f"would run ({'force' if done else why})"


def _run_in_sweep(cfg: DictConfig, job_dir: Path, choices: dict, overrides: list[str]) -> dict | None:
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # e.g. a missing mandatory value: this job fails, the sweep goes on
        error = _first_line(e)
        job_dir.mkdir(parents=True, exist_ok=True)
        _append_log(job_dir, traceback.format_exc())
        write_failed_result(job_dir, error, None, choices, overrides)
        record(job_dir, "failed", error)
        log.error("job failed: %s", error)
        return None
    done, why = is_done(job_dir, config)
    if cfg.get("dry_run"):
        print(f"[dry run] {_dry_mark(cfg, done, why):<28} {job_dir}", flush=True)
        record(job_dir, "dry_run:" + ("done" if done and not cfg.get("force") else "todo"))
        return None
    if done and not cfg.get("force"):
        log.info("done, skipped: %s", job_dir)
        record(job_dir, "skipped")
        return read_result(job_dir)
    if why == "config changed":
        log.warning("config changed since the last run in %s: re-running", job_dir)

    _remove_stale_temporaries(job_dir)
    started = _now()
    record(job_dir, "running", started=started)
    if _isolate():
        from posinfo import job  # noqa: F401  (imported here, once: children start warm)

        _preload()
        code = run_in_child(lambda: _run_job(cfg, job_dir, choices, overrides))
    else:
        code = _run_job(cfg, job_dir, choices, overrides)
    finished = _now()
    res = read_result(job_dir)
    if code == 0 and res and res.get("status") == "ok":
        record(job_dir, "ok", started=started, finished=finished)
        return res
    if res and res.get("status") == "failed" and res.get("error"):
        error = str(res["error"])
    else:  # it died without a word: say how, in result.json and the job log
        error = describe_exit(code) if code != 0 else "job ended without writing an ok result.json"
        write_failed_result(job_dir, error, config, choices, overrides,
                            started=started[:19] + "+00:00" if started else None)
        log.error("job failed: %s", error)
        _append_log(job_dir, f"posinfo: {error}")
    record(job_dir, "failed", error, started=started, finished=finished)
    return None


def _remove_stale_temporaries(job_dir: Path) -> None:
    """Temporary files (``.<name>.<random>.tmp``, posinfo.io.atomic_path) left by a job that
    was killed outright (SIGKILL: e.g. joblib kills its workers' process trees on an
    interrupt). Nothing else works in this folder now: this job is about to run."""
    for p in Path(job_dir).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


# --------------------------------------------------------------------------- the summary

FINAL = ("ok", "failed", "skipped", "interrupted", "running", "dry_run:done", "dry_run:todo")


def summarize_sweep(sweep_dir: Path, run_id: str | None, since: str) -> dict[str, list[tuple[Path, str | None]]]:
    """Every job of ``sweep_dir`` that reported in this sweep, by status.

    A job belongs to this sweep if its record carries this sweep's id (``run_id``); a
    record without one (a cluster that does not pass the environment on) counts if it
    was written at or after ``since``.
    """
    out: dict[str, list[tuple[Path, str | None]]] = {k: [] for k in FINAL}
    if not Path(sweep_dir).is_dir():
        return out
    for p in sorted(Path(sweep_dir).rglob(STATUS_FILE)):
        try:
            st = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(st, dict):
            continue
        sid = st.get("sweep_id")
        mine = sid == run_id if (sid and run_id) else str(st.get("time", "")) >= since
        if mine:
            out.setdefault(str(st.get("status")), []).append((p.parent, st.get("error")))
    return out


def format_summary(s: dict[str, list], expected: int | None, sweep_dir: Path | None = None,
                   aborted: str | None = None) -> tuple[str, bool]:
    """The summary's text, and whether the sweep succeeded (every job done, none failed)."""
    where = f" in {sweep_dir}" if sweep_dir is not None else ""
    if s.get("dry_run:done") or s.get("dry_run:todo"):
        todo, done = len(s["dry_run:todo"]), len(s["dry_run:done"])
        text = f"posinfo dry run{where}: {todo + done} job(s): {todo} would run, {done} already done (nothing was run)"
        missing = (expected - todo - done) if expected is not None else 0
        if missing > 0:
            text += f"\n  {missing} job(s) not listed"
        return text, True
    ok, skipped, interrupted = s.get("ok", []), s.get("skipped", []), s.get("interrupted", [])
    failed, unfinished = list(s.get("failed", [])), []
    # Still "running" at the end: its process died without a word (a killed worker or
    # Slurm job); in an interrupted sweep, it was stopped with it (joblib), or it is still
    # running (a Slurm job goes on when the command that waits for it is interrupted).
    if aborted == "interrupted":
        unfinished = list(s.get("running", []))
    else:
        failed += [(d, "job process died without reporting (killed? out of memory?)") for d, _ in s.get("running", [])]
    reported = len(ok) + len(failed) + len(skipped) + len(interrupted) + len(unfinished)
    total = max(expected, reported) if expected is not None else reported
    missing = total - reported
    head = "posinfo sweep" + (f" ({aborted})" if aborted else "")
    parts = [f"{len(ok) + len(failed)} ran ({len(ok)} succeeded, {len(failed)} failed)", f"{len(skipped)} skipped (done)"]
    if interrupted:
        parts.append(f"{len(interrupted)} interrupted")
    if unfinished:
        parts.append(f"{len(unfinished)} unfinished")
    if missing:
        parts.append(f"{missing} never reported")
    lines = [f"{head}{where}: {total} job(s): " + ", ".join(parts)]
    for d, err in failed:
        lines.append(f"  FAILED {d}: {err}")
    for d, _ in interrupted:
        lines.append(f"  INTERRUPTED {d}")
    for d, _ in unfinished:
        lines.append(f"  UNFINISHED {d} (stopped with the sweep, or a Slurm job still running)")
    if missing:
        lines.append(f"  {missing} job(s) never reported (not started, killed, or lost by the launcher)")
    if failed or missing or interrupted or unfinished:
        lines.append("  re-run the same command to run the failed and missing jobs (finished ones are skipped)")
    return "\n".join(lines), not (failed or missing or interrupted or unfinished)


# --------------------------------------------------------------------------- the command line


def cli(main: Callable[[], Any]) -> None:
    """Run sweep.py's Hydra ``main``: SIGTERM as an interrupt, a summary even for an aborted sweep."""
    from posinfo.callbacks import report_unfinished

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
