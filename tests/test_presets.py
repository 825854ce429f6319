"""Every experiment preset declares the paper's grid, and (slow) every preset runs end to end.

The grid is expanded by posinfo.sweepgrid (Hydra's own basic sweeper code), from the preset's
``hydra.sweeper.params`` plus any command-line overrides, exactly as ``sweep.py -m`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import CONF, run_sweep
from posinfo.sweepgrid import expand as expand_grid

PRESETS = ["quickstart", "table1", "table2a", "table2b", "table3", "table4", "table6", "canvas", "padding",
           "vit_pos_embed", "modern_cnns", "bagnets", "mind_the_pad", "gapnet", "kayhan_4qi", "vit_position",
           "imagenet_cnns"]
PADDING_MODES = ("zeros", "none", "reflect", "replicate", "circular", "partial")
WEIGHTS = ["saliency_weights=/w/sod.pt", "segmentation_weights=/w/ss.pt"]
TARGETS3 = ("hor", "gau", "horstp")
MTP_WEIGHTS = ["lite0_weights=/w/lite0.pth", "vgg16_weights=/w/vgg16.pth"]


def _expand(preset: str, cli: tuple[str, ...]) -> list[list[str]]:
    # As in a multirun, the sweep is composed without the command line's sweep overrides.
    fixed = [o.input_line for o in OverridesParser.create().parse_overrides(list(cli)) if not o.is_sweep_override()]
    cfg = compose("config", overrides=[f"experiment={preset}", *fixed], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    return expand_grid(params, cli)


def expand(preset: str, *cli: str) -> list[list[str]]:
    """The override list of every job that ``sweep.py -m experiment=<preset> <cli>`` launches."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return _expand(preset, cli)


def compose_preset(preset: str, *cli: str):
    """The composed (unswept) config of ``experiment=<preset> <cli>``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"experiment={preset}", *cli])


def job_configs(preset: str, *cli: str) -> list[dict]:
    """The resolved config of every job of the preset's grid.

    Jobs that differ only in ``train.seed`` (a plain value nothing interpolates) are composed
    once, with the first one's seed: the others are that config with their own seed, checked
    to be the only difference in their overrides. A third of the compositions, and of this
    file's time."""
    import copy

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed: dict[tuple, dict] = {}
        out = []
        for job in _expand(preset, cli):
            seeds = [o for o in job if o.startswith("train.seed=")]
            rest = tuple(o for o in job if not o.startswith("train.seed="))
            if rest not in composed or not seeds:
                cfg = OmegaConf.to_container(compose("config", overrides=[f"experiment={preset}", *job]), resolve=True)
                composed.setdefault(rest, cfg)
                out.append(cfg)
                continue
            cfg = copy.deepcopy(composed[rest])
            cfg["train"]["seed"] = int(seeds[-1].split("=", 1)[1])
            out.append(cfg)
        return out


def key(c: dict) -> tuple:
    b, r = c["backbone"], c["readout"]
    taps = tuple(b["taps"]) if b["taps"] is not None else None
    return (b["name"], c["target"]["name"], r["kernel"], r["depth"], r["padding"], b["padding"], taps, b["weights"])


def grid(backbones, targets, kernels=(3,), depths=(1,), paddings=(0,), bpads=("zeros",), taps=(None,)) -> set:
    weights = {"posenet": "none"}
    return {
        (b, t, k, d, p, bp, tp, weights.get(b, "imagenet"))
        for b in backbones
        for t in targets
        for k in kernels
        for d in depths
        for p in paddings
        for bp in bpads
        for tp in taps
    }


