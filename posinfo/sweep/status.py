"""A job's state on disk: done or not (resume), its status record for the sweep summary,
failed results for jobs that could not write their own, and the summary itself.

Hydra 1.3 re-raises only the first failure of a multirun, after the whole batch, and
skips ``on_multirun_end`` when a job raised. So in a multirun a job never raises: it
records its outcome in ``<job_dir>/.posinfo_status.json`` (STATUS_FILE) and returns;
the summary callback (posinfo.sweep.summary) reads those records at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from posinfo.io import jsonable, read_result, write_json
from posinfo.schema import with_defaults
from posinfo.sweep.outputs import failure_dir
from posinfo.names import JOB_LOG, RESULT_FILE, RUN_CONTROL_KEYS, STATUS_FILE, SWEEP_ID_ENV, covered_by, utc_now

def _plain(config: dict) -> dict:
    """The config as it reads back from result.json (JSON types, NaN as null)."""
    return json.loads(json.dumps(jsonable(config), default=str))


def _without(node: Any, prefix: str = "") -> Any:
    if not isinstance(node, dict):
        return node
    return {k: _without(v, f"{prefix}{k}.") for k, v in node.items() if not covered_by(f"{prefix}{k}", RUN_CONTROL_KEYS)}


def signature(config: dict) -> dict:
    """The part of a resolved config that determines a job's science: no run-control keys, and
    every typed key present (a result written before an option existed has its default), so
    that adding an option does not make every finished job "changed"."""
    return _without(with_defaults(_plain(config)))


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
        {"status": status, "error": error, "sweep_id": sweep_id(), "time": utc_now(),
         "host": platform.node(), "pid": os.getpid(), **extra},
    )


def write_failed_result(job_dir: Path, error: str, config: dict | None = None, choices: dict | None = None,
                        overrides: list | None = None, started: str | None = None) -> None:
    """A failed result.json for a job that could not write its own (killed, crashed hard);
    beside an ok result (in failed/), never over it."""
    write_json(
        failure_dir(job_dir) / RESULT_FILE,
        {"status": "failed", "error": error, "choices": dict(choices or {}), "overrides": list(overrides or []),
         "config": config, "started": started,
         "finished": utc_now(), "host": platform.node()},
    )


def append_log(job_dir: Path, text: str) -> None:
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
    append_log(job_dir, f"posinfo: {error}")
    record(job_dir, "failed", error)


FINAL = ("ok", "failed", "skipped", "interrupted", "running", "dry_run:done", "dry_run:todo", "dry_run:fail")


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
    if s.get("dry_run:done") or s.get("dry_run:todo") or s.get("dry_run:fail"):
        todo, done, fail = len(s["dry_run:todo"]), len(s["dry_run:done"]), len(s["dry_run:fail"])
        text = (f"posinfo dry run{where}: {todo + done + fail} job(s): {todo} would run, "
                + (f"{fail} would fail, " if fail else "") + f"{done} already done (nothing was run)")
        missing = (expected - todo - done - fail) if expected is not None else 0
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
