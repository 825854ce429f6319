"""Job directories -> tidy results, paper-style tables beside the paper's numbers, figures.

``result.json`` is the only interface with the jobs (docs/architecture.md): this module
never imports the job. Configurations are identified from each job's resolved ``config``,
never from folder names.

    collect(dirs) -> one row per job × evaluated input (results.csv)
    aggregate(df) -> one row per configuration × input: seeds become mean ± std
    make_tables(cells) -> Table per experiment -> to_markdown / to_latex
    write_report(dirs, out) -> results.csv, tables.md, tables.tex, figures
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from posinfo.errors import PosinfoError

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
INPUTS = ("natural", "black", "white", "noise")
TARGETS = ("hor", "ver", "gau", "horstp", "verstp")
BACKBONES = ("posenet", "vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
STRIPES = ("horstp", "verstp")
PADDINGS = ("zeros", "none", "reflect", "replicate", "circular")
PAPER_TABLES = ("table1", "table2a", "table2b", "table3", "table4", "table6")
PAPER = "Islam, Jia & Bruce (ICLR 2020)"
# The paper's protocol (SPEC.md): what a configuration must share to be a reproduction.
PAPER_TRAIN = {"epochs": 15, "batch_size": 32, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "lr_milestones": [10]}
PAPER_SIZE = 224

# Config keys that steer how a job runs or label it, never what it measures.
_IGNORED = ("device", "force", "dry_run", "cache", "experiment_name", "data.num_workers", "input.name", "input.kinds",
            "saliency_weights", "segmentation_weights", "pretrained_weights")
_IDENTITY = {"backbone.name": "backbone", "target.name": "target", "data.name": "data"}
# Always in results.csv, in this order; any other config key joins when it varies.
FIELDS = ("pretraining", "backbone.weights", "backbone.padding", "backbone.taps", "readout.kernel",
          "readout.depth", "readout.padding", "target.range", "train.seed", "train.epochs",
          "data.num_train", "data.num_test", "data.image_size", "data.normalize", "data.train_dir", "data.test_dir")
# Fields that distinguish replicates, not configurations.
REPLICATE_FIELDS = ("train.seed",)
METRICS = ("spc", "mae", "n_images", "n_nan", "floor_mae")
# Which paper table a swept field points at, when several tables hold the same cell.
_FIELD_TABLE = {"readout.depth": "table2a", "readout.kernel": "table2b", "backbone.taps": "table3",
                "readout.padding": "table4", "backbone.padding": "table4", "pretraining": "table6",
                "backbone.weights": "table6"}


# ----------------------------------------------------------------------------- collect

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
    return any(key == p or key.startswith(p + ".") for p in _IGNORED) or key.startswith("_")


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
    return job


def _expected_jobs(sweep_dir: Path) -> list[list[str]]:
    """The override list of every job a Hydra multirun in ``sweep_dir`` was asked to launch."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
    node = cfg.hydra.sweeper.get("params")  # None for a grid given only on the command line
    params = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    args = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in cfg.hydra.overrides.task]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    return [job for batch in batches for job in batch]


