"""Cells -> paper-style tables: one Table per experiment, laid out by what varies in it, our rows
with the paper's numbers under them wherever the paper has the same configuration, a floor row
per target, notes that say whose numbers are whose and how our protocol differs from the
paper's, and the failed or missing jobs listed under their table; rendered by to_markdown
(tables.md) and to_latex (booktabs, tables.tex)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from posinfo.report.cells import as_text, fmt, fmt_paper, is_missing, label_cells, sort_key
from posinfo.report.intervals import BOOTSTRAP_RESAMPLES, UNSTABLE_SPC
from posinfo.report.paper import PAPER, PAPER_TABLES, protocol_deviations
from posinfo.kinds import KINDS, MapKind, lookup
from posinfo.names import CONVERGED_REL_CHANGE, STRIPES

_LABELS = {"target_label": "target"}


@dataclass
class Row:
    """One line of a table: its row-field labels, whose numbers, and (SPC, MAE) text per column."""

    labels: list[str]
    source: str  # "ours", "paper T1" (or "paper T1/T4"), "floor"
    cells: dict[str, tuple[str, str]]  # column -> (SPC, MAE)
    marks: str = ""


@dataclass
class Table:
    """One experiment's table: rows under ``columns`` × {SPC, MAE}, its notes and its unfinished jobs."""

    name: str
    title: str
    row_fields: list[str]
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unplaced: list[dict] = field(default_factory=list)  # failed/missing jobs


# ----------------------------------------------------------------------------- layout

def _ours_cell(c: Any) -> tuple[str, str]:
    """(SPC, MAE) text of one aggregated cell: NaN images counted, failed/missing runs said."""
    if c["n_ok"] == 0:
        word = "failed" if c["n_failed"] else "missing"
        return word, word
    kind = lookup(c.get("target"))
    if kind is not None and kind is not MapKind:  # its own two numbers (target=grid: accuracy, normalised accuracy)
        return tuple(fmt(c.get(m), _half(c, m)) for m in kind.shown)
    spc = fmt(c["spc"], _half(c, "spc"))
    if c.get("unstable"):
        spc += " unstable (" + "/".join(fmt(v) for v in c["seed_spcs"]) + ")"
    if c["n_nan"]:
        spc += f" (NaN {c['n_nan']}/{c['n_images']})"
    mae = fmt(c["mae"], _half(c, "mae"))
    if c.get("unconverged"):
        spc += " †"
    lost = [f"+{c[k]} {k[2:]}" for k in ("n_failed", "n_missing") if c[k]]
    if lost:
        mae += " (" + ", ".join(lost) + ")"
    return spc, mae


def _half(c: Any, m: str) -> float:
    """Half the width of a cell's 95% interval (NaN: none)."""
    lo, hi = c.get(f"{m}_lo"), c.get(f"{m}_hi")
    return math.nan if is_missing(lo) or is_missing(hi) else (float(hi) - float(lo)) / 2


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
    tables = [_make_table(name, cells[cells["experiment"] == name], fields_of[name])
              for name in sorted(cells["experiment"].unique(), key=sort_key)]
    if jobs is not None:
        _list_unfinished(tables, jobs)
    return tables


def _make_table(name: str, g: pd.DataFrame, fields: list[str]) -> Table:
    """The table of one experiment's cells ``g``; ``fields``: the config fields its rows vary."""
    by_input = g["input"].dropna().nunique() > 1
    col_key = "input" if by_input else "target_label"
    columns = sorted(g[col_key].dropna().unique(), key=lambda v: sort_key(str(v).split(" [")[0]))
    row_fields = (["target_label"] if by_input else []) + ["backbone"] + fields
    t = Table(name, _title(name, set(g.paper_table.dropna())), row_fields, [str(c) for c in columns])
    g = g.assign(**{f"_k{i}": g[f].map(sort_key) for i, f in enumerate(row_fields)})
    g = g.sort_values([f"_k{i}" for i in range(len(row_fields))], kind="stable")
    g = g.assign(_row=["\x1f".join(map(str, vals)) for vals in g[row_fields].itertuples(index=False)])
    blocks = g.groupby("target_label", sort=False) if by_input else [(None, g)]

    deviations: dict[str, int] = {}
    ours_rows: list[tuple[Row, list[int]]] = []
    for _, block in blocks:
        for _, rg in block.groupby("_row", sort=False):
            _add_configuration(t, rg, col_key, deviations, ours_rows)
        floor = _floor_row(block, row_fields, col_key, by_input)
        if floor is not None:
            t.rows.append(floor)
    t.notes = _notes(g, deviations, ours_rows)
    return t


