"""The position encoding module f_pem (SPEC.md, "Readout")."""

from __future__ import annotations

from torch import nn

from posinfo.errors import PosinfoError


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


class Readout(nn.Sequential):
    """``depth`` k×k convs. Hidden: conv C→C, BN, ReLU. Last: conv C→1, BN(1), sigmoid."""

    def __init__(self, in_channels: int, kernel: int = 3, depth: int = 1, padding: int = 0):
        layers: list[nn.Module] = []
        for i in range(depth):
            last = i == depth - 1
            out = 1 if last else in_channels
            layers += [nn.Conv2d(in_channels, out, kernel, padding=padding), nn.BatchNorm2d(out)]
            layers.append(nn.Sigmoid() if last else nn.ReLU(inplace=True))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)


def build_readout(in_channels: int, kernel: int = 3, depth: int = 1, padding: int = 0, in_size: int = 28) -> Readout:
    validate(in_size, kernel, depth, padding)
    return Readout(in_channels, kernel, depth, padding)
