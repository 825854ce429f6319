"""BagNet-9, -17 and -33 (Brendel & Bethge, ICLR 2019) as frozen encoders: ``backbone=bagnet9|bagnet17|bagnet33``.

A BagNet is a ResNet-50 (bottleneck stages of 3, 4, 6 and 3 blocks, widths 64…512, ×4
expansion) whose 3×3 convolutions are 1×1 except in the first block of its first 2, 3 or 4
stages, on a stem of a 1×1 and a 3×3 convolution with no max-pool. Every convolution of the
published model is unpadded (valid); a stage's stride 2 sits in its first block's middle
convolution, and where that valid convolution shrinks the map the block's shortcut is cut at
the bottom and right to match. Receptive field: 3 (stem) + 2 + 4 + 8 (+ 16) pixels for the
3×3 stages, i.e. 9, 17 or 33 px: each output sees one small patch of the image.

Module and state-dict names are those of the official PyTorch checkpoints
(wielandbrendel/bag-of-local-features-models): ``conv1``, ``conv2``, ``bn1``,
``layerN.i.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}``; the classifier
(``fc``) is not built, since the taps end at ``layer4``. The authors' position code
(SenJia/Position-Information) reads the four stage outputs, layer1…layer4: posinfo's f1…f4.

``backbone.padding``: ``none`` is the published model. Any other mode pads the 3×3
convolutions by 1 with that mode (``zeros``: the layout before the BagNet authors made the
convolutions valid), so the same weights can be probed with and without a border signal.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

from posinfo.encoders.base import check_fits, unavailable
from posinfo.encoders.paper import RESNET_NODES, PaperAdapter
from posinfo.errors import PosinfoError, reason
from posinfo.names import BAGNETS, PADDINGS
from posinfo.net import fetch_problem

log = logging.getLogger(__name__)

# (width, blocks, stride) per stage: ResNet-50's blocks, BagNet's strides (no max-pool in the stem).
_STAGES = ((64, 3, 2), (128, 4, 2), (256, 6, 2), (512, 3, 1))
# How many leading blocks of each stage keep a 3×3 middle convolution: this alone sets the
# receptive field (each 3×3 conv adds 2 × the stride accumulated before it).
_KERNEL3 = {"bagnet9": (1, 1, 0, 0), "bagnet17": (1, 1, 1, 0), "bagnet33": (1, 1, 1, 1)}
EXPANSION = 4

# The ImageNet weights, where the official code fetches them; each name ends in the first
# hex digits of the file's SHA-256, which torch.hub checks.
_URL_BASE = ("https://bitbucket.org/wielandbrendel/bag-of-feature-pretrained-models/raw/"
             "249e8fa82c0913623a807d9d35eeab9da7dcc2a8/")
_FILES = {"bagnet9": "bagnet8-34f4ccd2.pth.tar", "bagnet17": "bagnet16-105524de.pth.tar",
          "bagnet33": "bagnet32-2ddd53ed.pth.tar"}
# Keys a checkpoint may hold that the encoder does not use (the classifier), and buffers an
# old checkpoint may lack (PyTorch < 0.4.1 had no num_batches_tracked; eval mode never reads it).
IGNORED_PREFIXES = ("fc.",)
OPTIONAL_SUFFIXES = ("num_batches_tracked",)
USED_PREFIXES = ("conv1.", "conv2.", "bn1.", "layer")


class Bottleneck(nn.Module):
    """1×1 -> k×k (stride s, the stage's downsampling) -> 1×1 ×4, each with BatchNorm, plus the
    shortcut (a strided 1×1 conv and BatchNorm where the shape changes)."""

    def __init__(self, inplanes: int, planes: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Built padded ("same"); backbone.padding=none sets the padding to 0, the published model.
        self.conv2 = nn.Conv2d(planes, planes, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * EXPANSION:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * EXPANSION))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        # A valid k×k conv ends (k - 1 - 2p) // s rows and columns short of the strided 1×1
        # shortcut (exact for k in {1, 3}, p in {0, (k-1)/2}, whatever the input size): the
        # shortcut loses its last ones, as in the official model. Plain ints: FX traces it.
        k, p, s = self.conv2.kernel_size[0], self.conv2.padding[0], self.conv2.stride[0]
        cut = (k - 1 - 2 * p) // s
        if cut > 0:
            shortcut = shortcut[:, :, :-cut, :-cut]
        return self.relu(out + shortcut)


class BagNet(nn.Module):
    """The convolutional body of a BagNet: stem, then layer1…layer4 (no pooling, no classifier)."""

    def __init__(self, kernel3: tuple[int, int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 1, bias=False)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        inplanes = 64
        for i, ((width, blocks, stride), n3) in enumerate(zip(_STAGES, kernel3), start=1):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(inplanes, width, 3 if b < n3 else 1, stride if b == 0 else 1))
                inplanes = width * EXPANSION
            setattr(self, f"layer{i}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv2(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def bagnet(name: str) -> BagNet:
    """A BagNet body (padded layout; see the module docstring), weights as PyTorch initialises them."""
    if name not in BAGNETS:
        raise PosinfoError(f"unknown BagNet '{name}': choose one of {', '.join(BAGNETS)}")
    return BagNet(_KERNEL3[name])


def weights_url(name: str) -> str:
    return _URL_BASE + _FILES[name]


def _hub_file(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / _FILES[name]


def _unavailable(name: str, why: str) -> str:
    return unavailable(f"BagNet's ImageNet weights for {name}", why,
                       f"download {_FILES[name]} from {weights_url(name)} where there is network (and copy it into "
                       f"{_hub_file(name).parent})", f"/path/to/{_FILES[name]}")


def imagenet_problem(name: str, timeout_s: float = 5.0) -> str | None:
    """None if the official ImageNet weights are in the torch hub cache or reachable (a HEAD
    request); else the one-line error a job would fail with."""
    if _hub_file(name).is_file():
        return None
    why = fetch_problem(weights_url(name), timeout_s)  # the one bounded check every loader asks (posinfo.net)
    return None if why is None else _unavailable(name, f"not in the torch hub cache, and {why} fetching it")


@functools.lru_cache(maxsize=None)
def _problem_once(name: str) -> str | None:
    """imagenet_problem asked once per process: a sweep's preflight asks it for every job."""
    return imagenet_problem(name)


def imagenet_state_dict(name: str) -> dict:
    """The official ImageNet weights (fetched once into the torch hub cache, SHA-256 prefix checked)."""
    try:
        return torch.hub.load_state_dict_from_url(weights_url(name), map_location="cpu", check_hash=True,
                                                  progress=True)
    except Exception as e:  # URLError, OSError, hash mismatch: all mean "not available here"
        raise PosinfoError(_unavailable(name, reason(e))) from None


class BagNetAdapter(PaperAdapter):
    """The BagNets: the ResNets' levels and node names on posinfo's BagNet body, the official
    checkpoints (which may hold the classifier, and an old one lack num_batches_tracked)."""

    def nodes(self, name: str) -> dict[int, str]:
        return RESNET_NODES

    def default_levels(self, name: str) -> list[int]:
        return [1, 2, 3, 4]

    def paddings(self, name: str) -> tuple[str, ...]:
        return PADDINGS  # no residual sum breaks: a valid conv's shortcut is cut to match (Bottleneck)

    def instead(self, name: str) -> str:
        return ""  # not in torchvision

    def skeleton(self, name: str) -> tuple[nn.Module, tuple[str, ...]]:
        with torch.device("meta"):
            return bagnet(name), USED_PREFIXES

    def pretrained_identity(self, bb) -> str:
        """The official file's name."""
        return f"bagnet:{_FILES[bb.name]}"

    def pretrained_problem(self, bb) -> str | None:
        return _problem_once(bb.name)

    def imagenet_state_dict(self, name: str) -> dict:
        return imagenet_state_dict(name)

    def check_fits(self, model: nn.Module, sd: dict, used: tuple[str, ...], source: str, name: str) -> None:
        check_fits(model.state_dict(), sd, source, name,
                   f"give an official BagNet checkpoint ({_FILES[name]} for {name}) or the state dict of posinfo's {name}",
                   lambda k: k.startswith(used) and not k.endswith(OPTIONAL_SUFFIXES), IGNORED_PREFIXES)

    def loadable(self, body: nn.Module, sd: dict) -> dict:
        """A BatchNorm counter an old checkpoint lacks (optional in check_fits) is 0: eval mode never reads it."""
        return {k: sd[k] if k in sd or not k.endswith(OPTIONAL_SUFFIXES) else torch.zeros((), dtype=torch.long)
                for k in body.state_dict()}


ADAPTER = BagNetAdapter()