def _add_configuration(t: Table, rg: pd.DataFrame, col_key: str, deviations: dict[str, int],
                       ours_rows: list[tuple[Row, list[int]]]) -> None:
    """Append one configuration's 'ours' row to ``t``, and the paper's row under it where the paper has one.

    ``deviations`` numbers each protocol deviation in order of first appearance;
    ``ours_rows`` gets the new row with the numbers of its deviations.
    """
    first = rg.iloc[0].to_dict()
    row = Row(["–" if is_missing(first[f]) else str(first[f]) for f in t.row_fields], "ours",
              {str(r[col_key]): _ours_cell(r) for _, r in rg.iterrows()})
    t.rows.append(row)
    ours_rows.append((row, [deviations.setdefault(d, len(deviations) + 1) for d in protocol_deviations(first)]))
    paper = rg[rg.paper_table.notna()]
    if len(paper):
        which = "/".join(sorted({"T" + str(x)[5:] for x in paper.paper_table}))
        t.rows.append(Row([""] * len(t.row_fields), f"paper {which}",
                          {str(r[col_key]): (fmt_paper(r.paper_spc), fmt_paper(r.paper_mae)) for _, r in paper.iterrows()}))


def _floor_row(block: pd.DataFrame, row_fields: list[str], col_key: str, by_input: bool) -> Row | None:
    """The floor MAEs of a block's columns (several when cells disagree; target=grid: chance accuracy and 0),
    or None if it has none."""
    floors = {
        str(col): ("", "/".join(fmt(v) for v in sorted({round(float(x), 3) for x in fg.floor_mae.dropna()})))
        for col, fg in block.groupby(col_key) if fg.floor_mae.notna().any()
    }
    for col, fg in block.groupby(col_key):  # another kind's: each shown number's floor (target=grid: chance and 0)
        kind = lookup(fg.target.iloc[0])
        if kind is not None and kind is not MapKind and (fg.target == fg.target.iloc[0]).all():
            floors[str(col)] = tuple(_floor_text(fg, kind.floors.get(m)) for m in kind.shown)
    if not floors:
        return None
    label = [str(block.iloc[0]["target_label"]) if by_input else ""] + [""] * (len(row_fields) - 1)
    return Row(label, "floor", floors)


def _floor_text(g: pd.DataFrame, floor: str | float | None) -> str:
    """A floor row's number: a column of the cells' (its values, when they differ, joined by '/') or a constant."""
    if isinstance(floor, str):
        v = g[floor].dropna() if floor in g else pd.Series(dtype=float)
        return "/".join(fmt(x) for x in sorted({round(float(x), 3) for x in v}))
    return "" if floor is None else fmt(floor)


def _list_unfinished(tables: list[Table], jobs: pd.DataFrame) -> None:
    """List each failed or missing job under its experiment's table; those of no table in a table of their own."""
    bad = jobs[jobs.status != "ok"].drop_duplicates("job_dir")
    exp = bad["experiment"].fillna("jobs")
    for t in tables:
        t.unplaced = bad[exp == t.name][["job_dir", "status", "error"]].to_dict("records")
    orphans = bad[~exp.isin({t.name for t in tables})]
    if len(orphans):
        tables.append(Table("unidentified", "Jobs whose configuration could not be read", [], [],
                            unplaced=orphans[["job_dir", "status", "error"]].to_dict("records")))


# ----------------------------------------------------------------------------- notes

def _notes(g: pd.DataFrame, deviations: dict[str, int], ours_rows: list[tuple[Row, list[int]]]) -> list[str]:
    """Whose numbers are whose, NaN counts, seeds, and how our protocol differs from the paper's."""
    notes = [
        "SPC = Spearman correlation, MAE = mean absolute error, each the mean over test images. "
        "'ours' rows come from these job directories; 'paper Tn' rows are the numbers printed in "
        f"{PAPER}, Table n, for the same configuration; 'floor' is the MAE of the best constant "
        "prediction for that target: an MAE at its floor means no position information, whatever the SPC."
    ]
    shown = {lookup(t) for t in g.target.dropna().unique()}
    notes += [k.note for k in KINDS.values() if k in shown and k.note]  # what another kind's two numbers are
    if (g.n_nan > 0).any():
        notes.append("NaN k/N: k of N test images got a constant prediction, whose SPC is undefined; the SPC "
                     "shown is the mean over the other images (– if none; the paper prints such cells as .0).")
    notes += _interval_notes(g)
    repeated = sorted({d for ds in g.get("duplicate_dirs", pd.Series(dtype=object)).dropna() for d in ds})
    if repeated:
        notes.append(f"Counted once: {len(repeated)} job folder(s) repeat the run of another folder (the same "
                     f"configuration and train.seed) and are left out, runs of one seed being no replicates: "
                     f"{', '.join(repeated)}.")
    if deviations:
        notes += _deviation_notes(deviations, ours_rows)
    return notes + _stripe_notes(g)


