"""Job directories -> tidy rows: one per job × evaluated input, as written to results.csv.
``result.json`` is the only interface with the jobs (docs/architecture.md), so nothing here
imports the job; configurations are identified from each job's resolved ``config`` (or the
``.hydra`` files of a job without a readable result), never from folder names, and the jobs a
sweep was asked to launch but that never got a folder are listed as missing, not dropped."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from posinfo import sweepgrid
from posinfo.report.cells import BORDER_PREFIX, INTERVAL_COLUMNS, METRICS
from posinfo.kinds import EXTRA_METRICS, lookup
from posinfo.report.intervals import per_image_intervals
from posinfo.report.paper import WEIGHTS_LABEL, attach_paper, paper_weights
from posinfo.encoders import has_encoder, label
from posinfo.errors import PosinfoError
from posinfo.schema import with_defaults
from posinfo.names import INPUT_KINDS, LABEL_KEYS, NOT_JOB_DIRS, RESULT_FILE, RUN_CONTROL_KEYS, covered_by

log = logging.getLogger(__name__)

# Config keys that steer how a job runs or label it, never what it measures.
# The sweep tag `name` is kept: it tells two sweeps of the same grid apart.
_IGNORED = tuple(k for k in RUN_CONTROL_KEYS if k != "name") + LABEL_KEYS
_IDENTITY = {"backbone.name": "backbone", "target.name": "target", "data.name": "data"}
# Always in results.csv, in this order; any other config key joins when it varies.
FIELDS = ("pretraining", "backbone.weights", "backbone.padding", "backbone.taps", "readout.solver", "readout.kernel",
          "readout.depth", "readout.padding", "target.range", "train.seed", "train.epochs",
          "data.num_train", "data.num_test", "data.image_size", "data.normalize", "data.train_dir", "data.test_dir")


# ----------------------------------------------------------------------------- one job

def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _cell_value(key: str, v: Any) -> Any:
    """A config leaf as a CSV/table value: lists as JSON, taps null as 'all'."""
    if key == "backbone.taps" and v is None:
        return "all"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, separators=(",", ":"))
    return v


def _ignored(key: str) -> bool:
    return covered_by(key, _IGNORED) or key.startswith("_")


def _hydra_files(job_dir: Path) -> tuple[dict | None, list[str]]:
    """Config and overrides Hydra saved in ``job_dir/.hydra`` (for jobs without a readable result)."""
    from omegaconf import OmegaConf

    config, overrides = None, []
    try:
        config = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "config.yaml"), resolve=True)
    except Exception:  # absent, unreadable, or an interpolation that no longer resolves
        pass
    try:
        overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    except Exception:
        pass
    return config, overrides


def _read_job(job_dir: Path) -> dict:
    """A job directory as {status, error, config, choices, overrides, metrics, floor_mae}."""
    path = job_dir / RESULT_FILE
    job: dict[str, Any] = {"job_dir": str(job_dir), "status": "failed", "error": None, "config": None,
                           "choices": {}, "overrides": [], "metrics": {}, "floor_mae": None}
    try:
        res = json.loads(path.read_text())
        if not isinstance(res, dict):
            raise ValueError(f"holds a {type(res).__name__}, not an object")
    except FileNotFoundError:
        res = None
        job["status"], job["error"] = "missing", "no result.json (not run yet, still running, or killed)"
    except (OSError, ValueError) as e:
        res = None
        job["error"] = f"unreadable result.json ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    if res is not None:
        job["config"] = res.get("config") if isinstance(res.get("config"), dict) else None
        job["choices"] = res.get("choices") or {}
        job["overrides"] = list(res.get("overrides") or [])
        job["floor_mae"] = res.get("floor_mae")
        training = res.get("training") if isinstance(res.get("training"), dict) else {}
        job["converged"] = training.get("converged")  # None: not recorded (older results, reused readouts)
        status = res.get("status")
        metrics = res.get("metrics") if isinstance(res.get("metrics"), dict) else {}
        if status == "ok" and metrics and job["config"] is not None:
            job["status"], job["metrics"] = "ok", metrics
        elif status == "failed":
            job["error"] = res.get("error") or "failed (no error recorded)"
        elif status == "ok":
            job["error"] = "result.json says ok but has no " + ("metrics" if not metrics else "config")
        else:
            job["error"] = f"result.json has status '{status}'"
    if job["config"] is None or not job["overrides"]:
        config, overrides = _hydra_files(job_dir)
        job["config"] = job["config"] or config
        job["overrides"] = job["overrides"] or overrides
    if job["config"] is not None:  # a result from before an option existed used its default: same cell
        job["config"] = with_defaults(job["config"])
    return job


# ----------------------------------------------------------------------------- all jobs

def expected_jobs(sweep_dir: Path) -> list[list[str]]:
    """The override list of every job a Hydra multirun in ``sweep_dir`` was asked to launch."""
    from omegaconf import OmegaConf

    return sweepgrid.expand_config(OmegaConf.load(sweep_dir / "multirun.yaml")) or []


def find_jobs(dirs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Job directories (a result.json, or Hydra's .hydra/config.yaml) and multirun sweep dirs below ``dirs``."""
    jobs: set[Path] = set()
    sweeps: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise PosinfoError(f"no such directory '{d}': give the folder of a sweep or a job, e.g. outputs/sweeps/table1")
        # A re-run's previous/ and failed/ results (posinfo.sweep.outputs) are not jobs of their own.
        jobs.update(p.parent for p in d.rglob(RESULT_FILE) if not set(p.relative_to(d).parts[:-1]) & set(NOT_JOB_DIRS))
        jobs.update(p.parent.parent for p in d.rglob(".hydra/config.yaml"))
        sweeps.update(p.parent for p in d.rglob("multirun.yaml"))
        if (d / RESULT_FILE).exists():
            jobs.add(d)
    return sorted(jobs), sorted(sweeps)


