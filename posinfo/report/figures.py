"""Cells -> figures sized for a paper, 3.3 in (one column) or 7 in (full width): ``prediction_grid``
(the paper's Figure 4: image | target | one prediction per configuration, a row per target, from
each job's predictions.npz), ``spc_bars`` (SPC per configuration and target, the paper's value
marked on each bar), ``grid_bars`` (the same for target=grid's normalised accuracy, 0 = chance), ``spc_vs_level`` (SPC against the feature level a single tap reads, for
Table 3 sweeps), ``spc_vs_border`` (SPC against the canvas border, a line per canvas colour) and
``border_profile`` (MAE against the distance to the nearest image border, one
line per configuration, the no-information floor dashed); each is drawn only when its data exist, and saved as PNG (300 dpi) and PDF."""

from __future__ import annotations

import logging
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from posinfo.report.cells import as_text, border_columns, is_missing, label_cells, sort_key

log = logging.getLogger(__name__)

DPI = 300
COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
FULL_WIDTH = 7.0  # inches: the text width
FONT = 7  # pt: the size of a paper's caption text
MAX_CONFIGS = 8  # prediction columns in one Figure-4 grid
MAX_LEGEND = 20  # configurations in one bar figure's legend


@dataclass
class Figure:
    path: Path  # the PNG; the PDF lies beside it
    size_px: tuple[int, int]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": FONT, "axes.titlesize": FONT, "axes.labelsize": FONT, "legend.fontsize": FONT - 1,
                         "xtick.labelsize": FONT - 1, "ytick.labelsize": FONT - 1, "pdf.fonttype": 42})
    return plt


def _save(fig, path: Path) -> Figure:
    from posinfo.io import atomic_path

    # Whole pixels: Agg truncates width × dpi, so aim a quarter pixel above each integer.
    px = tuple(round(v * DPI) for v in fig.get_size_inches())
    fig.set_size_inches([(n + 0.25) / DPI for n in px])
    path.parent.mkdir(parents=True, exist_ok=True)
    for p, fmt in ((path, "png"), (path.with_suffix(".pdf"), "pdf")):
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)  # no bbox_inches="tight": the size stays exact
    _plt().close(fig)
    return Figure(path, px)


def _main_input(g: pd.DataFrame) -> str | None:
    inputs = g.loc[g.n_ok > 0, "input"].dropna().unique().tolist()
    if not inputs:
        return None
    return "natural" if "natural" in inputs else sorted(inputs, key=sort_key)[0]


def _ordered(values, key=lambda v: v) -> list:
    return sorted(pd.unique(pd.Series(list(values))), key=lambda v: sort_key(key(v)))


def _config_order(g: pd.DataFrame) -> list[str]:
    first = g.drop_duplicates("config_label")
    keys = {r.config_label: (sort_key(r.backbone), _natural(r.config_label)) for r in first.itertuples()}
    return sorted(keys, key=lambda c: keys[c])


def _natural(s: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(s)) if t]


def _wrap(s: str, width: int) -> str:
    return "\n".join(textwrap.wrap(str(s), width)) or str(s)


def draw_all(cells: pd.DataFrame, out: str | Path) -> list[Figure]:
    """Every figure the data allow, per experiment, into ``out``."""
    cells, _ = label_cells(cells)
    out = Path(out)
    figures = []
    for name, g in cells.groupby("experiment"):
        for suffix, draw in (("predictions", prediction_grid), ("spc_bars", spc_bars), ("grid_bars", grid_bars),
                             ("probe_bars", probe_bars),
                             ("spc_vs_level", spc_vs_level),
                             ("border_profile", border_profile), ("spc_vs_border", spc_vs_border)):
            try:
                fig = draw(g, out / f"{name}_{suffix}.png")
            except Exception as e:  # one bad figure must not cost the tables
                log.warning("figure %s_%s not drawn: %s", name, suffix, e)
                continue
            if fig is not None:
                figures.append(fig)
    return figures


