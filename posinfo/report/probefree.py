"""The probe-free measures of the jobs that ran with ``analysis.probefree=true``: one table row per
features × tap (probefree.csv, probefree.md).

The measures depend on the features alone, never on the target, readout or training, so the
jobs of one set of features (a sweep's hor and ver jobs) are one measurement, counted once. Seeds
are replicates only where the seed draws the features (``backbone.weights=random``): then a
measure is the mean over seeds with its t interval; otherwise the single measurement's
asymmetries carry their interval over images (result.json), and the share none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from posinfo.report.cells import REPLICATE_FIELDS, config_fields, fmt, is_missing, n_values, sort_key
from posinfo.report.intervals import t_interval
from posinfo.names import RESULT_FILE

# Config fields that never change the features: what the readout is trained on and how.
_NOT_FEATURES = ("target", "target.", "readout.", "train.", "input", "converged", "floor_mae", "paper_")
MEASURES = ("share", "left_right", "top_bottom", "sim_near", "sim_near_permuted", "sim_far")
_ROW_COLUMNS = ("tap", "channels", "n", "interval")  # a row's own columns beside its features' fields and MEASURES


def _records(job_dir: str) -> list[dict]:
    try:
        return json.loads((Path(job_dir) / RESULT_FILE).read_text()).get("probefree") or []
    except (OSError, ValueError, AttributeError):
        return []


def _flat(rec: dict) -> dict:
    sim = rec.get("similarity") or {}
    return {"tap": rec["tap"], "channels": rec["channels"], "share": rec["input_independent_share"],
            "left_right": rec["left_right"]["mean"], "left_right_lo": rec["left_right"]["low"],
            "left_right_hi": rec["left_right"]["high"], "top_bottom": rec["top_bottom"]["mean"],
            "top_bottom_lo": rec["top_bottom"]["low"], "top_bottom_hi": rec["top_bottom"]["high"],
            "sim_near": sim.get("near"), "sim_near_permuted": sim.get("near_permuted"), "sim_far": sim.get("far")}


def feature_fields(df: pd.DataFrame) -> list[str]:
    return [f for f in config_fields(df) if not f.startswith(_NOT_FEATURES) and f not in REPLICATE_FIELDS]


def _seeds_draw_features(first: pd.Series) -> bool:
    return first.get("backbone.weights") == "random" and first.get("backbone") != "posenet"


def _row(key: dict, tap_rows: pd.DataFrame, replicates: bool) -> dict:
    """One features × tap: the mean over seeds with t intervals, or the one measurement's own."""
    row = {**key, "tap": tap_rows.tap.iloc[0], "channels": int(tap_rows.channels.iloc[0])}
    if not replicates or len(tap_rows) == 1:
        first = tap_rows.iloc[0]
        row.update({c: first[c] for c in tap_rows.columns if c.startswith(MEASURES)})
        row.update(n=1, interval="images")
        return row
    for m in MEASURES:
        x = [float(v) for v in tap_rows[m] if not is_missing(v)]
        row[m] = sum(x) / len(x) if x else math.nan
        row[f"{m}_lo"], row[f"{m}_hi"] = t_interval(x)
    row.update(n=len(tap_rows), interval="seeds")
    return row


def probefree_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per features × tap over the ok jobs of ``df`` (results.csv rows) that have measures."""
    ok = df[df.status == "ok"].drop_duplicates("job_dir")
    if ok.empty:
        return pd.DataFrame()
    fields = feature_fields(ok)
    seed = REPLICATE_FIELDS[0]
    filled = ok.copy()
    filled[fields] = filled[fields].astype(object).where(filled[fields].notna(), "<none>")
    out = []
    for _, g in filled.groupby(fields, dropna=False, sort=False):
        per_seed = g.drop_duplicates(seed) if seed in g else g.iloc[:1]  # one measurement per set of features
        recs = [{**_flat(r), "seed": s} for d, s in zip(per_seed.job_dir, per_seed.get(seed, [None] * len(per_seed)))
                for r in _records(d)]
        if not recs:
            continue
        key = {f: (None if g.iloc[0][f] == "<none>" else g.iloc[0][f]) for f in fields}
        replicates = _seeds_draw_features(g.iloc[0])
        taps = pd.DataFrame(recs)
        out += [_row(key, t, replicates) for _, t in taps.groupby("tap", sort=False)]
    return pd.DataFrame(out)


def _cell(row: pd.Series, m: str) -> str:
    lo, hi = row.get(f"{m}_lo"), row.get(f"{m}_hi")
    return fmt(row[m]) + ("" if is_missing(lo) or is_missing(hi) else f" [{fmt(lo)}, {fmt(hi)}]")


def _text(v) -> str:
    """A field's value as a label: whole numbers without the '.0' a column with gaps gives them."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _distinguishing(rows: pd.DataFrame, fields: list[str]) -> list[str]:
    """The fields, in order, that each tell rows apart beyond the ones before (a weights file that
    comes with its backbone, a normalisation that comes with it, are not repeated)."""
    kept: list[str] = []
    for f in sorted(fields, key=lambda f: f != "backbone"):
        groups = rows.groupby(kept, dropna=False).ngroups if kept else 1
        if rows.groupby([*kept, f], dropna=False).ngroups > groups:
            kept.append(f)
    return kept


def label_fields(rows: pd.DataFrame) -> list[str]:
    """The fields that tell the rows' sets of features apart (a table's first columns, a figure's lines)."""
    fields = [f for f in rows.columns if f not in _ROW_COLUMNS and not f.startswith(MEASURES)]
    return _distinguishing(rows, [f for f in fields if n_values(rows[f]) > 1]) or ["backbone"]


def to_markdown(rows: pd.DataFrame) -> str:
    """The table: what tells the features apart, the tap, and each measure (with its interval)."""
    label = label_fields(rows)
    rows = rows.sort_values(label, key=lambda s: s.map(sort_key), kind="stable")
    head = [*label, "tap", "channels", "input-independent share", "left − right", "top − bottom",
            "similarity at 1 step", "permuted", "similarity far", "interval"]
    lines = ["## probe-free measures per tap", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(label) + "---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for _, r in rows.iterrows():
        n = int(r["n"])
        where = f"t over {n} seeds" if r["interval"] == "seeds" else "t over images"
        lines.append("| " + " | ".join([*(_text(r[f]) for f in label), str(r["tap"]), str(int(r["channels"])),
                                        *(_cell(r, m) for m in MEASURES), where]) + " |")
    lines += ["", "- input-independent share: variance over positions of the mean map over the total variance, "
                  "summed over channels, its sampling bias removed (docs/method.md, \"Probe-free measures\"); "
                  "left − right, top − bottom: the standardised mean bias map's halves, 95% interval in brackets; "
                  "similarity: mean cosine similarity of feature vectors one grid step apart, after a random "
                  "permutation of the positions, and half the side or more apart.", ""]
    return "\n".join(lines)
