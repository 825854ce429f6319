"""Scores over depth: the per-tap probes of ``target.per_tap`` (result.json's ``per_tap``), one
probe per tap on that tap's features alone, folded over seeds into a mean with its 95% interval,
as a table (``per_tap.csv``, a section of tables.md); its figure is figures.depth_curve.
Imports posinfo.report.cells and intervals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from posinfo.report.cells import fmt, label_cells
from posinfo.report.intervals import t_interval
from posinfo.kinds import lookup
from posinfo.names import RESULT_FILE

log = logging.getLogger(__name__)

COLUMNS = ("experiment", "target_label", "config_label", "input", "tap_index", "tap", "metric", "value", "lo", "hi",
           "n_runs", "floor")


def _per_tap(job_dir: str) -> list[dict]:
    try:
        return json.loads((Path(job_dir) / RESULT_FILE).read_text()).get("per_tap") or []
    except (OSError, ValueError):
        return []


def per_tap(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration × input × tap: the kind's headline metric over the cell's runs
    (mean, 95% t interval over seeds; one run: its value alone). Empty when no job has per-tap probes."""
    cells, _ = label_cells(cells)
    rows = []
    for _, c in cells.iterrows():
        kind = lookup(c.get("target"))
        if kind is None or not c.get("job_dirs"):
            continue
        runs = [_per_tap(d) for d in c["job_dirs"]]
        runs = [r for r in runs if r]
        for i, tap in enumerate(runs[0] if runs else []):
            vals = [float(r[i]["metrics"][c["input"]][kind.headline]) for r in runs
                    if i < len(r) and c["input"] in (r[i].get("metrics") or {})]
            if not vals:
                continue
            lo, hi = t_interval(vals) if len(vals) > 1 else (np.nan, np.nan)
            floor = kind.floors.get(kind.headline)
            rows.append({"experiment": c["experiment"], "target_label": c["target_label"],
                         "config_label": c["config_label"], "input": c["input"], "tap_index": i, "tap": tap["tap"],
                         "metric": kind.headline, "value": float(np.mean(vals)), "lo": lo, "hi": hi,
                         "n_runs": len(vals), "floor": c.get(floor) if isinstance(floor, str) else floor})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def to_markdown(df: pd.DataFrame) -> str:
    """A table per experiment and target: a row per configuration and input, a column per tap."""
    out = []
    for (exp, target), g in df.groupby(["experiment", "target_label"], sort=False):
        taps = list(dict.fromkeys(g.sort_values("tap_index").tap))
        metric = g.metric.iloc[0]
        out += [f"### {exp}: {target}, {metric} per tap (one probe per tap on its features alone)", "",
                "| configuration | input | " + " | ".join(taps) + " | floor |",
                "|---|---|" + "---:|" * (len(taps) + 1)]
        for (config, inp), r in g.groupby(["config_label", "input"], sort=False):
            by_tap = {t: v for t, v in zip(r.tap, r.itertuples())}
            vals = [fmt(by_tap[t].value, (by_tap[t].hi - by_tap[t].lo) / 2 if by_tap[t].n_runs > 1 else None)
                    if t in by_tap else "" for t in taps]
            floor = r.floor.dropna()
            out.append(f"| {config} | {inp} | " + " | ".join(vals) + f" | {fmt(float(floor.iloc[0])) if len(floor) else ''} |")
        out.append("")
    return "\n".join(out)