def _load_npz(job_dir: str, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    p = Path(job_dir) / "predictions.npz"
    try:
        with np.load(p) as z:
            return z[f"{kind}_images"][0], z["target"], z[f"{kind}_pred"][0]
    except (OSError, KeyError, ValueError, IndexError):
        return None


def prediction_grid(g: pd.DataFrame, path: Path) -> Figure | None:
    """Figure 4: per target, the test image, the target and each configuration's prediction."""
    kind = _main_input(g)
    if kind is None:
        return None
    ok = g[(g.input == kind) & (g.n_ok > 0)]
    targets = _ordered(ok.target_label, key=lambda t: t.split(" [")[0])
    configs = _config_order(ok)[:MAX_CONFIGS]
    panels: dict[tuple[str, str], tuple] = {}
    for r in ok.itertuples():
        if r.config_label in configs and r.job_dirs:
            loaded = _load_npz(r.job_dirs[0], kind)
            if loaded is not None:
                panels[(r.target_label, r.config_label)] = loaded
    if not panels:
        return None
    plt = _plt()
    ncols, nrows = 2 + len(configs), len(targets)
    width = COLUMN_WIDTH if ncols <= 4 else FULL_WIDTH
    left, header = 0.18, 0.32  # inches for the row labels and the column titles
    cell = (width - left - 0.05) / ncols
    height = nrows * cell + header + 0.05
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - 0.05 / width, bottom=0.05 / height,
                        top=1 - header / height, wspace=0.04, hspace=0.04)
    titles = [f"image ({kind})", "target"] + configs
    for i, t in enumerate(targets):
        row = [panels.get((t, c)) for c in configs]
        some = next((p for p in row if p is not None), None)
        for j in range(ncols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if some is None:
                continue
            img, target, _ = some
            lo = min(0.0, float(target.min()))
            if j == 0:
                ax.imshow(img)
            elif j == 1:
                ax.imshow(target, cmap="gray", vmin=lo, vmax=1.0)
            elif row[j - 2] is not None:
                ax.imshow(row[j - 2][2], cmap="gray", vmin=lo, vmax=1.0)
            else:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            if i == 0:
                ax.set_title(_wrap(titles[j], 14), fontsize=FONT - 1, pad=2)
        axes[i, 0].set_ylabel(t, fontsize=FONT, labelpad=2)
    return _save(fig, path)


def spc_bars(g: pd.DataFrame, path: Path) -> Figure | None:
    """SPC per configuration (bars) and target (groups), the paper's value marked on each bar."""
    return _bars(g, path, "spc", "SPC")


def grid_bars(g: pd.DataFrame, path: Path) -> Figure | None:
    """The location target (target=grid): normalised accuracy (acc − chance)/(1 − chance) per
    configuration, 0 = chance (the floor), 1 = every position's cell right; the paper has none."""
    return _bars(g, path, "accuracy_norm", "grid acc norm")


def _bars(g: pd.DataFrame, path: Path, metric: str, name: str) -> Figure | None:
    """``metric`` per configuration (bars) and target (groups) on the main input, 95% intervals as
    error bars, and the paper's value (SPC only) as a black tick on bars of the paper's own setup."""
    kind = _main_input(g)
    if kind is None or metric not in g:
        return None
    ok = g[(g.input == kind) & (g.n_ok > 0) & g[metric].notna()]
    if ok.empty:
        return None
    plt = _plt()
    targets = _ordered(ok.target_label, key=lambda t: t.split(" [")[0])
    configs = _config_order(ok)
    n = len(configs)
    width = COLUMN_WIDTH if len(targets) * n <= 12 else FULL_WIDTH
    has_paper = metric == "spc" and bool(ok.paper_spc.notna().any())
    legend = n <= MAX_LEGEND  # beyond that the legend would be the figure: results.csv names the bars
    longest = max(len(str(c)) for c in configs) if configs else 10  # legend columns that fit the width
    ncol = max(1, min(n + has_paper, 2 if width < 4 else 5, int((width - 0.3) / (0.045 * longest + 0.35))))
    legend_h = 0.17 * math.ceil((n + has_paper) / ncol) if legend else 0.3  # inches above the axes
    height = 2.0 + legend_h
    fig, ax = plt.subplots(figsize=(width, height))
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.08 / width, bottom=0.3 / height, top=1 - (legend_h + 0.1) / height)
    bw = 0.8 / n
    colors = plt.get_cmap("tab10" if n <= 10 else "tab20")
    paper_drawn = False
    for j, c in enumerate(configs):
        sub = ok[ok.config_label == c].set_index("target_label")
        xs = [i - 0.4 + bw * (j + 0.5) for i, t in enumerate(targets) if t in sub.index]
        rows = [sub.loc[t] for t in targets if t in sub.index]
        err = _interval_errors(rows, metric)
        ax.bar(xs, [r[metric] for r in rows], bw * 0.9, yerr=err if err.any() else None, color=colors(j % colors.N),
               label=c, error_kw={"elinewidth": 0.6, "capsize": 1})
        # The paper's value only beside a bar of the paper's own configuration, weights included
        # (posinfo.report.paper attaches it to no other cell), as in the tables.
        px = [(x, r.paper_spc) for x, r in zip(xs, rows) if has_paper and not math.isnan(r.paper_spc)]
        if px:
            # a black tick as wide as the bar
            ax.plot(*zip(*px), ls="none", marker="_", ms=bw * 0.9 * 72 * (width - 0.7) / len(targets), mew=1.2, color="k")
            paper_drawn = True
    ax.set_xticks(range(len(targets)), targets)
    ax.axhline(0, color="k", lw=0.5)  # SPC: no correlation; normalised accuracy: chance
    lo = min(0.0, float(ok[metric].min()) - 0.05)
    ax.set_ylim(lo, 1.0)
    ax.set_ylabel(f"{name} ({kind})")
    ax.spines[["top", "right"]].set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    if not legend:
        handles, labels = [], []
        ax.set_title(f"{n} configurations per target, in the order of results.csv", fontsize=FONT, loc="left")
    if paper_drawn:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], ls="none", marker="_", ms=8, mew=1.2, color="k"))
        labels.append("paper, same setup")  # Islam et al. 2020, same configuration and weights
    if handles:
        ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=ncol if legend else 1,
                  frameon=False, handlelength=1.2, columnspacing=0.8, borderaxespad=0.2)
    return _save(fig, path)


