"""One job spec, one vocabulary: defaults declared once (the schema), option files that carry
only what differs from it, typed objects below a job's entrance, and every list of config values
in one home (posinfo.names)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import posinfo.names as names
from posinfo import schema
from posinfo.errors import PosinfoError
from posinfo.spec import JobSpec, job_spec, typed

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PACKAGE = ROOT / "posinfo"


def _flat(node: dict, prefix: str):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _schema_defaults(group: str) -> dict:
    """A group's own defaults (today's, not the ``absent`` values with_defaults reads old results with)."""
    out = {}
    for key, f in schema._leaves(schema.GROUPS[group], ""):
        if f.default_factory is not dataclasses.MISSING:
            out[key] = f.default_factory()
        elif f.default is not dataclasses.MISSING and f.default != schema.MISSING:  # ???: required, no default
            out[key] = f.default
    return out


def test_option_files_carry_only_schema_keys_and_only_what_differs_from_the_schema():
    """A default lives in the schema alone: an option file that restated one could drift from it
    (and old results, read with the schema's defaults, would be relabelled)."""
    problems = []
    picked = {next(iter(d)): d[next(iter(d))] for d in yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
              if isinstance(d, dict)}
    for group in schema.GROUPS:
        keys, defaults = set(schema.group_keys(group)), _schema_defaults(group)
        for path in sorted((CONF / group).glob("*.yaml")):
            for key, value in _flat({k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "defaults"}, ""):
                where = f"{path.relative_to(ROOT)}: {key}: {value!r}"
                if key not in keys:
                    problems.append(f"{where}: no such key in the schema's {group}")
                elif key != "name" and key in defaults and defaults[key] == (list(value) if isinstance(value, list) else value):
                    problems.append(f"{where}: the schema's default, restated")
                elif key in defaults and picked.get(group) == path.stem == "default":
                    problems.append(f"{where}: the default option changes the schema's default {defaults[key]!r}")
    # The top-level knobs: config.yaml declares their defaults, the schema their rules; both list the same keys.
    top = {k for k, _ in _flat({k: v for k, v in yaml.safe_load((CONF / "config.yaml").read_text()).items()
                                if k != "defaults"}, "")}
    if top != set(schema.TOP_LEVEL):
        problems.append(f"conf/config.yaml's keys {sorted(top)} != the schema's top-level keys {sorted(schema.TOP_LEVEL)}")
    assert not problems, "\n".join(problems)


def test_a_job_spec_is_the_schemas_objects_and_a_results_config_reads_back_to_the_same_spec(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"cache.dir={tmp_path}", "readout.padding=1", "train.lr=1",
                                           "backbone.nodes=[0,3]", "target=grid"])
    spec = job_spec(cfg)
    assert isinstance(spec, JobSpec) and isinstance(spec.readout, schema.ReadoutConfig)
    assert isinstance(spec.data.canvas, schema.CanvasConfig) and spec.data.canvas.border == 0
    # Typed once: an int given for a float is a float, list values are plain lists of the field's type.
    assert spec.train.lr == 1.0 and isinstance(spec.train.lr, float) and isinstance(spec.cache.max_gb, float)
    assert spec.readout.padding == 1 and spec.backbone.nodes == ["0", "3"] and type(spec.train.lr_milestones) is list
    assert spec.target.cells == 7 and spec.cache.dir == str(tmp_path) and spec.force is False
    # A result.json's config (plain, resolved) and one written before target.cells existed give the same spec.
    saved = OmegaConf.to_container(cfg, resolve=True)
    assert typed(OmegaConf.create(saved)) == spec
    old = {**saved, "target": {k: v for k, v in saved["target"].items() if k != "cells"}}
    assert typed(OmegaConf.create(schema.with_defaults(old))) == spec
    # A key the schema lacks is one line naming it, not a traceback from inside OmegaConf.
    with pytest.raises(PosinfoError, match=r"^readout\.widht: no such key in the schema: drop it \(the keys of readout "
                                           r"are kernel, depth, padding, "):
        typed(OmegaConf.create({**saved, "readout": {**saved["readout"], "widht": 3}}))