def find_jobs(dirs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Job directories (a result.json, or Hydra's .hydra/config.yaml) and multirun sweep dirs below ``dirs``."""
    jobs: set[Path] = set()
    sweeps: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise PosinfoError(f"no such directory '{d}': give the folder of a sweep or a job, e.g. outputs/sweeps/table1")
        jobs.update(p.parent for p in d.rglob(RESULT_FILE))
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
            expected = _expected_jobs(sweep)
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
    flat = [{k: v for k, v in _flatten(j["config"] or {}).items() if not _ignored(k)} for j in jobs]
    keys = sorted({k for f in flat for k in f} - set(_IDENTITY))
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    fields = [k for k in FIELDS if k != "pretraining" or k in keys] + [k for k in varying if k not in FIELDS]
    choice_groups = sorted({g for j in jobs for g in j["choices"]
                            if g not in ("backbone", "target", "data", "input", "experiment", "cache")
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
            "backbone": (cfg.get("backbone") or {}).get("name", ch.get("backbone")),
            "target": (cfg.get("target") or {}).get("name", ch.get("target")),
            "input": None,
            "input_set": (cfg.get("input") or {}).get("name", ch.get("input")),
            "data": (cfg.get("data") or {}).get("name", ch.get("data")),
        }
        base.update({g: ch.get(g) for g in choice_groups})
        base.update({k: _cell_value(k, f.get(k)) for k in fields})
        if base["backbone"] == "posenet":
            # No encoder: its weights, padding and taps do not exist, so never a difference between rows.
            base.update({"backbone.weights": None, "backbone.padding": None, "backbone.taps": None})
        base.update(_paper_weights(cfg))
        base.update({m: None for m in METRICS})
        base["floor_mae"] = j["floor_mae"]
        if j["status"] == "ok":
            kinds = [k for k in INPUTS if k in j["metrics"]] + [k for k in j["metrics"] if k not in INPUTS]
        else:
            kinds = list((cfg.get("input") or {}).get("kinds") or [None])
        for kind in kinds:
            m = j["metrics"].get(kind, {}) if kind else {}
            rows.append({**base, "input": kind, **{k: m.get(k) for k in ("spc", "mae", "n_images", "n_nan")}})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = attach_paper(df)
    return df.drop(columns=["_weights_label"]).reset_index(drop=True)


def _experiment_from(overrides: list[str]) -> str | None:
    for o in overrides:
        if o.startswith("experiment="):
            return o.split("=", 1)[1]
    return None


def _paper_weights(cfg: dict) -> dict:
    """Which of the paper's pretrainings a weights value is: imagenet, random, VGG-SOD, VGG-SS or a file."""
    w = (cfg.get("backbone") or {}).get("weights")
    if w in ("imagenet", "random", "none", None):
        return {"_weights_label": w}
    if w == cfg.get("saliency_weights"):
        return {"_weights_label": "VGG-SOD"}
    if w == cfg.get("segmentation_weights"):
        return {"_weights_label": "VGG-SS"}
    return {"_weights_label": "file"}


def read_results_csv(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=True)


# ----------------------------------------------------------------------------- the paper

def paper_table() -> pd.DataFrame:
    """The paper's Tables 1, 2a, 2b, 3, 4 and 6 (the copy shipped inside the package)."""
    text = resources.files("posinfo").joinpath("paper_tables.csv").read_text()
    from io import StringIO

    df = pd.read_csv(StringIO(text), dtype={"variant": str}, keep_default_na=False)
    for c in ("spc", "mae"):
        df[c] = df[c].astype(float)
    return df


def paper_variants(row: dict) -> list[tuple[str, str]]:
    """Every (table, variant) of paper_tables.csv whose configuration this row has.

    The paper's default readout is k=3, depth 1, padding 0 on all taps of a zero-padded
    backbone with ImageNet weights; each table changes one thing. Random weights still
    match (the table then says so in a note); other weight files match only Table 6.
    """
    def num(k):
        try:
            return int(row.get(k))
        except (TypeError, ValueError):
            return None

    k, d, p = num("readout.kernel"), num("readout.depth"), num("readout.padding")
    taps = row.get("backbone.taps")
    all_taps = _isnan(taps) or taps == "all" or (row.get("backbone") == "vgg16" and taps == "[1,2,3,4,5]")
    zeros = _isnan(row.get("backbone.padding")) or row.get("backbone.padding") == "zeros"
    w = row.get("_weights_label")
    out: list[tuple[str, str]] = []
    if w in ("imagenet", "random", "none", None):
        if (k, d, p) == (3, 1, 0) and all_taps and zeros:
            out.append(("table1", ""))
        if (k, p) == (3, 0) and all_taps and zeros:
            out.append(("table2a", f"readout.depth={d}"))
        if (d, p) == (1, 0) and all_taps and zeros:
            out.append(("table2b", f"readout.kernel={k}"))
        if (k, d, p) == (3, 1, 0) and zeros:
            single = re.fullmatch(r"\[(\d)\]", str(taps))
            if all_taps or single:
                out.append(("table3", "features=" + (f"f{single.group(1)}" if single else "all")))
        if (k, d) == (3, 1) and all_taps and zeros:
            out.append(("table4", f"readout.padding={p}"))
        if (k, d, p) == (3, 1, 0) and all_taps:
            out.append(("table4", f"backbone.padding={row.get('backbone.padding')}"))
    elif w in ("VGG-SOD", "VGG-SS") and (k, d, p) == (3, 1, 0) and all_taps and zeros:
        out.append(("table6", f"pretraining={w}"))
    return out


def _preferred_tables(group: pd.DataFrame) -> list[str]:
    """Paper tables in the order to look a cell up: the experiment's own, then what it sweeps."""
    order: list[str] = []
    exp = group["experiment"].dropna().unique()
    if len(exp) == 1 and exp[0] in PAPER_TABLES:
        order.append(exp[0])
    for f, t in _FIELD_TABLE.items():
        if f in group and _n_values(group[f]) > 1 and t not in order:
            order.append(t)
    return order + [t for t in PAPER_TABLES if t not in order]


def attach_paper(df: pd.DataFrame) -> pd.DataFrame:
    """Add paper_table, paper_spc, paper_mae to every row whose configuration the paper reports."""
    paper = paper_table().set_index(["table", "target", "backbone", "variant", "input"])
    out = df.copy()
    out["paper_table"], out["paper_spc"], out["paper_mae"] = None, np.nan, np.nan
    for _, idx in out.groupby(out["experiment"].fillna(""), dropna=False).groups.items():
        order = _preferred_tables(out.loc[idx])
        for i in idx:
            row = out.loc[i].to_dict()
            keys = [(t, row["target"], row["backbone"], v, row["input"]) for t, v in paper_variants(row)]
            hits = sorted((order.index(k[0]), k) for k in keys if k in paper.index)
            if hits:
                key = hits[0][1]
                out.at[i, "paper_table"] = key[0]
                out.at[i, "paper_spc"], out.at[i, "paper_mae"] = (float(paper.loc[key, c]) for c in ("spc", "mae"))
    return out


# ----------------------------------------------------------------------------- aggregate

def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _n_values(s: pd.Series) -> int:
    """How many distinct values a column takes, not counting missing ones."""
    return as_text(s)[s.map(lambda v: not _isnan(v))].nunique()


def as_text(s: pd.Series) -> pd.Series:
    """Values as text, missing ones as '' (astype(str) keeps NaN as NaN on pandas 3)."""
    return s.map(lambda v: "" if _isnan(v) else str(v)).astype(object)


def _sort_key(v: Any) -> tuple:
    """Natural order for table rows: the paper's order for names, numbers by value, 'all' last."""
    for order in (TARGETS, BACKBONES, INPUTS, PADDINGS):
        if v in order:
            return (0, order.index(v), "")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (3, 0, "")
    if v == "all":
        return (2, 0, "")
    try:
        return (1, float(v), "")
    except (TypeError, ValueError):
        return (1, math.inf, str(v))


_AGGREGATES = ("spc_std", "mae_std", "n_ok", "n_failed", "n_missing", "seeds", "job_dirs")


def config_fields(df: pd.DataFrame) -> list[str]:
    """Columns of ``df`` that identify a configuration (replicates differ only outside these)."""
    skip = {"job_dir", "status", "error", "input", "paper_table", "paper_spc", "paper_mae", *METRICS, *REPLICATE_FIELDS,
            *_AGGREGATES}
    return [c for c in df.columns if c not in skip]


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration × input: mean ± std over replicates (seeds), NaN counts summed."""
    keys = config_fields(df) + ["input"]
    filled = df.copy()
    filled[keys] = filled[keys].astype(object).where(filled[keys].notna(), "<none>")
    cells = []
    for _, g in filled.groupby(keys, dropna=False, sort=False):
        ok = g[g.status == "ok"]
        spc = ok.spc.dropna().astype(float)
        mae = ok.mae.dropna().astype(float)
        first = g.iloc[0]
        cell = {k: (None if first[k] == "<none>" else first[k]) for k in keys}
        cell.update(
            spc=spc.mean() if len(spc) else np.nan,
            spc_std=spc.std(ddof=1) if len(spc) > 1 else np.nan,
            mae=mae.mean() if len(mae) else np.nan,
            mae_std=mae.std(ddof=1) if len(mae) > 1 else np.nan,
            n_ok=len(ok),
            n_failed=int((g.status == "failed").sum()),
            n_missing=int((g.status == "missing").sum()),
            n_nan=int(ok.n_nan.fillna(0).sum()),
            n_images=int(ok.n_images.fillna(0).sum()),
            floor_mae=g.floor_mae.dropna().astype(float).mean() if g.floor_mae.notna().any() else np.nan,
            seeds=sorted({s for s in ok.get("train.seed", pd.Series(dtype=object)).dropna()}),
            job_dirs=list(ok.job_dir),
            paper_table=g.paper_table.dropna().iloc[0] if g.paper_table.notna().any() else None,
            paper_spc=g.paper_spc.dropna().iloc[0] if g.paper_spc.notna().any() else np.nan,
            paper_mae=g.paper_mae.dropna().iloc[0] if g.paper_mae.notna().any() else np.nan,
        )
        cells.append(cell)
    return pd.DataFrame(cells)


# ----------------------------------------------------------------------------- tables

@dataclass
class Row:
    labels: list[str]
    source: str  # "ours", "paper T1" (or "paper T1/T4"), "floor"
    cells: dict[str, tuple[str, str]]  # column -> (SPC, MAE)
    marks: str = ""


@dataclass
class Table:
    name: str
    title: str
    row_fields: list[str]
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unplaced: list[dict] = field(default_factory=list)  # failed/missing jobs


def fmt(x: float | None, std: float | None = None) -> str:
    """The paper's style: three decimals, no leading zero (.742, -.001)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    s = re.sub(r"^(-?)0\.", r"\1.", f"{x:.3f}")
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += " ± " + re.sub(r"^0\.", ".", f"{std:.3f}")
    return s


def fmt_paper(x: float) -> str:
    """A paper number as the paper prints it: its undefined SPCs (constant predictions) read .0."""
    return ".0" if x == 0 else fmt(x)


_SHORT = {"readout.kernel": "k", "readout.depth": "depth", "readout.padding": "pad", "backbone.padding": "backbone pad",
          "backbone.taps": "taps", "backbone.weights": "weights", "pretraining": "", "train.seed": "seed"}
# Config columns that are never a table's row field: labels, or restated by the target label.
_NOT_ROW_FIELDS = ("experiment", "backbone", "target", "target.range", "input_set", "readout", "train",
                   "target_label", "config_label")


def _display_fields(cells: pd.DataFrame, candidates: list[str]) -> list[str]:
    """Fields that vary, minus any that only restate another (pretraining ↔ backbone.weights)."""
    keep: list[str] = []
    for f in candidates:
        if f not in cells or _n_values(cells[f]) < 2:
            continue
        as_str = pd.DataFrame({c: as_text(cells[c]) for c in [f, *keep]})
        redundant = any(
            as_str.groupby(g)[f].nunique().max() == 1 and as_str.groupby(f)[g].nunique().max() == 1 for g in keep
        )
        if not redundant:
            keep.append(f)
    return keep


def label_cells(cells: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Add target_label and config_label; return the row fields each experiment varies.

    target_label is the target, with its range when an experiment has stripes in both
    ranges ("horstp [signed]"); config_label names a row of a table or a bar of a figure
    ("vgg16 pad=1").
    """
    cells = cells.copy()
    cells["experiment"] = cells["experiment"].fillna("jobs")
    cells["target_label"] = cells["target"]
    cells["config_label"] = as_text(cells["backbone"])
    fields_of: dict[str, list[str]] = {}
    for name, g in cells.groupby("experiment"):
        if "target.range" in g and _n_values(g["target.range"]) > 1:
            stripe = g.target.isin(STRIPES)
            cells.loc[g.index[stripe], "target_label"] = g.target[stripe] + " [" + as_text(g["target.range"][stripe]) + "]"
        candidates = [f for f in config_fields(g) if f not in _NOT_ROW_FIELDS and not f.startswith("experiment/")]
        fields = _display_fields(g, candidates)
        fields_of[name] = fields
        for i, r in g.iterrows():
            parts = [str(r["backbone"])] + [
                (f"{_SHORT.get(f, f)}={r[f]}" if _SHORT.get(f, f) else str(r[f])) for f in fields
            ]
            cells.at[i, "config_label"] = " ".join(parts)
    return cells, fields_of


def _differs(value: Any, paper: Any) -> bool:
    """Whether a config value differs from the paper's; a missing value is not a difference."""
    if _isnan(value) or value == "":
        return False
    try:
        return not math.isclose(float(value), float(paper), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(value).replace(" ", "") != json.dumps(paper, separators=(",", ":"))


def _deviations(c: dict) -> list[str]:
    """How this configuration's protocol differs from the paper's (so it is no reproduction)."""
    out = []
    if c.get("data") == "embedded":
        out.append("embedded images (procedural dead leaves), not the paper's DUTS-TR (train) / PASCAL-S (test)")
    elif c.get("data") == "folder":
        tr, te = str(c.get("data.train_dir")), str(c.get("data.test_dir"))
        if "duts" not in tr.lower() or "pascal" not in te.lower():
            out.append(f"images from {tr} / {te}, not DUTS-TR / PASCAL-S")
        for k, n in (("data.num_train", 10553), ("data.num_test", 850)):
            if _differs(c.get(k), n):
                out.append(f"{k}={c[k]:g} (paper: {n})" if isinstance(c[k], float) else f"{k}={c[k]} (paper: {n})")
    if c.get("backbone") != "posenet" and c.get("backbone.weights") == "random":
        out.append("random backbone weights (a control), not ImageNet")
    for k, v in [*PAPER_TRAIN.items(), ("image_size", PAPER_SIZE)]:
        key = f"data.{k}" if k == "image_size" else f"train.{k}"
        if _differs(c.get(key), v):
            shown = f"{c[key]:g}" if isinstance(c[key], float) else c[key]
            out.append(f"{key}={shown} (paper: {v})")
    if c.get("data.normalize") not in (None, "none", "") and not _isnan(c.get("data.normalize")):
        out.append(f"data.normalize={c['data.normalize']} (the authors normalise nothing)")
    return out


def _ours_cell(c: Any) -> tuple[str, str]:
    """(SPC, MAE) text of one aggregated cell: NaN images counted, failed/missing runs said."""
    if c["n_ok"] == 0:
        word = "failed" if c["n_failed"] else "missing"
        return word, word
    spc = fmt(c["spc"], c["spc_std"])
    if c["n_nan"]:
        spc += f" (NaN {c['n_nan']}/{c['n_images']})"
    mae = fmt(c["mae"], c["mae_std"])
    lost = [f"+{c[k]} {k[2:]}" for k in ("n_failed", "n_missing") if c[k]]
    if lost:
        mae += " (" + ", ".join(lost) + ")"
    return spc, mae


def _title(name: str, tables: set[str]) -> str:
    if name in PAPER_TABLES:
        return f"{name}: ours beside {PAPER}, Table {name[5:]}"
    if tables:
        return f"{name}: ours beside {PAPER}, where the paper has the same configuration"
    return f"{name}: ours"


def make_tables(cells: pd.DataFrame, jobs: pd.DataFrame | None = None) -> list[Table]:
    """One paper-style table per experiment, laid out by what varies in it.

    Several inputs: the paper's Table 1 layout (rows target × backbone × what else varies,
    columns input × {SPC, MAE}) with a floor row under each target. One input: one row
    per configuration with a column per swept field, columns target × {SPC, MAE}, and a
    floor row. Paper rows sit under ours wherever the paper has the same configuration.
    """
    cells, fields_of = label_cells(cells[cells.backbone.notna() & cells.target.notna()])
    tables = []
    for name in sorted(cells["experiment"].unique(), key=_sort_key):
        g = cells[cells["experiment"] == name]
        by_input = g["input"].dropna().nunique() > 1
        col_key = "input" if by_input else "target_label"
        columns = sorted(g[col_key].dropna().unique(), key=lambda v: _sort_key(str(v).split(" [")[0]))
        row_fields = (["target_label"] if by_input else []) + ["backbone"] + fields_of[name]
        t = Table(name, _title(name, set(g.paper_table.dropna())), row_fields, [str(c) for c in columns])
        g = g.assign(**{f"_k{i}": g[f].map(_sort_key) for i, f in enumerate(row_fields)})
        g = g.sort_values([f"_k{i}" for i in range(len(row_fields))], kind="stable")
        g = g.assign(_row=["\x1f".join(map(str, vals)) for vals in g[row_fields].itertuples(index=False)])
        blocks = g.groupby("target_label", sort=False) if by_input else [(None, g)]

        deviations: dict[str, int] = {}
        ours_rows: list[tuple[Row, list[int]]] = []
        for _, block in blocks:
            for _, rg in block.groupby("_row", sort=False):
                first = rg.iloc[0].to_dict()
                row = Row(["–" if _isnan(first[f]) else str(first[f]) for f in row_fields], "ours", {str(r[col_key]): _ours_cell(r) for _, r in rg.iterrows()})
                t.rows.append(row)
                ours_rows.append((row, [deviations.setdefault(d, len(deviations) + 1) for d in _deviations(first)]))
                paper = rg[rg.paper_table.notna()]
                if len(paper):
                    which = "/".join(sorted({"T" + str(x)[5:] for x in paper.paper_table}))
                    t.rows.append(Row([""] * len(row_fields), f"paper {which}",
                                      {str(r[col_key]): (fmt_paper(r.paper_spc), fmt_paper(r.paper_mae)) for _, r in paper.iterrows()}))
            floors = {
                str(col): ("", "/".join(fmt(v) for v in sorted({round(float(x), 3) for x in fg.floor_mae.dropna()})))
                for col, fg in block.groupby(col_key) if fg.floor_mae.notna().any()
            }
            if floors:
                label = [str(block.iloc[0]["target_label"]) if by_input else ""] + [""] * (len(row_fields) - 1)
                t.rows.append(Row(label, "floor", floors))
        t.notes = _notes(g, deviations, ours_rows)
        tables.append(t)

    if jobs is not None:
        bad = jobs[jobs.status != "ok"].drop_duplicates("job_dir")
        exp = bad["experiment"].fillna("jobs")
        for t in tables:
            t.unplaced = bad[exp == t.name][["job_dir", "status", "error"]].to_dict("records")
        orphans = bad[~exp.isin({t.name for t in tables})]
        if len(orphans):
            tables.append(Table("unidentified", "Jobs whose configuration could not be read", [], [],
                                unplaced=orphans[["job_dir", "status", "error"]].to_dict("records")))
    return tables


def _notes(g: pd.DataFrame, deviations: dict[str, int], ours_rows: list[tuple[Row, list[int]]]) -> list[str]:
    """Whose numbers are whose, NaN counts, seeds, and how our protocol differs from the paper's."""
    notes = [
        "SPC = Spearman correlation, MAE = mean absolute error, each the mean over test images. "
        "'ours' rows come from these job directories; 'paper Tn' rows are the numbers printed in "
        f"{PAPER}, Table n, for the same configuration; 'floor' is the MAE of the best constant "
        "prediction for that target: an MAE at its floor means no position information, whatever the SPC."
    ]
    if (g.n_nan > 0).any():
        notes.append("NaN k/N: k of N test images got a constant prediction, whose SPC is undefined; the SPC "
                     "shown is the mean over the other images (– if none; the paper prints such cells as .0).")
    reps = g.loc[g.n_ok > 0, "n_ok"]
    if len(reps) and reps.max() > 1:
        seeds = sorted({s for ss in g.seeds for s in ss}, key=_sort_key)
        span = f"{reps.max()}" if reps.min() == reps.max() else f"{reps.min()}–{reps.max()}"
        notes.append(f"ours: mean ± std (ddof 1) over {span} runs per cell"
                     + (f" (train.seed {', '.join(str(s) for s in seeds)})" if seeds else "") + ".")
    if deviations:
        # What every row shares is said once; only the rest is marked row by row.
        inv = {v: k for k, v in deviations.items()}
        shared = set.intersection(*(set(d) for _, d in ours_rows))
        if shared:
            notes.append("Our protocol differs from the paper's, so no 'ours' row is a reproduction: "
                         + "; ".join(inv[i] for i in sorted(shared)) + ".")
        rest = {old: new for new, old in enumerate(sorted(set(inv) - shared), start=1)}
        if rest:
            for row, devs in ours_rows:
                row.marks = "".join(f"[{rest[i]}]" for i in sorted(devs) if i in rest)
            notes.append("Rows marked [i] also differ from the paper's protocol: "
                         + "; ".join(f"[{new}] {inv[old]}" for old, new in rest.items()) + ".")
    stripes = g[g.target.isin(STRIPES) & g.paper_table.notna()]
    if len(stripes):
        ranges = set(as_text(stripes["target.range"])) if "target.range" in stripes else {"unit"}
        if ranges - {"signed"}:
            notes.append(
                "Stripes (horstp, verstp): the paper's stripe MAEs (.53–.72) are impossible against stripes in [0, 1] "
                "(floor ≈ .317); they fit stripes in [−1, 1] (floor ≈ .637; a constant 0.5 scores .718), as the authors' "
                "2020 generator made them. Our stripe MAEs with target.range=unit are not comparable with the paper's; "
                "target.range=signed reproduces its setting (SPEC.md)."
            )
        if "signed" in ranges:
            notes.append("Stripes marked [signed] are in [−1, 1] (target.range=signed), as the paper's stripe numbers imply.")
    return notes


_LABELS = {"target_label": "target"}


def _header(t: Table) -> tuple[list[str], list[str]]:
    left = [_LABELS.get(f, f) for f in t.row_fields] + ["source"]
    return left, [f"{c} {m}" for c in t.columns for m in ("SPC", "MAE")]


def to_markdown(tables: list[Table]) -> str:
    out = []
    for t in tables:
        out.append(f"## {t.title}\n")
        if t.columns:
            left, right = _header(t)
            out.append("| " + " | ".join(left + right) + " |")
            out.append("|" + "---|" * len(left) + "---:|" * len(right))
            for r in t.rows:
                vals = [v for c in t.columns for v in r.cells.get(c, ("", ""))]
                src = r.source + r.marks if r.source == "ours" else f"*{r.source}*"
                out.append("| " + " | ".join(r.labels + [src] + vals) + " |")
            out.append("")
            out += [f"- {n}" for n in t.notes]
        if t.unplaced:
            out.append(f"\n**Failed or missing jobs ({len(t.unplaced)}):**\n")
            out += [f"- `{u['job_dir']}`: {u['status']}: {u['error']}" for u in t.unplaced]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _tex(s: str) -> str:
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    s = re.sub(r"(?<![\w.])-(?=\.?\d)", "$-$", s)  # a minus sign, not a hyphen
    return s.replace(" ± ", r"$\pm$").replace("±", r"$\pm$").replace("–", "--").replace("−", "$-$").replace("≈", r"$\approx$").replace("→", r"$\to$").replace("↔", r"$\leftrightarrow$")


def to_latex(tables: list[Table]) -> str:
    """booktabs tables (needs \\usepackage{booktabs,graphicx}); paper rows in italics."""
    out = ["% posinfo analysis tables. Needs \\usepackage{booktabs,graphicx}."]
    for t in tables:
        if not t.columns:
            continue
        left, _ = _header(t)
        n_left = len(left)
        spec = "l" * n_left + "rr" * len(t.columns)
        out += [r"\begin{table*}[t]", r"\centering", r"\footnotesize", r"\resizebox{\linewidth}{!}{%",
                rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
        out.append(" & ".join([""] * n_left + [rf"\multicolumn{{2}}{{c}}{{{_tex(c)}}}" for c in t.columns]) + r" \\")
        out.append("".join(rf"\cmidrule(lr){{{n_left + 2 * i + 1}-{n_left + 2 * i + 2}}}" for i in range(len(t.columns))))
        out.append(" & ".join([_tex(h) for h in left] + ["SPC", "MAE"] * len(t.columns)) + r" \\")
        out.append(r"\midrule")
        for i, r in enumerate(t.rows):
            vals = [_tex(v) for c in t.columns for v in r.cells.get(c, ("", ""))]
            src = _tex(r.source + r.marks)
            if r.source != "ours":
                vals = [rf"\textit{{{v}}}" if v else v for v in vals]
                src = rf"\textit{{{src}}}"
            out.append(" & ".join([_tex(x) for x in r.labels] + [src] + vals) + r" \\")
            if r.source == "floor" and i + 1 < len(t.rows):
                out.append(r"\midrule")
        out += [r"\bottomrule", r"\end{tabular}}", rf"\caption{{{_tex(t.title)}. " + " ".join(_tex(n) for n in t.notes) + "}",
                rf"\label{{tab:posinfo-{_tex(t.name)}}}", r"\end{table*}", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- write everything

def write_report(dirs: Iterable[str | Path], out: str | Path | None = None, figures: bool = True,
                 echo: bool = True) -> dict[str, Path]:
    """Analyse the job directories below ``dirs`` into ``out`` (default: first dir / analysis)."""
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise PosinfoError("no directory given: python analyze.py outputs/sweeps/table1 [more dirs]")
    out = Path(out) if out is not None else dirs[0] / "analysis"
    df = collect(dirs)
    if df.empty:
        raise PosinfoError(f"no job directories (result.json) below {', '.join(map(str, dirs))}: run python sweep.py -m experiment=... first")
    out.mkdir(parents=True, exist_ok=True)
    from posinfo.io import atomic_path

    written: dict[str, Path] = {}
    with atomic_path(out / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    written["results.csv"] = out / "results.csv"
    cells = aggregate(df)
    tables = make_tables(cells, df)
    md = to_markdown(tables)
    for name, text in (("tables.md", md), ("tables.tex", to_latex(tables))):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
        written[name] = out / name
    if figures:
        from posinfo import figures as figs

        for fig in figs.draw_all(cells, out):
            written[fig.path.name] = fig.path
            written[fig.path.with_suffix(".pdf").name] = fig.path.with_suffix(".pdf")
    if echo:
        print(md)
        print(f"wrote {', '.join(sorted(written))} to {out}")
    return written