def probe_bars(g: pd.DataFrame, path: Path) -> Figure | None:
    """The per-position probes and the placement tasks: each kind's headline (rowcol accuracy, xy R²,
    placement accuracy) per configuration, a panel per target, 95% intervals as error bars, its
    chance or floor dashed; placement's channel-shuffled control as a hatched bar beside each."""
    from posinfo.kinds import lookup

    g = g[g.target.map(lambda t: bool(getattr(lookup(t), "probe_bars", False)))]
    kind = _main_input(g) if not g.empty else None
    if kind is None:
        return None
    ok = g[(g.input == kind) & (g.n_ok > 0)]
    targets = _ordered(ok.target_label, key=lambda t: t.split(" [")[0])
    configs = _config_order(ok)
    if ok.empty or not configs:
        return None
    plt = _plt()
    width = min(FULL_WIDTH, max(COLUMN_WIDTH, 0.35 * len(configs) * len(targets) + 1.0))
    fig, axes = plt.subplots(1, len(targets), figsize=(width, 2.6), squeeze=False)
    colors = plt.get_cmap("tab10" if len(configs) <= 10 else "tab20")
    for ax, t in zip(axes[0], targets):
        sub = ok[ok.target_label == t].set_index("config_label")
        k = lookup(sub.target.iloc[0])
        metrics = [k.headline] + (["shuffled_accuracy"] if k.name == "placement" else [])
        for j, c in enumerate(c for c in configs if c in sub.index):
            row = sub.loc[c]
            row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
            for m_i, m in enumerate(metrics):
                if m not in row or is_missing(row[m]):
                    continue
                x = j + (m_i - (len(metrics) - 1) / 2) * 0.4
                ax.bar(x, row[m], 0.38 if len(metrics) > 1 else 0.7, yerr=_interval_errors([row], m),
                       color=colors(j % colors.N), hatch="///" if m_i else None, alpha=0.5 if m_i else 1.0,
                       error_kw={"elinewidth": 0.6, "capsize": 1})
        floor = k.floors.get(k.headline)
        level = sub[floor].dropna().iloc[0] if isinstance(floor, str) and floor in sub and sub[floor].notna().any() else floor
        if isinstance(level, (int, float)) and not is_missing(level):
            ax.axhline(float(level), ls="--", lw=0.8, color="k")
        shown = [c for c in configs if c in sub.index]
        ax.set_xticks(range(len(shown)), [_wrap(c, 14) for c in shown], rotation=45 if len(shown) > 3 else 0,
                      ha="right" if len(shown) > 3 else "center", fontsize=FONT - 2)
        extra = " (hatched: channels shuffled)" if len(metrics) > 1 else ""
        ax.set_title(f"{t}: {k.headline}{extra}; dashed: chance / floor", fontsize=FONT - 1)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def _interval_errors(rows: list, metric: str = "spc") -> np.ndarray:
    """2×n error bar lengths (below, above) from the cells' 95% intervals of ``metric`` (0 where none)."""
    lo, hi = f"{metric}_lo", f"{metric}_hi"
    below = [r[metric] - r[lo] if lo in r and not math.isnan(r[lo]) else 0.0 for r in rows]
    above = [r[hi] - r[metric] if hi in r and not math.isnan(r[hi]) else 0.0 for r in rows]
    return np.clip(np.array([below, above], dtype=float), 0.0, None)


