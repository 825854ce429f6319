"""Any torchvision or timm model as the frozen encoder: ``backbone=timm backbone.model=NAME`` or
``backbone=torchvision backbone.model=NAME`` (docs/method.md, "Any backbone").

- **timm**: the model's own ``forward_intermediates`` (CNNs and ViT-family models alike); the
  levels are its ``feature_info`` entries (stage outputs; a ViT's blocks), ViT patch tokens
  come back as an (H/p)×(W/p) map with the prefix (class, register, distillation) tokens
  dropped. ViT-family models are built with ``dynamic_img_size`` where timm has it, else at
  ``data.image_size``.
- **torchvision**: any classification model; the levels are found from its graph
  (``get_graph_node_names``): of the outputs of its top two levels of modules, the last one at
  each spatial resolution, i.e. the output of each stage before the next downsampling.
- Default taps: every level up to 4, else 4 evenly spaced (first and last included);
  ``backbone.taps`` picks levels by index, ``backbone.nodes`` names graph nodes (torchvision)
  or feature indices (timm) directly.
- ``backbone.pos_embed``: ``keep``, or a control on the learned position embedding after loading:
  ``zero``, ``shuffle``, ``mean``, ``noise`` or ``roll`` (posinfo.encoders.posembed).

Weights load lazily (only when some features are not cached), like the built-in backbones.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from posinfo.encoder import Encoder, set_padding
from posinfo.encoders import posembed
from posinfo.encoders.base import Adapter, check_fits, check_padding_by_trial, unavailable
from posinfo.errors import PosinfoError, reason
from posinfo.names import POS_EMBED
from posinfo.net import fetch_problem

log = logging.getLogger(__name__)

MAX_DEFAULT_TAPS = 4
# torchvision's transformers give tokens, not maps: timm has them with spatial outputs.
_TV_TOKEN_MODELS = ("vit_", "swin_", "swin3d", "maxvit", "mvit", "s3d", "r3d", "r2plus1d", "mc3")
_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "heads.", "head_dist.", "last_linear.")


# ----------------------------------------------------------------------------- names


def _closest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f"; closest: {', '.join(close)}" if close else ""


def check_model(kind: str, model: str | None) -> None:
    """One line for a missing or unknown model name (with the closest valid names)."""
    if not model:
        raise PosinfoError(f"backbone={kind} needs backbone.model: e.g. backbone.model="
                           f"{'convnext_tiny' if kind == 'timm' else 'efficientnet_b0'}")
    if kind == "timm":
        import timm

        names = timm.list_models()
        if model not in names and model.split(".")[0] not in names:
            raise PosinfoError(f"backbone.model={model}: no such timm model{_closest(model, names)} "
                               "(python -c \"import timm; print(timm.list_models('*vit*'))\" lists them)")
    else:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        if model not in names:
            raise PosinfoError(f"backbone.model={model}: no such torchvision classification model"
                               f"{_closest(model, names)}")
        if model.startswith(_TV_TOKEN_MODELS):
            raise PosinfoError(f"backbone.model={model}: torchvision's {model} has no spatial feature maps between "
                               f"its blocks: use backbone=timm backbone.model=<its timm name> (e.g. vit_base_patch16_224)")


def _patch_problem(m: nn.Module, model: str, image_size: int) -> str | None:
    """One line if a patch model (a ViT's ``patch_embed``) cannot cut ``image_size`` into whole
    patches: timm asserts it deep inside the first forward pass, after the images are made."""
    pe = getattr(m, "patch_embed", None)
    patch = getattr(pe, "patch_size", None)
    if patch is None or getattr(pe, "dynamic_img_pad", False):  # no patches, or padded to whole ones
        return None
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[-1]))
    step = math.lcm(ph, pw)
    if image_size % step == 0:
        return None
    near = [v for v in (image_size // step * step, (image_size // step + 1) * step) if v >= 8]
    return (f"data.image_size={image_size}: timm's {model} cuts images into {ph}×{pw} patches, and {image_size} is "
            f"no multiple of {step}: use data.image_size={' or '.join(map(str, near))}")


def image_size_problem(kind: str, model: str, image_size: int) -> str | None:
    """One line if ``model`` cannot take ``data.image_size`` images (checked on a weightless meta copy)."""
    if kind != "timm":
        return None
    return _patch_problem(_skeleton(_maker(kind, model, image_size)), model, image_size)


# ----------------------------------------------------------------------------- bodies


class TimmBody(nn.Module):
    """A timm model's intermediate maps at ``indices``, as {tap name: NCHW map}."""

    def __init__(self, model: nn.Module, indices: list[int], names: list[str]):
        super().__init__()
        self.model, self.indices, self.names = model, list(indices), list(names)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.model.forward_intermediates(x, indices=self.indices, output_fmt="NCHW", intermediates_only=True)
        return dict(zip(self.names, maps))


class GraphBody(nn.Module):
    """A torchvision model cut at graph nodes (``create_feature_extractor``), as {tap name: map}."""

    def __init__(self, model: nn.Module, nodes: dict[str, str]):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        from posinfo.partialconv import PartialConv2d

        self.names = list(nodes)
        self.model = create_feature_extractor(model, return_nodes={node: tap for tap, node in nodes.items()},
                                              tracer_kwargs={"leaf_modules": [PartialConv2d]})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)


