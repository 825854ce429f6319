"""The typed config: one dataclass per config group, registered in Hydra's ConfigStore.

Each group's YAML options extend their schema (``defaults: [base_<group>, _self_]``, as
in Hydra's structured-config tutorial), so every field has a type. Ranges and choices are
checked by :func:`check_config` (a composed config: every job, dry runs included, before
it does anything) and :func:`check_overrides` (the command line, in the launching process,
before Hydra composes anything), each failing with one line that names the key, the value
and the fix: ``readout.kernel=2.5: must be an integer ≥ 1``.

Torch-free: the launching process checks a sweep without importing torch.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import MISSING as MISSING_FACTORY
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from posinfo.errors import PosinfoError
from posinfo.guards import memory_problems, no_effect_problems
from posinfo.names import (BACKBONES, PLACEMENT_LAYOUTS, CACHE_DTYPES, CANVAS_COLORS, DATA_SOURCES, DEFAULT_TILES, FEATURE_MEMORY,
                           FOLDER_NAMED_ELSEWHERE, IDENTITY_MODES, INITS, INPUT_KINDS, LOSS_AT, MODULE_BACKBONE,
                           NORMALIZATIONS, PADDINGS, POS_EMBED, PRECISIONS, PYTHON_DATA, RUN_CONTROL_KEYS, SOLVERS,
                           STANDARDIZE, TARGET_RANGES, TARGETS, WEIGHT_FILE_KEYS, covered_by, default_cache_dir,
                           default_data_dir)

# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """What a value must be: ``ok(value)`` and the words for it (``must be <words>``)."""

    words: str
    ok: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int) -> Rule:
    return Rule(f"an integer ≥ {low}", lambda v: _is_int(v) and v >= low)


def number(low: float, strict: bool = False) -> Rule:
    sign = ">" if strict else "≥"
    return Rule(f"a finite number {sign} {low:g}", lambda v: _is_number(v) and (v > low if strict else v >= low))


def one_of(options: Iterable[str]) -> Rule:
    opts = tuple(options)
    return Rule(f"one of {', '.join(opts)}", lambda v: v in opts)


def optional(rule: Rule, means: str) -> Rule:
    return Rule(f"{rule.words}, or null ({means})", lambda v: v is None or rule.ok(v))


def list_of(rule: Rule, words: str, nonempty: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and (len(v) > 0 or not nonempty) and all(rule.ok(x) for x in v)

    return Rule(f"a {'non-empty ' if nonempty else ''}list of {words}", ok)


STEPS = Rule("null (the epochs as given), an integer ≥ 1, or paper (4950 steps)",
             lambda v: v is None or v == "paper" or (_is_int(v) and v >= 1) or (isinstance(v, str) and v.isdigit() and int(v) >= 1))
BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))
TEXT = Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
OPTIONAL_TEXT = Rule("a string or null", lambda v: v is None or isinstance(v, str))
NODE = Rule("a graph node name or a feature index", lambda v: (isinstance(v, str) and v.strip() != "") or _is_int(v))
WORKERS = Rule("auto or an integer ≥ 0", lambda v: v == "auto" or (_is_int(v) and v >= 0)
               or (isinstance(v, str) and v.isdigit()))


def _f(default: Any, rule: Rule, *, factory: bool = False, absent: Any = MISSING) -> Any:
    """A typed field. ``absent``: the value a result written before the field existed used,
    when that is not today's default (with_defaults)."""
    meta = {"rule": rule} if absent is MISSING else {"rule": rule, "absent": absent}
    if factory:
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- the groups


