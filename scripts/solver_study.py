"""Both readout solvers on the same features: the paper's SGD recipe against the optimal linear
readout (readout.solver=ridge), for trained and random VGG16 and EfficientNet-Lite0 and for
PosENet, with the controls and a learning curve; writes docs/solvers.md.

    python scripts/solver_study.py                     # run what is missing (resumes), write docs/solvers.md
    python scripts/solver_study.py --report-only       # rewrite docs/solvers.md from the finished jobs
    python scripts/solver_study.py --smoke --out /tmp/s --doc /tmp/s/solvers.md   # tiny: checks the pipeline

Every job runs through ``sweep.py -m`` (one sweep folder per part under ``--out``, default
outputs/solver_study), so it resumes, caches features (every part on one backbone reads the
same cache entries) and reuses trained readouts; the cells come from posinfo.report, as in
scripts/study.py, whose helpers this script shares. Random weights run three seeds, each its
own network; a ridge readout on trained weights has no seed and counts once (its interval
is the bootstrap over test images). The weights are the shared files of ``--weights``
(default: $POSINFO_TEST_WEIGHTS, else ../shared/weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from study import (PAPER, Part, ci, diff, fmt_diff, load_cells, md_table, pick, run_part,  # noqa: E402
                   save_size_figure, verdict)

PAPER_HOR = PAPER["hor"][0]  # Table 1, ImageNet VGG16, hor, natural (DUTS-TR -> PASCAL-S, 10,553 training images)
PAPER_N = 10553
EFFNET = "backbone=timm backbone.model=tf_efficientnet_lite0 data.normalize=model"
VARIANTS = {  # how each column's readout is found: (part suffix, overrides)
    "sgd": "SGD, the paper's recipe (3×3)",
    "sgd_std": "SGD on standardised channels (3×3)",
    "ridge1": "ridge, 1×1",
    "ridge3": "ridge, 3×3",
}
_OVERRIDES = {"sgd": ["readout.solver=sgd"], "sgd_std": ["readout.solver=sgd", "readout.standardize=channel"],
              "ridge1": ["readout.solver=ridge", "readout.kernel=1"], "ridge3": ["readout.solver=ridge", "readout.kernel=3"]}


@dataclass
class Scale:
    seeds: str = "0,1,2"
    targets: str = "hor,gau"
    n_train: int = 500
    n_test: int = 100
    n_curve: str = "2000,1000,500,250"  # largest first: its features serve the smaller sets (and the main parts' 500)
    n_curve3: str = "500,250"  # the 3×3 optimum on VGG16's width (19 min and 20 GB at 500 images on 2 quiet cores)
    inputs: str = "natural"  # controls: natural, shuffled, rotated (3× the test extraction)
    control_targets: str = "hor,gau,horstp"  # the controls part: the optimal readout on every input
    n_photos: int = 240  # crops of the 14 training photographs (data=photos; its 60 test crops)
    extra: tuple[str, ...] = ()


SMOKE = Scale(seeds="0,1", targets="hor", n_train=12, n_test=4, n_curve="12,8", n_curve3="12,8", inputs="controls",
              control_targets="hor,horstp", n_photos=8,
              extra=("data.image_size=64", "train.epochs=2", "train.batch_size=4", "train.lr_milestones=[1]",
                     "readout.ridge_folds=2", "device=cpu"))


def parts(w: Path, s: Scale) -> list[Part]:
    imagenet, hed, lite0 = w / "vgg16_imagenet.pth", w / "vgg16_hed.pth", w / "efficientnet_lite0_imagenet.pth"
    common = [f"target={s.targets}", f"input={s.inputs}", f"data.num_train={s.n_train}", f"data.num_test={s.n_test}",
              f"train.seed={s.seeds}"]
    vgg = ["backbone=vgg16", f"backbone.weights={imagenet},{hed},random"]
    eff = [*EFFNET.split(), f"backbone.weights={lite0},random"]
    curve = ["backbone=vgg16", f"backbone.weights={imagenet}", "target=hor", "input=natural",
             f"data.num_train={s.n_curve}", f"data.num_test={s.n_test}", f"train.seed={s.seeds}"]
    # First: the curve's largest set of ImageNet VGG16 features serves every smaller set (cache.get_prefix).
    out = [Part(f"curve_{v}", f"learning curve, ImageNet VGG16, hor, {VARIANTS[v]}", [*curve, *_OVERRIDES[v]])
           for v in ("ridge1", "sgd")]
    out += [Part(f"lite0_{v}", f"EfficientNet-Lite0 ImageNet/random, {VARIANTS[v]}", [*eff, *common, *_OVERRIDES[v]])
            for v in ("ridge1", "ridge3", "sgd", "sgd_std")]
    out += [Part(f"posenet_{v}", f"PosENet readout padding 2, {VARIANTS[v]}",
                 ["backbone=posenet", "readout.padding=2", *common, *_OVERRIDES[v]]) for v in ("sgd", "ridge3")]
    # Last: five VGG16 feature sets (three random networks), the study's largest extraction, then the 3×3
    # optimum on VGG16's width at the sizes of n_curve3 (13,249 weights: the pass over the features and
    # about 45 Cholesky factorisations, each about as long).
    out += [Part(f"vgg16_{v}", f"VGG16 ImageNet/edge/random, {VARIANTS[v]}", [*vgg, *common, *_OVERRIDES[v]])
            for v in ("ridge1", "sgd", "sgd_std")]
    # The controls under the optimal readout (every target, natural / shuffled / rotated), and the
    # photographs with both solvers: cheap beside the above, on features the parts above cached.
    out.append(Part("vgg16c_ridge1", f"VGG16 ImageNet/edge/random, controls, {VARIANTS['ridge1']}",
                    [*vgg, f"target={s.control_targets}", "input=controls", *common[2:], *_OVERRIDES["ridge1"]]))
    photos = ["data=photos", f"target={s.targets}", "input=natural", f"data.num_train={s.n_photos}",
              f"train.seed={s.seeds}"]
    out += [Part(f"photos_{v}", f"photographs: VGG16 ImageNet/edge/random, {VARIANTS[v]}",
                 [*vgg, *photos, *_OVERRIDES[v]]) for v in ("ridge1", "sgd")]
    out += [Part(f"photolite0_{v}", f"photographs: EfficientNet-Lite0 ImageNet/random, {VARIANTS[v]}",
                 [*eff, *photos, *_OVERRIDES[v]]) for v in ("ridge1", "ridge3", "sgd")]
    sizes3 = " and ".join(s.n_curve3.split(","))
    out.append(Part("curve_ridge3", f"ImageNet VGG16, hor, N = {sizes3}, {VARIANTS['ridge3']}",
                    [*curve[:4], f"data.num_train={s.n_curve3}", *curve[5:], *_OVERRIDES["ridge3"]]))
    return out


# ----------------------------------------------------------------------------- cells


def backbone_label(row) -> str:
    if row.get("backbone") == "posenet":
        return "PosENet, readout padding 2"
    arch = "EfficientNet-Lite0" if str(row.get("backbone")).startswith("timm") else "VGG16"
    w = Path(str(row.get("backbone.weights") or "")).name
    kind = {"vgg16_imagenet.pth": "ImageNet", "efficientnet_lite0_imagenet.pth": "ImageNet",
            "vgg16_hed.pth": "edge (HED)", "random": "random"}.get(w, w)
    return f"{arch} {kind}"


def data_of(part: str) -> str:
    """A part's images: the embedded set, or the photographs (data=photos)."""
    return "photos" if part.startswith("photo") else "embedded"


