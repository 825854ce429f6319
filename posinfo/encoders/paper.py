"""Frozen encoders and their taps f_pos^i (docs/method.md, "2. Frozen encoder and its taps").

Taps are read with torchvision's ``create_feature_extractor`` at the node that ends each
block, before its pooling. No architecture is copied by hand: torchvision builds it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from posinfo import bagnet
from posinfo.errors import PosinfoError, reason
from posinfo.encoder import Encoder, file_state_dict, set_padding
from posinfo.names import BAGNETS, MODULE_BACKBONE, PADDINGS
from posinfo.net import fetch_problem
from posinfo.partialconv import PartialConv2d

log = logging.getLogger(__name__)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
NAMES = ("posenet", "vgg16", *RESNETS, *BAGNETS)  # BAGNETS: posinfo.bagnet
ZOO = ("timm", "torchvision")  # any model of either library: posinfo.zoo

# level -> graph node. VGG16: relu1_2 ... relu5_3, each the last op before a max-pool.
_VGG16_NODES = {1: "features.3", 2: "features.8", 3: "features.15", 4: "features.22", 5: "features.29"}
# ResNet: layer1..layer4 as in the authors' code; the paper counts five levels, so the
# stem (ReLU before the max-pool) is offered as f0. BagNets have the same node names (their
# stem ends in a ReLU too, with no max-pool), and the authors' code reads layer1..layer4.
_RESNET_NODES = {0: "relu", 1: "layer1", 2: "layer2", 3: "layer3", 4: "layer4"}
_DEFAULT_LEVELS = {"vgg16": [1, 2, 3, 4, 5], **{r: [1, 2, 3, 4] for r in (*RESNETS, *BAGNETS)}}

# Random-init ResNet-101/152 in eval mode reach activations of 1e4–1e7 (no trained BatchNorm
# statistics to tame the residual sums): beyond float16's 65504.
_FLOAT16_OVERFLOW = {("resnet101", "random"), ("resnet152", "random")}

def _levels(name: str, taps: list[int] | None) -> list[int]:
    if name == "posenet":
        if taps:
            raise PosinfoError(f"backbone.taps={list(taps)} does not apply to posenet (no encoder): use backbone.taps=null")
        return []
    allowed = _VGG16_NODES if name == "vgg16" else _RESNET_NODES
    if taps is None:
        return list(_DEFAULT_LEVELS[name])
    levels = [int(t) for t in taps]
    bad = [t for t in levels if t not in allowed]
    if bad or not levels or len(set(levels)) != len(levels):
        raise PosinfoError(
            f"backbone.taps={list(taps)} is not valid for {name}: choose distinct levels from {sorted(allowed)}, e.g. backbone.taps=[{max(allowed)}]"
        )
    return sorted(levels)


def _check_padding(name: str, padding: str) -> None:
    if padding not in PADDINGS:
        raise PosinfoError(f"unknown backbone.padding '{padding}': choose one of {', '.join(PADDINGS)}")
    if padding == "zeros":
        return
    if padding == "none" and name not in ("vgg16", *BAGNETS):
        raise PosinfoError(
            f"backbone.padding=none is only defined for vgg16 and the BagNets, not {name} (its residual additions need matching sizes): use zeros, reflect, replicate or circular"
        )


def _imagenet_unavailable(name: str, reason: str) -> str:
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"cannot load ImageNet weights {weights} for {name} ({reason}): download them once where there is network "
            f"(python -c \"import torchvision; torchvision.models.{name}(weights='IMAGENET1K_V1')\"), or copy "
            f"{weights.url.rsplit('/', 1)[-1]} into {hub}, or use backbone.weights=random or backbone.weights=/path/to/state_dict.pt")


def _imagenet_state_dict(name: str) -> dict:
    if name in BAGNETS:
        return bagnet.imagenet_state_dict(name)
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    problem = imagenet_problem(name)  # offline: one line at once, not a download that fails later
    if problem:
        raise PosinfoError(problem)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # URLError, OSError, hash mismatch: all mean "not available here"
        raise PosinfoError(_imagenet_unavailable(name, reason(e))) from None


@functools.lru_cache(maxsize=None)
def imagenet_problem(name: str, timeout_s: float = 5.0) -> str | None:
    """None if torchvision's ImageNet weights of ``name`` are in the torch hub cache or can be
    fetched from here (a HEAD request); else the one-line error a job would fail with."""
    if name in BAGNETS:
        return bagnet.imagenet_problem(name, timeout_s)
    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    if (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file():
        return None
    why = fetch_problem(url, timeout_s)
    return None if why is None else _imagenet_unavailable(name, f"not in the torch hub cache, and {why} fetching it")


def imagenet_identity(name: str) -> str:
    """What ``imagenet`` weights are for a built-in backbone (a cache-key field)."""
    if name in BAGNETS:
        return bagnet.imagenet_identity(name)
    return str(torchvision.models.get_model_weights(name).IMAGENET1K_V1)


def _check_fits(model: nn.Module, sd: dict, used_prefixes: tuple[str, ...], source: str, name: str) -> None:
    """Insist that every weight the taps depend on is present in ``sd`` and fits (a BagNet
    checkpoint may also hold its classifier, and an old one lack num_batches_tracked)."""
    expected = model.state_dict()
    optional = bagnet.OPTIONAL_SUFFIXES if name in BAGNETS else ()
    ignored = bagnet.IGNORED_PREFIXES if name in BAGNETS else ()
    missing = [k for k in expected if k.startswith(used_prefixes) and k not in sd and not k.endswith(optional)]
    unexpected = [k for k in sd if k not in expected and not k.startswith(ignored)]
    wrong = [k for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes: {show(wrong)}")
        what, fix = ((name, bagnet.file_fix(name)) if name in BAGNETS else
                     (f"torchvision's {name}", f"save the state dict of a torchvision {name}"))
        raise PosinfoError(f"backbone.weights '{source}' does not fit {what} ({'; '.join(parts)}): {fix}")


INITS = ("torchvision", "pytorch")


def _init_pytorch(body: nn.Module) -> None:
    """PyTorch's default layer initialisation (each layer's ``reset_parameters``: Kaiming
    uniform with a=√5 and non-zero uniform biases for convs; BatchNorm 1/0 with fresh
    statistics), in module order: the "random" backbone of the authors' code without
    --pretrain, which never applies torchvision's rules."""
    for m in body.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            m.reset_parameters()