@dataclass
class BackboneConfig:
    name: str = _f(MISSING, one_of((*BACKBONES, MODULE_BACKBONE)))
    weights: str = _f("imagenet", Rule("imagenet, random, none (posenet) or a path to a state-dict file", lambda v: isinstance(v, str) and v != ""))
    padding: str = _f("zeros", one_of(PADDINGS))  # none: VGG, BagNets, and zoo models where the architecture allows
    # null: every level (the zoo: up to 4, evenly spaced); e.g. [5] for f5 alone, [0, …] adds the stem (f0)
    taps: Optional[List[int]] = _f(None, optional(list_of(integer(0), "level indices (integers ≥ 0)", nonempty=True), "all levels"))
    init: str = _f("torchvision", one_of(INITS))
    model: Optional[str] = _f(None, OPTIONAL_TEXT)  # backbone=timm|torchvision: the model's name
    nodes: Optional[List[str]] = _f(None, optional(list_of(NODE, "graph nodes or timm feature indices", nonempty=True),
                                                   "the default taps"))
    pos_embed: str = _f("keep", one_of(POS_EMBED))  # ViT family: the learned position embedding
    precision: str = _f("float32", one_of(PRECISIONS))  # the encoder's autocast


@dataclass
class TargetConfig:
    name: str = _f(MISSING, one_of(TARGETS))
    range: str = _f("unit", one_of(TARGET_RANGES))
    cells: int = _f(7, integer(2))  # target=grid: cells per side
    layout: str = _f("grid", one_of(PLACEMENT_LAYOUTS))  # target=placement: grid (target.cells² cells) or diagonal (4QI)
    # A probe per tap too, each on its tap's features alone (a curve over depth; true in rowcol/xy's YAML).
    per_tap: bool = _f(False, BOOLEAN)


@dataclass
class InputConfig:
    name: str = _f(MISSING, TEXT)
    kinds: List[str] = _f(("natural",), list_of(one_of(INPUT_KINDS), f"input kinds ({', '.join(INPUT_KINDS)})", nonempty=True), factory=True)
    file: Optional[str] = _f(None, OPTIONAL_TEXT)
    noise_seed: int = _f(0, integer(0))
    # One tile is the image itself: shuffled would equal natural, and the control could not fail.
    tiles: int = _f(DEFAULT_TILES, Rule("an integer ≥ 2 (1 tile leaves the image as it is)", lambda v: _is_int(v) and v >= 2))


@dataclass
class ReadoutConfig:
    kernel: int = _f(3, integer(1))
    depth: int = _f(1, integer(1))
    padding: int = _f(0, integer(0))
    feature_size: int = _f(28, integer(1))  # taps are resized to feature_size × feature_size before the readout
    # channel: each channel standardised with its training-set mean and std
    standardize: str = _f("none", one_of(STANDARDIZE))
    solver: str = _f("sgd", one_of(SOLVERS))  # sgd: the paper's recipe; ridge: the closed-form optimum (posinfo.ridge)
    ridge_folds: int = _f(5, integer(2))  # readout.solver=ridge: K of the K-fold cross-validation of its penalty


@dataclass
class CanvasConfig:
    border: int = _f(0, integer(0))
    color: str = _f("black", one_of(CANVAS_COLORS))


def _nested(cls: type) -> Any:
    """A nested group (``data.canvas``): its fields are keys ``<group>.<name>.<field>``."""
    return field(default_factory=cls, metadata={"nested": cls})


@dataclass
class DataConfig:
    name: str = _f(MISSING, one_of((*DATA_SOURCES, PYTHON_DATA)))
    train_dir: Optional[str] = _f(None, OPTIONAL_TEXT)
    test_dir: Optional[str] = _f(None, OPTIONAL_TEXT)
    image_size: int = _f(224, integer(8))
    num_train: Optional[int] = _f(None, optional(integer(1), "all images"))
    num_test: Optional[int] = _f(None, optional(integer(1), "all images"))
    normalize: str = _f("none", one_of(NORMALIZATIONS))
    num_workers: str = _f("auto", WORKERS)  # DataLoader workers decoding images: auto = 0 on CPU, up to 8 with a GPU
    # data=folder: feature caches keyed by each file's bytes (stat: by size and mtime, no read)
    identity: str = _f("content", one_of(IDENTITY_MODES))
    canvas: CanvasConfig = _nested(CanvasConfig)  # pixels around each image before the resize (posinfo.data)


