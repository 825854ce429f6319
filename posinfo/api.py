"""posinfo from Python: :func:`probe` a model in a notebook or a script and get a tidy table.

``probe`` composes one config per (tap set, target, seed) from the project's ``conf/`` with Hydra's
compose API, exactly as ``sweep.py`` would from the same overrides, and runs each through the same
code (posinfo.sweep.task.run_job -> posinfo.job.run: the feature cache, the readout store, the job
folder, result.json). Python objects that a YAML file cannot hold are registered in this process
and named in the config by a content hash: an ``nn.Module`` or a dict of feature maps
(posinfo.usermodels, ``backbone.name=module``) and images given as a tensor, files or a Dataset
(posinfo.userdata, ``data.name=python``). The table is analyze.py's ``results.csv`` rows of those
jobs (posinfo.report.collect), one row per metric.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from posinfo.errors import PosinfoError
from posinfo.io import user_path
from posinfo.names import DATA_SOURCES, MODEL_ZOOS, MODULE_BACKBONE, PYTHON_DATA, RESULT_FILE
from posinfo.schema import folder_excluded_keys
from posinfo.spec import JobSpec, job_spec, typed

log = logging.getLogger(__name__)

DEFAULT_OUT = "outputs/probe"
# The table's columns: what a row is, then the number and its 95% interval (analysis.intervals).
COLUMNS = ("backbone", "taps", "target", "input", "seed", "metric", "value", "lo", "hi", "n_images", "n_nan",
           "floor", "converged", "status", "error", "job_dir")
# Left out of job folder names: run-control keys, and what the model's or images' key already says.
_UNNAMED = (*folder_excluded_keys(), "backbone.name", "backbone.weights", "data.name", "data.num_train", "data.num_test")


def conf_dir() -> Path:
    """The project's Hydra config folder (``conf/`` beside the package, as sweep.py uses it)."""
    d = Path(__file__).resolve().parents[1] / "conf"
    if not (d / "config.yaml").is_file():
        raise PosinfoError(f"posinfo's config folder {d} is missing: install posinfo from its checkout "
                           "(pip install -e .), where conf/ lies beside posinfo/")
    return d


