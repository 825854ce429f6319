"""The study behind docs/science.md: real pretrained VGG16s against random weights and PosENet,
on embedded and photo data, with the controls, training-set sizes, step budgets, input
normalisation, channel standardisation and tap scales; 3 seeds, 95% intervals everywhere.

    python scripts/study.py                      # run what is missing (resumes), write docs/science.md
    python scripts/study.py --report-only        # rewrite docs/science.md from the finished jobs
    python scripts/study.py --parts main,size    # some parts only
    python scripts/study.py --smoke --out /tmp/s --doc /tmp/s/science.md   # tiny: checks the pipeline

Every job runs through ``sweep.py -m`` (one sweep folder per part under ``--out``, default
outputs/study), so it resumes, caches features and reuses trained readouts like any sweep;
the tables come from posinfo.report (the same collection and intervals as analyze.py).
The weights are the two trained VGG16 files of ``--weights`` (default: $POSINFO_TEST_WEIGHTS,
else ../shared/weights). About 2 h on a 2-core CPU, the paper-step part a third of it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from posinfo.errors import PosinfoError  # noqa: E402
from posinfo.report.paper import paper_table  # noqa: E402
from posinfo.names import CONTROL_KINDS, PAPER_STEPS, SYNTHETIC_KINDS  # noqa: E402


def _paper_vgg16(targets: tuple[str, ...] = ("hor", "gau", "horstp")) -> dict[str, tuple[float, float]]:
    """Table 1, ImageNet VGG16 on natural images: (SPC, MAE) of the targets the studies compare
    against, read from the package's copy of the paper's tables (never restated here)."""
    t = paper_table()
    rows = t[(t.table == "table1") & (t.backbone == "vgg16") & (t.variant == "") & (t.input == "natural")]
    return {r.target: (r.spc, r.mae) for r in rows.itertuples() if r.target in targets}


PAPER = _paper_vgg16()
ALL_INPUTS = ["natural", *CONTROL_KINDS, *SYNTHETIC_KINDS]
WEIGHT_LABELS = {"vgg16_imagenet.pth": "ImageNet", "vgg16_hed.pth": "edge (HED)", "random": "random"}


@dataclass
class Part:
    name: str
    what: str
    overrides: list[str]


@dataclass
class Scale:
    """Sizes of one study run: the full study, or a tiny smoke run of the same grid."""

    seeds: str = "0,1,2"
    targets: str = "hor,gau,horstp"
    photo_targets: str = "hor,gau"
    n_main: int = 1000
    n_sizes: str = "2000,1000,500,250"  # largest first: its features serve the smaller sets
    n_sizes_other: str = "1000,500,250"
    n_photos: int = 240
    n_scale: int = 500
    steps: str = "paper"
    extra: tuple[str, ...] = ()
    scale_seeds: str = "0,1,2"   # --scale-seeds / --budget-seeds: fewer seeds where time is short
    budget_seeds: str = "0,1,2"


SMOKE = Scale(seeds="0,1", targets="hor", photo_targets="hor", n_main=12, n_sizes="12,8", n_sizes_other="8",
              n_photos=8, n_scale=8, steps="30", extra=("data.image_size=32", "data.num_test=4", "train.epochs=2",
                                            "train.batch_size=4", "train.lr_milestones=[1]", "device=cpu"))


# --lean: random backbones with one seed (each seed of a random VGG16 is another backbone, so another
# extraction), no edge-detection VGG16 on photographs, input normalisation for ImageNet weights only.
# Their parts are reported as the part named here.
LEAN_ALIAS = {"main_random": "main", "size_random": "size_other", "photos_random": "photos", "scale_random": "scale"}


def lean_parts(w: Path, s: Scale) -> list[Part]:
    imagenet, hed = str(w / "vgg16_imagenet.pth"), str(w / "vgg16_hed.pth")
    every = f"input.kinds=[{','.join(ALL_INPUTS)}]"
    seeds, one = f"train.seed={s.seeds}", "train.seed=0"
    pose = "backbone=posenet readout.padding=0,2"
    return [
        Part("size", "training-set size, hor, ImageNet VGG16", [
            "backbone=vgg16", f"backbone.weights={imagenet}", "target=hor", "input=natural", f"data.num_train={s.n_sizes}", seeds]),
        Part("main", "VGG16 ImageNet and edge weights × target, every input; embedded data", [
            "backbone=vgg16", f"backbone.weights={imagenet},{hed}", f"target={s.targets}", every, f"data.num_train={s.n_main}", seeds]),
        Part("main_random", "random VGG16 × target, every input; embedded data; one seed", [
            "backbone=vgg16", "backbone.weights=random", f"target={s.targets}", every, f"data.num_train={s.n_main}", one]),
        Part("posenet", "PosENet readout padding 0 and 2 × target, every input; embedded data", [
            *pose.split(), f"target={s.targets}", every, f"data.num_train={s.n_main}", seeds]),
        Part("size_other", "training-set size, hor, edge-detection VGG16", [
            "backbone=vgg16", f"backbone.weights={hed}", "target=hor", "input=natural", f"data.num_train={s.n_sizes_other}", seeds]),
        Part("size_random", "training-set size, hor, random VGG16; one seed", [
            "backbone=vgg16", "backbone.weights=random", "target=hor", "input=natural", f"data.num_train={s.n_sizes_other}", one]),
        Part("photos", "ImageNet VGG16 × target, every input; photographs", [
            "data=photos", "backbone=vgg16", f"backbone.weights={imagenet}", f"target={s.photo_targets}", every, f"data.num_train={s.n_photos}",
            seeds]),
        Part("photos_random", "random VGG16 × target, every input; photographs; one seed", [
            "data=photos", "backbone=vgg16", "backbone.weights=random", f"target={s.photo_targets}", every, f"data.num_train={s.n_photos}", one]),
        Part("photos_posenet", "PosENet padding 0 and 2; photographs", [
            "data=photos", *pose.split(), f"target={s.photo_targets}", every, f"data.num_train={s.n_photos}",
            seeds]),
        Part("scale", "data.normalize × readout.standardize, hor, ImageNet VGG16", [
            "backbone=vgg16", f"backbone.weights={imagenet}", "data.normalize=none,imagenet", "readout.standardize=none,channel", "target=hor",
            "input=natural", f"data.num_train={s.n_scale}", f"train.seed={s.scale_seeds}"]),
        Part("scale_random", "readout.standardize, hor, random VGG16", [
            "backbone=vgg16", "backbone.weights=random", "readout.standardize=none,channel", "target=hor", "input=natural",
            f"data.num_train={s.n_scale}", f"train.seed={s.scale_seeds}"]),
        Part("scale_hed", "readout.standardize, hor, edge-detection VGG16", [
            "backbone=vgg16", f"backbone.weights={hed}", "readout.standardize=none,channel", "target=hor", "input=natural",
            f"data.num_train={s.n_scale}", f"train.seed={s.scale_seeds}"]),
        Part("budget", "the paper's step budget, hor, ImageNet VGG16", [
            "backbone=vgg16", f"backbone.weights={imagenet}", f"train.steps={s.steps}", "target=hor", "input=natural",
            f"data.num_train={s.n_main}", f"train.seed={s.budget_seeds}"]),
    ]


def parts(w: Path, s: Scale) -> list[Part]:
    imagenet, hed = str(w / "vgg16_imagenet.pth"), str(w / "vgg16_hed.pth")
    vgg = f"backbone=vgg16 backbone.weights={imagenet},{hed},random"
    two = f"backbone=vgg16 backbone.weights={imagenet},random"
    every = f"input.kinds=[{','.join(ALL_INPUTS)}]"
    seeds = f"train.seed={s.seeds}"
    pose = "backbone=posenet readout.padding=0,2"
    return [
        # First: its largest set's features then serve every smaller set (cache.get_prefix).
        Part("size", "training-set size, hor, ImageNet VGG16", [
            "backbone=vgg16", f"backbone.weights={imagenet}", "target=hor", "input=natural",
            f"data.num_train={s.n_sizes}", seeds]),
        Part("main", "VGG16 weights × target, every input; embedded data", [
            *vgg.split(), f"target={s.targets}", every, f"data.num_train={s.n_main}", seeds]),
        Part("posenet", "PosENet readout padding 0 and 2 × target, every input; embedded data", [
            *pose.split(), f"target={s.targets}", every, f"data.num_train={s.n_main}", seeds]),
        Part("size_other", "training-set size, hor, edge-detection and random VGG16", [
            "backbone=vgg16", f"backbone.weights={hed},random", "target=hor", "input=natural",
            f"data.num_train={s.n_sizes_other}", seeds]),
        Part("photos", "VGG16 weights × target, every input; photographs", [
            "data=photos", *vgg.split(), f"target={s.photo_targets}", every, f"data.num_train={s.n_photos}", seeds]),
        Part("photos_posenet", "PosENet padding 0 and 2; photographs", [
            "data=photos", *pose.split(), f"target={s.photo_targets}", every, f"data.num_train={s.n_photos}",
            seeds]),
        Part("scale", "data.normalize × readout.standardize, hor", [
            *two.split(), "data.normalize=none,imagenet", "readout.standardize=none,channel", "target=hor",
            "input=natural", f"data.num_train={s.n_scale}", f"train.seed={s.scale_seeds}"]),
        Part("scale_hed", "readout.standardize, hor, edge-detection VGG16", [
            "backbone=vgg16", f"backbone.weights={hed}", "readout.standardize=none,channel", "target=hor",
            "input=natural", f"data.num_train={s.n_scale}", f"train.seed={s.scale_seeds}"]),
        Part("budget", "the paper's step budget, hor, ImageNet VGG16", [
            "backbone=vgg16", f"backbone.weights={imagenet}", f"train.steps={s.steps}", "target=hor", "input=natural",
            f"data.num_train={s.n_main}", f"train.seed={s.budget_seeds}"]),
    ]


# ----------------------------------------------------------------------------- running


def run_part(part: Part, out: Path, extra: tuple[str, ...], timing: dict) -> None:
    cmd = [sys.executable, str(REPO / "sweep.py"), "-m", *part.overrides, *extra, f"hydra.sweep.dir={out / part.name}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    print(f"[study] {part.name}: {part.what}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t0
    (out / f"{part.name}.log").write_text(proc.stdout)
    tail = [line for line in proc.stdout.splitlines() if line.startswith("posinfo")][-1:]
    print(f"[study] {part.name}: {seconds / 60:.1f} min{': ' + tail[0] if tail else ''}", flush=True)
    timing[part.name] = timing.get(part.name, 0.0) + seconds
    if proc.returncode != 0:
        raise SystemExit(f"study part {part.name} failed (exit {proc.returncode}); its log: {out / (part.name + '.log')}")


# ----------------------------------------------------------------------------- tables


def load_cells(out: Path, names: list[str]):
    """One aggregated cell per (part, configuration, input), with seeds' intervals."""
    import pandas as pd

    from posinfo.report.cells import aggregate
    from posinfo.report.collect import collect

    frames = []
    for name in names:
        if (out / name).is_dir():
            df = collect([out / name])
            if not df.empty:
                frames.append(df.assign(part=LEAN_ALIAS.get(name, name)))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    cells = aggregate(df)
    cells = cells[cells.n_ok > 0].copy()  # jobs interrupted before their result (a stopped run) are no cell
    cells["label"] = [label(r) for _, r in cells.iterrows()]
    return cells