def _interval_notes(g: pd.DataFrame) -> list[str]:
    """What the ± of 'ours' means in this table: seeds (t) or test images (bootstrap), and unstable cells."""
    notes = []
    reps = g.loc[g.ci == "seeds", "n_ok"]
    if len(reps):
        seeds = sorted({int(s) if isinstance(s, float) and s.is_integer() else s for ss in g.seeds for s in ss},
                       key=sort_key)
        span = f"{reps.max()}" if reps.min() == reps.max() else f"{reps.min()}–{reps.max()}"
        notes.append(f"ours: mean ± half the width of its 95% confidence interval, t over {span} runs per cell"
                     + (f" (train.seed {', '.join(str(s) for s in seeds)})" if seeds else "") + ".")
    if (g.ci == "images").any():
        notes.append(f"{'Cells of one run' if len(reps) else 'ours (one run per cell)'}: ± half the width of a 95% "
                     f"bootstrap interval over the test images ({BOOTSTRAP_RESAMPLES} resamples): how well the test set "
                     "pins the number down, not how much it varies with training; run train.seed=0,1,2 for that.")
    if (g.get("unconverged", pd.Series(dtype=float)).fillna(0) > 0).any():
        notes.append(f"†: training had not converged in at least one run of the cell: its loss still fell by more than "
                     f"{CONVERGED_REL_CHANGE:.0%} over the last tenth of its steps (docs/method.md, \"Training outcome\"); "
                     "train.steps=paper gives the paper's 4950 steps whatever the number of images.")
    if g.unstable.fillna(False).astype(bool).any():
        notes.append(f"unstable: the seeds' SPCs span more than {UNSTABLE_SPC:g}; each seed's SPC in brackets. "
                     "One number does not describe such a cell.")
    return notes


def _deviation_notes(deviations: dict[str, int], ours_rows: list[tuple[Row, list[int]]]) -> list[str]:
    """The protocol deviations: those of every row said once, the rest as marks [i] on their rows (set here)."""
    notes: list[str] = []
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
    return notes


def _stripe_notes(g: pd.DataFrame) -> list[str]:
    """Why our stripe MAEs and the paper's are on different scales, when the table has both."""
    notes: list[str] = []
    stripes = g[g.target.isin(STRIPES) & g.paper_table.notna()]
    if len(stripes):
        ranges = set(as_text(stripes["target.range"])) if "target.range" in stripes else {"unit"}
        if ranges - {"signed"}:
            notes.append(
                "Stripes (horstp, verstp): the paper's stripe MAEs (.53–.72) are impossible against stripes in [0, 1] "
                "(floor ≈ .317); they fit stripes in [−1, 1] (floor ≈ .637; a constant 0.5 scores .718), as the authors' "
                "2020 generator made them. Our stripe MAEs with target.range=unit are not comparable with the paper's; "
                "target.range=signed reproduces its setting (docs/method.md)."
            )
        if "signed" in ranges:
            notes.append("Stripes marked [signed] are in [−1, 1] (target.range=signed), as the paper's stripe numbers imply.")
    return notes


# ----------------------------------------------------------------------------- rendering

def _header(t: Table) -> tuple[list[str], list[str]]:
    left = [_LABELS.get(f, f) for f in t.row_fields] + ["source"]
    return left, [f"{c} {m}" for c in t.columns for m in _metric_names(c)]


def _metric_names(column: str) -> tuple[str, str]:
    """The two numbers of a column: its target kind's (SPC and MAE; accuracy and normalised accuracy for target=grid)."""
    kind = lookup(str(column).split(" [")[0])
    return kind.labels if kind is not None else MapKind.labels


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
        out.append(" & ".join([_tex(h) for h in left] + [m for c in t.columns for m in _metric_names(c)]) + r" \\")
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