def _init_random(body: nn.Module) -> None:
    """torchvision's own initialisation rules for VGG and ResNet, applied to the tapped layers.

    (Conv: Kaiming normal, fan_out, ReLU gain, zero bias; BatchNorm: weight 1, bias 0,
    fresh running statistics.) Applied in module order after the global seed is set, so a
    seed gives one backbone.
    """
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()


def overflows_float16(name: str, weights: str, padding: str = "zeros") -> bool:
    """Whether this backbone's features are known to exceed float16's range: random-init deep
    ResNets, and partial padding, whose border re-weighting compounds layer after layer (the
    ImageNet VGG16 on [0, 1] input reaches |x| = 1.5e5 with it)."""
    return (name, str(weights)) in _FLOAT16_OVERFLOW or padding == "partial"


def _weights_source(name: str, weights: str, model: nn.Module, used: tuple[str, ...]) -> tuple[str, dict | None]:
    """What the weights are called in messages, and a weights file's checked state dict."""
    if weights == "imagenet":
        return f"imagenet ({imagenet_identity(name)})", None
    if weights == "random":
        log.warning("backbone %s uses random weights (a control, not the paper's ImageNet weights)", name)
        return "random", None
    file_sd = file_state_dict(weights)
    _check_fits(model, file_sd, used, weights, name)
    return weights, file_sd