def label(row) -> str:
    if row.get("backbone") == "posenet":
        return f"PosENet, readout padding {int(row.get('readout.padding', 0) or 0)}"
    w = str(row.get("backbone.weights") or "")
    return WEIGHT_LABELS.get(Path(w).name, w)


def ci(cell, m: str = "spc") -> str:
    v, lo, hi = cell.get(m), cell.get(f"{m}_lo"), cell.get(f"{m}_hi")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    s = f"{v:.3f}".replace("0.", ".", 1)
    if lo is not None and not math.isnan(lo):
        s += f" [{lo:.2f}, {hi:.2f}]".replace("0.", ".")
    s += " ᵇ" if cell.get("ci") == "images" else ""  # one seed: the interval is a bootstrap over test images
    return s + (" ⚠" if cell.get("unstable") else "")


def _same(column, v):
    """Rows of ``column`` equal to ``v`` (numbers compared as numbers: 1000 == 1000.0)."""
    import pandas as pd

    if isinstance(v, (int, float)):
        return pd.to_numeric(column, errors="coerce") == v
    return column.astype(str) == str(v)


def pick(cells, **eq):
    g = cells
    for k, v in eq.items():
        if k not in g.columns:
            return None
        g = g[_same(g[k], v)]
    return None if g.empty else g.iloc[0]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def seed_values(cell, m: str = "spc") -> list[float]:
    """The per-seed values behind a cell (read from its jobs' result.json)."""
    out = []
    for d in cell["job_dirs"]:
        r = json.loads((Path(d) / "result.json").read_text())
        out.append(float(r["metrics"][cell["input"]][m]))
    return out