# ----------------------------------------------------------------------------- models


def _timm_model(model: str, pretrained: bool, image_size: int) -> nn.Module:
    import timm

    try:  # ViT family: any image size (positions resampled); others ignore the flag or refuse it
        return timm.create_model(model, pretrained=pretrained, dynamic_img_size=True)
    except TypeError:
        pass
    try:
        return timm.create_model(model, pretrained=pretrained, img_size=image_size)
    except TypeError:
        return timm.create_model(model, pretrained=pretrained)


def _levels_timm(m: nn.Module, model: str) -> list[tuple[str, str]]:
    """(tap name, node) for every level of a timm model: its feature_info entries."""
    info = getattr(m, "feature_info", None)
    if not hasattr(m, "forward_intermediates") or not info:
        raise PosinfoError(f"backbone.model={model}: this timm model has no spatial intermediate features "
                           "(no forward_intermediates): choose a CNN or ViT-family model")
    return [(str(f["module"]), str(i)) for i, f in enumerate(info)]


def _module_outputs(m: nn.Module, nodes: list[str]) -> list[tuple[str, str]]:
    """The graph node that ends each top-level module, or each child of a top-level container
    (a stage of blocks), in graph order."""
    prefixes = []
    for name, child in m.named_children():
        kids = [f"{name}.{k}" for k, _ in child.named_children()]
        container = isinstance(child, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and len(kids) > 1
        prefixes += kids if container else [name]
    last: dict[str, str] = {}
    for n in nodes:
        for p in prefixes:
            if n == p or n.startswith(p + "."):
                last[p] = n
    order = {n: i for i, n in enumerate(nodes)}
    return sorted(((p, n) for p, n in last.items()), key=lambda pn: order[pn[1]])


def _levels_torchvision(m: nn.Module, model: str) -> list[tuple[str, str]]:
    """(tap name, node): of the nodes that end a module (a top-level one, or a block of a stage),
    the last at each spatial resolution: each stage's output before the next downsampling.
    Shapes from a meta-device pass."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    _, nodes = get_graph_node_names(m)
    candidates = dict((n, p) for p, n in _module_outputs(m, nodes)
                      if not p.startswith(("flatten", "classifier", "fc", "avgpool", "head")))
    probe = create_feature_extractor(m, return_nodes={n: n for n in candidates})
    with torch.no_grad():
        out = probe(torch.zeros(1, 3, 224, 224, device="meta"))
    maps = [(n, tuple(v.shape)) for n, v in out.items() if isinstance(v, torch.Tensor) and v.dim() == 4]
    levels: list[tuple[str, str]] = []
    for i, (n, shape) in enumerate(maps):
        nxt = maps[i + 1][1] if i + 1 < len(maps) else None
        if shape[-1] > 1 and (nxt is None or nxt[-1] < shape[-1]):
            levels.append((candidates[n], n))
    if not levels:
        raise PosinfoError(f"backbone.model={model}: no spatial feature maps found in its graph: "
                           "name the nodes with backbone.nodes=[...]")
    return levels


def graph_taps(m: nn.Module, taps: list[int] | None, nodes: list[str] | None, what: str) -> dict[str, str]:
    """{tap name: graph node} of any torch.fx-traceable module ``m`` (on the meta device), chosen as for
    ``backbone=torchvision``: levels from its graph (``taps`` picks them by index) or ``nodes`` by name."""
    return _choose(_levels_torchvision(m, what), taps, nodes, "torchvision", what, lambda: _all_nodes(m))


def default_taps(n_levels: int) -> list[int]:
    """Every level up to MAX_DEFAULT_TAPS, else that many evenly spaced (first and last kept)."""
    if n_levels <= MAX_DEFAULT_TAPS:
        return list(range(n_levels))
    return sorted({int(round(v)) for v in np.linspace(0, n_levels - 1, MAX_DEFAULT_TAPS)})


def _choose(levels: list[tuple[str, str]], taps: list[int] | None, nodes: list[str] | None, kind: str,
            model: str, all_nodes: Callable[[], list[str]]) -> dict[str, str]:
    if taps and nodes:
        raise PosinfoError("backbone.taps and backbone.nodes both set: give one (levels by index, or nodes by name)")
    if nodes:
        if kind == "timm":
            bad = [n for n in nodes if not str(n).isdigit() or int(n) >= len(levels)]
            if bad:
                raise PosinfoError(f"backbone.nodes={list(nodes)}: timm feature indices of {model} run 0…{len(levels) - 1}")
            return {levels[int(n)][0]: str(int(n)) for n in nodes}
        known = all_nodes()
        bad = [n for n in nodes if n not in known]
        if bad:
            raise PosinfoError(f"backbone.nodes: {bad[0]} is not a node of {model}{_closest(str(bad[0]), known)}")
        return {str(n): str(n) for n in nodes}
    picks = default_taps(len(levels)) if taps is None else [int(t) for t in taps]
    bad = [t for t in picks if not 0 <= t < len(levels)]
    if bad or len(set(picks)) != len(picks):
        raise PosinfoError(f"backbone.taps={list(taps or [])} is not valid for {model}: choose distinct levels "
                           f"0…{len(levels) - 1} ({', '.join(n for n, _ in levels)})")
    return {levels[t][0]: levels[t][1] for t in sorted(picks)}


# ----------------------------------------------------------------------------- weights


def pretrained_identity(kind: str, model: str) -> str:
    """What 'imagenet' weights are for this model (a cache-key field)."""
    if kind == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(model.split(".")[0] if "." not in model else model)
        tag = (cfg.hf_hub_id or cfg.url or "") if cfg is not None else ""
        return f"timm:{model}:{tag}"
    import torchvision

    return str(torchvision.models.get_model_weights(model).DEFAULT)


def model_mean_std(kind: str, model: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pretrained weights' own input normalisation (data.normalize=model)."""
    if kind == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(model)
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)
    else:
        import torchvision

        t = torchvision.models.get_model_weights(model).DEFAULT.transforms()
        return tuple(t.mean), tuple(t.std)
    from posinfo.encoder import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD


@functools.lru_cache(maxsize=None)
def pretrained_problem(kind: str, model: str) -> str | None:
    """None if the pretrained weights are cached here or fetchable; else the job's one-line error."""
    if kind == "torchvision":
        import torchvision

        w = torchvision.models.get_model_weights(model).DEFAULT
        if (Path(torch.hub.get_dir()) / "checkpoints" / w.url.rsplit("/", 1)[-1]).is_file():
            return None
        url = w.url
    else:
        import timm

        cfg = timm.models.get_pretrained_cfg(model)
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            return f"backbone.model={model}: timm has no pretrained weights for it: use backbone.weights=random or a file"
        if cfg.hf_hub_id:
            from huggingface_hub import try_to_load_from_cache

            for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                if isinstance(try_to_load_from_cache(cfg.hf_hub_id, f), str):
                    return None
            if _hf_offline():
                return _unavailable(kind, model, "not cached, and HF_HUB_OFFLINE is set")
            url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
        else:
            if (Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]).is_file():
                return None
            url = cfg.url
    why = fetch_problem(url)
    return None if why is None else _unavailable(kind, model, f"not cached, and {why} fetching it")


def _hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _unavailable(kind: str, model: str, why: str) -> str:
    fetch = (f"python -c \"import timm; timm.create_model('{model}', pretrained=True)\"" if kind == "timm" else
             f"python -c \"import torchvision; torchvision.models.get_model('{model}', weights='DEFAULT')\"")
    return unavailable(f"{kind}'s pretrained weights for {model}", why,
                       f"download them once where there is network ({fetch})", "/path/to/checkpoint")


