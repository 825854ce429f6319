"""Crash isolation and interrupts: each job of a multirun in a forked child process.

A job that dies hard (``os._exit``, SIGKILL from the out-of-memory killer, a segfault in
a native library) takes only its child down; the parent (the sweep process, a joblib
worker or a Slurm task) records the failure, writes a failed ``result.json`` and goes on
with the next job. The parent never runs torch computations itself: GNU OpenMP is not
fork-safe once it has started its threads, so a parent that had computed would hang its
children. ``POSINFO_ISOLATE=0`` runs jobs in-process (e.g. to use a debugger); that is
the default where fork is not safe (macOS) or absent (Windows).

Interrupts: ``Ctrl-C`` raises KeyboardInterrupt and SIGTERM raises :class:`Terminated`
(a KeyboardInterrupt), in the sweep process and in a job's child, so every ``finally``
runs: temporary files are removed, no ``result.json`` is written (job.run writes it only
once the job has finished or failed), and a re-run re-runs the job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from posinfo.names import ISOLATE_ENV

# Seconds a job's child has to clean up after SIGTERM before it is killed.
STOP_GRACE_S = 30.0

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


def isolate() -> bool:
    """Fork a child per job: by default on Linux (fork is unsafe on macOS, absent on Windows)."""
    default = "1" if sys.platform.startswith("linux") else "0"
    return hasattr(os, "fork") and os.environ.get(ISOLATE_ENV, default).strip().lower() not in ("0", "false", "no", "off")


_PRELOADED = False


def preload() -> None:
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
