"""The readout's bilinear upsampling as a matrix, and the paper's loss taken through it.

The readout's Ho×Wo output y is upsampled to S×S (bilinear, ``align_corners=False``) before
the MSE against the S×S target t (docs/method.md, "5. Upsampling, loss and training"). That
upsampling is linear and separable, U = U_h ⊗ U_w with U_h the S×Ho 1-D interpolation
matrix, so

    ‖U y − t‖² = yᵀ (UᵀU) y − 2 yᵀ (Uᵀ t) + ‖t‖²,   UᵀU = (U_hᵀU_h) ⊗ (U_wᵀU_w),

where each factor is a small Ho×Ho matrix (tridiagonal: each output pixel mixes two
neighbours per axis) and Uᵀt an Ho×Wo map computed once per target. The loss and its
gradient need no S×S tensor: ``train.loss_at=feature`` trains with it, and the closed-form
solver (posinfo.ridge) builds its normal equations from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def interpolation_matrix(n_in: int, n_out: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The n_out×n_in matrix of PyTorch's 1-D linear interpolation (``align_corners=False``):
    built by interpolating the unit vectors, so it is PyTorch's own arithmetic, not a re-derivation."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :].t().contiguous().to(dtype)


@dataclass(frozen=True)
class Upsampling:
    """Bilinear upsampling from an Ho×Wo readout output to a size×size target, as factors."""

    u_h: torch.Tensor  # size × Ho
    u_w: torch.Tensor  # size × Wo

    @classmethod
    def of(cls, out_h: int, out_w: int, size: int, dtype: torch.dtype = torch.float64,
           device: torch.device | str = "cpu") -> "Upsampling":
        return cls(interpolation_matrix(out_h, size, dtype).to(device), interpolation_matrix(out_w, size, dtype).to(device))

    @property
    def size(self) -> int:
        return self.u_h.shape[0]

    def gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U_hᵀU_h, U_wᵀU_w): UᵀU is their Kronecker product."""
        return self.u_h.t() @ self.u_h, self.u_w.t() @ self.u_w

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """U y for maps y (…×Ho×Wo): …×size×size (equal to F.interpolate's up to rounding)."""
        return self.u_h @ y @ self.u_w.t()

    def adjoint(self, t: torch.Tensor) -> torch.Tensor:
        """Uᵀ t for size×size maps t: Ho×Wo."""
        return self.u_h.t() @ t @ self.u_w

    def matrix(self) -> torch.Tensor:
        """U as one explicit (size²)×(Ho·Wo) matrix: for tests, never for training."""
        return torch.kron(self.u_h, self.u_w)


class FeatureLoss:
    """The mean squared error of the upsampled prediction against ``target`` (size×size),
    computed at the readout's resolution through the upsampling's Gram: in real arithmetic
    exactly ``F.mse_loss(upsample(y), target)`` for y of shape B×1×Ho×Wo."""

    def __init__(self, target: torch.Tensor, out_h: int, out_w: int):
        t = target.reshape(target.shape[-2:])
        up = Upsampling.of(out_h, out_w, t.shape[-1], dtype=torch.float64, device=t.device)
        g_h, g_w = up.gram()
        dtype = t.dtype if t.dtype.is_floating_point else torch.float32
        self.g_h, self.g_w = g_h.to(dtype), g_w.to(dtype)
        self.r = up.adjoint(t.double()).to(dtype)  # Uᵀt
        self.tt = float((t.double() ** 2).sum())  # ‖t‖²
        self.pixels = t.shape[-1] * t.shape[-2]

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        y = y.reshape(len(y), *y.shape[-2:])
        quad = (y * (self.g_h @ y @ self.g_w)).sum(dim=(1, 2))  # yᵀ(G_h ⊗ G_w)y per image
        lin = (y * self.r).sum(dim=(1, 2))
        return ((quad - 2 * lin).mean() + self.tt) / self.pixels