def spc_vs_level(g: pd.DataFrame, path: Path) -> Figure | None:
    """SPC against the single feature level read (f1..f5), with 'all' at the right (Table 3)."""
    if "backbone.taps" not in g:
        return None
    kind = _main_input(g)
    ok = g[(g.input == kind) & (g.n_ok > 0) & g.spc.notna()]
    level = as_text(ok["backbone.taps"]).str.fullmatch(r"\[(\d)\]").astype(bool)
    single = ok[level]
    if single["backbone.taps"].nunique() < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.3))
    fig.subplots_adjust(left=0.45 / COLUMN_WIDTH, right=1 - 0.1 / COLUMN_WIDTH, bottom=0.4 / 2.3, top=1 - 0.45 / 2.3)
    levels = sorted({int(str(t)[1]) for t in single["backbone.taps"]})
    x_all = max(levels) + 1
    colors = plt.get_cmap("tab10")
    lines = ok.groupby(["backbone", "target_label"], sort=False)
    ordered = sorted(lines, key=lambda kv: (sort_key(kv[0][0]), sort_key(kv[0][1])))
    for j, ((bb, t), sub) in enumerate(ordered):
        xs = [int(str(v)[1]) if re.fullmatch(r"\[\d\]", str(v)) else (x_all if v == "all" else None) for v in sub["backbone.taps"]]
        pts = sorted(((x, r) for x, r in zip(xs, sub.itertuples()) if x is not None), key=lambda p: p[0])
        label = t if lines.ngroups == ok.target_label.nunique() else f"{bb} {t}"
        col = colors(j % 10)
        # single levels joined by a line; 'all' a point of its own, not a sixth level
        for part, kw in (([p for p in pts if p[0] != x_all], {"label": f"{label} (ours)"}),
                         ([p for p in pts if p[0] == x_all], {"ls": "none"})):
            if part:
                ax.errorbar([x for x, _ in part], [r.spc for _, r in part],
                            yerr=_interval_errors([r for _, r in part]),
                            color=col, marker="o", ms=3, lw=1, capsize=1, **kw)
        for part, kw in (([p for p in pts if p[0] != x_all], {"label": f"{label} (paper)"}),
                         ([p for p in pts if p[0] == x_all], {})):
            paper = [(x, r.paper_spc) for x, r in part if not math.isnan(r.paper_spc)]
            if paper:
                ax.plot(*zip(*paper), color=col, marker="s", mfc="none", ms=3, lw=0.8, ls="--", **kw)
    ticks = levels + ([x_all] if (ok["backbone.taps"] == "all").any() else [])
    ax.set_xticks(ticks, [f"f{v}" if v != x_all else "all" for v in ticks])
    ax.set_xlabel("feature level read by the readout")
    ax.set_ylabel(f"SPC ({kind})")
    ax.set_ylim(min(0.0, float(ok.spc.min()) - 0.05), 1.0)
    ax.spines[["top", "right"]].set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (labels[i].endswith("(paper)"), i))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower left", bbox_to_anchor=(0, 1.01),
              ncol=2, frameon=False, handlelength=1.8, columnspacing=0.8)
    return _save(fig, path)


