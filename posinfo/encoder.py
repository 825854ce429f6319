"""The frozen encoder every backbone becomes (``Encoder``: images in [0, 1] -> tap maps), and what
all backbones share: the ImageNet statistics, backbone padding modes, reading a weights file.
Built by the backbone adapters (posinfo.encoders).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from posinfo.errors import PosinfoError
from posinfo.io import user_path
from posinfo.names import NORMALIZATIONS
from posinfo.partialconv import make_partial

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Tap:
    """One feature level: the paper's f_pos^i."""

    name: str
    node: str
    channels: int
    size: tuple[int, int]

    def as_json(self) -> dict:
        """As result.json's ``features`` and the remembered taps (sources.encoder_taps) store it."""
        return {"name": self.name, "node": self.node, "channels": self.channels, "size": list(self.size)}

    @classmethod
    def from_json(cls, d: dict) -> "Tap":
        return cls(str(d["name"]), str(d["node"]), int(d["channels"]), (int(d["size"][0]), int(d["size"][1])))


class Encoder(nn.Module):
    """Frozen feature extractor: images in [0,1] -> list of tap maps.

    ``body`` is None for PosENet, whose "feature" is the image itself. The encoder is
    always in eval mode and never has gradients: BatchNorm statistics never move.

    A lazy encoder (``posinfo.encoders.build(..., lazy=True)``) holds its body on the meta device
    and gets its weights (``materialize``) only before its first forward pass: a job
    whose features are all in the cache never loads or initialises them. ``describe``
    reads tap shapes from a weightless meta copy either way.
    """

    def __init__(
        self,
        name: str,
        body: nn.Module | None,
        nodes: dict[str, str],
        normalize: str,
        materialize: Callable[[nn.Module], None] | None = None,
        mean_std: tuple | None = None,
    ):
        super().__init__()
        self.name = name
        self.body = body
        self.nodes = nodes  # tap name -> graph node
        if normalize not in NORMALIZATIONS:
            raise PosinfoError(f"unknown data.normalize '{normalize}': use {', '.join(NORMALIZATIONS)}")
        if normalize == "model" and body is None:
            raise PosinfoError(f"data.normalize=model uses a pretrained model's own statistics, and {name} has none: "
                               "use data.normalize=none or imagenet")
        self.normalize = normalize
        mean, std = mean_std or (IMAGENET_MEAN, IMAGENET_STD)  # torchvision's VGG/ResNet weights: ImageNet's
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()
        # Plain attributes, not submodules: neither appears in state_dict() or .to().
        # (eval() again: a copied feature extractor starts in train mode, with its train graph.)
        self._skeleton = _Skeleton(copy.deepcopy(body).to("meta").eval() if body is not None else None)
        self._pending = materialize

    @property
    def materialized(self) -> bool:
        return self._pending is None

    def materialize(self) -> "Encoder":
        """Load or initialise the weights now (a no-op once done); returns self."""
        if self._pending is not None:
            fn, self._pending = self._pending, None
            fn(self.body)
            self.requires_grad_(False)
            self.eval()
        return self

    def train(self, mode: bool = True) -> "Encoder":
        # A frozen probe: whatever a caller asks, the backbone stays in eval mode.
        return super().train(False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self._pending is not None:
            raise RuntimeError("a lazy Encoder runs only after materialize() (and .to(device))")
        x = images
        if self.normalize in ("imagenet", "model"):
            x = (x - self.mean) / self.std
        if self.body is None:
            return [x]
        out = self.body(x)
        return [out[t] for t in self.nodes]

    def describe(self, image_size: int) -> list[Tap]:
        """Each tap's channels and size, from shapes alone (a meta-device pass: no weights, no arithmetic)."""
        x = torch.zeros(1, 3, image_size, image_size, device="meta")
        try:
            if self._skeleton.body is None:
                maps = [x]
            else:
                with torch.no_grad():
                    out = self._skeleton.body(x)
                maps = [out[t] for t in self.nodes]
        except (RuntimeError, ValueError) as e:
            raise PosinfoError(
                f"data.image_size={image_size} is too small for backbone '{self.name}' "
                f"({str(e).splitlines()[0][:120]}): use a larger data.image_size"
            ) from None
        names = list(self.nodes) if self.body is not None else ["rgb"]
        nodes = list(self.nodes.values()) if self.body is not None else ["image"]
        return [
            Tap(n, node, int(m.shape[1]), (int(m.shape[2]), int(m.shape[3])))
            for n, node, m in zip(names, nodes, maps)
        ]


@dataclass
class _Skeleton:
    body: nn.Module | None  # on the meta device, eval mode


def set_padding(model: nn.Module, padding: str) -> None:
    if padding == "zeros":
        return
    if padding == "partial":  # pretrained weights kept: posinfo.partialconv
        if make_partial(model) == 0:
            raise PosinfoError("backbone.padding=partial: this model has no padded convolution to re-weight; "
                               "use backbone.padding=zeros")
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if padding == "none":
                # Table 4: the pretrained weights are kept, only the padding goes.
                m.padding = (0, 0)
            elif any(p > 0 for p in m.padding):
                m.padding_mode = padding


def file_state_dict(path: str) -> dict:
    p = user_path(path)
    if not p.is_file():
        raise PosinfoError(
            f"backbone.weights file '{path}' does not exist: give a path to a state-dict file, or imagenet, or random"
        )
    try:
        try:  # memory-mapped: checking keys and shapes reads no tensor data
            sd = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be mapped
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PosinfoError(f"backbone.weights file '{path}' is not a readable PyTorch state dict ({type(e).__name__}): save it with torch.save(model.state_dict(), path)") from None
    # Common checkpoint wrappers and DataParallel prefixes.
    for k in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(sd, dict) and k in sd and isinstance(sd[k], dict):
            sd = sd[k]
    if not isinstance(sd, dict):
        raise PosinfoError(f"backbone.weights file '{path}' holds a {type(sd).__name__}, not a state dict: save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in sd.items()}