def test_every_preset_file_is_tested_and_documented():
    files = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert files == sorted(PRESETS)
    for name in PRESETS:
        text = (CONF / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_\n"), name
        assert f"python sweep.py -m experiment={name}" in text, name
        assert f"experiment_name: {name}" in text, name


@pytest.mark.parametrize(
    "preset, cli, expected, inputs",
    [
        ("quickstart", [], grid(["posenet"], ["hor", "gau"], paddings=(0, 1, 2)), ["natural", "black", "white", "noise"]),
        ("table1", [], grid(["posenet", "vgg16", "resnet152"], ["hor", "ver", "gau", "horstp", "verstp"]),
         ["natural", "black", "white", "noise"]),
        ("table2a", [], grid(["posenet", "vgg16"], TARGETS3, depths=(1, 2, 3)), ["natural"]),
        ("table2b", [], grid(["posenet", "vgg16"], TARGETS3, kernels=(1, 3, 7)), ["natural"]),
        ("table3", [], grid(["vgg16"], ["hor", "gau"], taps=((1,), (2,), (3,), (4,), (5,), None)), ["natural"]),
        ("table4", [], grid(["posenet"], TARGETS3, paddings=(0, 1, 2)) | grid(["vgg16"], TARGETS3, bpads=("zeros", "none")),
         ["natural"]),
        ("padding", [], grid(["vgg16"], ["hor", "gau"], bpads=PADDING_MODES)
         | grid(["resnet50"], ["hor", "gau"], bpads=[m for m in PADDING_MODES if m != "none"]), ["natural"]),
        ("bagnets", [], grid(["bagnet9", "bagnet17", "bagnet33"], TARGETS3, bpads=("none",)) | grid(["resnet50"], TARGETS3),
         ["natural"]),
    ],
)
def test_preset_grid(preset, cli, expected, inputs):
    configs = job_configs(preset, *cli)
    keys = [key(c) for c in configs]
    # every configuration with 3 seeds (train.seed=0,1,2 in every preset)
    assert len(keys) == 3 * len(expected) and set(keys) == expected
    assert sorted((repr(key(c)), c["train"]["seed"]) for c in configs) == \
        sorted((repr(k), s) for k in expected for s in (0, 1, 2))
    assert all(c["input"]["kinds"] == inputs for c in configs)
    assert all(c["experiment_name"] == preset for c in configs)
    assert all(c["data"]["name"] == "embedded" and c["train"]["epochs"] == 15 for c in configs)


def test_job_configs_differing_in_seed_only_equal_their_own_composition():
    """job_configs' shortcut (one composition per seed group) gives what composing each job does."""
    jobs = [j for j in expand("quickstart", "target=hor") if any(o.startswith("train.seed=") for o in j)]
    assert len(jobs) >= 3
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        want = [OmegaConf.to_container(compose("config", overrides=["experiment=quickstart", *j]), resolve=True)
                for j in jobs]
    got = job_configs("quickstart", "target=hor")
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, want))
    assert {c["train"]["seed"] for c in got} == {0, 1, 2}


def test_canvas_grid_is_every_border_and_colour_for_posenet_and_vgg16():
    configs = job_configs("canvas")
    cells = {(c["backbone"]["name"], c["data"]["canvas"]["border"], c["data"]["canvas"]["color"], c["target"]["name"],
              c["train"]["seed"]) for c in configs}
    assert len(configs) == len(cells) == 2 * 5 * 4 * 2 * 3
    assert {b for _, b, *_ in cells} == {0, 8, 16, 32, 64}
    assert {c for _, _, c, *_ in cells} == {"black", "white", "mean", "noise"}
    assert all(c["readout"]["padding"] == 0 and c["input"]["kinds"] == ["natural"] for c in configs)


@pytest.mark.parametrize("preset,models,extra", [
    ("vit_pos_embed", {"vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"}, {"keep", "zero", "shuffle"}),
    ("modern_cnns", {"resnet50", "convnext_tiny", "efficientnet_b0", "regnet_y_400mf", "mobilenet_v3_small"}, {"keep"}),
])
def test_any_backbone_presets(preset, models, extra):
    configs = job_configs(preset)
    cells = {(c["backbone"]["model"], c["backbone"]["pos_embed"], c["target"]["name"], c["train"]["seed"]) for c in configs}
    assert len(configs) == len(cells) == len(models) * len(extra) * 3 * 3
    assert {m for m, *_ in cells} == models and {p for _, p, *_ in cells} == extra
    assert {t for _, _, t, _ in cells} == {"hor", "gau", "grid"}
    assert all(c["readout"]["standardize"] == "channel" and c["input"]["kinds"] == ["natural"] for c in configs)


def test_table6_grid_uses_the_supplied_weights():
    configs = job_configs("table6", *WEIGHTS)
    got = sorted((c["pretraining"], c["backbone"]["name"], c["backbone"]["weights"], c["target"]["name"],
                  c["train"]["seed"]) for c in configs)
    assert got == sorted(
        (p, "vgg16", w, t, seed)
        for p, w in [("imagenet", "imagenet"), ("saliency", "/w/sod.pt"), ("segmentation", "/w/ss.pt")]
        for t in TARGETS3
        for seed in (0, 1, 2)
    )
    assert all(c["input"]["kinds"] == ["natural", "black", "white", "noise"] for c in configs)