@dataclass
class TrainConfig:
    epochs: int = _f(15, integer(1))
    batch_size: int = _f(32, integer(1))
    lr: float = _f(0.1, number(0, strict=True))
    momentum: float = _f(0.9, number(0))
    weight_decay: float = _f(1e-4, number(0))
    lr_milestones: List[int] = _f((10,), list_of(integer(1), "epochs (integers ≥ 1)"), factory=True)
    lr_gamma: float = _f(0.1, number(0, strict=True))
    seed: int = _f(0, integer(0))
    steps: Optional[str] = _f(None, STEPS)  # N: exactly N SGD steps, milestones scaled
    loss_at: str = _f("image", one_of(LOSS_AT))  # where the MSE is taken (posinfo.upsampling)


@dataclass
class CacheConfig:
    enabled: bool = _f(True, BOOLEAN)
    dir: str = _f(MISSING, TEXT)  # conf/cache/default.yaml: $POSINFO_CACHE_DIR, else ~/.cache/posinfo
    dtype: str = _f("float16", one_of(CACHE_DTYPES))
    max_gb: float = _f(50.0, number(0))  # entries larger than this (or than the free disk) run uncached
    verify: bool = _f(True, BOOLEAN)  # check an entry against its checksum the first time a process reads it
    # Training features: device memory, pinned host memory, the disk map, or auto (posinfo.features.placement).
    memory: str = _f("auto", one_of(FEATURE_MEMORY))


@dataclass
class AnalysisConfig:
    channels: bool = _f(False, BOOLEAN)
    embed_probe: bool = _f(True, BOOLEAN)  # a token model's position embedding probed itself (posinfo.embedprobe)
    probefree: bool = _f(False, BOOLEAN)


GROUPS: dict[str, type] = {
    "backbone": BackboneConfig, "target": TargetConfig, "input": InputConfig, "readout": ReadoutConfig,
    "data": DataConfig, "train": TrainConfig, "cache": CacheConfig, "analysis": AnalysisConfig,
}
# Top-level knobs of conf/config.yaml (the primary config stays open: presets add keys).
TOP_LEVEL: dict[str, Rule] = {
    "device": Rule("auto, cpu, cuda or cuda:N", lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()))),
    "name": OPTIONAL_TEXT,
    "force": BOOLEAN,
    "dry_run": BOOLEAN,
    "sweep.wait": BOOLEAN,
    "sweep.fuse": BOOLEAN,
}


def register() -> None:
    """Store each schema as ``<group>/base_<group>`` and the ``${posinfo.cache_dir:}`` and
    ``${posinfo.data_dir:}`` resolvers (idempotent: all are replaced)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, node in GROUPS.items():
        cs.store(group=group, name=f"base_{group}", node=node)
    OmegaConf.register_new_resolver("posinfo.cache_dir", lambda: str(default_cache_dir()), replace=True)
    OmegaConf.register_new_resolver("posinfo.data_dir", lambda: str(default_data_dir()), replace=True)


def _leaves(cls: type, prefix: str) -> Iterable[tuple[str, Any]]:
    """(dotted key, field) of every typed value of a group, nested groups flattened."""
    for f in fields(cls):
        if "nested" in f.metadata:
            yield from _leaves(f.metadata["nested"], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def group_keys(group: str) -> list[str]:
    """A group's keys below it (``data``: ``name``, …, ``canvas.border``, ``canvas.color``)."""
    return [k for k, _ in _leaves(GROUPS[group], "")]