def compose(overrides: list[str]):
    """The config ``sweep.py <overrides>`` would run, composed from conf/ (one line if an override is bad)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from posinfo.schema import check_overrides, register

    conf = conf_dir()
    error = check_overrides(list(overrides), conf)
    if error:
        raise PosinfoError(error)
    register()
    if GlobalHydra.instance().is_initialized():
        raise PosinfoError("posinfo composes its own config and cannot do so inside another Hydra app's "
                           "initialize(): call posinfo.probe outside it")
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides))
    except HydraException as e:
        raise PosinfoError(f"{str(e).strip().splitlines()[0]}: check the overrides {list(overrides)}") from None


def _shown(value: Any) -> str:
    if value is None or isinstance(value, (bool, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def apply(cfg, settings: dict[str, Any]) -> None:
    """Set each dotted key of ``settings`` in ``cfg``, each value checked against the schema first."""
    from omegaconf import OmegaConf

    from posinfo.schema import GROUPS, check_value, group_keys

    for key, value in settings.items():
        error = check_value(key, value)
        if error:
            raise PosinfoError(error)
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except Exception:  # a key the config does not have
            group = key.split(".", 1)[0]
            known = f"; the keys of {group} are {', '.join(group_keys(group))}" if group in GROUPS else ""
            raise PosinfoError(f"{key}: no such key{known}") from None


# ----------------------------------------------------------------------------- what to probe


@dataclass
class Spec:
    """Group choices (overrides) and values (settings) that select a model or an image set."""

    groups: list[str]
    settings: dict[str, Any]
    table_n: int | None = None  # a dict of feature maps: how many images it holds


def model_spec(model: Any, weights: str) -> Spec:
    """``model``: an nn.Module, a dict of feature maps, ``posenet``, a built-in backbone (vgg16, the
    ResNets), ``timm/NAME`` / ``torchvision/NAME``, or a plain timm or torchvision model name."""
    import torch

    from posinfo import usermodels
    from posinfo.encoders import has_encoder
    from posinfo.names import BACKBONES

    if isinstance(model, (dict, torch.nn.Module)):
        table = usermodels.feature_table(model) if isinstance(model, dict) else None
        key = usermodels.register(table if table is not None else model)
        settings = {"backbone.name": MODULE_BACKBONE, "backbone.model": key, "backbone.weights": "none"}
        return Spec(["backbone=torchvision"], settings, None if table is None else int(table.tap0.shape[0]))
    if not isinstance(model, str) or not model:
        raise PosinfoError(f"model={type(model).__name__}: give an nn.Module, a dict of feature maps, or a model "
                           "name (vgg16, resnet50, posenet, timm/NAME, torchvision/NAME)")
    if model in BACKBONES and not has_encoder(model):  # PosENet: no weights to name
        return Spec([f"backbone={model}"], {})
    if model in BACKBONES and model not in MODEL_ZOOS:
        return Spec([f"backbone={model}"], {"backbone.weights": str(weights)})
    kind, _, name = model.partition("/") if model.startswith(tuple(f"{z}/" for z in MODEL_ZOOS)) else ("", "", model)
    if not kind:
        import torchvision

        kind = "torchvision" if name in torchvision.models.list_models(module=torchvision.models) else "timm"
    return Spec([f"backbone={kind}"], {"backbone.model": name, "backbone.weights": str(weights)})


def data_source(images: Any, test_images: Any, table: bool) -> str:
    """Which data option the images become: ``embedded`` / ``photos`` (posinfo's own, by name),
    ``folder`` (two folders, as sweep.py runs them) or ``python`` (images held here)."""
    if table:
        if images is not None or test_images is not None:
            raise PosinfoError("images: a dict of feature maps already holds every image's features: pass images=None")
        return PYTHON_DATA
    if isinstance(images, str) and images in DATA_SOURCES and not user_path(images).exists():
        if images == "folder" or test_images is not None:
            raise PosinfoError(f"images='{images}' names posinfo's own images, which have their own test images: "
                               "drop test_images, or give folders: images=TRAIN_DIR, test_images=TEST_DIR")
        return images
    return "folder" if _is_dir(images) and _is_dir(test_images) else PYTHON_DATA


def data_spec(source: str, images: Any, test_images: Any, test_fraction: float, size: int,
              table_n: int | None) -> Spec:
    """The data settings of ``source`` (data_source); images held here are registered
    (posinfo.userdata), split into training and test images when no test_images are given."""
    from posinfo import userdata

    if source != PYTHON_DATA:
        folders = {"data.train_dir": str(images), "data.test_dir": str(test_images)} if source == "folder" else {}
        return Spec([f"data={source}"], folders)
    if table_n is not None:  # feature maps: placeholder images carry each one's index
        from posinfo.usermodels import index_images

        train, test = userdata.split(index_images(table_n, size), test_fraction)
    else:
        train = userdata.image_set(images, size)
        test = userdata.image_set(test_images, size) if test_images is not None else None
        if test is None:
            train, test = userdata.split(train, test_fraction)
    return Spec(["data=folder"], {"data.name": PYTHON_DATA, "data.train_dir": userdata.register(train),
                                  "data.test_dir": userdata.register(test), "data.num_train": None, "data.num_test": None})


def _is_dir(x: Any) -> bool:
    return isinstance(x, (str, Path)) and user_path(x).is_dir()


def input_spec(inputs: Any, table: bool) -> Spec:
    """``inputs``: an input option (all, natural, controls, black, white, noise) or a list of kinds."""
    if inputs is None:
        inputs = "natural" if table else "all"
    if isinstance(inputs, str):
        return Spec([f"input={inputs}"], {})
    kinds = [str(k) for k in inputs]
    return Spec(["input=all"], {"input.kinds": kinds, "input.name": "+".join(kinds)})


def tap_sets(taps: Any, default_taps: Any) -> list[tuple[str | None, dict]]:
    """(label, settings) per tap set. ``taps``: None (the model's default taps), ``"each"`` (each
    default tap alone), a list of levels (ints) or graph nodes / feature-map names (strings), a
    list of such lists, or {label: list}."""
    if taps is None:
        return [(None, {})]
    if taps == "each":
        return [(name, _tap_setting([node])) for name, node in default_taps().items()]
    if isinstance(taps, dict):
        return [(str(label), _tap_setting(list(t))) for label, t in taps.items()]
    taps = list(taps)
    if taps and all(isinstance(t, (list, tuple)) for t in taps):
        return [(None, _tap_setting(list(t))) for t in taps]
    return [(None, _tap_setting(taps))]


def _tap_setting(taps: list) -> dict:
    if taps and all(isinstance(t, int) and not isinstance(t, bool) for t in taps):
        return {"backbone.taps": taps}
    if taps and all(isinstance(t, str) for t in taps):
        return {"backbone.nodes": taps}
    raise PosinfoError(f"taps={taps}: give levels (ints, e.g. [1, 3]) or node names (strings), not both, "
                       "a list of such lists, or 'each'")


# ----------------------------------------------------------------------------- the jobs


@dataclass
class Job:
    cfg: Any
    dir: Path
    choices: dict
    overrides: list[str]
    taps: str | None


def _default_taps(cfg) -> Any:
    """{tap: level or node} of the configured backbone's default taps (a weightless build)."""
    def taps() -> dict:
        from posinfo.encoders import adapter

        return adapter(cfg.backbone.name).tap_choices(_encoder(typed(cfg)))  # levels (built-in backbones) or nodes
    return taps


def _encoder(cfg: JobSpec):
    """The job's encoder, lazily: its taps and checks, no weights (built as posinfo.job builds it)."""
    from posinfo.trained import job_encoder

    return job_encoder(cfg)


def _check(job: Job, table: bool, encoders: set[str]) -> None:
    """What would stop the job, before any job runs: the schema, weights and folders, the taps (one
    weightless build per backbone configuration; ``encoders`` holds those checked)."""
    from posinfo.encoders import has_encoder
    from posinfo.preflight import job_problems

    spec = job_spec(job.cfg)
    if table and (set(spec.input.kinds) != {"natural"} or spec.data.canvas.border != 0):
        raise PosinfoError(f"inputs={spec.input.kinds}: feature maps are scored on their own test images "
                           "only: use inputs='natural' (and no data.canvas)")
    problems = job_problems(job.cfg)
    if problems:
        raise PosinfoError(problems[0])
    key = json.dumps([dataclasses.asdict(spec.backbone), spec.data.image_size])
    if has_encoder(spec.backbone.name) and key not in encoders:
        _encoder(spec).describe(spec.data.image_size)
        encoders.add(key)


def plan(base: list[str], settings: dict, targets: Sequence[str], seeds: Sequence[int], sets: list, out: Path,
         user_overrides: Sequence[str]) -> list[Job]:
    """One Job per (tap set, target, seed), composed as sweep.py composes ``base + user_overrides``."""
    from posinfo.sweep.folders import job_dirname

    jobs = []
    for target in targets:
        composed = compose([*base, f"target={target}", *user_overrides])
        for label, tap_settings in sets:
            for seed in seeds:
                cfg = copy.deepcopy(composed)
                values = {**settings, **tap_settings, "train.seed": int(seed)}
                apply(cfg, values)
                shown = [*base, f"target={target}", *user_overrides, *(f"{k}={_shown(v)}" for k, v in values.items())]
                named = sorted(o for o in shown if o.split("=", 1)[0].lstrip("+") not in _UNNAMED
                               and not (o.startswith(("backbone=", "data=")) and f"{o.split('=')[0]}.name" in values))
                choices = {g.split("=", 1)[0]: g.split("=", 1)[1] for g in [*base, f"target={target}"]}
                choices.update(backbone=str(cfg.backbone.name), data=str(cfg.data.name))
                jobs.append(Job(cfg, out / job_dirname(",".join(named)), choices, shown, label))
    return jobs


def run_jobs(jobs: list[Job], force: bool, progress: bool) -> None:
    """Run each job not done yet into its folder (posinfo.sweep.task.run_job: staging, then swapped in)."""
    from omegaconf import OmegaConf
    from tqdm.auto import tqdm

    from posinfo.sweep.outputs import last_failure
    from posinfo.sweep.status import is_done
    from posinfo.sweep.task import run_job

    bar = tqdm(jobs, desc="posinfo.probe", unit="job", disable=not progress)
    for job in bar:
        bar.set_postfix_str(", ".join(o for o in job.overrides if o.startswith(("target=", "train.seed=")))
                            + (f", taps {job.taps}" if job.taps else ""))
        done, _ = is_done(job.dir, OmegaConf.to_container(job.cfg, resolve=True))
        if done and not force:
            log.info("done, reused: %s (force=True re-runs it)", job.dir)
            continue
        if run_job(job.cfg, job.dir, job.choices, job.overrides) != 0:
            log.warning("job failed: %s (%s)", (last_failure(job.dir) or {}).get("error"), job.dir)


# ----------------------------------------------------------------------------- the table


def table(jobs: list[Job]):
    """results.csv's rows of ``jobs`` (posinfo.report.collect), one row per metric: COLUMNS."""
    import pandas as pd

    from posinfo.report.collect import collect
    from posinfo.kinds import MapKind, lookup

    wide = collect([j.dir for j in jobs])
    labels = {str(j.dir): j.taps or _tap_names(j.dir) for j in jobs}
    rows = []
    for _, r in wide.iterrows():
        kind = lookup(r["target"]) or MapKind  # a job whose config could not be read: its rows say so
        for metric in kind.columns:
            rows.append({"backbone": r["backbone"], "taps": labels.get(str(r["job_dir"])), "target": r["target"],
                         "input": r["input"], "seed": r.get("train.seed"), "metric": metric, "value": r.get(metric),
                         "lo": r.get(f"{metric}_lo"), "hi": r.get(f"{metric}_hi"), "n_images": r.get("n_images"),
                         "n_nan": r.get("n_nan"),
                         "floor": _floor(r, kind.floors.get(metric)),
                         "converged": r.get("converged"), "status": r["status"], "error": r["error"],
                         "job_dir": r["job_dir"]})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _floor(row, floor: str | float | None) -> float | None:
    """A metric's no-information level (its kind's ``floors``): a column of the row, else None."""
    return row.get(floor) if isinstance(floor, str) else None


def _tap_names(job_dir: Path) -> str | None:
    """The taps a job read, from its result.json (``f1+f2+…``)."""
    try:
        features = json.loads((Path(job_dir) / RESULT_FILE).read_text()).get("features") or []
    except (OSError, ValueError):
        return None
    return "+".join(str(f["name"]) for f in features) or None


# ----------------------------------------------------------------------------- probe


def probe(model: Any, images: Any = "embedded", targets: Sequence[str] = ("hor", "gau"), taps: Any = None,
          readout: dict | None = None, seeds: Sequence[int] = (0, 1, 2), *, test_images: Any = None,
          test_fraction: float = 0.2, weights: str = "imagenet", inputs: Any = None, image_size: int | None = None,
          train: dict | None = None, overrides: Sequence[str] = (), out: str | Path = DEFAULT_OUT,
          device: str = "auto", cache: bool | str | Path = True, force: bool = False, progress: bool = True):
    """How much absolute position ``model``'s features encode: a readout trained per (tap set, target,
    seed) on frozen features, scored on test images; a pandas DataFrame, one row per (tap set, target,
    input, seed, metric) with its 95% interval over the test images (``lo``, ``hi``).

    model: an ``nn.Module`` (taps found from its graph as for ``backbone=torchvision``, or named by
        ``taps``), a dict ``{tap: N×C×H×W}`` of precomputed feature maps (``images=None``), or a name:
        ``posenet``, ``vgg16``, ``resnet50``…, ``timm/NAME``, ``torchvision/NAME`` or a plain timm or
        torchvision model name (``weights``: ``imagenet``, ``random`` or a file).
    images: ``"embedded"`` or ``"photos"`` (posinfo's own), a folder, image files, a tensor N×3×H×W
        in [0, 1] or a torch Dataset; split into training and test images by a fixed permutation
        (``test_fraction``) unless ``test_images`` are given (two folders run as ``data=folder``).
    taps: None (the default taps), ``"each"`` (each default tap alone), levels or node names, a list
        of such lists, or ``{label: taps}``.
    readout, train: config values (``{"padding": 1}`` sets ``readout.padding=1``); ``overrides``:
        any sweep.py overrides (``"data.num_train=200"``); ``inputs``: an input option (``all``,
        ``natural``, ``controls``…) or a list of kinds.
    out: where the job folders go (one per job, named like sweep.py's; a finished one is reused
        unless ``force``); ``cache``: True (``$POSINFO_CACHE_DIR`` or ~/.cache/posinfo), a folder,
        or False.
    """
    m = model_spec(model, weights)
    table_job = m.table_n is not None
    inp = input_spec(inputs, table_job)
    run_settings = {"device": str(device), "cache.enabled": cache is not False,
                    **({"cache.dir": str(cache)} if isinstance(cache, (str, Path)) else {}),
                    **({"data.image_size": int(image_size)} if image_size is not None else {}),
                    **{f"readout.{k}": v for k, v in (readout or {}).items()},
                    **{f"train.{k}": v for k, v in (train or {}).items()}}
    return _probe(m, inp, run_settings, images, test_images, test_fraction, _tuple(targets, str),
                  _tuple(seeds, int), taps, user_path(out), list(overrides), force, progress)


def _tuple(values: Any, kind: type) -> tuple:
    return (kind(values),) if isinstance(values, (str, int)) else tuple(kind(v) for v in values)


def _probe(m: Spec, inp: Spec, run_settings: dict, images: Any, test_images: Any, test_fraction: float,
           targets: tuple, seeds: tuple, taps: Any, out: Path, user_overrides: list[str], force: bool,
           progress: bool):
    table_job = m.table_n is not None
    source = data_source(images, test_images, table_job)
    base = [*m.groups, f"data={'folder' if source == PYTHON_DATA else source}", *inp.groups]
    first = compose([*base, f"target={targets[0]}", *user_overrides])
    apply(first, {**m.settings, **inp.settings, **run_settings})
    d = data_spec(source, images, test_images, test_fraction, int(first.data.image_size), m.table_n)
    apply(first, d.settings)
    jobs = plan(base, {**m.settings, **d.settings, **inp.settings, **run_settings}, targets, seeds,
                tap_sets(taps, _default_taps(first)), out, user_overrides)
    checked: set[str] = set()
    for job in jobs:
        _check(job, table_job, checked)
    run_jobs(jobs, force, progress)
    return table(jobs)
