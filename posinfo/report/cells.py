"""Tidy rows -> cells: one row per configuration × input, replicates (seeds) folded into
a mean with its 95% interval, each cell labelled for a table row or a figure bar; with the value helpers
(missing values, natural sort order, the paper's number style) that the paper, tables and
figures modules share. Imports only posinfo.report.intervals: every other module may import it."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from posinfo.report.intervals import t_interval, unstable
from posinfo.kinds import EXTRA_METRICS, INTERVAL_COLUMNS, lookup
from posinfo.names import BACKBONES, INPUT_KINDS, PADDINGS, STRIPES, TARGETS

log = logging.getLogger(__name__)

# The measured columns of results.csv: aggregated over replicates, never part of a configuration.
# A job's interval columns are the bootstrap over its test images (posinfo.report.intervals).
# Both, and the metrics of the kinds other than maps (e.g. target=grid's accuracies), come from the kinds.
METRICS = ("spc", "mae", "n_images", "n_nan", "floor_mae", "converged", *INTERVAL_COLUMNS, *EXTRA_METRICS)
# results.csv's border profile: MAE per border-distance bin, border_mae_1 (outer ring) … (job: result.json).
BORDER_PREFIX = "border_mae_"
# Fields that distinguish replicates, not configurations.
REPLICATE_FIELDS = ("train.seed",)
_AGGREGATES = ("spc_std", "mae_std", *(f"{m}_{e}" for m in EXTRA_METRICS for e in ("std", "lo", "hi")), "n_ok", "n_failed", "n_missing", "seeds",
               "job_dirs", "ci", "seed_spcs", "unstable", "unconverged", "duplicate_dirs")

_SHORT = {"readout.kernel": "k", "readout.depth": "depth", "readout.padding": "pad", "backbone.padding": "backbone pad",
          "backbone.taps": "taps", "backbone.weights": "weights", "pretraining": "", "train.seed": "seed",
          "data.canvas.border": "border", "data.canvas.color": "canvas"}
# Config columns that are never a table's row field: labels, or restated by the target label.
_NOT_ROW_FIELDS = ("experiment", "backbone", "target", "target.range", "input_set", "readout", "train",
                   "target_label", "config_label")


# ----------------------------------------------------------------------------- values

def is_missing(v: Any) -> bool:
    """Whether a value is absent: None or a float NaN (pandas' empty cell)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def n_values(s: pd.Series) -> int:
    """How many distinct values a column takes, not counting missing ones."""
    return as_text(s)[s.map(lambda v: not is_missing(v))].nunique()


def as_text(s: pd.Series) -> pd.Series:
    """Values as text, missing ones as '' (astype(str) keeps NaN as NaN on pandas 3)."""
    return s.map(lambda v: "" if is_missing(v) else str(v)).astype(object)


def sort_key(v: Any) -> tuple:
    """Natural order for table rows: the paper's order for names, numbers by value, 'all' last."""
    for order in (TARGETS, BACKBONES, INPUT_KINDS, PADDINGS):
        if v in order:
            return (0, order.index(v), "")
    if is_missing(v):
        return (3, 0, "")
    if v == "all":
        return (2, 0, "")
    try:
        return (1, float(v), "")
    except (TypeError, ValueError):
        return (1, math.inf, str(v))


def fmt(x: float | None, std: float | None = None) -> str:
    """The paper's style: three decimals, no leading zero (.742, -.001)."""
    if is_missing(x):
        return "–"
    s = re.sub(r"^(-?)0\.", r"\1.", f"{x:.3f}")
    if not is_missing(std):
        s += " ± " + re.sub(r"^0\.", ".", f"{std:.3f}")
    return s


def fmt_paper(x: float) -> str:
    """A paper number as the paper prints it: its undefined SPCs (constant predictions) read .0."""
    return ".0" if x == 0 else fmt(x)


# ----------------------------------------------------------------------------- aggregate

def config_fields(df: pd.DataFrame) -> list[str]:
    """Columns of ``df`` that identify a configuration (replicates differ only outside these)."""
    skip = {"job_dir", "status", "error", "input", "paper_table", "paper_spc", "paper_mae", *METRICS, *REPLICATE_FIELDS,
            *_AGGREGATES}
    return [c for c in df.columns if c not in skip and not c.startswith(BORDER_PREFIX)]


def border_columns(df: pd.DataFrame) -> list[str]:
    """The border-profile columns (MAE per distance bin, outer ring first), in bin order."""
    cols = [c for c in df.columns if str(c).startswith(BORDER_PREFIX)]
    return sorted(cols, key=lambda c: int(c[len(BORDER_PREFIX):]))


def one_run_per_seed(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """``df`` with each ok run of one configuration and seed kept once, and {kept folder: the
    folders left out}.

    The same configuration and train.seed in two job folders is one run made twice (the same
    command under another folder name, or a second sweep folder), never two replicates: counted
    twice it would give its cell an interval of width 0. The first folder in order is kept, and
    one warning names them all.
    """
    keys = [k for k in config_fields(df) + list(REPLICATE_FIELDS) if k in df]
    ok = df[df.status == "ok"]
    if ok.empty:
        return df, {}
    run_key = pd.Series(["\x1f".join(vals) for vals in pd.DataFrame({k: as_text(ok[k]) for k in keys})
                         .itertuples(index=False)], index=ok.index)
    dropped: dict[str, list[str]] = {}
    for _, dirs in ok.job_dir.groupby(run_key, sort=False):
        folders = list(dict.fromkeys(dirs))
        if len(folders) > 1:
            dropped[folders[0]] = folders[1:]
            first = ok.loc[dirs.index[0]]
            log.warning("one run in %d folders (%s %s, train.seed=%s): %s; counted once, from the first: runs of one "
                        "seed are no replicates (delete the extra folders, or give each run its own train.seed)",
                        len(folders), first.get("backbone"), first.get("target"), first.get("train.seed"),
                        ", ".join(folders))
    left_out = {d for ds in dropped.values() for d in ds}
    return df[~df.job_dir.isin(left_out)], dropped


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration × input: the mean over replicates (seeds) with its 95% interval
    (t over seeds; one seed: the bootstrap over its test images), NaN counts summed; a seed run
    in several folders counted once (:func:`one_run_per_seed`)."""
    df, dropped = one_run_per_seed(df)
    keys = config_fields(df) + ["input"]
    filled = df.copy()
    filled[keys] = filled[keys].astype(object).where(filled[keys].notna(), "<none>")
    cells = []
    for _, g in filled.groupby(keys, dropna=False, sort=False):
        ok = seed_free_once(g[g.status == "ok"])
        first = g.iloc[0]
        cell = {k: (None if first[k] == "<none>" else first[k]) for k in keys}
        cell.update(_estimates(ok))
        cell.update(
            n_ok=len(ok),
            n_failed=int((g.status == "failed").sum()),
            n_missing=int((g.status == "missing").sum()),
            n_nan=int(ok.n_nan.fillna(0).sum()),
            n_images=int(ok.n_images.fillna(0).sum()),
            floor_mae=g.floor_mae.dropna().astype(float).mean() if g.floor_mae.notna().any() else np.nan,
            seeds=sorted({s for s in ok.get("train.seed", pd.Series(dtype=object)).dropna()}),
            job_dirs=list(ok.job_dir),
            duplicate_dirs=[d for kept in ok.job_dir for d in dropped.get(kept, [])],
            unconverged=int((ok.get("converged", pd.Series(dtype=object)) == False).sum()),  # noqa: E712
            paper_table=g.paper_table.dropna().iloc[0] if g.paper_table.notna().any() else None,
            paper_spc=g.paper_spc.dropna().iloc[0] if g.paper_spc.notna().any() else np.nan,
            paper_mae=g.paper_mae.dropna().iloc[0] if g.paper_mae.notna().any() else np.nan,
            **{c: ok[c].dropna().astype(float).mean() for c in border_columns(ok)},
        )
        cells.append(cell)
    return pd.DataFrame(cells)


def seed_free_once(ok: pd.DataFrame) -> pd.DataFrame:
    """A cell whose runs cannot depend on their seed counted once: the closed-form readout
    (readout.solver=ridge) on features that no seed draws (pretrained or file weights, PosENet)
    gives every seed the same numbers, which are one measurement, not replicates; its interval
    is then the bootstrap over test images."""
    if len(ok) < 2 or "readout.solver" not in ok or not (ok["readout.solver"] == "ridge").all():
        return ok
    drawn = (ok.get("backbone.weights") == "random") & (ok.get("backbone") != "posenet")
    if drawn.any():
        return ok
    return ok.sort_values("train.seed").iloc[:1] if "train.seed" in ok else ok.iloc[:1]


def _estimates(ok: pd.DataFrame) -> dict:
    """Mean, std and 95% interval of SPC and MAE over a cell's ok replicates."""
    out: dict[str, Any] = {}
    for m in ("spc", "mae", *EXTRA_METRICS):
        if m not in ok:
            continue
        x = ok[m].dropna().astype(float)
        out[m] = x.mean() if len(x) else np.nan
        out[f"{m}_std"] = x.std(ddof=1) if len(x) > 1 else np.nan
        if len(x) > 1:
            out[f"{m}_lo"], out[f"{m}_hi"] = t_interval(x.tolist())
        else:  # one run: its bootstrap over test images, if collect found per_image.csv
            row = ok[ok[m].notna()].iloc[0] if len(x) else None
            out[f"{m}_lo"], out[f"{m}_hi"] = (np.nan, np.nan) if row is None else (
                float(row.get(f"{m}_lo", np.nan)), float(row.get(f"{m}_hi", np.nan)))
    kind = lookup(ok.target.iloc[0]) if len(ok) and "target" in ok else None
    main = kind.headline if kind is not None else "spc"
    n = int(ok[main].notna().sum())
    out["ci"] = "seeds" if n > 1 else "images" if not is_missing(out[f"{main}_lo"]) else None
    out["seed_spcs"] = [float(v) for v in ok.spc.dropna()] if n > 1 else []
    out["unstable"] = unstable(out["seed_spcs"])
    return out


# ----------------------------------------------------------------------------- labels

def _display_fields(cells: pd.DataFrame, candidates: list[str]) -> list[str]:
    """Fields that vary, minus any that only restate another (pretraining ↔ backbone.weights)."""
    keep: list[str] = []
    for f in candidates:
        if f not in cells or n_values(cells[f]) < 2:
            continue
        as_str = pd.DataFrame({c: as_text(cells[c]) for c in [f, *keep]})
        redundant = any(
            as_str.groupby(g)[f].nunique().max() == 1 and as_str.groupby(f)[g].nunique().max() == 1 for g in keep
        )
        if not redundant:
            keep.append(f)
    return keep


def _tell_apart(cells: pd.DataFrame, fields: list[str]) -> list[str]:
    """``fields`` and whatever more it takes for no two cells to share a table row and column.

    Row labels show only the fields that vary, and a missing value (a key that an older
    result lacks) or a field a label usually leaves out (``target.range`` of a ramp) would
    let two cells read alike: one would print over the other. The first field that tells
    clashing cells apart is added, until none clash.
    """
    fields = list(fields)
    spare = [f for f in config_fields(cells) if f not in (*fields, "experiment", "backbone", "target_label", "config_label")]
    while True:
        key = pd.DataFrame({c: as_text(cells[c]) for c in ["target_label", "backbone", *fields, "input"]})
        clash = key[key.duplicated(keep=False)]
        if clash.empty:
            return fields
        groups = clash.groupby(list(clash.columns)).groups.values()
        extra = next((f for f in spare if f not in fields and any(as_text(cells.loc[i, f]).nunique() > 1 for i in groups)),
                     None)
        if extra is None:  # cells that no config field tells apart are one configuration: never two cells
            return fields
        fields.append(extra)


def _shown(field: str, value: Any) -> str:
    """A value as a label shows it: a weights file by its name, not its whole path."""
    if field == "backbone.weights" and isinstance(value, str) and ("/" in value or "\\" in value):
        return value.replace("\\", "/").rsplit("/", 1)[-1]
    return str(value)


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
        if "target.range" in g and n_values(g["target.range"]) > 1:
            stripe = g.target.isin(STRIPES)
            cells.loc[g.index[stripe], "target_label"] = g.target[stripe] + " [" + as_text(g["target.range"][stripe]) + "]"
        candidates = [f for f in config_fields(g) if f not in _NOT_ROW_FIELDS and not f.startswith("experiment/")]
        fields = _tell_apart(g, _display_fields(g, candidates))
        fields_of[name] = fields
        for i, r in g.iterrows():
            # a field the backbone's name already says (backbone.model of "timm/convnext_tiny") is not repeated
            parts = [str(r["backbone"])] + [
                (f"{_SHORT.get(f, f)}={_shown(f, r[f])}" if _SHORT.get(f, f) else str(r[f])) for f in fields
                if not (f == "backbone.model" and str(r[f]) in str(r["backbone"]))
            ]
            cells.at[i, "config_label"] = " ".join(parts)
    return cells, fields_of