def defaults() -> dict[str, Any]:
    """Every typed key with a default, and the value a result that lacks it used: the
    default, or the field's ``absent`` value where the default changed (lists as lists)."""
    out = {}
    for g, cls in GROUPS.items():
        for key, f in _leaves(cls, f"{g}."):
            if "absent" in f.metadata:
                out[key] = f.metadata["absent"]
            elif f.default_factory is not MISSING_FACTORY:
                out[key] = f.default_factory()
            elif f.default is not MISSING:
                out[key] = f.default
    return out


def with_defaults(config: dict) -> dict:
    """``config`` (a resolved config, e.g. from an older result.json) with every typed key it
    lacks set to its default: a result written before an option (or its whole group) existed
    reads as having used the option's default, which is what it did."""
    out = json.loads(json.dumps(config, default=str))
    for key, value in defaults().items():
        group, *path, name = key.split(".")
        # A whole group that did not exist yet (``analysis``) had every default too.
        node = out.setdefault(group, {}) if isinstance(out, dict) else None
        for part in path:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and name not in node:
            node[name] = value
    return out


def rules() -> dict[str, Rule]:
    """Every typed key (``group.field`` and the top-level knobs) and its rule."""
    out = {key: f.metadata["rule"] for g, cls in GROUPS.items() for key, f in _leaves(cls, f"{g}.")}
    out.update(TOP_LEVEL)
    return out



def folder_excluded_keys() -> list[str]:
    """The override keys a job folder's name leaves out (Hydra's ``override_dirname.exclude_keys``).

    Hydra matches exact keys, so a run-control key (posinfo.names.RUN_CONTROL_KEYS) is listed
    with every typed key below it (``cache``: ``cache.dir``, …, ``cache.memory``): a key added
    to a run-control group is left out of folder names without anyone listing it, and the
    same job run with and without it lands in one folder. Then the weight files that
    ``pretraining`` names, and the preset (the sweep folder's name says it)."""
    keys = [*FOLDER_NAMED_ELSEWHERE, *RUN_CONTROL_KEYS, *WEIGHT_FILE_KEYS]
    return keys + [k for k in rules() if covered_by(k, RUN_CONTROL_KEYS) and k not in keys]


# ----------------------------------------------------------------------------- checks


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    return str(value)


def check_value(key: str, value: Any, rule: Rule | None = None) -> str | None:
    """One line if ``value`` breaks the rule of ``key``, else None."""
    rule = rule or rules().get(key)
    if rule is None or rule.ok(value):
        return None
    return f"{key}={_shown(value)}: must be {rule.words}"


def missing_values_error(cfg: DictConfig) -> str | None:
    """One line naming every required value (``???``) left unset, or None."""
    missing: list[str] = []

    def walk(node: DictConfig, prefix: str) -> None:
        for k in node.keys():
            if not prefix and k == "hydra":  # Hydra's own node, with runtime-only values
                continue
            if OmegaConf.is_missing(node, k):
                missing.append(f"{prefix}{k}")
                continue
            try:
                child = node[k]
            except Exception:  # an interpolation to a missing value: its target is listed
                continue
            if isinstance(child, DictConfig):
                walk(child, f"{prefix}{k}.")

    walk(cfg, "")
    missing.sort()
    if not missing:
        return None
    return f"missing required value(s) {', '.join(missing)}: set them on the command line, e.g. {missing[0]}=/path/to/..."


def check_config(cfg: DictConfig) -> None:
    """Raise PosinfoError (one line) for the first unset or out-of-range value of a composed config,
    a setting it ignores, or a size beyond this machine's memory (posinfo.guards): every job
    calls it first, before it allocates anything."""
    missing = missing_values_error(cfg)
    if missing:
        raise PosinfoError(missing)
    for key, rule in rules().items():
        if key == "data.train_dir" or key == "data.test_dir":
            continue  # required by data=folder only: a ??? there is caught above
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (DictConfig,)) or OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        error = check_value(key, value, rule)
        if error:
            raise PosinfoError(error)
    problems = no_effect_problems(cfg) + memory_problems(cfg)
    if problems:
        raise PosinfoError(problems[0])


