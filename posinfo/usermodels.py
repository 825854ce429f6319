"""A user's ``nn.Module``, or precomputed feature maps, as the frozen encoder of a job
(``backbone.name=module``, set by posinfo.probe; no YAML option, so sweep.py cannot name one).

A module cannot travel through a YAML config, so probe registers it here, in this process, under a
key made from its content, ``<ClassName>-<16 hex digits>``, and composes ``backbone.model=<key>``;
its backbone adapter (posinfo.encoders.module) asks :func:`lookup` for it. The key is the
module's whole cache identity (the feature cache keys on the encoder's name, ``module/<key>``),
so it hashes everything that decides the features:

- the class of the module and of every submodule (module and qualified name), and the bytecode
  of each class's ``forward`` (an edited forward is another module);
- ``repr(module)``, which names each layer's hyper-parameters (kernel, stride, padding);
- every parameter and buffer of its ``state_dict`` (names, dtypes, shapes, bytes).

Not seen: a change in a helper function that ``forward`` calls by name; use ``cache=False`` in
probe after such a change. The registry holds a deep copy, so the caller's module is never put in
eval mode, frozen or moved.

Feature maps ``{tap: N×C×H×W}`` are registered as a :class:`FeatureTable`, an encoder whose input
image i is a placeholder carrying i in its first pixel (:func:`index_images`): the job reads them
through the same code as any backbone's taps.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import types
import numpy as np
import torch
from torch import nn

from posinfo.errors import PosinfoError

log = logging.getLogger(__name__)

KEY_DIGITS = 16
_MODULES: dict[str, nn.Module] = {}


# ----------------------------------------------------------------------------- identity


def _code_bytes(code: types.CodeType) -> bytes:
    """A code object's bytecode, names and constants, nested code included (its repr holds an address)."""
    consts = [_code_bytes(c) if isinstance(c, types.CodeType) else repr(c).encode() for c in code.co_consts]
    return code.co_code + repr(code.co_names).encode() + b"|".join(consts)


def _class_bytes(cls: type) -> bytes:
    forward = getattr(cls, "forward", None)
    code = getattr(forward, "__code__", None)
    return f"{cls.__module__}.{cls.__qualname__}".encode() + (_code_bytes(code) if code is not None else b"")


def module_key(module: nn.Module) -> str:
    """``<ClassName>-<hash>``: the module's classes, forwards, repr and state_dict (module docstring)."""
    h = hashlib.sha256()
    for part in sorted({_class_bytes(type(m)) for m in module.modules()}):
        h.update(part)
    h.update(repr(module).encode())
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{type(module).__name__}-{h.hexdigest()[:KEY_DIGITS]}"


# ----------------------------------------------------------------------------- feature maps


class FeatureTable(nn.Module):
    """Precomputed feature maps as an encoder: image i (a placeholder from :func:`index_images`)
    gives the maps of entry i, {tap name: B×C×H×W}."""

    def __init__(self, maps: dict[str, torch.Tensor]):
        super().__init__()
        self.names = list(maps)
        for j, name in enumerate(self.names):  # tap names may hold dots: buffers are numbered
            self.register_buffer(f"tap{j}", maps[name].float().contiguous())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.tap0.shape[0]
        idx = (x[:, 0, 0, 0] * n).floor().long().clamp(0, n - 1)
        return {name: getattr(self, f"tap{j}")[idx] for j, name in enumerate(self.names)}


def index_images(n: int, size: int):
    """n placeholder images for a FeatureTable of n entries, made on demand: gray, with (i + ½)/n in
    the first pixel of image i (in [0, 1], as every image; exact in float32 far beyond any n here)."""
    from posinfo.userdata import ImageSet

    def placeholder(i: int) -> torch.Tensor:
        x = torch.full((3, size, size), 0.5)
        x[0, 0, 0] = (i + 0.5) / n
        return x

    return ImageSet("index", placeholder, [f"{i:05d}" for i in range(n)], f"index-{n}", size)


def feature_table(maps: dict) -> FeatureTable:
    """``{tap: N×C×H×W}`` (tensors or arrays, one N) as a FeatureTable; one line for anything else."""
    if not isinstance(maps, dict) or not maps:
        raise PosinfoError("model: a dict of feature maps must hold at least one {tap name: N×C×H×W tensor}")
    out, n = {}, None
    for name, m in maps.items():
        t = torch.as_tensor(np.asarray(m)) if not isinstance(m, torch.Tensor) else m.detach().cpu()
        if t.dim() != 4 or (n is not None and t.shape[0] != n):
            raise PosinfoError(f"model: feature map '{name}' has shape {tuple(t.shape)}: every map must be "
                               f"N×C×H×W with the same N{f' ({n})' if n is not None else ''}")
        if not bool(torch.isfinite(t).all()):
            raise PosinfoError(f"model: feature map '{name}' holds NaN or infinite values: give finite features")
        n = t.shape[0]
        out[str(name)] = t
    return FeatureTable(out)


# ----------------------------------------------------------------------------- registry and encoder


def register(module: nn.Module) -> str:
    """Register (a deep copy of) ``module`` for jobs of this process; its key."""
    key = module_key(module)
    if key not in _MODULES:
        _MODULES[key] = copy.deepcopy(module).cpu().eval()
    return key


def lookup(key: str) -> nn.Module:
    module = _MODULES.get(str(key))
    if module is None:
        raise PosinfoError(f"backbone.model={key}: no such module in this process: an nn.Module is probed from "
                           "Python (posinfo.probe(module, images)); posinfo.load(job_dir, module=...) registers it again")
    return module
