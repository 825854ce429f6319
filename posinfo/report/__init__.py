"""Job directories -> tidy results, paper-style tables beside the paper's numbers, figures; one
module per role, ``write_report`` (below) running them in order:

    collect  find job folders, read result.json / .hydra files, tidy rows (results.csv)
    paper    the paper's numbers, which of them a row is, the deviations from its protocol
    cells    aggregate rows into cells (seeds -> mean and 95% interval), labels, sort keys, number format
    intervals  t intervals over seeds, bootstrap intervals over test images, the instability rule
    tables   Table/Row per experiment, its notes, to_markdown / to_latex
    figures  the Figure-4 grid, SPC bars, SPC against feature level, the per-tap depth curves
    depth    target.per_tap: each tap's probe scores folded over seeds (per_tap.csv, a tables.md section)
    probefree  the analysis.probefree measures per features × tap (probefree.csv, probefree.md)

Arrows point one way: __init__ -> (collect, cells, tables, figures, depth, probefree); depth -> (cells, intervals);
probefree -> cells; collect -> (paper, cells); tables -> (paper, cells); figures -> cells; paper -> cells;
cells -> posinfo.names and posinfo.kinds (torch-free) only. result.json is the only interface with the jobs: nothing here
imports the job or torch; matplotlib and omegaconf load only when a figure is drawn or a
.hydra / multirun.yaml file is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from posinfo.report.cells import aggregate
from posinfo.report.collect import collect
from posinfo.report.depth import per_tap
from posinfo.report.depth import to_markdown as depth_markdown
from posinfo.report.figures import depth_curve, draw_all, probefree_curves
from posinfo.report.probefree import label_fields, probefree_rows
from posinfo.report.probefree import to_markdown as probefree_markdown
from posinfo.report.tables import make_tables, to_latex, to_markdown
from posinfo.errors import PosinfoError
from posinfo.io import atomic_path

__all__ = ["write_report"]


def probefree_figures(pf, out: Path) -> list:
    """``<experiment>_probefree.png`` per experiment whose jobs ran analysis.probefree=true."""
    if pf.empty:
        return []
    groups = pf.groupby("experiment", sort=False) if "experiment" in pf else [("jobs", pf)]
    figs = [probefree_curves(g, label_fields(g), out / f"{exp}_probefree.png") for exp, g in groups]
    return [f for f in figs if f is not None]


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

    written: dict[str, Path] = {}
    with atomic_path(out / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    written["results.csv"] = out / "results.csv"
    cells = aggregate(df)
    with atomic_path(out / "cells.csv") as tmp:  # one row per configuration × input, with its interval
        cells.drop(columns=["job_dirs", "duplicate_dirs"]).to_csv(tmp, index=False)
    written["cells.csv"] = out / "cells.csv"
    tables = make_tables(cells, df)
    md = to_markdown(tables)
    taps = per_tap(cells)  # target.per_tap: the scores over depth
    if not taps.empty:
        md += "\n\n## Scores per tap\n\n" + depth_markdown(taps)
        with atomic_path(out / "per_tap.csv") as tmp:
            taps.to_csv(tmp, index=False)
        written["per_tap.csv"] = out / "per_tap.csv"
    for name, text in (("tables.md", md), ("tables.tex", to_latex(tables))):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
        written[name] = out / name
    pf = probefree_rows(df)  # analysis.probefree=true jobs: their measures per tap
    if not pf.empty:
        with atomic_path(out / "probefree.csv") as tmp:
            pf.to_csv(tmp, index=False)
        with atomic_path(out / "probefree.md") as tmp:
            tmp.write_text(probefree_markdown(pf))
        written.update({"probefree.csv": out / "probefree.csv", "probefree.md": out / "probefree.md"})
        md += "\n" + probefree_markdown(pf)
    if figures:
        figs = draw_all(cells, out) + [f for exp, g in taps.groupby("experiment")
                                        if (f := depth_curve(g, out / f"{exp}_depth.png")) is not None]
        figs += probefree_figures(pf, out)
        for fig in figs:
            written[fig.path.name] = fig.path
            written[fig.path.with_suffix(".pdf").name] = fig.path.with_suffix(".pdf")
    if echo:
        print(md)
        print(f"wrote {', '.join(sorted(written))} to {out}")
    return written
