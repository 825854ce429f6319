"""The paper's backbones, VGG16 and the ResNets, as frozen encoders and their taps f_pos^i
(docs/method.md, "2. Frozen encoder and its taps"); posinfo.encoders.bagnet extends this adapter.

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

from posinfo.encoder import Encoder, file_state_dict, set_padding
from posinfo.encoders.base import Adapter, check_fits, check_padding, unavailable
from posinfo.errors import PosinfoError, reason
from posinfo.names import INITS, PADDINGS
from posinfo.net import fetch_problem
from posinfo.partialconv import PartialConv2d

log = logging.getLogger(__name__)

# level -> graph node. VGG16: relu1_2 ... relu5_3, each the last op before a max-pool.
_VGG16_NODES = {1: "features.3", 2: "features.8", 3: "features.15", 4: "features.22", 5: "features.29"}
# ResNet: layer1..layer4 as in the authors' code; the paper counts five levels, so the
# stem (ReLU before the max-pool) is offered as f0. BagNets have the same node names (their
# stem ends in a ReLU too, with no max-pool), and the authors' code reads layer1..layer4.
RESNET_NODES = {0: "relu", 1: "layer1", 2: "layer2", 3: "layer3", 4: "layer4"}

# Random-init ResNet-101/152 in eval mode reach activations of 1e4–1e7 (no trained BatchNorm
# statistics to tame the residual sums): beyond float16's 65504.
_FLOAT16_OVERFLOW = {("resnet101", "random"), ("resnet152", "random")}


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


@functools.lru_cache(maxsize=None)
def imagenet_problem(name: str, timeout_s: float = 5.0) -> str | None:
    """None if torchvision's ImageNet weights of ``name`` are in the torch hub cache or can be
    fetched from here (a HEAD request); else the one-line error a job would fail with."""
    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    if (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file():
        return None
    why = fetch_problem(url, timeout_s)
    return None if why is None else _unavailable(name, f"not in the torch hub cache, and {why} fetching it")


def _unavailable(name: str, why: str) -> str:
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return unavailable(f"ImageNet weights {weights} for {name}", why,
                       f"download them once where there is network (python -c \"import torchvision; "
                       f"torchvision.models.{name}(weights='IMAGENET1K_V1')\"), or copy "
                       f"{weights.url.rsplit('/', 1)[-1]} into {hub}", "/path/to/state_dict.pt")


class PaperAdapter(Adapter):
    """VGG16 and the ResNets: the paper's hand-listed taps (levels), torchvision's architectures."""

    def nodes(self, name: str) -> dict[int, str]:
        return _VGG16_NODES if name == "vgg16" else RESNET_NODES

    def default_levels(self, name: str) -> list[int]:
        return [1, 2, 3, 4, 5] if name == "vgg16" else [1, 2, 3, 4]

    def paddings(self, name: str) -> tuple[str, ...]:
        """Every mode; ``none`` only where nothing adds two maps (residual sums need equal sizes)."""
        return PADDINGS if name == "vgg16" else tuple(p for p in PADDINGS if p != "none")

    def levels(self, bb) -> list[int]:
        allowed = self.nodes(bb.name)
        if bb.taps is None:
            return list(self.default_levels(bb.name))
        levels = [int(t) for t in bb.taps]
        bad = [t for t in levels if t not in allowed]
        if bad or not levels or len(set(levels)) != len(levels):
            raise PosinfoError(f"backbone.taps={list(bb.taps)} is not valid for {bb.name}: choose distinct levels from "
                               f"{sorted(allowed)}, e.g. backbone.taps=[{max(allowed)}]")
        return sorted(levels)

    def check(self, bb) -> None:
        """One line for a setting this backbone does not take, before any weights are fetched."""
        if bb.model or bb.nodes or bb.pos_embed != "keep":
            key = "backbone.model" if bb.model else "backbone.nodes" if bb.nodes else "backbone.pos_embed"
            raise PosinfoError(f"{key} applies to backbone=timm or backbone=torchvision, not {bb.name}: "
                               f"{self.instead(bb.name)}drop {key}")
        if bb.init not in INITS:
            raise PosinfoError(f"unknown backbone.init '{bb.init}': choose one of {', '.join(INITS)}")
        check_padding(bb.padding, self.paddings(bb.name), bb.name, "its residual additions need matching sizes")
        if bb.weights in (None, "", "none"):
            raise PosinfoError(f"backbone.weights is empty for {bb.name}: use imagenet, random or a path to a state-dict file")

    def instead(self, name: str) -> str:
        return f"use backbone=torchvision backbone.model={name}, or "

    def skeleton(self, name: str) -> tuple[nn.Module, tuple[str, ...]]:
        """The model on the meta device, and the state-dict prefixes its taps can use. On the meta
        device only the layers the taps use ever get memory or weights, so VGG16's 120M-parameter
        classifier is never initialised (1 s per job saved)."""
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
        return model, (("features.",) if name == "vgg16" else ("conv1.", "bn1.", "layer"))

    # --- weights

    def pretrained_identity(self, bb) -> str:
        return str(torchvision.models.get_model_weights(bb.name).IMAGENET1K_V1)

    def pretrained_problem(self, bb) -> str | None:
        return imagenet_problem(bb.name)

    def imagenet_state_dict(self, name: str) -> dict:
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        problem = imagenet_problem(name)  # offline: one line at once, not a download that fails later
        if problem:
            raise PosinfoError(problem)
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except Exception as e:  # URLError, OSError, hash mismatch: all mean "not available here"
            raise PosinfoError(_unavailable(name, reason(e))) from None

    def check_fits(self, model: nn.Module, sd: dict, used: tuple[str, ...], source: str, name: str) -> None:
        """Every weight the taps depend on is in ``sd`` and fits."""
        check_fits(model.state_dict(), sd, source, f"torchvision's {name}", f"save the state dict of a torchvision {name}",
                   lambda k: k.startswith(used))

    def loadable(self, body: nn.Module, sd: dict) -> dict:
        return {k: sd[k] for k in body.state_dict()}

    def float16_safe(self, bb) -> bool:
        return (bb.name, bb.weights) not in _FLOAT16_OVERFLOW and super().float16_safe(bb)

    def weights_source(self, bb, model: nn.Module, used: tuple[str, ...]) -> tuple[str, dict | None]:
        """What the weights are called in messages, and a weights file's checked state dict."""
        if bb.weights == "imagenet":
            return f"imagenet ({self.pretrained_identity(bb)})", None
        if bb.weights == "random":
            log.warning("backbone %s uses random weights (a control, not the paper's ImageNet weights)", bb.name)
            return "random", None
        file_sd = file_state_dict(bb.weights)
        self.check_fits(model, file_sd, used, bb.weights, bb.name)
        return bb.weights, file_sd

    # --- the encoder

    def build(self, bb, normalize: str, image_size: int, lazy: bool) -> Encoder:
        """The frozen encoder; ``lazy``: weights loaded (imagenet) or initialised (random) at its first
        use (Encoder.materialize), random ones the same either way: drawn from the global RNG state at
        this call. A weights file is always checked here (memory-mapped), so a wrong file fails at once."""
        self.check(bb)
        levels = self.levels(bb)
        model, used = self.skeleton(bb.name)
        table = self.nodes(bb.name)
        nodes = {f"f{lv}": table[lv] for lv in levels}
        source, file_sd = self.weights_source(bb, model, used)
        set_padding(model, bb.padding)
        body = create_feature_extractor(model, return_nodes={node: tap for tap, node in nodes.items()},
                                        tracer_kwargs={"leaf_modules": [PartialConv2d]})
        rng_state = torch.get_rng_state()  # random weights: the state at build time, lazy or not

        def materialize(body: nn.Module) -> None:
            sd = file_sd
            if bb.weights == "imagenet":  # fetched only now
                sd = self.imagenet_state_dict(bb.name)
                self.check_fits(model, sd, used, source, bb.name)
            body.to_empty(device="cpu")
            if sd is None:  # random
                with torch.random.fork_rng(devices=[]):
                    torch.set_rng_state(rng_state)
                    (_init_pytorch if bb.init == "pytorch" else _init_random)(body)
            else:
                body.load_state_dict(self.loadable(body, sd), strict=True)

        encoder = Encoder(bb.name, body, nodes, normalize, materialize)
        return encoder if lazy else encoder.materialize()

    def tap_choices(self, encoder: Encoder) -> dict:
        """{tap: what backbone.taps takes to choose it}: the level of f<level>."""
        return {name: int(name[1:]) for name in encoder.nodes}


ADAPTER = PaperAdapter()