# ----------------------------------------------------------------------------- the command line


def group_options(conf_dir: Path, group: str) -> list[str]:
    """The options of a config group: its YAML files (the schema's base_* entries are not options)."""
    d = Path(conf_dir) / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _near(word: str, options: Iterable[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""


def _override_values(override: Any) -> list[Any]:
    """The plain values an override sets: one, or each value of a choice/range sweep."""
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    v = override.value()
    if isinstance(v, ChoiceSweep):
        return list(v.list)
    if isinstance(v, RangeSweep):
        return list(override.sweep_iterator())
    if override.is_sweep_override():  # glob(), interval(): left to Hydra
        return []
    return [v]


# What Hydra's override grammar takes unquoted in a value; a path with anything else is quoted.
_UNQUOTED = re.compile(r"[\w./:@%+-]*")


def _home(value: str) -> str:
    """``value`` with a leading ``~`` or ``~user`` expanded, quoted for Hydra if need be."""
    path = os.path.expanduser(value)
    if path == value or _UNQUOTED.fullmatch(path):
        return path
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand_home(args: list[str]) -> list[str]:
    """The command line with the ``~`` that starts an override's value (or each value of a sweep)
    expanded as a shell would have: ``data.train_dir=~/data`` -> ``data.train_dir=/home/me/data``.
    bash does this after ``=``, zsh and others do not, and Hydra's grammar refuses an unquoted
    ``~``. A quoted value, a ``~`` elsewhere and Hydra's ``~key`` (delete) are left as typed."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if arg.startswith("-") or not sep or "~" not in value or any(c in value for c in "'\"[]{}()"):
            out.append(arg)
            continue
        out.append(f"{key}=" + ",".join(_home(v) if v.startswith("~") else v for v in value.split(",")))
    return out


def _syntax_hint(overrides: list[str]) -> str | None:
    """One line for an override Hydra cannot parse because of a ``~`` in a path; None for
    other syntax errors (Hydra's own message says where the syntax breaks)."""
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and "~" in value and not value.startswith(("'", '"')):
            home = value.replace("~", "$HOME", 1) if value.startswith("~") else value
            return (f"{key}={value}: Hydra's override syntax does not allow an unquoted '~': write {key}={home} "
                    f"(the shell expands $HOME), or quote it: '{key}=\"{value}\"'")
    return None


def check_overrides(overrides: list[str], conf_dir: Path) -> str | None:
    """One line for the first bad command-line override, else None.

    Checks, for every value of a sweep: the option of a config group exists, a key of a
    typed group exists (a near name is suggested), and the value has the key's type and
    range. Keys of Hydra itself and of presets are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return _syntax_hint(overrides)
    known = rules()
    for o in parsed:
        key = o.key_or_group
        if o.is_delete() or key.startswith("hydra"):
            continue
        if key in GROUPS or key == "experiment":
            options = group_options(conf_dir, key)
            for v in _override_values(o):
                if isinstance(v, str) and v not in options:
                    return f"{key}={v}: no such option{_near(v, options)}; choose one of {', '.join(options)}"
            continue
        group = key.split(".", 1)[0]
        top = sorted({k.split(".", 1)[0] for k in known} | set(GROUPS) | {"experiment"})
        # A near miss of a top-level key is a typo; anything else may be a preset's own key (Hydra checks it).
        if group not in top and not o.is_add() and _near(group, top, cutoff=0.75):
            return f"{key}: no such key{_near(group, top, cutoff=0.75)}; the top-level keys are {', '.join(top)}"
        if group in GROUPS and key not in known:
            return f"{key}: no such key{_near(key, [k for k in known if k.startswith(group + '.')])}; " \
                   f"the keys of {group} are {', '.join(group_keys(group))}"
        for v in _override_values(o):
            error = check_value(key, v, known.get(key))
            if error:
                return error
    return None

