"""analyze.py / posinfo.report on job directories fabricated in the documented layout.

``make_job`` writes result.json, per_image.csv and predictions.npz as docs/architecture.md
describes, with a config composed from conf/ (so its shape is the real one).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF, ROOT
from posinfo.report import figures, write_report
from posinfo.report.cells import aggregate, fmt
from posinfo.report.collect import collect, read_results_csv
from posinfo.report.tables import make_tables, to_markdown

ALL = ("natural", "black", "white", "noise")
FLOORS = {"hor": 0.2511, "ver": 0.2511, "gau": 0.1972, "horstp": 0.3173, "verstp": 0.3173}
CSV_COLUMNS = ["job_dir", "status", "error", "experiment", "backbone", "target", "input", "input_set", "data",
               "backbone.weights", "backbone.padding", "backbone.taps", "readout.kernel", "readout.depth",
               "readout.padding", "target.range", "train.seed", "train.epochs", "data.num_train", "data.num_test",
               "data.image_size", "spc", "mae", "n_images", "n_nan", "floor_mae", "paper_table", "paper_spc",
               "paper_mae"]


@pytest.fixture(scope="module")
def base_config() -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=["cache.dir=/tmp/unused"]), resolve=True)


def _set(cfg: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for p in path:
        cfg = cfg.setdefault(p, {})
    cfg[last] = value


def make_job(root: Path, base: dict, *, backbone="vgg16", target="hor", inputs=("natural",), spc=0.5, mae=0.2,
             n_nan=0, n_images=4, seed=0, experiment="table1", status="ok", error=None, predictions=True,
             folder=None, extra: dict | None = None, border: list | None = None, **fields) -> Path:
    """A job directory as posinfo.job writes it. ``fields``: dotted config keys with '.' as '__'."""
    cfg = copy.deepcopy(base)
    _set(cfg, "backbone.name", backbone)
    _set(cfg, "backbone.weights", "none" if backbone == "posenet" else "imagenet")
    _set(cfg, "target.name", target)
    _set(cfg, "input.kinds", list(inputs))
    _set(cfg, "input.name", "all" if len(inputs) == 4 else inputs[0])
    _set(cfg, "train.seed", seed)
    cfg["experiment_name"] = experiment
    cfg.update(extra or {})
    for k, v in fields.items():
        _set(cfg, k.replace("__", "."), v)
    overrides = [f"backbone={backbone}", f"target={target}"] + [f"{k.replace('__', '.')}={v}" for k, v in fields.items()]
    d = root / (folder or ",".join(overrides + [f"train.seed={seed}"]))
    d.mkdir(parents=True)
    spc_of = spc if isinstance(spc, dict) else {k: spc for k in inputs}
    nan_of = n_nan if isinstance(n_nan, dict) else {k: n_nan for k in inputs}
    count = {k: (n_images if k == "natural" else 1) for k in inputs}
    res = {
        "status": status, "error": error,
        "choices": {"backbone": backbone, "target": target, "input": cfg["input"]["name"], "readout": "default",
                    "data": cfg["data"]["name"], "train": "default", "experiment": experiment},
        "overrides": overrides, "config": cfg, "floor_mae": FLOORS[target],
    }
    if status == "ok":
        res["metrics"] = {k: {"spc": spc_of[k], "mae": mae, "n_images": count[k], "n_nan": nan_of[k]} for k in inputs}
        if border is not None:
            for k in inputs:
                res["metrics"][k]["border_mae"] = border
            res["border_profile"] = {"start_px": [14 * i for i in range(len(border))],
                                     "pixel_fraction": [1 / len(border)] * len(border), "floor_mae": [0.25] * len(border)}
        rows = [(k, f"{k}{i}", spc_of[k] if i >= nan_of[k] else np.nan, mae) for k in inputs for i in range(count[k])]
        pd.DataFrame(rows, columns=["input", "image", "spc", "mae"]).to_csv(d / "per_image.csv", index=False)
        if predictions:
            s = 16
            arrays = {"target": np.tile(np.linspace(0, 1, s, dtype=np.float32), (s, 1))}
            for k in inputs:
                arrays[f"{k}_images"] = np.random.default_rng(0).integers(0, 255, (1, s, s, 3), dtype=np.uint8)
                arrays[f"{k}_pred"] = np.clip(arrays["target"] + 0.1, 0, 1)[None]
            np.savez_compressed(d / "predictions.npz", **arrays)
    (d / "result.json").write_text(json.dumps(res))
    return d


def table_rows(md: str, title_part: str) -> list[list[str]]:
    """The body rows (cells stripped) of the Markdown table whose heading contains ``title_part``."""
    section = md.split("## ")
    text = next(s for s in section if title_part in (s.splitlines() or [""])[0])
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def cell(rows: list[list[str]], header: list[str], row: list[str], column: str) -> str:
    return row[header.index(column)]


def fabricate_table1(root: Path, base: dict) -> Path:
    sweep = root / "table1"
    for bb in ("posenet", "vgg16"):
        for t in ("hor", "gau", "horstp"):
            make_job(sweep, base, backbone=bb, target=t, inputs=ALL,
                     spc={"natural": 0.75, "black": None if bb == "posenet" else 0.8, "white": 0.6, "noise": 0.5},
                     n_nan={"natural": 2 if bb == "posenet" else 0, "black": 1 if bb == "posenet" else 0,
                            "white": 0, "noise": 0}, mae=0.15)
    make_job(sweep, base, backbone="resnet152", target="hor", inputs=ALL, status="failed",
             error="PosinfoError: cannot load ImageNet weights")
    return sweep


# --------------------------------------------------------------------------------- CSV

def test_results_csv_has_one_row_per_job_and_input(tmp_path, base_config):
    sweep = fabricate_table1(tmp_path, base_config)
    written = write_report([sweep], tmp_path / "out", figures=False, echo=False)
    df = read_results_csv(written["results.csv"])
    assert list(df.columns[: len(CSV_COLUMNS)]) != [] and set(CSV_COLUMNS) <= set(df.columns)
    assert len(df) == 6 * 4 + 4  # six ok jobs × 4 inputs, the failed one once per intended input
    assert df.job_dir.nunique() == 7
    ok = df[df.status == "ok"]
    assert sorted(ok.input.unique()) == sorted(ALL) and (ok.groupby("job_dir").size() == 4).all()
    failed = df[df.status == "failed"]
    assert set(failed.backbone) == {"resnet152"} and failed.error.str.contains("cannot load ImageNet").all()
    assert failed.spc.isna().all()
    row = ok[(ok.backbone == "vgg16") & (ok.target == "hor") & (ok.input == "natural")].iloc[0]
    assert (row.spc, row.mae, row.n_images, row.n_nan, row.floor_mae) == (0.75, 0.15, 4, 0, 0.2511)
    assert (row["readout.kernel"], row["readout.depth"], row["readout.padding"], row["backbone.taps"]) == (3, 1, 0, "all")
    assert row.experiment == "table1" and row.input_set == "all" and row.data == "embedded"
    assert Path(row.job_dir).is_dir()
    # the same frame collect() returns
    again = collect([sweep])
    assert len(again) == len(df) and set(again.columns) == set(df.columns)


def test_broken_partial_and_missing_jobs_are_listed_not_dropped(tmp_path, base_config):
    sweep = tmp_path / "sweep"
    make_job(sweep, base_config, target="hor", folder="good")
    broken = make_job(sweep, base_config, target="gau", folder="broken")
    config = json.loads((broken / "result.json").read_text())["config"]
    (broken / "result.json").write_text('{"status": "ok", "metr')
    (broken / ".hydra").mkdir()
    (broken / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    partial = make_job(sweep, base_config, target="ver", folder="partial")
    res = json.loads((partial / "result.json").read_text())
    del res["metrics"]
    (partial / "result.json").write_text(json.dumps(res))
    killed = sweep / "killed" / ".hydra"
    killed.mkdir(parents=True)
    (killed / "config.yaml").write_text("backbone: {name: vgg16}\ntarget: {name: verstp}\nexperiment_name: table1\n")
    (sweep / "notjson").mkdir()
    (sweep / "notjson" / "result.json").write_text("[1, 2]")

    df = collect([sweep])
    by_dir = df.drop_duplicates("job_dir").set_index(df.drop_duplicates("job_dir").job_dir.map(lambda p: Path(p).name))
    assert by_dir.loc["good", "status"] == "ok"
    assert by_dir.loc["broken", "status"] == "failed" and "unreadable result.json" in by_dir.loc["broken", "error"]
    assert by_dir.loc["broken", "target"] == "gau"  # placed from .hydra/config.yaml
    assert by_dir.loc["partial", "status"] == "failed" and "no metrics" in by_dir.loc["partial", "error"]
    assert by_dir.loc["killed", "status"] == "missing" and by_dir.loc["killed", "target"] == "verstp"
    assert by_dir.loc["notjson", "status"] == "failed"

    written = write_report([sweep], tmp_path / "out", figures=False, echo=False)
    md = written["tables.md"].read_text()
    assert "Failed or missing jobs (3)" in md and "could not be read" in md
    for name in ("broken", "partial", "killed", "notjson"):
        assert f"{name}`" in md
    rows = table_rows(md, "table1")
    header = rows[0]
    ours = next(r for r in rows if r[:2] == ["vgg16", "ours"])  # one input: a column pair per target
    assert [cell(rows, header, ours, c) for c in ("hor SPC", "gau SPC", "ver MAE", "verstp MAE")] == \
        [".500 ± .000", "failed", "failed", "missing"]  # one run: its bootstrap over 4 equal images


def test_jobs_a_sweep_never_started_are_missing(tmp_path, base_config):
    sweep = tmp_path / "sweep"
    make_job(sweep, base_config, target="hor", folder="target=hor")
    for d in sweep.iterdir():  # what Hydra's launcher passed to the job
        res = json.loads((d / "result.json").read_text())
        res["overrides"] = ["target=hor", "experiment=table1"]
        (d / "result.json").write_text(json.dumps(res))
    (sweep / "multirun.yaml").write_text(OmegaConf.to_yaml({
        "hydra": {"sweeper": {"params": {"target": "hor,gau"}}, "overrides": {"task": ["experiment=table1"]}}}))
    df = collect([sweep])
    missing = df[df.status == "missing"]
    assert len(missing) == 1 and "target=gau" in missing.job_dir.iloc[0] and "never started" in missing.error.iloc[0]
    md = to_markdown(make_tables(aggregate(df), df))
    assert "never started" in md


# --------------------------------------------------------------------------------- the paper's numbers

def test_table1_layout_with_paper_numbers_beside_ours(tmp_path, base_config):
    sweep = fabricate_table1(tmp_path, base_config)
    written = write_report([sweep], tmp_path / "out", figures=False, echo=False)
    md = written["tables.md"].read_text()
    rows = table_rows(md, "table1")
    header = rows[0]
    assert header[:3] == ["target", "backbone", "source"]
    assert header[3:] == [f"{i} {m}" for i in ALL for m in ("SPC", "MAE")]
    i = next(k for k, r in enumerate(rows) if r[:3] == ["hor", "vgg16", "ours"])
    ours, paper = rows[i], rows[i + 1]
    assert cell(rows, header, ours, "natural SPC") == ".750 ± .000" and cell(rows, header, ours, "natural MAE") == ".150 ± .000"
    assert paper[2] == "*paper T1*"
    assert [cell(rows, header, paper, c) for c in ("natural SPC", "natural MAE", "white SPC", "noise MAE")] == \
        [".742", ".149", ".873", ".173"]
    j = next(k for k, r in enumerate(rows) if r[:3] == ["gau", "posenet", "ours"])
    assert cell(rows, header, rows[j + 1], "natural SPC") == "-.001" and cell(rows, header, rows[j + 1], "black MAE") == ".186"
    assert cell(rows, header, rows[j + 1], "black SPC") == ".0"  # printed as the paper prints it
    # a floor row per target, in every MAE column
    floor = next(r for r in rows if r[0] == "hor" and r[2] == "*floor*")
    assert [cell(rows, header, floor, f"{k} MAE") for k in ALL] == [".251"] * 4
    assert next(r for r in rows if r[0] == "gau" and r[2] == "*floor*")[4] == ".197"
    # the failed job keeps its place
    res = next(r for r in rows if r[:3] == ["hor", "resnet152", "ours"])
    assert cell(rows, header, res, "natural SPC") == "failed"
    assert cell(rows, header, rows[rows.index(res) + 1], "natural SPC") == ".933"
    tex = written["tables.tex"].read_text()
    assert r"\multicolumn{2}{c}{natural}" in tex and r"\textit{.742}" in tex and r"\toprule" in tex
    # data and stripes are flagged, not presented as a reproduction
    assert "embedded images" in md and "no 'ours' row is a reproduction" in md
    assert "target.range=signed" in md and "impossible against stripes in [0, 1]" in md


@pytest.mark.parametrize(
    "experiment, job, column, expected",
    [
        ("table2a", dict(backbone="vgg16", target="hor", readout__depth=3), "natural", (".830", ".117")),
        ("table2b", dict(backbone="posenet", target="horstp", readout__kernel=7), "natural", (".002", ".628")),
        ("table3", dict(backbone="vgg16", target="gau", backbone__taps=[5]), "natural", (".693", ".135")),
        ("table4", dict(backbone="posenet", target="gau", readout__padding=2), "natural", (".380", ".177")),
        ("table4", dict(backbone="vgg16", target="horstp", backbone__padding="none"), "natural", (".011", ".628")),
    ],
)
def test_each_paper_table_lands_in_its_cell(tmp_path, base_config, experiment, job, column, expected):
    make_job(tmp_path / "s", base_config, experiment=experiment, **job)
    default = {k: v for k, v in job.items() if "__" not in k}
    make_job(tmp_path / "s", base_config, experiment=experiment, folder="default", **default)
    df = collect([tmp_path / "s"])
    row = df[df.job_dir.str.contains("__|=") & ~df.job_dir.str.endswith("default")].iloc[0]
    assert (row.paper_table, fmt(row.paper_spc), fmt(row.paper_mae)) == (experiment, *expected)
    rows = table_rows(to_markdown(make_tables(aggregate(df), df)), experiment)
    swept = next(k for k in job if "__" in k).replace("__", ".")
    assert swept in rows[0]  # one column per swept field
    assert f"{job['target']} SPC" in rows[0]
    i = next(k for k, r in enumerate(rows) if r[rows[0].index("source")] == "ours" and
             r[rows[0].index(swept)] == str(job[swept.replace(".", "__")]).replace(" ", ""))
    assert rows[i + 1][rows[0].index(f"{job['target']} SPC")] == expected[0]
    assert any(r[rows[0].index("source")] == "*floor*" for r in rows)


def test_table6_weights_map_to_the_paper_pretraining(tmp_path, base_config):
    extra = {"saliency_weights": "/w/sod.pt", "segmentation_weights": "/w/ss.pt"}
    for p, w in (("imagenet", "imagenet"), ("saliency", "/w/sod.pt"), ("segmentation", "/w/ss.pt")):
        make_job(tmp_path / "s", base_config, experiment="table6", inputs=ALL, extra={**extra, "pretraining": p},
                 backbone__weights=w)
    df = collect([tmp_path / "s"])
    got = df.set_index(["pretraining", "input"])
    assert (got.loc[("saliency", "noise"), "paper_table"], got.loc[("saliency", "noise"), "paper_spc"]) == ("table6", 0.965)
    assert got.loc[("segmentation", "white"), "paper_mae"] == 0.032
    assert got.loc[("imagenet", "natural"), "paper_spc"] == 0.742  # Table 1's VGG16
    rows = table_rows(to_markdown(make_tables(aggregate(df), df)), "table6")
    assert "pretraining" in rows[0] and "backbone.weights" not in rows[0]  # one restates the other
    assert "*paper T6*" in [r[rows[0].index("source")] for r in rows]


def test_configurations_the_paper_never_ran_get_no_paper_numbers(tmp_path, base_config):
    make_job(tmp_path / "s", base_config, backbone="resnet18", experiment=None)
    make_job(tmp_path / "s", base_config, backbone="vgg16", readout__padding=1, experiment=None)
    make_job(tmp_path / "s", base_config, backbone="vgg16", backbone__weights="/some/file.pt", experiment=None)
    df = collect([tmp_path / "s"])
    assert df.paper_table.isna().all()
    md = to_markdown(make_tables(aggregate(df), df))
    assert "*paper T" not in md and "## jobs: ours" in md


def test_random_weights_get_no_paper_numbers_and_are_flagged(tmp_path, base_config):
    make_job(tmp_path / "s", base_config, backbone="vgg16", backbone__weights="random", data__image_size=32, train__epochs=1)
    df = collect([tmp_path / "s"])
    assert df.paper_spc.isna().all()  # the paper's ImageNet VGG16 is no comparison for a control
    md = to_markdown(make_tables(aggregate(df), df))
    assert "random backbone weights" in md and "train.epochs=1 (paper: 15)" in md and "data.image_size=32" in md


# --------------------------------------------------------------------------------- NaN and seeds

def test_nan_images_are_counted_in_their_cells(tmp_path, base_config):
    sweep = fabricate_table1(tmp_path, base_config)
    df = collect([sweep])
    rows = table_rows(to_markdown(make_tables(aggregate(df), df)), "table1")
    header = rows[0]
    pos = next(r for r in rows if r[:3] == ["hor", "posenet", "ours"])
    assert cell(rows, header, pos, "black SPC") == "– (NaN 1/1)"
    assert cell(rows, header, pos, "natural SPC") == ".750 ± .000 (NaN 2/4)"
    assert cell(rows, header, pos, "white SPC") == ".600"  # one image: no interval


def test_seeds_become_mean_and_a_t_interval(tmp_path, base_config):
    for seed, spc in ((0, 0.70), (1, 0.72), (2, 0.74)):
        make_job(tmp_path / "s", base_config, experiment="table2a", seed=seed, spc=spc, mae=0.1 + seed / 100,
                 readout__depth=2)
    df = collect([tmp_path / "s"])
    assert len(df) == 3 and sorted(df["train.seed"]) == [0, 1, 2]
    cells = aggregate(df)
    assert len(cells) == 1 and cells.n_ok.iloc[0] == 3
    assert cells.spc.iloc[0] == pytest.approx(0.72) and cells.spc_std.iloc[0] == pytest.approx(0.02)
    from scipy import stats

    lo, hi = stats.t.interval(0.95, 2, loc=0.72, scale=0.02 / np.sqrt(3))  # 0.72 ± 0.0497
    assert (cells.spc_lo.iloc[0], cells.spc_hi.iloc[0]) == (pytest.approx(lo), pytest.approx(hi))
    assert cells.ci.iloc[0] == "seeds" and not cells.unstable.iloc[0]
    md = to_markdown(make_tables(cells, df))
    rows = table_rows(md, "table2a")
    ours = next(r for r in rows if "ours" in r)
    assert cell(rows, rows[0], ours, "hor SPC") == ".720 ± .050" and cell(rows, rows[0], ours, "hor MAE") == ".110 ± .025"
    assert "t over 3 runs per cell (train.seed 0, 1, 2)" in md


def test_stripes_in_both_ranges_are_told_apart(tmp_path, base_config):
    make_job(tmp_path / "s", base_config, target="horstp", spc=0.4, mae=0.3)
    make_job(tmp_path / "s", base_config, target="horstp", spc=0.4, mae=0.55, target__range="signed")
    df = collect([tmp_path / "s"])
    md = to_markdown(make_tables(aggregate(df), df))
    rows = table_rows(md, "table1")
    assert "horstp [unit] SPC" in rows[0] and "horstp [signed] SPC" in rows[0]
    assert "[signed] are in [−1, 1]" in md and "not comparable" in md


# --------------------------------------------------------------------------------- figures and CLI

def _check_figure(fig: figures.Figure) -> None:
    with Image.open(fig.path) as im:
        im.verify()
    with Image.open(fig.path) as im:
        assert im.format == "PNG" and im.size == fig.size_px
    assert fig.size_px[0] in (round(figures.COLUMN_WIDTH * 300), round(figures.FULL_WIDTH * 300))
    assert fig.path.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"


def test_figures_are_valid_images_of_paper_width(tmp_path, base_config):
    sweep = fabricate_table1(tmp_path, base_config)
    for taps, spc in (([1], 0.1), ([3], 0.4), ([5], 0.6), (None, 0.8)):
        for t in ("hor", "gau"):
            make_job(tmp_path / "table3", base_config, experiment="table3", target=t, spc=spc, backbone__taps=taps)
    df = collect([sweep, tmp_path / "table3"])
    figs = figures.draw_all(aggregate(df), tmp_path / "figs")
    names = sorted(f.path.name for f in figs)
    assert names == ["table1_predictions.png", "table1_spc_bars.png", "table3_predictions.png",
                     "table3_spc_bars.png", "table3_spc_vs_level.png"]
    for f in figs:
        _check_figure(f)
    grid = next(f for f in figs if f.path.name == "table1_predictions.png")
    assert grid.size_px[0] == 990  # image, target and the two backbones that ran: one column
    assert next(f for f in figs if f.path.name == "table3_predictions.png").size_px[0] == 2100  # 2 + 4 columns
    level = next(f for f in figs if f.path.name == "table3_spc_vs_level.png")
    assert level.size_px == (990, 690)


def test_no_figure_without_its_data(tmp_path, base_config):
    make_job(tmp_path / "s", base_config, predictions=False)
    make_job(tmp_path / "s", base_config, target="gau", status="failed", error="boom")
    df = collect([tmp_path / "s"])
    names = [f.path.name for f in figures.draw_all(aggregate(df), tmp_path / "figs")]
    assert names == ["table1_spc_bars.png"]
    only_failed = collect([tmp_path / "s" / next(p.name for p in (tmp_path / "s").iterdir() if "gau" in p.name)])
    assert figures.draw_all(aggregate(only_failed), tmp_path / "figs2") == []


def test_analyze_cli_writes_everything_and_prints_the_tables(tmp_path, base_config):
    sweep = fabricate_table1(tmp_path, base_config)
    r = subprocess.run([sys.executable, str(ROOT / "analyze.py"), str(sweep)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    out = sweep / "analysis"
    assert {"results.csv", "tables.md", "tables.tex", "table1_predictions.png", "table1_predictions.pdf",
            "table1_spc_bars.png"} <= {p.name for p in out.iterdir()}
    assert "| hor | vgg16 | ours |" in r.stdout and "*paper T1*" in r.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "analyze.py"), str(empty)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("analyze: error: no job directories") and "Traceback" not in r.stderr


def test_expected_jobs_of_a_grid_given_only_on_the_command_line(tmp_path):
    from posinfo.report.collect import expected_jobs

    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    params: null\n  overrides:\n    task: [backbone=posenet, 'target=hor,gau', 'readout.padding=0,1']\n"
    )
    jobs = expected_jobs(tmp_path)
    assert len(jobs) == 4 and ["backbone=posenet", "target=gau", "readout.padding=1"] in jobs


def test_a_bar_figure_of_hundreds_of_configurations_has_no_legend_wall(tmp_path, base_config):
    for k in range(30):
        make_job(tmp_path / "s", base_config, predictions=False, spc=k / 40, train__lr=0.01 * (k + 1))
    (fig,) = figures.draw_all(aggregate(collect([tmp_path / "s"])), tmp_path / "figs")
    assert fig.size_px[1] < 2.0 * 300 + 0.6 * 300  # the axes, a title line: not 15 rows of legend


def test_seeds_that_disagree_by_more_than_a_tenth_mark_the_cell_unstable_with_their_values(tmp_path, base_config):
    for seed, spc in ((0, 0.59), (1, 0.94), (2, 0.82)):  # the swing measured on VGG16 at 112 px
        make_job(tmp_path / "s", base_config, seed=seed, spc=spc)
    make_job(tmp_path / "s", base_config, target="gau", spc=0.5)
    cells = aggregate(collect([tmp_path / "s"]))
    hor = cells[cells.target == "hor"].iloc[0]
    assert hor.unstable and hor.seed_spcs == [0.59, 0.94, 0.82]
    md = to_markdown(make_tables(cells))
    rows = table_rows(md, "table1")
    ours = next(r for r in rows if r[:2] == ["vgg16", "ours"])
    assert cell(rows, rows[0], ours, "hor SPC").endswith("unstable (.590/.940/.820)")
    assert "unstable: the seeds' SPCs span more than 0.1" in md
    assert "bootstrap interval over the test images" in md  # gau has one run


def test_bootstrap_interval_of_one_run_over_its_test_images():
    from posinfo.report.intervals import bootstrap_interval

    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    lo, hi = bootstrap_interval(list(x) + [float("nan")])  # NaN (constant predictions) dropped
    rng = np.random.default_rng(0)
    means = x[rng.integers(0, 8, size=(2000, 8))].mean(axis=1)
    assert (lo, hi) == (pytest.approx(np.quantile(means, 0.025)), pytest.approx(np.quantile(means, 0.975)))
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * x.std(ddof=0) / np.sqrt(8), rel=0.15)
    assert all(np.isnan(v) for v in bootstrap_interval([0.3]))


def test_unconverged_cells_are_marked(tmp_path, base_config):
    for t, converged in (("hor", False), ("gau", True)):
        d = make_job(tmp_path / "s", base_config, target=t)
        res = json.loads((d / "result.json").read_text())
        res["training"] = {"steps": 240, "final_loss": 0.05, "rel_change_last20": 0.08 if not converged else 0.001,
                           "converged": converged}
        (d / "result.json").write_text(json.dumps(res))
    md = to_markdown(make_tables(aggregate(collect([tmp_path / "s"]))))
    rows = table_rows(md, "table1")
    ours = next(r for r in rows if r[:2] == ["vgg16", "ours"])
    assert cell(rows, rows[0], ours, "hor SPC").endswith("†") and not cell(rows, rows[0], ours, "gau SPC").endswith("†")
    assert "†: training had not converged" in md


def test_border_profiles_reach_results_csv_average_over_seeds_and_get_a_figure(tmp_path, base_config):
    for seed, prof in ((0, [0.1, 0.2, 0.3]), (1, [0.3, 0.2, 0.1])):
        make_job(tmp_path / "s", base_config, seed=seed, border=prof)
    make_job(tmp_path / "s", base_config, seed=0, border=[0.2, 0.2, 0.2], readout__padding=1)
    df = collect([tmp_path / "s"])
    assert [c for c in df.columns if c.startswith("border_mae_")] == ["border_mae_1", "border_mae_2", "border_mae_3"]
    cells = aggregate(df)
    assert len(cells) == 2  # the profile never splits a configuration's seeds
    two = cells[cells.n_ok == 2].iloc[0]
    assert [two[f"border_mae_{i}"] for i in (1, 2, 3)] == [pytest.approx(0.2)] * 3
    figs = [f for f in figures.draw_all(cells, tmp_path / "figs") if "border" in f.path.name]
    assert [f.path.name for f in figs] == ["table1_border_profile.png"]
    _check_figure(figs[0])


def test_a_canvas_sweep_gets_spc_against_border_per_colour(tmp_path, base_config):
    for border, spc in ((0, 0.2), (16, 0.5), (64, 0.8)):
        for color in ("black", "white"):
            make_job(tmp_path / "c", base_config, experiment="canvas", spc=spc + (color == "white") * 0.05,
                     data__canvas__border=border, data__canvas__color=color)
    cells = aggregate(collect([tmp_path / "c"]))
    assert len(cells) == 6
    with_border = cells[cells["data.canvas.border"].astype(int) > 0]
    assert with_border.paper_table.isna().all()  # the paper never ran canvas borders
    assert cells[cells["data.canvas.border"].astype(int) == 0].paper_table.notna().all()
    figs = [f for f in figures.draw_all(cells, tmp_path / "figs") if "border" in f.path.name]
    assert [f.path.name for f in figs] == ["canvas_spc_vs_border.png"]
    _check_figure(figs[0])


def test_results_written_before_an_option_existed_share_the_cell_of_its_default(tmp_path, base_config):
    """A posinfo upgrade adds typed keys; seeds run before and after it are one configuration."""
    old = make_job(tmp_path / "s", base_config, seed=0, spc=0.5)
    make_job(tmp_path / "s", base_config, seed=1, spc=0.6)
    res = json.loads((old / "result.json").read_text())
    del res["config"]["backbone"]["pos_embed"], res["config"]["target"]["cells"]
    (old / "result.json").write_text(json.dumps(res))
    cells = aggregate(collect([tmp_path / "s"]))
    assert len(cells) == 1 and cells.n_ok.iloc[0] == 2


def test_figure_labels_do_not_repeat_the_model_the_backbone_name_says(tmp_path, base_config):
    for model in ("vit_tiny_patch16_224", "convnext_atto"):
        make_job(tmp_path / "s", base_config, backbone="timm", backbone__model=model, experiment="x")
    labelled, fields = figures.label_cells(aggregate(collect([tmp_path / "s"])))
    assert sorted(labelled.config_label.unique()) == ["timm/convnext_atto", "timm/vit_tiny_patch16_224"]
    assert "backbone.model" in fields["x"]  # the tables keep their column


def test_no_metric_aggregate_is_read_as_a_configuration_field():
    """Aggregating a placement sweep adds accuracy_std, shuffled_accuracy_lo…: they are numbers
    about the cell, not a field that tells configurations apart (a table column of floats)."""
    import pandas as pd

    from posinfo.kinds import EXTRA_METRICS
    from posinfo.report.cells import config_fields

    stats = [f"{m}_{e}" for m in ("spc", "mae", *EXTRA_METRICS) for e in ("std", "lo", "hi")]
    df = pd.DataFrame(columns=["backbone", "backbone.padding", "train.seed", *stats])
    assert config_fields(df) == ["backbone", "backbone.padding"]


def test_depth_curve_legends_name_what_differs_between_lines():
    from posinfo.report.figures import _distinct_words

    labels = ["vit taps=[0,1] backbone.pos_embed=keep", "vit taps=[0,1] backbone.pos_embed=zero"]
    assert _distinct_words(labels) == {labels[0]: "backbone.pos_embed=keep", labels[1]: "backbone.pos_embed=zero"}
    assert _distinct_words(["vgg16"]) == {"vgg16": "vgg16"}  # one line: its whole name


def test_probefree_figure_follows_the_input_size_where_it_varies(tmp_path):
    """mind_the_pad's rows (a network × size × tap) are drawn against the size, a line per network and
    tap (first and last); rows that differ in something else, against the tap."""
    import pandas as pd

    from posinfo.report.figures import probefree_curves
    from posinfo.report.probefree import label_fields

    rows = pd.DataFrame([{"backbone": b, "data.image_size": size, "tap": tap, "channels": 8, "n": 1,
                          "interval": "images", "share": 0.1, "left_right": -0.01 * (size % 2),
                          "left_right_lo": -0.02, "left_right_hi": 0.0}
                         for b in ("timm", "vgg16") for size in (222, 223, 224) for tap in ("t1", "t2", "t3")])
    assert label_fields(rows) == ["backbone", "data.image_size"]
    fig = probefree_curves(rows, label_fields(rows), tmp_path / "by_size.png")
    assert fig is not None and fig.path.is_file() and fig.path.with_suffix(".pdf").is_file()
    one = rows[rows["data.image_size"] == 224]
    assert probefree_curves(one, label_fields(one), tmp_path / "by_tap.png").path.is_file()


def test_taps_of_different_networks_are_labelled_by_position_not_by_one_networks_names():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from posinfo.report.figures import _tap_ticks

    fig, (a, b) = plt.subplots(1, 2)
    _tap_ticks(a, pd.Series([0, 1, 0, 1]), pd.Series(["f1", "f2", "f1", "f2"]))
    _tap_ticks(b, pd.Series([0, 1, 0, 1]), pd.Series(["f1", "f2", "blocks.0", "blocks.1"]))
    assert [t.get_text() for t in a.get_xticklabels()] == ["f1", "f2"]
    assert [t.get_text() for t in b.get_xticklabels()] == ["1", "2"] and "first to last" in b.get_xlabel()
    plt.close(fig)
