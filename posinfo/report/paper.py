"""The paper's numbers and protocol: Tables 1, 2a, 2b, 3, 4 and 6 of Islam, Jia & Bruce (ICLR
2020) as shipped in ``posinfo/paper_tables.csv``, which (table, variant) of them a
configuration is, the paper's number attached to every row that has one, and how a
configuration's protocol differs from the paper's (so that no row is taken for a reproduction)."""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from io import StringIO
from typing import Any

import numpy as np
import pandas as pd

from posinfo.report.cells import is_missing, n_values
from posinfo.names import POS_EMBED

PAPER_TABLES = ("table1", "table2a", "table2b", "table3", "table4", "table6")
PAPER = "Islam, Jia & Bruce (ICLR 2020)"
# The paper's protocol (docs/method.md): what a configuration must share to be a reproduction.
PAPER_TRAIN = {"epochs": 15, "batch_size": 32, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "lr_milestones": [10]}
PAPER_SIZE = 224
# The column paper_weights() fills: read by paper_variants(), dropped before results.csv.
WEIGHTS_LABEL = "_weights_label"
# Which paper table a swept field points at, when several tables hold the same cell.
_FIELD_TABLE = {"readout.depth": "table2a", "readout.kernel": "table2b", "backbone.taps": "table3",
                "readout.padding": "table4", "backbone.padding": "table4", "pretraining": "table6",
                "backbone.weights": "table6"}


def paper_table() -> pd.DataFrame:
    """The paper's Tables 1, 2a, 2b, 3, 4 and 6 (the copy shipped inside the package)."""
    text = resources.files("posinfo").joinpath("paper_tables.csv").read_text()
    df = pd.read_csv(StringIO(text), dtype={"variant": str}, keep_default_na=False)
    for c in ("spc", "mae"):
        df[c] = df[c].astype(float)
    return df


def paper_weights(cfg: dict) -> dict:
    """Which of the paper's pretrainings a weights value is: imagenet, random, VGG-SOD, VGG-SS or a file.

    A weights file is one of the paper's only where the user said so: table6's files
    (``saliency_weights``, ``segmentation_weights``), or ``pretraining=imagenet`` naming a file
    as the ImageNet weights. Any other file is just a file, whatever it holds."""
    w = (cfg.get("backbone") or {}).get("weights")
    if w in ("imagenet", "random", "none", None):
        return {WEIGHTS_LABEL: w}
    if w == cfg.get("saliency_weights"):
        return {WEIGHTS_LABEL: "VGG-SOD"}
    if w == cfg.get("segmentation_weights"):
        return {WEIGHTS_LABEL: "VGG-SS"}
    return {WEIGHTS_LABEL: "imagenet" if cfg.get("pretraining") == "imagenet" else "file"}


def paper_variants(row: dict) -> list[tuple[str, str]]:
    """Every (table, variant) of paper_tables.csv whose configuration this row has.

    The paper's default readout is k=3, depth 1, padding 0 on all taps of a zero-padded
    backbone with ImageNet weights; each table changes one thing. Only the paper's weights
    match: ImageNet (PosENet has none), and Table 6's files for Table 6; random weights and
    any other file match nothing, so the paper's numbers never stand beside a control.
    """
    def num(k):
        try:
            return int(row.get(k))
        except (TypeError, ValueError):
            return None

    if _beyond_the_paper(row):
        return []
    k, d, p = num("readout.kernel"), num("readout.depth"), num("readout.padding")
    taps = row.get("backbone.taps")
    all_taps = is_missing(taps) or taps == "all" or (row.get("backbone") == "vgg16" and taps == "[1,2,3,4,5]")
    zeros = is_missing(row.get("backbone.padding")) or row.get("backbone.padding") == "zeros"
    w = row.get(WEIGHTS_LABEL)
    out: list[tuple[str, str]] = []
    if w in ("imagenet", "none", None):
        if (k, d, p) == (3, 1, 0) and all_taps and zeros:
            out.append(("table1", ""))
        if (k, p) == (3, 0) and all_taps and zeros:
            out.append(("table2a", f"readout.depth={d}"))
        if (d, p) == (1, 0) and all_taps and zeros:
            out.append(("table2b", f"readout.kernel={k}"))
        if (k, d, p) == (3, 1, 0) and zeros:
            single = re.fullmatch(r"\[(\d)\]", str(taps))
            if all_taps or single:
                out.append(("table3", "features=" + (f"f{single.group(1)}" if single else "all")))
        if (k, d) == (3, 1) and all_taps and zeros:
            out.append(("table4", f"readout.padding={p}"))
        if (k, d, p) == (3, 1, 0) and all_taps:
            out.append(("table4", f"backbone.padding={row.get('backbone.padding')}"))
    elif w in ("VGG-SOD", "VGG-SS") and (k, d, p) == (3, 1, 0) and all_taps and zeros:
        out.append(("table6", f"pretraining={w}"))
    return out