def _profile_bins(job_dir: str) -> dict | None:
    import json

    try:
        return json.loads((Path(job_dir) / "result.json").read_text())["border_profile"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


PANEL_HEIGHT = 2.4  # inches: one row of per-target panels, without its legend


def _legend_columns(width: float) -> int:
    return 4 if width > 4 else 2


def _panels(plt, n_panels: int, width: float, n_entries: int, legend: bool):
    """A row of per-target panels sharing y, with room below for a legend of ``n_entries`` (if ``legend``)."""
    legend_h = 0.16 * math.ceil(n_entries / _legend_columns(width)) if legend else 0
    fig, axes = plt.subplots(1, n_panels, figsize=(width, PANEL_HEIGHT + legend_h), squeeze=False, sharey=True)
    return fig, axes, legend_h


def _finish_panels(fig, axes, width: float, legend_h: float, path: Path) -> Figure:
    """The first panel's legend below the row (when there is room for it), then save."""
    if legend_h:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=_legend_columns(width), frameon=False, fontsize=FONT - 1)
        fig.tight_layout(rect=(0, (legend_h + 0.05) / (PANEL_HEIGHT + legend_h), 1, 1))
    else:
        fig.tight_layout()
    return _save(fig, path)


def border_profile(g: pd.DataFrame, path: Path) -> Figure | None:
    """MAE vs distance to the nearest border (bin starts, px), a panel per target, a line per
    configuration on the main input; the no-information floor per bin dashed."""
    kind = _main_input(g)
    cols = border_columns(g)
    ok = g[(g.input == kind) & (g.n_ok > 0)].dropna(subset=cols[:1]) if cols and kind else g.iloc[0:0]
    if ok.empty:
        return None
    plt = _plt()
    targets = _ordered(ok.target_label, key=lambda t: t.split(" [")[0])
    configs = _config_order(ok)
    width = min(FULL_WIDTH, COLUMN_WIDTH * len(targets)) if len(targets) > 1 else COLUMN_WIDTH
    fig, axes, legend_h = _panels(plt, len(targets), width, len(configs) + 1, len(configs) <= MAX_LEGEND)
    colors = plt.get_cmap("tab10" if len(configs) <= 10 else "tab20")
    for ax, t in zip(axes[0], targets):
        sub = ok[ok.target_label == t]
        bins = _profile_bins(sub.job_dirs.iloc[0][0])
        xs = bins["start_px"][: len(cols)] if bins else list(range(len(cols)))
        for j, c in enumerate(configs):
            row = sub[sub.config_label == c]
            if not row.empty:
                ax.plot(xs, row.iloc[0][cols].astype(float).tolist(), marker="o", ms=2, lw=1, color=colors(j % colors.N),
                        label=c)
        if bins:
            ax.plot(xs, bins["floor_mae"][: len(cols)], ls="--", lw=1, color="k", label="floor (no information)")
        ax.set_title(t, fontsize=FONT)
        ax.set_xlabel("distance to the nearest border (px, bin start)")
        ax.spines[["top", "right"]].set_visible(False)
    axes[0, 0].set_ylabel(f"MAE ({kind})")
    return _finish_panels(fig, axes, width, legend_h, path)