def _check_builtin(name: str, weights: str, padding: str, init: str, model: str | None, nodes: list[str] | None,
                   pos_embed: str) -> None:
    """One line for a setting a built-in backbone (VGG16, the ResNets, PosENet) does not take."""
    if model or nodes or pos_embed != "keep":
        key = "backbone.model" if model else "backbone.nodes" if nodes else "backbone.pos_embed"
        instead = "" if name in BAGNETS else f"use backbone=torchvision backbone.model={name}, or "  # not in torchvision
        raise PosinfoError(f"{key} applies to backbone=timm or backbone=torchvision, not {name}: {instead}drop {key}")
    if name not in NAMES:
        raise PosinfoError(f"unknown backbone '{name}': choose one of {', '.join(NAMES + ZOO)}")
    if init not in INITS:
        raise PosinfoError(f"unknown backbone.init '{init}': choose one of {', '.join(INITS)}")
    if name == "posenet":
        if padding != "zeros":
            raise PosinfoError(f"backbone.padding={padding} does not apply to posenet (no encoder): set readout.padding instead")
        return
    _check_padding(name, padding)  # before any weights are fetched
    if weights in (None, "", "none"):
        raise PosinfoError(f"backbone.weights is empty for {name}: use imagenet, random or a path to a state-dict file")


def _skeleton(name: str) -> tuple[nn.Module, tuple[str, ...]]:
    """The model on the meta device, and the state-dict prefixes its taps can use. On the meta
    device only the layers the taps use ever get memory or weights, so VGG16's 120M-parameter
    classifier is never initialised (1 s per job saved)."""
    with torch.device("meta"):
        if name in BAGNETS:
            return bagnet.bagnet(name), bagnet.USED_PREFIXES
        model = torchvision.models.get_model(name, weights=None)
    return model, (("features.",) if name == "vgg16" else ("conv1.", "bn1.", "layer"))


def _loadable(body: nn.Module, sd: dict) -> dict:
    """``sd`` restricted to ``body``'s keys; a BatchNorm counter an old checkpoint lacks
    (checked optional by _check_fits) is 0: eval mode never reads it."""
    return {k: sd[k] if k in sd or not k.endswith(bagnet.OPTIONAL_SUFFIXES) else torch.zeros((), dtype=torch.long)
            for k in body.state_dict()}


def build_encoder(
    name: str,
    weights: str = "imagenet",
    padding: str = "zeros",
    taps: list[int] | None = None,
    normalize: str = "none",
    lazy: bool = False,
    init: str = "torchvision",
    model: str | None = None,
    nodes: list[str] | None = None,
    pos_embed: str = "keep",
    image_size: int = 224,
) -> Encoder:
    """Build the frozen encoder ``name`` with ``weights`` (imagenet | random | file path).

    ``lazy=True`` defers loading (imagenet) or initialising (random) the weights to the
    encoder's first use (:meth:`Encoder.materialize`); random weights are the same either
    way, drawn from the global RNG state at the time of this call. A weights file is
    always checked here (memory-mapped), so a wrong file fails before any work.
    """
    if name == MODULE_BACKBONE:  # a user's nn.Module or feature maps, registered by posinfo.probe
        from posinfo import usermodels

        return usermodels.build(str(model), padding, taps, nodes, normalize)
    if name in ZOO:  # any torchvision / timm model
        from posinfo import zoo

        return zoo.build(name, model, weights, padding, taps, nodes, normalize, lazy, pos_embed, image_size)
    _check_builtin(name, weights, padding, init, model, nodes, pos_embed)
    levels = _levels(name, taps)
    if name == "posenet":
        return Encoder(name, None, {}, normalize)
    model, used = _skeleton(name)
    table = _VGG16_NODES if name == "vgg16" else _RESNET_NODES
    nodes = {f"f{lv}": table[lv] for lv in levels}
    source, file_sd = _weights_source(name, weights, model, used)
    set_padding(model, padding)
    body = create_feature_extractor(model, return_nodes={node: tap for tap, node in nodes.items()},
                                    tracer_kwargs={"leaf_modules": [PartialConv2d]})
    rng_state = torch.get_rng_state()  # random weights: the state at build time, lazy or not

    def materialize(body: nn.Module) -> None:
        sd = file_sd
        if weights == "imagenet":  # fetched only now
            sd = _imagenet_state_dict(name)
            _check_fits(model, sd, used, source, name)
        body.to_empty(device="cpu")
        if sd is None:  # random
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng_state)
                (_init_pytorch if init == "pytorch" else _init_random)(body)
        else:
            body.load_state_dict(_loadable(body, sd), strict=True)

    encoder = Encoder(name, body, nodes, normalize, materialize)
    return encoder if lazy else encoder.materialize()
