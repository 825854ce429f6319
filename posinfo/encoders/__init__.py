"""Backbone adapters: one registry answering every question asked of a backbone by name
(docs/architecture.md, "Backbone adapters").

Each family of backbones is one adapter (posinfo.encoders.base.Adapter): the paper's VGG16 and
ResNets (``paper``), the BagNets (``bagnet``), PosENet (``posenet``), any timm or torchvision
model (``zoo``) and a user's module or feature maps (``module``). An adapter builds the frozen
encoder from the backbone settings (:class:`Backbone`, one object), and answers the rest: the
identity of its weights for cache keys, preflight problems, the padding modes it supports,
whether float16 is safe, its input normalisation and, where it has one, its position embedding.

This module is torch-free (the analysis and the sweep's launcher import it): the facts that
need no model (whether there is an encoder at all, how a row is labelled) are in the registry
entry; the adapter itself is imported on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import Any

from posinfo.errors import PosinfoError
from posinfo.schema import BackboneConfig
from posinfo.names import BACKBONES, BAGNETS, MODEL_ZOOS, MODULE_BACKBONE, RESNETS


# The defaults are the schema's, declared there once (posinfo.schema.BackboneConfig).
_SCHEMA = {f.name: f.default for f in fields(BackboneConfig)}


@dataclass(frozen=True)
class Backbone:
    """The backbone config group as one plain object (``backbone.*``), its defaults the schema's."""

    name: str
    weights: str = _SCHEMA["weights"]
    padding: str = _SCHEMA["padding"]
    taps: tuple[int, ...] | None = _SCHEMA["taps"]
    init: str = _SCHEMA["init"]
    model: str | None = _SCHEMA["model"]
    nodes: tuple[str, ...] | None = _SCHEMA["nodes"]
    pos_embed: str = _SCHEMA["pos_embed"]
    seed: int = 0  # the job's seed (train.seed): what random weights and backbone.pos_embed=noise draw from

    @classmethod
    def of(cls, bb: Any, seed: int = 0) -> "Backbone":
        """From a composed ``cfg.backbone`` (a DictConfig or the schema's dataclass) or a dict."""
        get = bb.get if hasattr(bb, "get") else lambda k, d=None: getattr(bb, k, d)
        values = {f.name: get(f.name, f.default) for f in fields(cls) if f.name != "seed"}
        values["taps"] = tuple(int(t) for t in values["taps"]) if values["taps"] else None
        values["nodes"] = tuple(str(n) for n in values["nodes"]) if values["nodes"] else None
        for k in ("name", "weights", "padding", "init", "pos_embed"):
            values[k] = str(values[k])
        return cls(**values, seed=int(seed))

    def pos_embed_key(self) -> str | None:
        """backbone.pos_embed in the feature cache key: None for keep (those entries keep their keys),
        the mode otherwise, with the seed for noise, whose draw depends on it."""
        if self.pos_embed == "keep":
            return None
        return f"noise(seed={self.seed})" if self.pos_embed == "noise" else self.pos_embed


@dataclass(frozen=True)
class Entry:
    """A family's registry entry: its names, where its adapter lives, and the facts that need no model."""

    names: tuple[str, ...]
    module: str  # imported on first use: it imports torch
    encoder: bool = True  # False: PosENet, whose "feature" is the image itself (no weights, padding or taps)
    labelled_by_model: bool = False  # rows and folders name the model too: timm/convnext_tiny


REGISTRY = (
    Entry(("posenet",), "posinfo.encoders.posenet", encoder=False),
    Entry(("vgg16", *RESNETS), "posinfo.encoders.paper"),
    Entry(BAGNETS, "posinfo.encoders.bagnet"),
    Entry(MODEL_ZOOS, "posinfo.encoders.zoo", labelled_by_model=True),
    Entry((MODULE_BACKBONE,), "posinfo.encoders.module", labelled_by_model=True),
)
_BY_NAME = {n: e for e in REGISTRY for n in e.names}
assert set(_BY_NAME) == {*BACKBONES, MODULE_BACKBONE}, "every backbone name has one adapter"


def entry(name: str) -> Entry:
    e = _BY_NAME.get(str(name))
    if e is None:
        raise PosinfoError(f"unknown backbone '{name}': choose one of {', '.join(BACKBONES)}")
    return e


def adapter(name: str):
    """The adapter (posinfo.encoders.base.Adapter) of backbone ``name``."""
    return importlib.import_module(entry(name).module).ADAPTER


def has_encoder(name: str | None) -> bool:
    """False only for a backbone that is no network (PosENet); unknown names (old results) count as one."""
    e = _BY_NAME.get(str(name))
    return e is None or e.encoder


def label(bb: dict, choice: str | None = None) -> str | None:
    """A row's backbone label: the name; for any-model backbones the model too (``timm/convnext_tiny``)."""
    name = bb.get("name", choice)
    e = _BY_NAME.get(str(name))
    return f"{name}/{bb['model']}" if e is not None and e.labelled_by_model and bb.get("model") else name


def build(bb: Backbone, normalize: str = "none", image_size: int = 224, lazy: bool = False):
    """The frozen Encoder of ``bb`` (posinfo.encoder.Encoder); ``lazy``: weights loaded or drawn at
    first use, random ones from the RNG state at this call (see the adapters)."""
    return adapter(bb.name).build(bb, normalize, image_size, lazy)


def build_encoder(name: str, weights: str = "imagenet", padding: str = "zeros", taps=None, normalize: str = "none",
                  *, lazy: bool = False, image_size: int = 224, **settings):
    """Keyword shorthand for scripts and tests: ``build(Backbone(name, weights, padding, taps, **settings), ...)``."""
    return build(Backbone(name, weights, padding, tuple(taps) if taps is not None else None,
                          **{k: tuple(v) if k == "nodes" and v else v for k, v in settings.items()}),
                 normalize, image_size, lazy)