def collect(dirs: Iterable[str | Path]) -> pd.DataFrame:
    """Every job below ``dirs`` as tidy rows: one per job × evaluated input.

    Failed jobs, unreadable result.json files and jobs that never finished become rows
    with status 'failed' or 'missing' and the reason in ``error``; jobs a sweep was asked
    to launch but that have no folder at all are listed as 'missing' too.
    """
    job_dirs, sweep_dirs = find_jobs(dirs)
    jobs = [_read_job(d) for d in job_dirs]
    # Jobs of a multirun grid that never got a folder.
    for sweep in sweep_dirs:
        try:
            expected = expected_jobs(sweep)
        except Exception as e:  # an unreadable multirun.yaml must not stop the analysis
            log.warning("cannot expand the grid of %s (%s): jobs that never started are not listed", sweep, e)
            continue
        seen = {frozenset(j["overrides"]) for j in jobs if Path(j["job_dir"]).is_relative_to(sweep)}
        for ov in expected:
            if frozenset(ov) not in seen:
                jobs.append({"job_dir": str(sweep / ",".join(o for o in ov if not o.startswith("experiment="))),
                             "status": "missing", "error": "never started (no job folder)", "config": None,
                             "choices": {}, "overrides": ov, "metrics": {}, "floor_mae": None})
    return _tidy(jobs)


def _tidy(jobs: list[dict]) -> pd.DataFrame:
    """Jobs as rows of results.csv: identity, the config fields that matter, metrics, the paper's numbers."""
    flat = [{k: v for k, v in _flatten(j["config"] or {}).items() if not _ignored(k)} for j in jobs]
    keys = sorted({k for f in flat for k in f} - set(_IDENTITY))
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    fields = [k for k in FIELDS if k != "pretraining" or k in keys] + [k for k in varying if k not in FIELDS]
    choice_groups = sorted({g for j in jobs for g in j["choices"]
                            if g not in ("backbone", "target", "data", "input", "experiment", "cache", "analysis")
                            and not g.startswith("hydra")})
    rows = []
    for j, f in zip(jobs, flat):
        cfg = j["config"] or {}
        ch = j["choices"]
        base = {
            "job_dir": j["job_dir"],
            "status": j["status"],
            "error": j["error"],
            "experiment": ch.get("experiment") or cfg.get("experiment_name") or _experiment_from(j["overrides"]),
            "backbone": _backbone_label(cfg.get("backbone") or {}, ch.get("backbone")),
            "target": (cfg.get("target") or {}).get("name", ch.get("target")),
            "input": None,
            "input_set": (cfg.get("input") or {}).get("name", ch.get("input")),
            "data": (cfg.get("data") or {}).get("name", ch.get("data")),
        }
        base.update({g: ch.get(g) for g in choice_groups})
        base.update({k: _cell_value(k, f.get(k)) for k in fields})
        if not has_encoder(base["backbone"]):
            # No encoder: its weights, padding and taps do not exist, so never a difference between rows.
            base.update({"backbone.weights": None, "backbone.padding": None, "backbone.taps": None})
        base.update(paper_weights(cfg))
        base.update({m: None for m in METRICS})
        base["floor_mae"] = j["floor_mae"]
        base["converged"] = j.get("converged")
        if j["status"] == "ok":
            kinds = [k for k in INPUT_KINDS if k in j["metrics"]] + [k for k in j["metrics"] if k not in INPUT_KINDS]
        else:
            kinds = list((cfg.get("input") or {}).get("kinds") or [None])
        boot = per_image_intervals(j["job_dir"]) if j["status"] == "ok" else {}
        kind = lookup(base["target"])  # its metrics beyond the map's (e.g. target=grid's accuracies)
        extra = [k for k in kind.metrics if k in EXTRA_METRICS] if kind is not None else []
        for kind in kinds:
            m = (j["metrics"].get(kind) if kind else None) or {}  # a null entry reads as no metrics
            rows.append({**base, "input": kind, **{k: m.get(k) for k in ("spc", "mae", "n_images", "n_nan")},
                         **{k: m.get(k) for k in extra},
                         **{k: boot.get(kind, {}).get(k) for k in INTERVAL_COLUMNS},
                         **{f"{BORDER_PREFIX}{i + 1}": v for i, v in enumerate(m.get("border_mae") or [])}})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = attach_paper(df)
    return df.drop(columns=[WEIGHTS_LABEL]).reset_index(drop=True)


def _backbone_label(bb: dict, choice: str | None) -> str | None:
    """The backbone's name; for any-model backbones the model too: ``timm/convnext_tiny``, ``module/Net-<hash>``."""
    return label(bb, choice)


def _experiment_from(overrides: list[str]) -> str | None:
    """The preset an override list names (``experiment=...``), if any."""
    for o in overrides:
        if o.startswith("experiment="):
            return o.split("=", 1)[1]
    return None


def read_results_csv(path: str | Path) -> pd.DataFrame:
    """A results.csv as write_report wrote it (empty cells read back as NaN)."""
    return pd.read_csv(path, keep_default_na=True)