def _se(cell, m: str) -> float:
    """The standard error behind a cell's 95% interval (t over seeds, or the images' bootstrap)."""
    from scipy import stats

    lo, hi, n = cell.get(f"{m}_lo"), cell.get(f"{m}_hi"), len(cell["job_dirs"])
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return math.nan
    crit = stats.t.ppf(0.975, n - 1) if n > 1 else stats.norm.ppf(0.975)
    return (hi - lo) / (2 * crit)


def diff(a, b, m: str = "spc") -> tuple[float, float, float]:
    """Mean of a − b with a 95% interval: Welch's t over seeds when both cells have several; else
    the normal approximation from each cell's own interval (a one-seed cell's: its test images)."""
    from scipy import stats

    x, y = np.array(seed_values(a, m)), np.array(seed_values(b, m))
    d = x.mean() - y.mean()
    if len(x) < 2 or len(y) < 2:
        half = stats.norm.ppf(0.975) * math.hypot(_se(a, m), _se(b, m))
        return d, d - half, d + half
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return d, d, d
    dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = stats.t.ppf(0.975, dof) * se
    return d, d - half, d + half


def fmt_diff(t) -> str:
    d, lo, hi = t
    return f"{d:+.3f} [{lo:+.2f}, {hi:+.2f}]"