@pytest.mark.parametrize("given, missing", [([], "saliency_weights, segmentation_weights"), (WEIGHTS[:1], "segmentation_weights")])
def test_table6_without_weight_files_names_the_key_to_set(given, missing):
    from posinfo.schema import missing_values_error

    cfg = compose_preset("table6", *given)
    assert missing_values_error(cfg) == (
        f"missing required value(s) {missing}: set them on the command line, e.g. {missing.split(',')[0]}=/path/to/..."
    )
    assert missing_values_error(compose_preset("table6", *WEIGHTS)) is None


def test_mind_the_pad_grid_is_both_networks_at_every_size_with_probe_free_measures():
    jobs = {frozenset(o for o in job if not o.startswith(("lite0_weights=", "vgg16_weights=")))
            for job in expand("mind_the_pad", *MTP_WEIGHTS)}
    assert jobs == {frozenset({f"+experiment/mind_the_pad={n}", f"data.image_size={size}", f"target={t}", "train.seed=0"})
                    for n in ("lite0", "vgg16") for size in range(220, 229) for t in ("hor", "ver")}
    configs = job_configs("mind_the_pad", *MTP_WEIGHTS, "data.image_size=224")  # one size resolved: the rows' settings
    got = {(c["backbone"]["name"], c["backbone"]["model"], c["backbone"]["weights"], c["data"]["normalize"],
            c["target"]["name"]) for c in configs}
    nets = {("timm", "tf_efficientnet_lite0", "/w/lite0.pth", "model"), ("vgg16", None, "/w/vgg16.pth", "imagenet")}
    assert len(configs) == len(got) == 4 and got == {(*n, t) for n in nets for t in ("hor", "ver")}
    assert all(c["analysis"]["probefree"] and c["backbone"]["padding"] == "zeros" and c["train"]["seed"] == 0
               and c["input"]["kinds"] == ["natural"] for c in configs)


def test_vit_position_grid_is_every_embedding_control_at_three_resolutions_with_a_probe_per_token():
    jobs = {frozenset(job) for job in expand("vit_position")}
    assert jobs == {frozenset({f"+experiment/vit_position={r}", f"backbone.pos_embed={m}", f"train.seed={s}"})
                    for r in ("x1", "x1_5", "x2") for m in ("keep", "zero", "mean", "noise", "roll") for s in (0, 1, 2)}
    configs = job_configs("vit_position", "backbone.pos_embed=keep", "train.seed=0")
    # each resolution's image size goes with its token grid: one readout position per 16-px patch token
    assert sorted((c["data"]["image_size"], c["readout"]["feature_size"]) for c in configs) == [(224, 14), (336, 21), (448, 28)]
    assert all(c["backbone"]["model"] == "vit_tiny_patch16_224" and c["backbone"]["weights"] == "random"
               and c["backbone"]["taps"] == list(range(12)) and c["target"]["name"] == "xy" and c["target"]["per_tap"]
               and c["readout"]["kernel"] == 1 and c["readout"]["solver"] == "ridge" and c["analysis"]["probefree"]
               and c["input"]["kinds"] == ["natural"] for c in configs)


def test_imagenet_cnns_grid_is_both_trained_networks_and_their_random_twins_on_every_measure():
    jobs = {frozenset(o for o in job if not o.startswith(("lite0_weights=", "vgg16_weights=")))
            for job in expand("imagenet_cnns", *MTP_WEIGHTS)}
    assert jobs == {frozenset({f"+experiment/imagenet_cnns={n}", f"target={t}", f"train.seed={s}"})
                    for n in ("vgg16", "vgg16_random", "lite0", "lite0_random") for t in ("hor", "gau", "xy")
                    for s in (0, 1, 2)}
    configs = job_configs("imagenet_cnns", *MTP_WEIGHTS, "target=xy", "train.seed=0")
    got = {(c["backbone"]["name"], c["backbone"]["model"], c["backbone"]["weights"], c["data"]["normalize"])
           for c in configs}
    assert got == {("vgg16", None, "/w/vgg16.pth", "none"), ("vgg16", None, "random", "none"),
                   ("timm", "tf_efficientnet_lite0", "/w/lite0.pth", "model"),
                   ("timm", "tf_efficientnet_lite0", "random", "model")}
    assert all(c["readout"]["solver"] == "ridge" and c["readout"]["kernel"] == 1 and c["analysis"]["probefree"]
               and c["target"]["per_tap"] and c["input"]["kinds"] == ["natural"] for c in configs)
    from posinfo.schema import missing_values_error

    assert missing_values_error(compose_preset("imagenet_cnns", MTP_WEIGHTS[0])) == (
        "missing required value(s) vgg16_weights: set them on the command line, e.g. vgg16_weights=/path/to/...")