def cells_of(out: Path, names: list[str]):
    cells = load_cells(out, names)
    if cells.empty:
        return cells
    cells["label"] = [backbone_label(r) for _, r in cells.iterrows()]
    cells["variant"] = [p.split("_", 1)[1] for p in cells.part]
    cells["images"] = [data_of(p) for p in cells.part]
    return cells


def main_cells(cells, images: str = "embedded"):
    """The solver comparison's cells on one image set: the learning curve and the controls part
    (natural test images again, beside shuffled and rotated) have their own sections, except the
    3×3 optimum's curve point at the main parts' training-set size, which is the main table's cell."""
    own = (cells.images == images) & ~cells.part.str.startswith(("curve", "vgg16c"))
    sizes = cells.loc[own, "data.num_train"].dropna()
    if sizes.empty:
        return cells[own]
    at_main = (cells.part == "curve_ridge3") & (cells["data.num_train"] == sizes.mode().iloc[0])
    return cells[own | (at_main & (cells.images == images))]


# ----------------------------------------------------------------------------- sections


def section_main(cells, targets: list[str], images: str = "embedded") -> list[str]:
    if main_cells(cells, images).empty:
        return []
    head = ("## Both solvers on the same features" if images == "embedded" else
            "## Both solvers on photographs (`data=photos`: crops of 14 training and 4 test photographs)")
    lines = [head, "",
             "SPC on natural test images, mean over seeds with its 95% interval (ᵇ: one run, the interval a bootstrap "
             "over test images: a ridge readout on trained weights has no seed). Random weights: three seeds, each "
             "its own network.", ""]
    for target in targets:
        g = main_cells(cells, images)
        g = g[(g.target == target) & (g.input == "natural")]
        if g.empty:
            continue
        variants = [v for v in VARIANTS if v in set(g.variant)]
        rows = []
        for lab in dict.fromkeys(g.label):
            row = [lab]
            for v in variants:
                c = pick(g, label=lab, variant=v)
                row.append("–" if c is None else ci(c))
            rows.append(row)
        lines += [f"`{target}`:", "", md_table(["backbone", *[VARIANTS[v] for v in variants]], rows), ""]
    return lines


