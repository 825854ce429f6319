"""The position encoding module f_pem (docs/method.md, "4. The readout f_pem")."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from posinfo.errors import PosinfoError

log = logging.getLogger(__name__)


def output_size(in_size: int, kernel: int, depth: int, padding: int) -> int:
    """Spatial size after ``depth`` stride-1 convs: each adds 2·padding − (kernel − 1)."""
    return in_size + depth * (2 * padding - kernel + 1)


def validate(in_size: int, kernel: int, depth: int, padding: int) -> None:
    if kernel < 1:
        raise PosinfoError(f"readout.kernel={kernel} is below 1: use a kernel of at least 1 (the paper uses 1, 3, 7)")
    if kernel > in_size:
        raise PosinfoError(
            f"readout.kernel={kernel} is larger than the {in_size}×{in_size} feature map: use readout.kernel<={in_size}"
        )
    if padding < 0:
        raise PosinfoError(f"readout.padding={padding} is negative: use 0 or more")
    if depth < 1:
        raise PosinfoError(f"readout.depth={depth} is below 1: use at least one layer")
    out = output_size(in_size, kernel, depth, padding)
    if out < 1:
        raise PosinfoError(
            f"readout.depth={depth} with kernel {kernel} and padding {padding} shrinks the {in_size}×{in_size} map to nothing ({out}): use fewer layers, a smaller kernel or more padding"
        )


def _shifted_sum(z: torch.Tensor, bias: torch.Tensor, k: int, padding: int) -> torch.Tensor:
    """The k×k convolution's output from Z (B×H×W×k×k, the features times each kernel tap):
    bias plus the k² taps' columns, each shifted to its place (B×Ho×Wo)."""
    b, h, w = z.shape[:3]
    if padding:
        z = nn.functional.pad(z, (0, 0, 0, 0, padding, padding, padding, padding))
    ho, wo = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    out = bias.view(1, 1, 1).expand(b, ho, wo).clone()
    for u in range(k):
        for v in range(k):
            out += z[:, u : u + ho, v : v + wo, u, v]
    return out


def _shifted_grad(go: torch.Tensor, h: int, w: int, k: int, p: int, into: torch.Tensor) -> None:
    """The transpose of :func:`_shifted_sum`: G[b, y, x, u, v] = go[b, y-u, x-v] in padded
    coordinates, cropped to the input, written into ``into`` (a B×H×W×k×k view)."""
    b, ho, wo = go.shape
    g = go.new_zeros(b, h + 2 * p, w + 2 * p, k, k)
    for u in range(k):
        for v in range(k):
            g[:, u : u + ho, v : v + wo, u, v] = go
    into.copy_(g[:, p : p + h, p : p + w])


class _MapConvs(torch.autograd.Function):
    """Stride-1 k×k convolutions with one output map each, all on the same input, as two
    matrix products over channels-last features; numerically the same convolutions as
    ``F.conv2d``.

    Library convolutions handle C→1 as a matrix–vector product; with C≈1500 input
    channels (VGG16's taps) that made the readout's step slower than reading its
    features. Here the forward pass is one GEMM, ``Z = X·[W₁ … Wₙ]`` with X the (B·H·W)×C
    features and Wᵢ the C×kᵢ² kernel of map i, followed by each map's kᵢ² shifted adds of
    its columns of Z; the weight gradients are another, ``Gᵀ·X``, with G each output
    gradient placed at its kᵢ² shifts. Each reads the features once however many maps
    there are: one map is the readout's last layer (:class:`OneMapConv2d`), several are
    the readouts of a fused group trained together (``train.fit_many``, bench/README.md
    has the figures).
    """

    @staticmethod
    def forward(ctx, x, paddings: tuple[int, ...], *params):
        b, c, h, w = x.shape
        weights, biases = params[0::2], params[1::2]
        ks = [wt.shape[-1] for wt in weights]
        xm = x.permute(0, 2, 3, 1).reshape(b * h * w, c)  # a view for channels-last input
        wm = torch.cat([wt.reshape(c, k * k) for wt, k in zip(weights, ks)], dim=1) if len(weights) > 1 \
            else weights[0].reshape(c, ks[0] * ks[0])
        z = xm @ wm
        outs, at = [], 0
        for k, bias, p in zip(ks, biases, paddings):
            zi = z[:, at : at + k * k].view(b, h, w, k, k)  # splitting the rows: a view, no copy
            outs.append(_shifted_sum(zi, bias, k, p).unsqueeze(1))
            at += k * k
        ctx.save_for_backward(xm, wm)
        ctx.shape, ctx.ks, ctx.paddings = (b, c, h, w), ks, paddings
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grad_outs):
        xm, wm = ctx.saved_tensors
        (b, c, h, w), ks = ctx.shape, ctx.ks
        g = xm.new_zeros(b * h * w, wm.shape[1])
        grad_b, at = [], 0
        for go, k, p in zip(grad_outs, ks, ctx.paddings):
            if go is None:  # this map's output was not used
                grad_b.append(None)
            else:
                _shifted_grad(go[:, 0], h, w, k, p, g[:, at : at + k * k].view(b, h, w, k, k))
                grad_b.append(go.sum().reshape(1))
            at += k * k
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ wm.t()).view(b, h, w, c).permute(0, 3, 1, 2)
        grad_w = (g.t() @ xm) if any(ctx.needs_input_grad[2::2]) else None
        grads, at = [], 0
        for i, k in enumerate(ks):
            gw = None if grad_w is None or not ctx.needs_input_grad[2 + 2 * i] else \
                grad_w[at : at + k * k].t().reshape(1, c, k, k)
            gb = grad_b[i] if ctx.needs_input_grad[3 + 2 * i] else None
            grads += [gw, gb]
            at += k * k
        return (grad_x, None, *grads)