def verdict(t, more: str, less: str, same: str) -> str:
    return more if t[1] > 0 else less if t[2] < 0 else same


# ----------------------------------------------------------------------------- tap scales


def tap_scales(w: Path, smoke: bool) -> list[list[str]]:
    """Mean |x| of each VGG16 tap over 16 embedded training images, per weights and normalisation."""
    import torch

    from posinfo.encoders import build_encoder
    from posinfo.data import EmbeddedImages

    size, n = (32, 4) if smoke else (224, 16)
    images = torch.stack([EmbeddedImages("train", n=n, size=size)[i] for i in range(n)])
    rows = []
    for weights in (str(w / "vgg16_imagenet.pth"), str(w / "vgg16_hed.pth"), "random"):
        for normalize in ("none", "imagenet"):
            torch.manual_seed(0)
            enc = build_encoder("vgg16", weights, "zeros", None, normalize).eval()
            with torch.inference_mode():
                taps = enc(images)
            rows.append([WEIGHT_LABELS[Path(weights).name], normalize,
                         *[f"{t.abs().mean().item():.3g}" for t in taps]])
    return rows


# ----------------------------------------------------------------------------- figures


def _errorbars(ax, xs, cells, color, name, marker="o"):
    ys = [c["spc"] for c in cells]
    lo = [c["spc"] - c["spc_lo"] if not math.isnan(c["spc_lo"]) else 0 for c in cells]
    hi = [c["spc_hi"] - c["spc"] if not math.isnan(c["spc_hi"]) else 0 for c in cells]
    ax.errorbar(xs, ys, yerr=[lo, hi], color=color, label=name, marker=marker, capsize=3)