def _load_file(path: str) -> dict:
    from posinfo.encoder import file_state_dict

    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        from posinfo.io import user_path

        p = user_path(path)
        if not p.is_file():
            raise PosinfoError(f"backbone.weights file '{path}' does not exist: give a checkpoint path, or imagenet, or random")
        return load_file(str(p))
    return file_state_dict(path)


def _check_keys(m: nn.Module, sd: dict, source: str, kind: str, model: str) -> dict:
    """``sd`` restricted to ``m``'s keys, after insisting that every non-head weight is there and fits."""
    return check_fits(m.state_dict(), sd, source, f"{kind}'s {model}", "give a checkpoint of that very architecture",
                      lambda k: not k.startswith(_HEAD_PREFIXES), _HEAD_PREFIXES)


def _pos_embed(m: nn.Module, mode: str, model: str) -> torch.Tensor:
    """The model's learned position embedding; one line if it has none."""
    pe = getattr(m, "pos_embed", None)
    if not isinstance(pe, torch.Tensor) or pe.numel() == 0:
        raise PosinfoError(f"backbone.pos_embed={mode}: {model} has no learned position embedding (pos_embed): "
                           "use backbone.pos_embed=keep")
    return pe


def _apply_pos_embed(m: nn.Module, mode: str, model: str, seed: int) -> None:
    if mode != "keep":
        posembed.apply(m, _pos_embed(m, mode, model), mode, model, seed)


# ----------------------------------------------------------------------------- the encoder


def _maker(kind: str, model: str, image_size: int) -> Callable[[bool], nn.Module]:
    """model(pretrained) -> a fresh timm or torchvision model."""
    if kind == "timm":
        return lambda pretrained: _timm_model(model, pretrained, image_size)

    def tv(pretrained: bool) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(model, weights="DEFAULT" if pretrained else None)

    return tv


def _skeleton(make: Callable[[bool], nn.Module]) -> nn.Module:
    """The model on the meta device: shapes without weights."""
    try:
        with torch.device("meta"):
            return make(False)
    except (NotImplementedError, RuntimeError):  # a builder that computes with tensors (RegNet's widths)
        with torch.random.fork_rng(devices=[]):
            return make(False).to("meta")


def _real(kind: str, model: str, make: Callable[[bool], nn.Module], weights: str, file_sd: dict | None,
          rng_state: torch.Tensor) -> nn.Module:
    """The model with its weights: pretrained (fetched now), a file's, or drawn from ``rng_state``."""
    if weights == "imagenet":
        problem = pretrained_problem(kind, model)  # offline: one line at once, not the hub's retries
        if problem:
            raise PosinfoError(problem)
        try:
            return make(True)
        except Exception as e:  # a download cut short, a hash mismatch
            raise PosinfoError(_unavailable(kind, model, reason(e))) from None
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(rng_state)
        m = make(False)
    if file_sd is not None:
        m.load_state_dict(file_sd, strict=False)
    return m