def section_controls(cells) -> list[str]:
    g = cells[cells.part == "vgg16c_ridge1"]
    if g.empty or not {"shuffled", "rotated"} & set(g.input):
        return []
    rows = []
    for (lab, target) in dict.fromkeys(zip(g.label, g.target)):
        row = [lab, f"`{target}`"]
        for kind in ("natural", "shuffled", "rotated"):
            c = pick(g, label=lab, target=target, input=kind)
            row.append("–" if c is None else ci(c))
        rows.append(row)
    return ["## Padding or content? The controls under the optimal readout (ridge, 1×1)", "",
            "Natural ≈ shuffled (the test images cut into 4×4 shuffled tiles) ≈ rotated (turned by 180°) means the "
            "position comes from the network, not from the images' layout.", "",
            md_table(["backbone", "target", "natural", "shuffled", "rotated"], rows), ""]


def conclusion_a(cells, targets: list[str]) -> list[str]:
    """(a) ImageNet against random weights, under the optimal readout: one comparison per architecture × target."""
    rows, counts = [], {"more": 0, "less": 0, "same": 0}
    for images in ("embedded", "photos"):
        g = main_cells(cells, images)
        for arch in ("VGG16", "EfficientNet-Lite0"):
            for target in targets:
                for v in ("ridge3", "ridge1"):
                    a = pick(g, label=f"{arch} ImageNet", target=target, input="natural", variant=v)
                    b = pick(g, label=f"{arch} random", target=target, input="natural", variant=v)
                    if a is None or b is None:
                        continue
                    d = diff(a, b)
                    word = verdict(d, "more", "less", "same")
                    counts[word] += 1
                    rows.append([images, arch, f"`{target}`", VARIANTS[v], ci(a), ci(b), fmt_diff(d), word])
                    break  # one comparison per images × architecture × target: the widest readout run on it
    if not rows:
        return []
    total = sum(counts.values())
    return ["### (a) Does ImageNet training add or remove linearly decodable position?", "",
            f"Optimal readout, natural test images; one row per image set × architecture × target (the 3×3 ridge "
            f"where it ran for both weights, else the 1×1), each comparison counted once. ImageNet carries **less** than random "
            f"weights in {counts['less']} of {total} comparisons, more in {counts['more']}, and the interval of the "
            f"difference includes 0 in {counts['same']}.", "",
            md_table(["images", "architecture", "target", "readout", "ImageNet", "random (3 networks)",
                      "ImageNet − random", "ImageNet carries"], rows), ""]


def _curve_points(cells, variant: str):
    g = cells[(cells.part == f"curve_{variant}") & (cells.input == "natural")]
    pts = []
    for _, c in g.iterrows():
        pts.append((int(c["data.num_train"]), float(c["spc"]), [Path(d) for d in c["job_dirs"]]))
    return sorted(pts)