def figure_size(cells, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    g = cells[cells.part.isin(["size", "size_other"])]
    for (name, sub), color in zip(g.groupby("label", sort=False), ("C0", "C1", "C2")):
        sub = sub.sort_values("data.num_train", key=lambda s: s.astype(int))
        _errorbars(ax, sub["data.num_train"].astype(int).tolist(), [r for _, r in sub.iterrows()], color, name)
    save_size_figure(fig, ax, path, "paper, ImageNet VGG16 (10,553 photos)", "training images (embedded)",
                     "SPC, hor (natural test images)", "VGG16: position information vs training-set size (3 seeds, 95% CI)")


def save_size_figure(fig, ax, path: Path, paper_label: str, xlabel: str, ylabel: str, title: str) -> None:
    """An SPC-against-training-images figure's common finish: the paper's `hor` line, a log axis,
    labels, and the file (shared with scripts/solver_study.py)."""
    import matplotlib.pyplot as plt

    ax.axhline(PAPER["hor"][0], color="k", ls="--", lw=1, label=paper_label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure_controls(cells, parts_: list[str], target: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = cells[cells.part.isin(parts_) & (cells.target == target)]
    labels = list(dict.fromkeys(g.label))
    kinds = [k for k in ALL_INPUTS if k in set(g.input)]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(kinds))
    for j, kind in enumerate(kinds):
        xs, ys, err = [], [], [[], []]
        for i, lab in enumerate(labels):
            c = pick(g, label=lab, input=kind)
            if c is None or c["spc"] is None or math.isnan(c["spc"]):
                continue
            xs.append(i + (j - (len(kinds) - 1) / 2) * width)
            ys.append(c["spc"])
            err[0].append(0 if math.isnan(c["spc_lo"]) else c["spc"] - c["spc_lo"])
            err[1].append(0 if math.isnan(c["spc_hi"]) else c["spc_hi"] - c["spc"])
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=kind)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel(f"SPC, {target}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def section_border(cells, figs: Path) -> list[str]:
    """Where the position is known: MAE per distance-to-the-border bin (main part, hor, natural)."""
    from posinfo.report.cells import border_columns

    g = cells[(cells.part.isin(["main", "posenet"])) & (cells.target == "hor") & (cells.input == "natural")]
    cols = border_columns(g) if not g.empty else []
    if not cols or g[cols[0]].isna().all():
        return []
    bins = json.loads((Path(g.job_dirs.iloc[0][0]) / "result.json").read_text())["border_profile"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    rows = []
    for _, c in g.iterrows():
        prof = [float(c[k]) for k in cols]
        ax.plot(bins["start_px"], prof, marker="o", ms=3, label=c["label"])
        rows.append([c["label"], *[f"{v:.3f}" for v in prof]])
    ax.plot(bins["start_px"], bins["floor_mae"], "k--", lw=1, label="floor (no information)")
    rows.append(["floor", *[f"{v:.3f}" for v in bins["floor_mae"]]])
    ax.set_xlabel("distance to the nearest border (px, bin start)")
    ax.set_ylabel("MAE, hor (natural test images)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figs / "science_border.png", dpi=120)
    plt.close(fig)
    head = ["weights", *[f"{a}–{b - 1} px" for a, b in zip(bins["start_px"], bins["start_px"][1:] + [112])]]
    return ["### Where the position is known: MAE by distance to the border (`hor`, embedded, natural)", "",
            "Mean over seeds of each bin's MAE (docs/method.md, \"Border profiles\"); lower is better, the floor row "
            "is a constant prediction.", "", md_table(head, rows), "",
            "![MAE by distance to the border](figures/science_border.png)", ""]


# ----------------------------------------------------------------------------- the report


def training_summary(cell) -> str:
    """Steps, mean final training loss and converged seeds of a cell's jobs."""
    outs = [json.loads((Path(d) / "result.json").read_text()).get("training") or {} for d in cell["job_dirs"]]
    steps = {o.get("steps") for o in outs}
    loss = np.mean([o.get("final_loss", math.nan) for o in outs])
    conv = sum(bool(o.get("converged")) for o in outs)
    return f"{'/'.join(str(s) for s in sorted(steps, key=str))} | {loss:.4f} | {conv} of {len(outs)}"


def section_inputs(cells, part_names: list[str], targets: list[str], title: str) -> list[str]:
    lines = [f"### {title}", ""]
    for target in targets:
        g = cells[cells.part.isin(part_names) & (cells.target == target)]
        if g.empty:
            continue
        kinds = [k for k in ALL_INPUTS if k in set(g.input)]
        rows = []
        for lab in dict.fromkeys(g.label):
            nat = pick(g, label=lab, input="natural")
            rows.append([lab, *[ci(pick(g, label=lab, input=k)) if pick(g, label=lab, input=k) is not None else "–"
                                for k in kinds], ci(nat, "mae") if nat is not None else "–"])
        floor = g.floor_mae.dropna()
        paper = f" Paper (ImageNet VGG16, DUTS-TR → PASCAL-S, natural): SPC {PAPER[target][0]}, MAE {PAPER[target][1]}." \
            if target in PAPER else ""
        lines += [f"`{target}`: SPC per evaluation input, and MAE on natural images (floor MAE "
                  f"{floor.iloc[0]:.3f}).{paper}", "",
                  md_table(["weights", *kinds, "MAE natural"], rows), ""]
    return lines


def section_size(cells) -> list[str]:
    g = cells[cells.part.isin(["size", "size_other"])]
    if g.empty:
        return []
    ns = sorted({int(v) for v in g["data.num_train"]})
    rows = []
    for lab in dict.fromkeys(g.label):
        row = [lab]
        for n in ns:
            c = pick(g, label=lab, **{"data.num_train": n})
            row.append("–" if c is None else f"{ci(c)}<br>MAE {ci(c, 'mae')}")
        rows.append(row)
    return ["### Training-set size (`hor`, embedded data, natural test images, 15 epochs)", "",
            md_table(["weights", *[f"N = {n}" for n in ns]], rows), "",
            "![SPC vs training-set size](figures/science_size.png)", ""]


def section_budget(cells, n_main: int) -> list[str]:
    g = cells[cells.part == "budget"]
    base = cells[(cells.part == "size") & _same(cells["data.num_train"], n_main)]
    if g.empty:
        return []
    rows = []
    for lab in dict.fromkeys(g.label):
        for name, src in (("15 epochs", base), (f"train.steps=paper ({PAPER_STEPS})", g)):
            c = pick(src, label=lab)
            if c is not None:
                rows.append([lab, name, ci(c), ci(c, "mae"), training_summary(c)])
    return [f"### Step budget (`hor`, {n_main} embedded training images)", "",
            md_table(["weights", "budget", "SPC", "MAE", "steps", "final train loss", "converged seeds"], rows), ""]


def section_scale(cells, scale_rows: list[list[str]]) -> list[str]:
    g = cells[cells.part.isin(["scale", "scale_hed"])]
    lines = []
    if not g.empty:
        rows = []
        for lab in dict.fromkeys(g.label):
            for norm in ("none", "imagenet"):
                for std in ("none", "channel"):
                    sub = g[(g.label == lab) & (g["data.normalize"].astype(str) == norm)
                            & (g["readout.standardize"].fillna("none").astype(str) == std)]
                    if not sub.empty:
                        c = sub.iloc[0]
                        rows.append([lab, norm, std, ci(c), ci(c, "mae"), training_summary(c).split(" | ")[1]])
        n = int(g["data.num_train"].iloc[0])
        lines += [f"### Input normalisation and channel standardisation (`hor`, {n} embedded training images)", "",
                  md_table(["weights", "data.normalize", "readout.standardize", "SPC", "MAE", "final train loss"], rows),
                  ""]
    if scale_rows:
        lines += ["### Tap scales: mean |x| of each tap (16 embedded images, before the readout)", "",
                  md_table(["weights", "data.normalize", "f1", "f2", "f3", "f4", "f5"], scale_rows), ""]
    return lines


def _gap(cells, s: Scale, sz, ns: list[int]) -> list[str]:
    """Conclusion 1: what moves ImageNet VGG16's hor SPC towards the paper's."""
    gap = []
    if len(ns) > 1 and sz("ImageNet", ns[-1]) is not None:
        hi, lo = sz("ImageNet", ns[-1]), sz("ImageNet", ns[0])
        gap.append(f"training images {ns[0]} → {ns[-1]}: SPC {fmt_diff(diff(hi, lo))} "
                   f"({verdict(diff(hi, lo), 'raises it', 'lowers it', 'no detectable change')}; "
                   f"{ci(hi)} at {ns[-1]} against the paper's {PAPER['hor'][0]})")
    b, base = pick(cells[cells.part == "budget"], label="ImageNet"), sz("ImageNet", s.n_main)
    if b is not None and base is not None:
        d = diff(b, base)
        gap.append(f"the paper's {PAPER_STEPS} steps instead of 15 epochs ({s.n_main} images): SPC {fmt_diff(d)} "
                   f"({verdict(d, 'raises it', 'lowers it', 'no detectable change')})")
    sc = cells[cells.part == "scale"]

    def scale_cell(norm, std):
        g = sc[(sc.label == "ImageNet") & (sc["data.normalize"].astype(str) == norm)
               & (sc["readout.standardize"].fillna("none").astype(str) == std)]
        return None if g.empty else g.iloc[0]

    ref = scale_cell("none", "none") if not sc.empty else None
    for (norm, std), what in ((("imagenet", "none"), "data.normalize=imagenet"),
                              (("none", "channel"), "readout.standardize=channel")):
        c = scale_cell(norm, std) if ref is not None else None
        if c is not None:
            d = diff(c, ref)
            gap.append(f"{what} ({s.n_scale} images): SPC {fmt_diff(d)} "
                       f"({verdict(d, 'raises it', 'lowers it', 'no detectable change')})")
    return ["**1. The gap to the paper's `hor` .742 (ImageNet VGG16).** " + "; ".join(gap) + ".", ""] if gap else []


def _imagenet_vs_random(cells, sz, ns: list[int]) -> list[str]:
    """Conclusion 2: does ImageNet training add or remove position information? Each comparison
    once: ``ns`` leaves out the main part's training-set size, whose embedded row is the main part's."""
    rows = []
    for n in ns:
        a, r = sz("ImageNet", n), sz("random", n)
        if a is not None and r is not None:
            rows.append([f"embedded, `hor`, N = {n}", fmt_diff(diff(a, r))])
    for part, data in (("main", "embedded"), ("photos", "photos")):
        g = cells[(cells.part == part) & (cells.input == "natural")]
        for target in dict.fromkeys(g.target):
            a, r = pick(g, label="ImageNet", target=target), pick(g, label="random", target=target)
            if a is not None and r is not None:
                rows.append([f"{data}, `{target}`", fmt_diff(diff(a, r))])
    if not rows:
        return []
    more = sum(diff_sign(r[1]) > 0 for r in rows)
    less = sum(diff_sign(r[1]) < 0 for r in rows)
    return [f"**2. ImageNet training against random initialisation** (SPC, ImageNet − random, natural test "
            f"images): ImageNet carries more position information in {more} of {len(rows)} comparisons, less "
            f"in {less}, and no detectable difference in {len(rows) - more - less}.", "",
            md_table(["comparison", "SPC ImageNet − random [95% CI]"], rows), ""]


def _content(cells) -> list[str]:
    """Conclusion 3: how much of the position comes from the images' layout?"""
    rows = []
    for part, data in (("main", "embedded"), ("photos", "photos"), ("posenet", "embedded"),
                       ("photos_posenet", "photos")):
        g = cells[cells.part == part]
        for lab in dict.fromkeys(g.label):
            for target in dict.fromkeys(g.target):
                nat = pick(g, label=lab, target=target, input="natural")
                controls = [pick(g, label=lab, target=target, input=k) for k in ("shuffled", "rotated")]
                if nat is None or any(c is None for c in controls):
                    continue
                rows.append([f"{data}, `{target}`", lab, ci(nat), *[fmt_diff(diff(nat, c)) for c in controls]])
    if not rows:
        return []
    seams = []
    emb = [r for r in rows if r[0].startswith("embedded") and not r[1].startswith("PosENet")]
    if emb and all(abs(float(r[4].split()[0])) < 0.02 for r in emb) and any(diff_sign(r[3]) > 0 for r in emb):
        seams = ["The embedded images are stationary (their statistics do not depend on position; "
                 "`tests/test_data.py`), so their content carries no position: rotated ≈ natural confirms it for "
                 "every VGG16, and the drop on shuffled tiles there measures the tiles' seams (new edges the "
                 "network responds to), not layout. Rotation is the clean control; shuffled tiles read "
                 "position from layout only beside it.", ""]
    content = []
    pose0 = [r for r in rows if r[0].startswith("photos") and r[1] == "PosENet, readout padding 0"]
    found = [r for r in pose0 if _excludes_zero(r[2])]
    if found:
        cases = "; ".join(f"{r[0]}: natural {r[2]}, natural − rotated {r[4]}" for r in found)
        content = [f"PosENet with readout padding 0 has no padding anywhere, so what it finds on photographs is "
                   f"content alone, and it is not at the floor there ({cases}): the readout learned where things "
                   "lie in the training photographs, and the held-out photographs share that layout only in "
                   "part. On photographs, then, every backbone's natural SPC mixes padding and content; "
                   "natural − rotated is the content's share for `hor` (rotation reverses the content's cue, "
                   "not the padding's).", ""]
    return ["**3. How much position comes from the image content.** natural − shuffled and natural − rotated "
            "(SPC): a positive difference is position carried by the images' layout; natural ≈ shuffled ≈ "
            "rotated means the network's own position code (padding) carries it.", "",
            md_table(["data, target", "weights", "SPC natural", "natural − shuffled", "natural − rotated"], rows), "",
            *seams, *content]


def _excludes_zero(cell: str) -> bool:
    """Whether a cell printed as "mean [lo, hi]" has an interval that excludes 0."""
    try:
        lo, hi = (float(v) for v in cell.split("[")[1].rstrip("] ᵇ").split(","))
    except (IndexError, ValueError):
        return False
    return lo > 0 or hi < 0


def conclusions(cells, s: Scale) -> list[str]:
    """Each conclusion from the rows below: a difference of seed means with its 95% Welch interval."""
    size = cells[cells.part.isin(["size", "size_other"])]
    ns = sorted({int(v) for v in size["data.num_train"]}) if not size.empty else []

    def sz(lab, n):
        return pick(size, label=lab, **{"data.num_train": n})

    return (["## Conclusions", "",
             "Each line is computed from the tables below: a difference of means over seeds with its 95% "
             "Welch interval (where a cell has one seed: the normal approximation from both cells' own intervals); "
             "*raises*/*lowers*, *more*/*less* only where the interval excludes zero.", ""]
            + _gap(cells, s, sz, ns) + _imagenet_vs_random(cells, sz, [n for n in ns if n != s.n_main]) + _content(cells))


def diff_sign(text: str) -> int:
    """+1 / −1 when a formatted difference's interval excludes zero, else 0."""
    lo, hi = (float(v) for v in text.split("[")[1].rstrip("]").split(","))
    return 1 if lo > 0 else -1 if hi < 0 else 0


# The header's word on whose answer this page gives (the SGD recipe's) and where the features' is.
RECIPE_NOTE = (
    "**Every number on this page is the paper's SGD recipe's**, and it answers what that recipe extracts, "
    "not what the features encode: on a random VGG16 the readout's seed alone moves a cell by more than most "
    "differences below. **The study's conclusions about the features rest on the optimal linear readout** "
    "(`readout.solver=ridge`), in [solvers.md](solvers.md) (`python scripts/solver_study.py`): both solvers "
    "side by side on the same features, three random networks per random cell, EfficientNet-Lite0 beside "
    "VGG16, embedded images and photographs. There, conclusion 2 below holds in every comparison, each "
    "counted once (its (a)); the recipe's share of conclusion 1's gap is measured against the 3×3 optimum, "
    "the recipe's own readout family (its (b)); what the recipe misses is given per backbone (its (c)); and "
    "conclusion 3's controls are rerun under the optimal readout for the three VGG16s on embedded images. "
    "The conclusions below are the recipe's, "
    "kept to reproduce the paper."
)


def write_report(out: Path, doc: Path, w: Path, s: Scale, smoke: bool, scale_rows: list[list[str]] | None,
                 note: str = "") -> None:
    names = list(dict.fromkeys([p.name for p in parts(w, s)] + [p.name for p in lean_parts(w, s)]))
    cells = load_cells(out, names)
    if cells.empty:
        raise SystemExit(f"no finished study jobs under {out}: run python scripts/study.py first")
    figs = doc.parent / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    figure_size(cells, figs / "science_size.png")
    figure_controls(cells, ["main", "posenet"], "hor", figs / "science_controls.png",
                    "Embedded images, hor: SPC per evaluation input (3 seeds, 95% CI)")
    photos = bool(cells.part.isin(["photos", "photos_posenet"]).any())
    if photos:
        figure_controls(cells, ["photos", "photos_posenet"], "hor", figs / "science_photos.png",
                        "Photographs, hor: SPC per evaluation input (3 seeds, 95% CI)")
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else {}
    total = sum(timing.values()) / 60
    dirs = {d for ds in cells.job_dirs for d in ds}
    n_jobs = len(dirs)
    job_min = sum(json.loads((Path(d) / "result.json").read_text()).get("timing", {}).get("total_s", 0) for d in dirs) / 60
    lines = [
        "# The study: what real pretrained VGG16s encode here, and why the paper's numbers differ", "",
        "Generated by `python scripts/study.py` (it resumes; `--report-only` rewrites this page from the finished "
        f"jobs). {n_jobs} jobs; their own times add up to {job_min:.0f} min, the sweeps' recorded wall time to "
        f"{total:.0f} min on this machine"
        f"{' (a smoke run: tiny sizes, not a result)' if smoke else ''}; per part: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items()) + "." + (f" {note}" if note else ""), "",
        "Protocol: the paper's readout (3×3 conv, depth 1, padding 0, f1…f5 resized to 28×28, SGD lr 0.1, "
        "batch 32, 15 epochs, lr ×0.1 after epoch 10) unless a row says otherwise; 224-px images; 100 embedded "
        "(dead-leaves) test images, or 60 crops of 4 held-out photographs (`data=photos`). Every cell: the mean "
        "over 3 seeds of the readout with its 95% t interval (ᵇ: one seed, its 95% bootstrap interval over the test "
        "images); ⚠: seeds span more than 0.1 SPC. Weights: "
        "`vgg16_imagenet.pth` (the original ImageNet VGG16), `vgg16_hed.pth` (VGG16 fine-tuned for edge "
        "detection), torchvision's random initialisation (seeded), PosENet (no encoder: the readout sees the "
        "28×28 image).", "",
        RECIPE_NOTE, "",
    ]
    lines += conclusions(cells, s)
    lines += ["## Tables", ""]
    lines += section_inputs(cells, ["main", "posenet"], s.targets.split(","),
                            f"Every input, embedded data ({s.n_main} training images)")
    lines += ["![controls, embedded](figures/science_controls.png)", ""]
    if photos:
        lines += section_inputs(cells, ["photos", "photos_posenet"], s.photo_targets.split(","),
                                f"Every input, photographs ({s.n_photos} training crops of 14 photographs)")
        lines += ["![controls, photographs](figures/science_photos.png)", ""]
    lines += section_border(cells, figs)
    lines += section_size(cells)
    lines += section_budget(cells, s.n_main)
    lines += section_scale(cells, scale_rows or [])
    doc.write_text("\n".join(lines) + "\n")
    print(f"[study] wrote {doc} and {figs}/science_*.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=os.environ.get("POSINFO_TEST_WEIGHTS", str(REPO.parent / "shared" / "weights")))
    ap.add_argument("--out", default=str(REPO / "outputs" / "study"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "science.md"))
    ap.add_argument("--parts", default=None, help="comma-separated part names (default: all)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline in a few minutes")
    ap.add_argument("--lean", action="store_true", help="random backbones with one seed, fewer photo and "
                    "normalisation runs: about half the time (LEAN_ALIAS)")
    ap.add_argument("--note", default="", help="a sentence for the page's header (how the run went)")
    ap.add_argument("--photo-targets", default=None, help="targets of the photo parts (default hor,gau)")
    ap.add_argument("--scale-seeds", default=None, help="train.seed values of the normalisation parts (default 0,1,2)")
    ap.add_argument("--budget-seeds", default=None, help="train.seed values of the paper-step part (default 0,1,2)")
    args = ap.parse_args(argv)
    w = Path(args.weights).expanduser().resolve()
    missing = [f for f in ("vgg16_imagenet.pth", "vgg16_hed.pth") if not (w / f).is_file()]
    if missing:
        raise SystemExit(f"--weights={w} lacks {', '.join(missing)}: point --weights (or POSINFO_TEST_WEIGHTS) "
                         "at the folder with the two trained VGG16 files")
    s = SMOKE if args.smoke else Scale()
    if args.photo_targets:
        s.photo_targets = args.photo_targets
    if args.scale_seeds:
        s.scale_seeds = args.scale_seeds
    if args.budget_seeds:
        s.budget_seeds = args.budget_seeds
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    chosen = lean_parts(w, s) if args.lean else parts(w, s)
    if args.parts:
        wanted = args.parts.split(",")
        unknown = sorted(set(wanted) - {p.name for p in chosen})
        if unknown:
            raise SystemExit(f"--parts: unknown {unknown}: choose from {', '.join(p.name for p in chosen)}")
        chosen = [p for p in chosen if p.name in wanted]
    if not args.report_only:
        timing_path = out / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        for part in chosen:
            run_part(part, out, s.extra, timing)
            timing_path.write_text(json.dumps(timing, indent=1))
    try:
        scale_rows = tap_scales(w, args.smoke)
    except PosinfoError as e:
        print(f"[study] tap scales skipped: {e}")
        scale_rows = None
    write_report(out, Path(args.doc).expanduser().resolve(), w, s, args.smoke, scale_rows, args.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