# Literal lists of config values that legitimately name part of a vocabulary list, each with why.
ALLOWED = {
    ("api.py", ("gau", "hor")): "probe()'s default targets: a choice of two, not the vocabulary",
    ("data.py", ("black", "white")): "the two solid canvas colours, filled alike",
    ("encoder.py", ("imagenet", "model")): "the normalisations that subtract a mean (none does not)",
    ("features.py", ("device", "host")): "the placements that hold features in memory (disk maps them)",
    ("targets.py", ("hor", "ver")): "the two ramps, drawn by one formula",
}


def _vocabulary() -> dict[str, set[str]]:
    """Every list of names posinfo.names declares (options, files, keys): the one home of each."""
    return {k: set(v) for k, v in vars(names).items()
            if k.isupper() and isinstance(v, tuple) and len(v) >= 2 and all(isinstance(x, str) for x in v)}


def _literal_lists(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and \
                all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node.lineno, tuple(sorted(e.value for e in node.elts))


def test_a_literal_list_of_config_values_lives_only_in_posinfo_names():
    """A list of options written out in a second module drifts from the first (issue 20: the
    cache.* keys a hand-kept list missed). A literal of ≥2 strings that is a vocabulary list or a
    part of one is refused outside posinfo.names, unless ALLOWED says why it is not a copy."""
    vocab = _vocabulary()
    assert {"INITS", "POS_EMBED", "PRECISIONS", "IDENTITY_MODES", "STANDARDIZE", "MODEL_ZOOS", "CACHE_DTYPES",
            "RESNETS", "MAP_TARGETS", "TARGET_RANGES", "SYNTHETIC_KINDS", "CONTROL_KINDS"} <= set(vocab)
    found, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "names.py":
            continue
        for line, values in _literal_lists(ast.parse(path.read_text())):
            homes = [k for k, v in vocab.items() if set(values) <= v]
            if homes and (path.name, values) in ALLOWED:
                used.add((path.name, values))
            elif homes:
                found.append(f"{path.relative_to(ROOT)}:{line}: {list(values)} is (part of) posinfo.names.{homes[0]}")
    assert not found, "import the list from posinfo.names instead:\n" + "\n".join(found)
    assert used == set(ALLOWED), f"allowed but no longer there (drop them): {sorted(set(ALLOWED) - used)}"


def test_every_choice_of_the_schema_is_a_vocabulary_list():
    """The schema's choices name posinfo.names' lists, so a new option is added in one place."""
    tree = ast.parse((PACKAGE / "schema.py").read_text())
    literal = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "one_of"
               and isinstance(n.args[0], (ast.Tuple, ast.List, ast.Set))
               and any(isinstance(e, ast.Constant) for e in n.args[0].elts)]  # (*BACKBONES, MODULE_BACKBONE): names
    assert not literal, f"posinfo/schema.py lines {literal}: one_of(<a literal list>): declare it in posinfo.names"


def test_no_code_below_a_jobs_entrance_restates_a_default_or_recasts_a_value():
    """Below posinfo.spec.job_spec a config value has its type and its default already: a
    ``.get("padding", 0)``, ``OmegaConf.select(..., default=...)`` or ``int(ro.padding)`` there is
    a second declaration of a default or a type, free to drift from the schema's."""
    leaves = {key.rsplit(".", 1)[-1] for key in schema.rules()}
    found = []
    for name in ("job.py", "trained.py"):
        for node in ast.walk(ast.parse((PACKAGE / name).read_text())):
            if not isinstance(node, ast.Call):
                continue
            func, args = node.func, node.args
            restated = isinstance(func, ast.Attribute) and func.attr == "get" and len(args) == 2 and \
                isinstance(args[0], ast.Constant) and args[0].value in leaves and "result" not in ast.unparse(func.value)
            selected = isinstance(func, ast.Attribute) and func.attr == "select" and any(k.arg == "default"
                                                                                         for k in node.keywords)
            recast = isinstance(func, ast.Name) and func.id in ("int", "float", "str", "bool") and len(args) == 1 and \
                isinstance(args[0], ast.Attribute) and args[0].attr in leaves
            if restated or selected or recast:
                found.append(f"posinfo/{name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)