def spc_vs_border(g: pd.DataFrame, path: Path) -> Figure | None:
    """SPC against data.canvas.border (px added on every side), a panel per target, a line per
    configuration but the border (e.g. one per backbone × canvas colour), 95% intervals as bars."""
    col = "data.canvas.border"
    kind = _main_input(g)
    if col not in g or kind is None:
        return None
    ok = g[(g.input == kind) & (g.n_ok > 0) & g.spc.notna() & g[col].notna()]
    if ok.empty or ok[col].nunique() < 2:
        return None
    plt = _plt()
    ok = ok.assign(line=[re.sub(r"\s*border=\S+", "", c) for c in ok.config_label])
    targets = _ordered(ok.target_label, key=lambda t: t.split(" [")[0])
    lines = _ordered(ok.line, key=_natural)
    width = FULL_WIDTH if len(targets) > 1 else COLUMN_WIDTH
    fig, axes, legend_h = _panels(plt, len(targets), width, len(lines), len(lines) <= MAX_LEGEND)
    colors = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    for ax, t in zip(axes[0], targets):
        for j, name in enumerate(lines):
            sub = ok[(ok.target_label == t) & (ok.line == name)].sort_values(col, key=lambda s: s.astype(int))
            if sub.empty:
                continue
            rows = [r for _, r in sub.iterrows()]
            ax.errorbar(sub[col].astype(int).tolist(), [r.spc for r in rows], yerr=_interval_errors(rows),
                        color=colors(j % colors.N), marker="o", ms=3, lw=1, capsize=1, label=name)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(t, fontsize=FONT)
        ax.set_xlabel("canvas border (px on every side)")
        ax.spines[["top", "right"]].set_visible(False)
    axes[0, 0].set_ylabel(f"SPC ({kind})")
    return _finish_panels(fig, axes, width, legend_h, path)


def depth_curve(df: pd.DataFrame, path: Path) -> Figure | None:
    """target.per_tap (posinfo.report.depth): the kind's headline metric against the tap, a line per
    configuration and input with its interval over seeds shaded, a panel per target; chance dashed.
    The legend, below the panels, names what differs between the lines."""
    if df.empty:
        return None
    plt = _plt()
    targets = list(dict.fromkeys(df.target_label))
    lines = sorted({(c, i) for c, i in zip(df.config_label, df.input)}, key=lambda ci: (_natural(ci[0]), ci[1]))
    colors = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    color = {ci: colors(k % colors.N) for k, ci in enumerate(lines)}
    names = _distinct_words([c for c, _ in dict.fromkeys(lines)])
    inputs = df.input.nunique() > 1
    fig, axes = _legend_below_panels(plt, len(targets), COLUMN_WIDTH * len(targets), len(lines), 1)
    for ax, t in zip(axes, targets):
        g = df[df.target_label == t]
        for ci in lines:
            r = g[(g.config_label == ci[0]) & (g.input == ci[1])].sort_values("tap_index")
            if r.empty:
                continue
            ax.plot(r.tap_index, r.value, marker="o", ms=2, lw=1, color=color[ci],
                    label=_wrap(names[ci[0]] + (f" ({ci[1]})" if inputs else ""), 70))
            if r.n_runs.max() > 1:
                ax.fill_between(r.tap_index, r.lo, r.hi, alpha=0.15, color=color[ci], lw=0)
        floor = g.floor.dropna()
        if len(floor):
            ax.axhline(float(floor.iloc[0]), ls="--", lw=0.8, color="k", label="chance / floor")
        _tap_ticks(ax, g.tap_index, g.tap)
        ax.set_title(t, fontsize=FONT)
        ax.set_ylabel(g.metric.iloc[0])
        ax.spines[["top", "right"]].set_visible(False)
    return _save_legend_below(fig, axes[0], 1, path)