def _per_image(job_dirs: list[Path]) -> np.ndarray:
    """Per-image natural SPC, averaged over a cell's runs (the same test images in every run)."""
    import pandas as pd

    frames = [pd.read_csv(d / "per_image.csv") for d in job_dirs]
    vals = [f[f.input == "natural"].spc.to_numpy(dtype=float) for f in frames]
    return np.nanmean(np.stack(vals), axis=0)


def fit_curve(ns: np.ndarray, ys: np.ndarray) -> tuple[float, float, float] | None:
    """SPC(N) = a − b·N^(−c), least squares over the points (None when it does not fit)."""
    from scipy.optimize import curve_fit

    try:
        p, _ = curve_fit(lambda n, a, b, c: a - b * n ** (-c), ns, ys, p0=(min(1.0, ys.max() + 0.05), 1.0, 0.5),
                         bounds=([-1, 0, 0.01], [1, 1e4, 3]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return tuple(float(v) for v in p)


def extrapolate(points, n_at: int = PAPER_N, draws: int = 300, seed: int = 0):
    """The curve's value at ``n_at`` with a 95% interval: the fit repeated on bootstrap resamples
    of the test images (the same resample at every N, as the test set is shared)."""
    ns = np.array([p[0] for p in points], dtype=float)
    per = np.stack([_per_image(p[2]) for p in points])  # N-points × images
    base = fit_curve(ns, np.nanmean(per, axis=1))
    if base is None:
        return None
    a, b, c = base
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(draws):
        idx = rng.integers(0, per.shape[1], per.shape[1])
        p = fit_curve(ns, np.nanmean(per[:, idx], axis=1))
        if p is not None:
            vals.append(p[0] - p[1] * n_at ** (-p[2]))
    lo, hi = np.percentile(vals, [2.5, 97.5]) if vals else (math.nan, math.nan)
    return a - b * n_at ** (-c), float(lo), float(hi), base


def conclusion_b(cells, figs: Path) -> list[str]:
    """(b) The paper's .742: how much the recipe, how much the data."""
    curves = {v: _curve_points(cells, v) for v in ("sgd", "ridge1", "ridge3")}
    if len(curves["sgd"]) < 3 or len(curves["ridge1"]) < 3:
        return []
    curves = {v: p for v, p in curves.items() if p}
    ns = sorted({n for pts in curves.values() for n, _, _ in pts})
    rows, ext = [], {}
    for v, pts in curves.items():
        e = extrapolate(pts) if len(pts) >= 3 else None
        ext[v] = e
        got = {n: y for n, y, _ in pts}
        row = [VARIANTS[v], *[f"{got[n]:.3f}" if n in got else "–" for n in ns]]
        row.append("–" if e is None else f"{e[0]:.3f} [{e[1]:.2f}, {e[2]:.2f}]")
        rows.append(row)
    _figure_curve(curves, ext, figs / "solvers_curve.png")
    n_main = 500 if 500 in ns else ns[len(ns) // 2]
    sgd = dict((n, y) for n, y, _ in curves["sgd"])[n_main]
    rid = dict((n, y) for n, y, _ in curves["ridge1"])[n_main]
    g = cells[cells.input == "natural"]
    rid_cell = pick(g, part="curve_ridge1", **{"data.num_train": n_main})
    sgd_cell = pick(g, part="curve_sgd", **{"data.num_train": n_main})
    lines = ["### (b) The paper's .742 (ImageNet VGG16, `hor`): the recipe and the data", "",
             f"SPC on natural test images against training-set size (embedded images; SGD: mean of 3 seeds; ridge: "
             f"no seed), and SPC(N) = a − b·N^(−c) fitted to each and read at the paper's {PAPER_N:,} training "
             f"images, with a 95% interval from refitting on bootstrap resamples of the test images (with as many "
             f"sizes as parameters the curve passes through the points: the interval covers the test images, not "
             f"the choice of curve).", "",
             md_table(["readout", *[f"N = {n}" for n in ns], f"fit at N = {PAPER_N:,}"], rows), "",
             "![SPC against training images, both solvers](figures/solvers_curve.png)", "",
             _recipe_sentence(n_main, rid_cell, sgd_cell)]
    if curves.get("ridge3"):
        lines[-1] += " " + _recipe_cost(curves, ext, g)
    if ext.get("sgd") and ext.get("ridge1"):
        e = ext["sgd"]
        lines[-1] += (f" More images move the SGD readout from {sgd:.3f} to {e[0]:.3f} [{e[1]:.2f}, {e[2]:.2f}] at "
                      f"{PAPER_N:,} (fitted): of the {PAPER_HOR - sgd:.3f} between our {n_main}-image SGD number and "
                      f"the paper's {PAPER_HOR}, training-set size accounts for {e[0] - sgd:.3f}; the remaining "
                      f"{PAPER_HOR - e[0]:.3f} [{PAPER_HOR - e[2]:.2f}, {PAPER_HOR - e[1]:.2f}] is the paper's images "
                      f"(DUTS-TR → PASCAL-S) against ours, or the recipe. {_optimum_against_paper(curves, e)}"
                      f"The 1×1 optimum gains little from more images ({rid:.3f} → {ext['ridge1'][0]:.3f} "
                      f"[{ext['ridge1'][1]:.2f}, {ext['ridge1'][2]:.2f}]): its family is what limits it.")
    return lines + [""]


def _recipe_cost(curves, ext, g) -> str:
    """What the 3×3 optimum (the SGD recipe's own family) says at each size it ran at: the recipe's
    cost on the same features, with its interval, and how many images the fitted SGD curve needs
    to reach it."""
    costs, reach = [], []
    e = ext.get("sgd")
    for n3, y3, _ in curves["ridge3"]:
        r3 = pick(g, part="curve_ridge3", **{"data.num_train": n3})
        s3 = pick(g, part="curve_sgd", **{"data.num_train": n3})
        if r3 is None or s3 is None:
            continue
        costs.append(f"at N = {n3}, {y3:.3f} against SGD's {s3['spc']:.3f}, so **the recipe costs "
                     f"{fmt_diff(diff(r3, s3))}** there")
        if e is not None and e[3][0] > y3:
            a, b, c = e[3]
            need = (b / (a - y3)) ** (1 / c)
            reach.append(f"{y3:.3f} only at N ≈ {need:,.0f} training images ({need / n3:.0f}× as many)")
    if not costs:
        return ""
    out = "The 3×3 optimum itself, on the same features and readout family: " + "; ".join(costs) + "."
    if e is not None:
        out += (f" The fitted SGD curve reaches {'; '.join(reach)}." if reach else
                f" The fitted SGD curve reaches {'neither' if len(costs) == 2 else 'none of them' if len(costs) > 2 else 'it'} "
                f"(its limit a = {e[3][0]:.3f}).")
    return out


def _optimum_against_paper(curves, sgd_ext) -> str:
    """The 3×3 optimum at the largest size it ran at, against the SGD curve's value at the paper's
    size and against the paper's own number: how much of the gap the recipe leaves."""
    if not curves.get("ridge3"):
        return "Only the 3×3 optimum can tell those apart. "
    n3, y3, _ = curves["ridge3"][-1]
    value, lo, hi = sgd_ext[:3]
    than = ("more than" if y3 > hi else "less than" if y3 < lo else "as much as")
    gap = PAPER_HOR - y3
    out = (f"The 3×3 optimum on {n3} images ({y3:.3f}) extracts {than} the recipe is fitted to extract on the "
           f"paper's {PAPER_N:,} ({value:.3f} [{lo:.2f}, {hi:.2f}]), and lies {abs(gap):.3f} "
           f"{'below' if gap > 0 else 'above'} the paper's {PAPER_HOR} with {PAPER_N / n3:.0f}× fewer images")
    if than == "more than":
        out += ": on these features the readout's recipe, more than the number of images, separates our SGD number from the paper's"
    return out + ". "


def _recipe_sentence(n: int, rid, sgd) -> str:
    """What the 1×1 optimum against SGD's 3×3 says (cells at one N): a bound only where the smaller
    family wins beyond its interval."""
    d = diff(rid, sgd)
    head = (f"At N = {n} the optimal 1×1 readout scores {rid['spc']:.3f} and the paper's SGD recipe "
            f"{sgd['spc']:.3f} (1×1 − SGD {fmt_diff(d)}): ")
    if d[1] > 0:
        return head + ("**the recipe costs at least that much** on the same features, since the 1×1 readouts "
                       "are a subset of the 3×3 family the recipe trains.")
    return head + ("the 1×1 family does not beat SGD's 3×3, so this pair bounds nothing about the recipe; the "
                   "3×3 kernel's spatial weights decode position no 1×1 readout can (EfficientNet-Lite0 above: "
                   "1×1 and 3×3 optimum far apart on `hor`). Only the 3×3 optimum does (13,249 weights on VGG16).")


def _figure_curve(curves, ext, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for (v, pts), color in zip(curves.items(), ("C0", "C3", "C2")):
        ns = [n for n, _, _ in pts]
        ax.plot(ns, [y for _, y, _ in pts], "o", color=color, label=VARIANTS[v])
        e = ext.get(v)
        if e is not None:
            a, b, c = e[3]
            grid = np.geomspace(min(ns), PAPER_N, 50)
            ax.plot(grid, a - b * grid ** (-c), "-", color=color, lw=1)
            ax.errorbar([PAPER_N], [e[0]], yerr=[[e[0] - e[1]], [e[2] - e[0]]], color=color, marker="s", capsize=3)
    save_size_figure(fig, ax, path, "paper (DUTS-TR → PASCAL-S)", "training images", "SPC, hor, natural test images",
                     "ImageNet VGG16: the SGD recipe (3×3) and the optimal linear readouts")


def conclusion_c(cells, targets: list[str]) -> list[str]:
    """(c) What the SGD recipe misses, per backbone and target."""
    rows = []
    for images in ("embedded", "photos"):
        g = main_cells(cells, images)
        g = g[g.input == "natural"]
        for lab in dict.fromkeys(g.label):
            for target in targets:
                sgd = pick(g, label=lab, target=target, variant="sgd")
                best = next((c for c in (pick(g, label=lab, target=target, variant=v) for v in ("ridge3", "ridge1"))
                             if c is not None), None)
                if sgd is None or best is None:
                    continue
                std = pick(g, label=lab, target=target, variant="sgd_std")
                rows.append([images, lab, f"`{target}`", ci(sgd), "–" if std is None else ci(std), ci(best),
                             fmt_diff(diff(best, sgd))])
    if not rows:
        return []
    return ["### (c) What the SGD recipe misses", "",
            "Optimal readout (3×3 ridge where it ran, else 1×1) minus the paper's SGD recipe, natural test images; the "
            "interval covers seeds (and the network draw for random weights) or, for a one-run cell, its test images.",
            "", md_table(["images", "backbone", "target", "SGD (paper)", "SGD, standardised", "ridge", "ridge − SGD"],
                         rows), ""]


def section_cost(out: Path, names: list[str]) -> list[str]:
    """The ridge fit's time against the SGD readout's on the same cached features (from result.json):
    every job that fitted readouts, alone or for its fused group (the targets of one seed)."""
    agg: dict[tuple, list[float]] = {}
    for name in names:
        for res in sorted((out / name).glob("*/result.json")):
            r = json.loads(res.read_text())
            if r.get("status") != "ok" or (r.get("readout_reused") and "fused" not in r):
                continue
            solver = (r.get("training") or {}).get("solver", "sgd")
            k = r["config"]["readout"]["kernel"]
            n_readouts = r.get("fused", {}).get("readouts", 1)
            key = (name.split("_")[0], solver, r["readout_in_channels"], k, r["config"]["data"]["num_train"], n_readouts)
            agg.setdefault(key, []).append(r["timing"]["train_s"])
    if not agg:
        return []
    table = [[a, s, str(ch), f"{k}×{k}", str(n), str(t), f"{np.median(v):.1f}", str(len(v))]
             for (a, s, ch, k, n, t), v in sorted(agg.items())]
    return ["## Cost: fitting the readouts on cached features", "",
            "Median `timing.train_s` of the jobs that fitted readouts: alone, or all the targets of their fused "
            "group in one pass (`readouts`). An SGD fit is per seed; a ridge fit on trained weights serves every "
            "seed (the others reuse it), on random weights each seed is another network. On this 2-core CPU, shared "
            "with other work while the study ran: compare within a part.", "",
            md_table(["part", "solver", "channels", "kernel", "N train", "readouts", "median s", "fits"], table), ""]


def _finished(folder: Path) -> int:
    """Jobs of a part whose result.json says ok (0: not run)."""
    n = 0
    for res in folder.glob("*/result.json"):
        try:
            n += json.loads(res.read_text()).get("status") == "ok"
        except (OSError, ValueError):
            pass
    return n


def write_report(out: Path, doc: Path, s: Scale, smoke: bool, minutes: dict) -> None:
    names = [p.name for p in parts(Path("."), s)]
    cells = cells_of(out, names)
    if cells.empty:
        raise SystemExit(f"no finished jobs under {out}: run the study first")
    targets = [t for t in s.targets.split(",")]
    figs = doc.parent / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    head = ["# Both solvers: the paper's SGD recipe against the optimal linear readout", "",
            "Written by `python scripts/solver_study.py` from its job folders" + (" (SMOKE RUN: tiny, meaningless numbers)" if smoke else "")
            + f": embedded images, {s.n_train} training and {s.n_test} test images at 224 px unless stated, seeds "
            f"{s.seeds}. `sgd` is the paper's recipe (lr 0.1, 15 epochs); `ridge` the optimum of the same MSE for a "
            "linear readout on channel-standardised features, its penalty chosen by 5-fold cross-validation over "
            "training images (docs/method.md, \"The closed-form readout\"). The 3×3 ridge readout ran where its "
            "normal equations fit this machine's time (PosENet, EfficientNet-Lite0: 4,249 weights); on VGG16's "
            f"1,472 channels it has 13,249 weights (each fit's time in the cost table below; about 20 GB of memory "
            f"here), so it ran for ImageNet VGG16 `hor` only, at N = {' and '.join(s.n_curve3.split(','))} (the "
            f"learning curve (b), and that row's cell at N = {s.n_train}); the other VGG16 rows have the 1×1 ridge "
            "readout: a subset of the "
            "3×3 family, so where it beats SGD's 3×3 the optimal 3×3 beats it by at least as much, and where it "
            "does not, it bounds nothing.", ""]
    body = section_main(cells, targets) + section_main(cells, targets, "photos")
    body += ["## Conclusions, computed from the rows above", ""]
    body += conclusion_a(cells, targets) + conclusion_b(cells, figs) + conclusion_c(cells, targets)
    body += section_controls(cells) + section_cost(out, names)
    body += ["## Parts", "", "Finished jobs per part (a part cut short resumes with `python scripts/solver_study.py`), and "
             "wall time on this machine where recorded:", "",
             md_table(["part", "what", "jobs ok", "min"], [[p.name, p.what, str(_finished(out / p.name)),
                                                           f"{minutes[p.name]:.0f}" if p.name in minutes else "–"]
                                                          for p in parts(Path("."), s)]), ""]
    doc.write_text("\n".join(head + body) + "\n", encoding="utf-8")
    print(f"[solver study] wrote {doc}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "solver_study")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "solvers.md")
    ap.add_argument("--weights", type=Path, default=Path(os.environ.get("POSINFO_TEST_WEIGHTS", REPO.parent / "shared" / "weights")))
    ap.add_argument("--parts", default="", help="comma-separated part names (default: all)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    s = SMOKE if args.smoke else Scale()
    wanted = [p for p in parts(args.weights, s) if not args.parts or p.name in args.parts.split(",")]
    if not args.report_only:
        missing = [f for f in ("vgg16_imagenet.pth", "vgg16_hed.pth", "efficientnet_lite0_imagenet.pth")
                   if not (args.weights / f).is_file()]
        if missing:
            raise SystemExit(f"solver study: {', '.join(missing)} not in --weights {args.weights}: point --weights "
                             "(or $POSINFO_TEST_WEIGHTS) at the shared weights folder")
        args.out.mkdir(parents=True, exist_ok=True)
        timing_path = args.out / "timing.json"  # parts run in earlier invocations keep their times
        timing: dict = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        t0 = time.perf_counter()
        for part in wanted:
            run_part(part, args.out, s.extra, timing)
        print(f"[solver study] all parts: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        timing_path.write_text(json.dumps(timing))
    timing_file = args.out / "timing.json"
    minutes = {k: v / 60 for k, v in json.loads(timing_file.read_text()).items()} if timing_file.is_file() else {}
    write_report(args.out, args.doc, s, args.smoke, minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
