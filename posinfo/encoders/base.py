"""What every backbone adapter answers, with the answers most families share: weights named by
``imagenet``, ``random`` or a file; a checkpoint checked key by key; padding modes; float16; the
ImageNet statistics. A family overrides what differs (posinfo.encoders.paper, bagnet, posenet, zoo,
module)."""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, Callable

from posinfo.errors import PosinfoError
from posinfo.io import user_path
from posinfo.names import PADDINGS

if TYPE_CHECKING:  # torch only where a model is built: PosENet's preflight runs without it
    from posinfo.encoder import Encoder

log = logging.getLogger(__name__)

ANY_FILE = ("random", "none")  # weights values that name no file


class Adapter:
    """One family of backbones. Every method takes the backbone settings as one object
    (posinfo.encoders.Backbone)."""

    def build(self, bb, normalize: str, image_size: int, lazy: bool) -> Encoder:
        raise NotImplementedError

    def describe(self, bb, image_size: int) -> list:
        """Each tap's name, node, channels and size, without weights."""
        return self.build(bb, "none", image_size, lazy=True).describe(image_size)

    def pretrained_identity(self, bb) -> str:
        """What ``imagenet`` weights are for this backbone (a cache-key field)."""
        raise NotImplementedError

    def pretrained_problem(self, bb) -> str | None:
        """None if the pretrained weights are cached here or fetchable; else the job's one-line error."""
        raise NotImplementedError

    def identity(self, bb, seed: int) -> str:
        """The weights' part of the feature cache key (the strings every existing entry was keyed by)."""
        if bb.weights == "imagenet":
            return self.pretrained_identity(bb)
        if bb.weights == "random":  # torchvision's rules keep the key they always had
            return f"random(seed={seed})" if bb.init == "torchvision" else f"random(seed={seed},init={bb.init})"
        from posinfo import cache

        return f"file:{cache.file_digest(user_path(bb.weights))}"

    def problems(self, bb, image_size: int) -> list[str]:
        """What would stop a job, found without computing (posinfo.preflight): weights out of reach."""
        if bb.weights == "imagenet":
            problem = self.pretrained_problem(bb)
            return [problem] if problem else []
        if bb.weights not in ANY_FILE and not user_path(bb.weights).is_file():
            return [f"backbone.weights file '{bb.weights}' does not exist: give a path to a {self.file_word}, "
                    "or imagenet, or random"]
        return []

    file_word = "state-dict file"  # what a weights file is called in messages

    def float16_safe(self, bb) -> bool:
        """Whether the features stay within float16's range. Partial padding's border re-weighting
        compounds layer after layer (the ImageNet VGG16 on [0, 1] input reaches |x| = 1.5e5 with it)."""
        return bb.padding != "partial"

    def mean_std(self, bb) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The input normalisation of the pretrained weights (data.normalize=model)."""
        from posinfo.encoder import IMAGENET_MEAN, IMAGENET_STD

        return IMAGENET_MEAN, IMAGENET_STD

    def tap_choices(self, encoder: Encoder) -> dict:
        """{tap: what backbone.nodes takes to choose it} (posinfo.probe's taps="each")."""
        return dict(encoder.nodes)

    def may_have_pos_embed(self, bb) -> bool:
        """Whether this backbone can have a learned position embedding (a token model), asked before building it."""
        return False

    def pos_embed(self, encoder: Encoder):
        """The patch positions' embedding of a built encoder as a (rows, cols, dim) tensor, controls
        applied, or None where the model has none (only token models have one)."""
        return None


def check_padding(padding: str, supported: tuple[str, ...], what: str, why: str) -> None:
    """backbone.padding: a known mode, and one ``what`` supports (``why`` says why not)."""
    if padding not in PADDINGS:
        raise PosinfoError(f"unknown backbone.padding '{padding}': choose one of {', '.join(PADDINGS)}")
    if padding not in supported:
        raise PosinfoError(f"backbone.padding={padding} does not work for {what} ({why}): "
                           f"use {', '.join(p for p in supported)}")


def check_fits(expected: dict, sd: dict, source: str, what: str, fix: str, needed: Callable[[str], bool],
               ignored: tuple[str, ...] = ()) -> dict:
    """``sd`` restricted to ``expected``'s keys, after insisting that every ``needed`` key is there,
    no key is foreign (but those starting with ``ignored``) and every shape fits."""
    missing = [k for k in expected if needed(k) and k not in sd]
    unexpected = [k for k in sd if k not in expected and not k.startswith(ignored)]
    wrong = [k for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = [f"{name}: {show(keys)}" for name, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                             ("wrong shapes", wrong)) if keys]
        raise PosinfoError(f"backbone.weights '{source}' does not fit {what} ({'; '.join(parts)}): {fix}")
    return {k: v for k, v in sd.items() if k in expected}


def unavailable(what: str, reason: str, fetch: str, a_file: str) -> str:
    """The one line for pretrained weights that cannot be had here: how to fetch them, or what instead."""
    return f"cannot load {what} ({reason}): {fetch}, or use backbone.weights=random or backbone.weights={a_file}"


def check_padding_by_trial(model: Any, padding: str, what: str) -> None:
    """check_padding for an arbitrary model (on the meta device): ``none`` is supported where the
    architecture still runs without padding (residual sums need equal sizes), found by a meta pass."""
    why = _padding_trial(model, "none") if padding == "none" else None
    check_padding(padding, PADDINGS if why is None else tuple(p for p in PADDINGS if p != "none"), what, why or "")


def _padding_trial(model: Any, padding: str) -> str | None:
    """Why ``model`` (on the meta device) does not run with ``padding`` (its first error line), or None."""
    import torch

    from posinfo.encoder import set_padding

    trial = copy.deepcopy(model)
    set_padding(trial, padding)
    try:
        with torch.no_grad():
            trial(torch.zeros(1, 3, 224, 224, device="meta"))
    except Exception as e:
        return str(e).splitlines()[0][:100] if str(e).strip() else type(e).__name__
    return None