def _beyond_the_paper(row: dict) -> bool:
    """Settings the paper never ran: a canvas border, standardised channels, a changed ViT position
    embedding, a readout solver other than its SGD."""
    border = row.get("data.canvas.border")
    try:
        if not is_missing(border) and float(border) > 0:
            return True
    except (TypeError, ValueError):
        pass
    if row.get("readout.solver") not in (None, "sgd") and not is_missing(row.get("readout.solver")):
        return True
    pos_embed = row.get("backbone.pos_embed")
    return row.get("readout.standardize") == "channel" or (pos_embed in POS_EMBED and pos_embed != "keep")


def _preferred_tables(group: pd.DataFrame) -> list[str]:
    """Paper tables in the order to look a cell up: the experiment's own, then what it sweeps."""
    order: list[str] = []
    exp = group["experiment"].dropna().unique()
    if len(exp) == 1 and exp[0] in PAPER_TABLES:
        order.append(exp[0])
    for f, t in _FIELD_TABLE.items():
        if f in group and n_values(group[f]) > 1 and t not in order:
            order.append(t)
    return order + [t for t in PAPER_TABLES if t not in order]


def attach_paper(df: pd.DataFrame) -> pd.DataFrame:
    """Add paper_table, paper_spc, paper_mae to every row whose configuration the paper reports."""
    paper = paper_table().set_index(["table", "target", "backbone", "variant", "input"])
    out = df.copy()
    out["paper_table"], out["paper_spc"], out["paper_mae"] = None, np.nan, np.nan
    for _, idx in out.groupby(out["experiment"].fillna(""), dropna=False).groups.items():
        order = _preferred_tables(out.loc[idx])
        for i in idx:
            row = out.loc[i].to_dict()
            keys = [(t, row["target"], row["backbone"], v, row["input"]) for t, v in paper_variants(row)]
            hits = sorted((order.index(k[0]), k) for k in keys if k in paper.index)
            if hits:
                key = hits[0][1]
                out.at[i, "paper_table"] = key[0]
                out.at[i, "paper_spc"], out.at[i, "paper_mae"] = (float(paper.loc[key, c]) for c in ("spc", "mae"))
    return out


# ----------------------------------------------------------------------------- the paper's protocol

def _differs(value: Any, paper: Any) -> bool:
    """Whether a config value differs from the paper's; a missing value is not a difference."""
    if is_missing(value) or value == "":
        return False
    try:
        return not math.isclose(float(value), float(paper), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(value).replace(" ", "") != json.dumps(paper, separators=(",", ":"))


def protocol_deviations(c: dict) -> list[str]:
    """How this configuration's protocol differs from the paper's (so it is no reproduction)."""
    out = []
    if c.get("data") == "embedded":
        out.append("embedded images (procedural dead leaves), not the paper's DUTS-TR (train) / PASCAL-S (test)")
    elif c.get("data") == "folder":
        tr, te = str(c.get("data.train_dir")), str(c.get("data.test_dir"))
        if "duts" not in tr.lower() or "pascal" not in te.lower():
            out.append(f"images from {tr} / {te}, not DUTS-TR / PASCAL-S")
        for k, n in (("data.num_train", 10553), ("data.num_test", 850)):
            if _differs(c.get(k), n):
                out.append(f"{k}={c[k]:g} (paper: {n})" if isinstance(c[k], float) else f"{k}={c[k]} (paper: {n})")
    if c.get("backbone") != "posenet" and c.get("backbone.weights") == "random":
        out.append("random backbone weights (a control), not ImageNet")
    for k, v in [*PAPER_TRAIN.items(), ("image_size", PAPER_SIZE)]:
        key = f"data.{k}" if k == "image_size" else f"train.{k}"
        if _differs(c.get(key), v):
            shown = f"{c[key]:g}" if isinstance(c[key], float) else c[key]
            out.append(f"{key}={shown} (paper: {v})")
    if c.get("data.normalize") not in (None, "none", "") and not is_missing(c.get("data.normalize")):
        out.append(f"data.normalize={c['data.normalize']} (the authors normalise nothing)")
    return out