def probefree_curves(rows: pd.DataFrame, label: list[str], path: Path) -> Figure | None:
    """analysis.probefree (posinfo.report.probefree rows of one experiment): the input-independent
    share and the mean bias map's left − right asymmetry (95% interval shaded), a line per set of
    features named by ``label`` (the fields that tell them apart), against the tap; where the
    input size is what varies (mind_the_pad), against the size instead, one line per tap."""
    if rows.empty:
        return None
    plt = _plt()
    by_size = "data.image_size" in label and rows["data.image_size"].nunique() > 2
    series = [f for f in label if f != "data.image_size"] if by_size else label
    groups = list(rows.groupby(series, sort=False)) if series else [((), rows)]
    lines = []
    for key, g in groups:
        name = " ".join(f"{f.split('.')[-1]}={v}" for f, v in zip(series, key if isinstance(key, tuple) else (key,)))
        if by_size:
            taps = list(dict.fromkeys(g.tap))
            for tap in dict.fromkeys([taps[0], taps[-1]]):
                lines.append((f"{name} {tap}".strip(), g[g.tap == tap].sort_values("data.image_size"), "data.image_size"))
        else:
            lines.append((name or "all", g.assign(_x=range(len(g))), "_x"))
    colors = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    ncol = 2 if len(lines) > 8 else 1
    fig, axes = _legend_below_panels(plt, 2, FULL_WIDTH, len(lines), ncol, base=2.2, left=0.45,
                                     ticks=0.4 if by_size else 0.55, wspace=0.3)
    for k, (name, g, x) in enumerate(lines):
        for ax, m in zip(axes, ("share", "left_right")):
            ax.plot(g[x], g[m], marker="o", ms=2, lw=1, color=colors(k % colors.N), label=name)
            if f"{m}_lo" in g and g[f"{m}_lo"].notna().any():
                ax.fill_between(g[x], g[f"{m}_lo"], g[f"{m}_hi"], alpha=0.15, color=colors(k % colors.N), lw=0)
    for ax, title in zip(axes, ("input-independent share of the variance", "mean bias map: left − right (std units)")):
        ax.set_title(title, fontsize=FONT - 1)
        ax.axhline(0, color="k", lw=0.5)
        ax.spines[["top", "right"]].set_visible(False)
        if by_size:
            ax.set_xlabel("input size (px)")
        else:
            _tap_ticks(ax, pd.concat([g[x] for _, g, x in lines]), pd.concat([g.tap for _, g, _ in lines]))
    return _save_legend_below(fig, axes[0], ncol, path)


def _legend_below_panels(plt, n_panels: int, width: float, n_entries: int, ncol: int, *, base: float = 2.3,
                         left: float = 0.55, ticks: float = 0.55, wspace: float = 0.35):
    """A row of panels (inches: ``base`` high for the axes, ``left`` for the y labels, ``ticks``
    below the axes for their tick labels) above the room a legend of ``n_entries`` in ``ncol``
    columns needs; the panels as a flat array."""
    legend_h = 0.105 * (math.ceil(n_entries / ncol) + 1)
    height = base + legend_h
    fig, axes = plt.subplots(1, n_panels, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - 0.1 / width, top=1 - 0.25 / height,
                        bottom=(legend_h + ticks) / height, wspace=wspace)
    return fig, axes[0]


def _save_legend_below(fig, ax, ncol: int, path: Path) -> Figure:
    """``ax``'s legend in the room :func:`_legend_below_panels` left under the panels, then save."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.02, 0.0), fontsize=FONT - 2, frameon=False,
               ncol=ncol, handlelength=1.5, borderaxespad=0.2)
    return _save(fig, path)


def _tap_ticks(ax, index: pd.Series, names: pd.Series) -> None:
    """The x ticks of a curve over taps: their names where every line's tap at an index has the
    same name; else (networks with taps of their own: f1… against blocks.0…) the index, first to last."""
    per = pd.DataFrame({"i": list(index), "name": list(names)}).drop_duplicates()
    ticks = sorted(per.i.unique())
    if per.groupby("i").name.nunique().max() == 1:
        ax.set_xticks(ticks, [per[per.i == i].name.iloc[0] for i in ticks], rotation=45, ha="right", fontsize=FONT - 2)
    else:
        ax.set_xticks(ticks, [str(i + 1) for i in ticks], fontsize=FONT - 1)
        ax.set_xlabel("tap, first to last (each network's own)", fontsize=FONT - 1)


def _distinct_words(labels: list[str]) -> dict[str, str]:
    """Each label without the words every label shares (the model and taps of one sweep), so a
    legend names what differs: "backbone.pos_embed=zero data.image_size=336"; "all" if nothing does."""
    shared = set.intersection(*(set(lab.split()) for lab in labels)) if len(labels) > 1 else set()
    return {lab: " ".join(w for w in lab.split() if w not in shared) or lab for lab in labels}