@pytest.mark.parametrize("preset, cli, group, weights", [
    ("mind_the_pad", [*MTP_WEIGHTS, "+experiment/mind_the_pad=lite0"], "backbone", "/w/lite0.pth"),
    ("imagenet_cnns", [*MTP_WEIGHTS, "+experiment/imagenet_cnns=vgg16"], "backbone", "/w/vgg16.pth"),
    ("table6", [*WEIGHTS, "pretraining=saliency"], "backbone", "/w/sod.pt"),
])
def test_a_presets_weight_keys_reach_the_job_as_paths(preset, cli, group, weights):
    """The weight files of mind_the_pad, imagenet_cnns and table6 are top-level keys that the
    backbone group interpolates (${vgg16_weights}): the job's typed spec must resolve them against
    the whole config, not the group alone (the end-to-end runs override them with random weights)."""
    from posinfo.spec import job_spec

    spec = job_spec(compose_preset(preset, *cli))
    assert getattr(spec, group).weights == weights


def test_mind_the_pad_without_weight_files_names_the_keys_to_set():
    from posinfo.schema import missing_values_error

    assert missing_values_error(compose_preset("mind_the_pad", MTP_WEIGHTS[1])) == (
        "missing required value(s) lite0_weights: set them on the command line, e.g. lite0_weights=/path/to/...")
    assert missing_values_error(compose_preset("mind_the_pad", *MTP_WEIGHTS)) is None


def test_command_line_overrides_win_over_the_preset():
    keys = {key(c) for c in job_configs("table2a", "target=gau", "backbone=resnet18")}
    assert keys == grid(["resnet18"], ["gau"], depths=(1, 2, 3))
    # stripes in [-1, 1] as the paper's numbers need: a second sweep of the same preset
    configs = job_configs("table1", "target=horstp,verstp", "target.range=signed")
    assert len(configs) == 6 * 3 and {c["target"]["range"] for c in configs} == {"signed"}  # × 3 seeds