def map_convs(x: torch.Tensor, convs: list["OneMapConv2d"]) -> tuple[torch.Tensor, ...]:
    """Each of ``convs`` applied to ``x`` (B×1×Ho×Wo each), reading ``x`` once: a fused group's
    last layers in one step."""
    params = [t for cv in convs for t in (cv.weight, cv.bias)]
    return _MapConvs.apply(x, tuple(cv.padding[0] for cv in convs), *params)


class OneMapConv2d(nn.Conv2d):
    """``nn.Conv2d(C, 1, k, padding=p)`` (same parameters and state_dict) computed by
    :class:`_MapConvs`: the readout's last layer."""

    def __init__(self, in_channels: int, kernel: int, padding: int = 0):
        super().__init__(in_channels, 1, kernel, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return map_convs(x, [self])[0]


class Readout(nn.Sequential):
    """``depth`` k×k convs. Hidden: conv C→C, BN, ReLU. Last: conv C→1, BN(1), sigmoid; or, with
    ``classes`` (the location target), conv C→classes giving logits."""

    def __init__(self, in_channels: int, kernel: int = 3, depth: int = 1, padding: int = 0, classes: int | None = None):
        layers: list[nn.Module] = []
        for i in range(depth):
            last = i == depth - 1
            if last and classes:
                layers.append(nn.Conv2d(in_channels, classes, kernel, padding=padding))
                break
            if last:
                layers += [OneMapConv2d(in_channels, kernel, padding=padding), nn.BatchNorm2d(1)]
            else:
                layers += [nn.Conv2d(in_channels, in_channels, kernel, padding=padding), nn.BatchNorm2d(in_channels)]
            layers.append(nn.Sigmoid() if last else nn.ReLU(inplace=True))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)


class Standardize(nn.Module):
    """Each feature channel standardised with its mean and std over the training set
    (``readout.standardize=channel``): the statistics are buffers, so they are stored and
    reused with the readout.

    A channel constant over the training set is dropped: its std is set to infinity, so it
    reads 0 for every image, train or test. It carries no position information, and divided
    by a clamped std of ~0 any test value that differs from the constant becomes huge and
    saturates every prediction (issue 22). Other channels' statistics are unchanged."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def fit(self, batches) -> "Standardize":
        """Set the statistics from feature batches (B×C×H×W), accumulated in float64."""
        n, s1, s2, lo, hi = 0, 0.0, 0.0, None, None
        for x in batches:
            lo = _fold(torch.minimum, lo, x.amin(dim=(0, 2, 3)))  # exact, unlike a variance of ~0
            hi = _fold(torch.maximum, hi, x.amax(dim=(0, 2, 3)))
            x = x.double()
            n += x.shape[0] * x.shape[2] * x.shape[3]
            s1 = s1 + x.sum(dim=(0, 2, 3))
            s2 = s2 + (x * x).sum(dim=(0, 2, 3))
        mean = s1 / n
        std = (s2 / n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
        constant = (lo == hi).to(std.device)
        if bool(constant.any()):
            std = std.masked_fill(constant, math.inf)
            log.warning("readout.standardize=channel: %d of %d feature channels are constant over the training set; "
                        "dropped from the readout (they carry no position information)",
                        int(constant.sum()), constant.numel())
        self.mean.copy_(mean.view_as(self.mean))
        self.std.copy_(std.view_as(self.std))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _fold(op, acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if acc is None else op(acc, x)


def build_readout(in_channels: int, kernel: int = 3, depth: int = 1, padding: int = 0, in_size: int = 28,
                  classes: int | None = None) -> Readout:
    validate(in_size, kernel, depth, padding)
    return Readout(in_channels, kernel, depth, padding, classes)


class LinearReadout(nn.Sequential):
    """The closed-form readout (``readout.solver=ridge``, posinfo.ridge): one k×k convolution
    C→1 (C→``outputs``: one least-squares problem per output map, e.g. target=xy's x and y) with
    a linear output (no BatchNorm, no sigmoid) on channel-standardised features. Its
    state_dict stores the statistics and the weights.

    The padding is the paper's: zeros around the raw features, standardised with them (a
    padded position reads (0 − mean)/std). Zeros after standardising would be each channel's
    mean instead, and on PosENet, whose only position signal is the contrast between the
    image and its zero padding, that removed the signal (hor SPC −.02 against SGD's .37)."""

    def __init__(self, in_channels: int, kernel: int, padding: int, outputs: int = 1):
        conv = OneMapConv2d(in_channels, kernel, padding=0) if outputs == 1 else nn.Conv2d(in_channels, outputs, kernel)
        super().__init__(Standardize(in_channels), conv)
        self.pad = padding
        nn.init.zeros_(self[1].weight)
        nn.init.zeros_(self[1].bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the convolution reads: the raw features zero-padded, then standardised."""
        return self[0](nn.functional.pad(x, (self.pad,) * 4) if self.pad else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[1](self.features(x))


def make(in_channels: int, kernel: int, depth: int, padding: int, in_size: int, classes: int | None,
         standardize: str, solver: str) -> nn.Module:
    """The readout a job's ``readout`` group describes (untrained): f_pem, behind a Standardize
    with ``standardize=channel``; with ``solver=ridge`` the linear readout, whose channels are
    always standardised (its penalty must not depend on their scales)."""
    readout = build_readout(in_channels, kernel, depth, padding, in_size, classes)  # validates
    if solver == "ridge":
        return LinearReadout(in_channels, kernel, padding, classes or 1)
    if standardize == "channel":  # its statistics come from the training features
        return nn.Sequential(Standardize(in_channels), readout)
    return readout
