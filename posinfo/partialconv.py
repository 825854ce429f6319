"""Partial-convolution padding (Liu et al., "Partial Convolution based Padding", 2018): a
convolution over a zero-padded input whose weighted sum is re-scaled, at each output position,
by (window size) / (number of window pixels inside the image); the bias is added after. In the
interior the window lies inside the image and the result is the ordinary convolution; at the
border the missing (padded) pixels no longer pull the sum towards zero, so the border signal
that zero padding adds is removed while the pretrained weights are kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PartialConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state-dict keys) with partial-convolution padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        out = out * self.ratio(x.shape[-2], x.shape[-1], x.device, x.dtype)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def ratio(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(1, 1, H_out, W_out): window size over the in-image pixels of each window, cached per input size."""
        cache = self.__dict__.setdefault("_ratios", {})
        key = (h, w, str(device), dtype)
        if key not in cache:
            kh, kw = self.kernel_size
            with torch.no_grad():
                count = F.conv2d(torch.ones(1, 1, h, w, device=device, dtype=torch.float64),
                                 torch.ones(1, 1, kh, kw, device=device, dtype=torch.float64),
                                 None, self.stride, self.padding, self.dilation)
                cache[key] = ((kh * kw) / count).to(dtype)
        return cache[key]


def make_partial(model: nn.Module) -> int:
    """Turn every padded convolution of ``model`` into a ``PartialConv2d`` in place (parameters,
    and so pretrained weights, kept); returns how many were changed."""
    n = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and any(p > 0 for p in m.padding):
            if m.padding_mode != "zeros":
                raise ValueError(f"partial padding needs zero-mode convolutions, got padding_mode={m.padding_mode}")
            m.__class__ = PartialConv2d
            n += 1
    return n