def _build(bb, normalize: str, image_size: int, lazy: bool) -> Encoder:
    """The frozen Encoder of a torchvision or timm model (see the module docstring). Everything is
    checked on a weightless meta copy first; the weights come only when the encoder is first used."""
    kind, model, weights, padding, pos_embed = bb.name, bb.model, bb.weights, bb.padding, bb.pos_embed
    check_model(kind, model)
    if pos_embed not in POS_EMBED:
        raise PosinfoError(f"backbone.pos_embed={pos_embed}: must be one of {', '.join(POS_EMBED)}")
    make = _maker(kind, model, image_size)
    skeleton = _skeleton(make)
    problem = _patch_problem(skeleton, model, image_size)
    if problem:
        raise PosinfoError(problem)
    levels = _levels_timm(skeleton, model) if kind == "timm" else _levels_torchvision(skeleton, model)
    if pos_embed != "keep":  # checked before any weights are fetched
        posembed.check(skeleton, _pos_embed(skeleton, pos_embed, model), pos_embed, model)
    chosen = _choose(levels, list(bb.taps) if bb.taps else bb.taps, list(bb.nodes) if bb.nodes else None, kind, model,
                     lambda: _all_nodes(skeleton))
    check_padding_by_trial(skeleton, padding, f"{kind}'s {model}")
    set_padding(skeleton, padding)
    file_sd = None
    if weights not in ("imagenet", "random"):
        file_sd = _check_keys(skeleton, _load_file(weights), weights, kind, model)
    elif weights == "random":
        log.warning("backbone %s uses random weights (a control, not pretrained weights)", model)
    rng_state = torch.get_rng_state()

    def body_of(m: nn.Module) -> nn.Module:
        if kind == "timm":
            return TimmBody(m, [int(v) for v in chosen.values()], list(chosen))
        return GraphBody(m, chosen)

    def materialize(b: nn.Module) -> None:
        m = _real(kind, model, make, weights, file_sd, rng_state)
        _apply_pos_embed(m, pos_embed, model, bb.seed)
        set_padding(m, padding)
        b.model = body_of(m.eval()).model

    mean_std = model_mean_std(kind, model) if normalize == "model" else None
    encoder = Encoder(f"{kind}/{model}", body_of(skeleton), chosen, normalize, materialize, mean_std=mean_std)
    return encoder if lazy else encoder.materialize()


class ZooAdapter(Adapter):
    """Any timm or torchvision model (``backbone=timm|torchvision backbone.model=NAME``)."""

    file_word = "checkpoint"

    def build(self, bb, normalize: str, image_size: int, lazy: bool) -> Encoder:
        return _build(bb, normalize, image_size, lazy)

    def pretrained_identity(self, bb) -> str:
        return pretrained_identity(bb.name, str(bb.model))

    def pretrained_problem(self, bb) -> str | None:
        return pretrained_problem(bb.name, str(bb.model))

    def problems(self, bb, image_size: int) -> list[str]:
        try:
            check_model(bb.name, bb.model)
        except PosinfoError as e:  # nothing else can be asked of a model that does not exist
            return [str(e)]
        size = image_size_problem(bb.name, str(bb.model), image_size)
        return ([size] if size else []) + super().problems(bb, image_size)

    def mean_std(self, bb) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return model_mean_std(bb.name, str(bb.model))

    def may_have_pos_embed(self, bb) -> bool:
        return bb.name == "timm"  # torchvision's token models give no maps (check_model refuses them)

    def pos_embed(self, encoder: Encoder) -> torch.Tensor | None:
        """A timm token model's patch position embedding (rows × cols × dim), controls applied; the
        weights are loaded only if the model has one (its weightless body says)."""
        if not isinstance(encoder.body, TimmBody) or not posembed.has_embedding(encoder.body.model):
            return None
        return posembed.patch_grid(encoder.materialize().body.model, encoder.name)


ADAPTER = ZooAdapter()


def _all_nodes(m: nn.Module) -> list[str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    return get_graph_node_names(m)[1]