def test_table4_job_folders_read_as_the_table(tmp_path):
    # one seed of the preset's three keeps the dry run short; the seed stays in the folder name
    r = run_sweep("-m", "experiment=table4", "train.seed=1", "dry_run=true", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path,
                  timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dirs = sorted(str(p.parent.parent.relative_to(tmp_path)) for p in tmp_path.rglob(".hydra/config.yaml"))
    assert len(dirs) == 15
    assert "experiment.table4=posenet_pad1,target=gau,train.seed=1" in dirs
    assert "experiment.table4=vgg16_nopad,target=horstp,train.seed=1" in dirs


# ---------------------------------------------------------------- end to end (slow)

# readout.feature_size=14: the deep/wide readouts of Tables 2a/2b cost 4x less on a
# 14x14 map than on 28x28, and every code path is the same.
TINY = ["data.num_train=8", "data.num_test=4", "train.epochs=1", "train.batch_size=4",
        "data.image_size=32", "readout.feature_size=14", "backbone.weights=random", "device=cpu"]
E2E_EXTRA = {
    # backbone.weights=random overrides the two files; they need not exist
    "table6": WEIGHTS,
    # A random-init ResNet-152 in eval mode has exploding activations (~1e5 at 32 px, ~1e8 at
    # 224 px: BatchNorm's default running statistics do not normalise), so its readout
    # diverges; ResNet-18 stays near 1 and exercises the same code path.
    "table1": ["backbone=posenet,vgg16,resnet18", "target=hor,gau"],
    # one target: every readout depth, kernel, tap and padding row still runs (the suite's time)
    "table2a": ["target=hor"],
    "table2b": ["target=hor"],
    "table3": ["target=hor"],
    "table4": ["target=hor"],
    # two borders × two colours, and the partial-padding rows: the code paths, in seconds
    "canvas": ["data.canvas.border=0,8", "data.canvas.color=black,noise", "target=hor"],
    "padding": ["+experiment/padding=vgg16_partial,resnet50_partial", "target=hor"],
    # one model each way, the grid target included; random weights (TINY); 64 px for the ViT's 4×4 tokens
    "vit_pos_embed": ["backbone.model=vit_tiny_patch16_224", "backbone.pos_embed=keep,zero", "target=hor,grid",
                      "target.cells=2", "data.image_size=64"],
    "modern_cnns": ["backbone.model=mobilenet_v3_small,convnext_tiny", "target=hor,grid", "target.cells=2",
                    "data.image_size=64"],
    # the widest receptive field against the reference: the other BagNets differ only in kernel sizes
    "bagnets": ["backbone=bagnet33,resnet50", "target=hor"],
    # one target; backbone.weights=random (TINY) stands in for the two files
    "mind_the_pad": [*MTP_WEIGHTS, "target=hor"],
    # the first two levels: VGG16 without padding keeps them at 32 px
    "gapnet": ["backbone.taps=[1,2]"],
    "kayhan_4qi": ["backbone.taps=[1,2]"],
    # every network (backbone.weights=random from TINY stands in for the two files), a map and the probe per position
    "imagenet_cnns": [*MTP_WEIGHTS, "target=hor,xy", "readout.ridge_folds=2"],
    # one resolution, two controls; 64 px: 4×4 tokens, one probe position each; 2 folds for 8 images
    "vit_position": ["+experiment/vit_position=x1", "backbone.pos_embed=keep,roll", "data.image_size=64",
                     "readout.feature_size=4", "readout.ridge_folds=2"],
}
# VGG16 without padding needs >= 196 px to keep f5 (Table 4's taps shrink to 2 px at 224).
# BagNet-33's valid 3×3 convs need >= 41 px to keep a 1×1 layer4.
# mind_the_pad sweeps the size itself: one size runs its code paths (its test counts its jobs with it).
IMAGE_SIZE = {"table4": "data.image_size=224", "bagnets": "data.image_size=48", "mind_the_pad": "data.image_size=32"}


def run_preset(preset: str, sweep_dir: Path, *extra: str):
    """``python sweep.py -m experiment=<preset>`` turned down to seconds, into ``sweep_dir``."""
    tiny = [o for o in TINY if not (preset in IMAGE_SIZE and o.startswith("data.image_size="))]
    tiny += [IMAGE_SIZE[preset]] if preset in IMAGE_SIZE else []
    return run_sweep(
        "-m", f"experiment={preset}", *tiny, *extra,
        f"cache.dir={sweep_dir.parent / 'cache'}", f"hydra.sweep.dir={sweep_dir}",
        cwd=sweep_dir.parent, timeout=600,
    )




@pytest.mark.slow
@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "table6"] + ["table6"])
def test_preset_runs_end_to_end_and_analyzes(preset, tmp_path):
    extra = [*E2E_EXTRA.get(preset, []), "train.seed=0"]  # one seed of the three: seconds, not minutes
    n_jobs = len(expand(preset, *extra, *([IMAGE_SIZE[preset]] if preset in IMAGE_SIZE else [])))
    sweep_dir = tmp_path / preset
    r = run_preset(preset, sweep_dir, *extra)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    results = [json.loads(p.read_text()) for p in sweep_dir.rglob("result.json")]
    assert len(results) == n_jobs and all(res["status"] == "ok" for res in results)

    from posinfo.report import write_report
    from posinfo.report.collect import read_results_csv

    written = write_report([sweep_dir], tmp_path / "analysis", echo=False)
    df = read_results_csv(written["results.csv"])
    assert set(df.status) == {"ok"} and df.job_dir.nunique() == n_jobs
    assert "## " in (tmp_path / "analysis" / "tables.md").read_text()
    if preset == "vit_position":  # a closed-form probe per block, over depth
        assert all(len(res["per_tap"]) == 12 and res["training"]["solver"] == "ridge" for res in results)
    if preset in ("mind_the_pad", "vit_position", "imagenet_cnns"):  # analysis.probefree=true: its measures, and their table
        assert all(res["probefree"] for res in results)
        assert "left − right" in (tmp_path / "analysis" / "probefree.md").read_text()
        assert f"{preset}_probefree.png" in written


@pytest.mark.slow
def test_table6_without_weight_files_fails_at_launch(tmp_path):
    r = run_preset("table6", tmp_path / "table6")
    assert r.returncode != 0
    assert "posinfo: error: missing required value(s) saliency_weights, segmentation_weights" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not list(tmp_path.rglob("result.json"))
