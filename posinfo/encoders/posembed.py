"""Controls on a token model's learned position embedding (``backbone.pos_embed``; docs/method.md,
"Position-embedding controls"), applied once the weights are loaded, before any image is seen.

The embedding ``pe`` holds a vector per patch position (a rows × cols grid, row-major), after
the prefix tokens' own (class, registers, distillation) where the model adds one to them. The
controls beside ``keep``:

- ``zero``: the whole embedding, prefix tokens' included, set to zero (as it always was);
- ``shuffle``: the patch positions' vectors permuted by a fixed seed (``SHUFFLE_SEED``);
- ``mean``: every patch position's vector replaced by their mean over positions: the
  embedding's average offset stays, the position it encodes goes (zero-ablation also removes
  the offset, which overstates the effect; Parodi et al. 2026);
- ``noise``: per channel, the positions' mean plus Gaussian noise with the positions' standard
  deviation (population std), i.i.d. over positions: the same scale, no position. The draw is
  standardised over positions per channel, so each channel's mean and std are exactly the
  embedding's. Drawn from its own stream of the job's seed (``noise_generator``): a job (and its
  seed's feature cache entry, keyed ``noise(seed=N)``) gives one draw;
- ``roll``: each position gets another position's vector: the grid shifted cyclically by half
  its side in both axes, (r, c) ← (r + rows//2 mod rows, c + cols//2 mod cols). A derangement
  whenever the grid has two positions or more: a position keeps its vector only if both shifts
  are multiples of their side, i.e. rows//2 = cols//2 = 0, i.e. a 1×1 grid. Half the side
  moves every vector as far as a cyclic shift can, and keeps neighbours neighbours (but across
  the wrap seam): the vectors and their local structure stay, their absolute place does not.

Prefix tokens keep their own embedding under mean, noise and roll (and shuffle).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from posinfo.errors import PosinfoError
from posinfo.names import POS_EMBED_ANY_LAYOUT

_INSTEAD = f"use backbone.pos_embed={', '.join(POS_EMBED_ANY_LAYOUT)}"

SHUFFLE_SEED = 0
NOISE_STREAM = 0x706F73  # "pos": the noise's stream beside the job's seed (numpy SeedSequence)


def noise_generator(seed: int) -> torch.Generator:
    """A generator of its own for the noise control: the job's seed and NOISE_STREAM, so it never
    repeats the numbers the same seed draws random weights from."""
    state = np.random.SeedSequence([int(seed), NOISE_STREAM]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def control(patches: torch.Tensor, mode: str, grid: tuple[int, int], seed: int) -> torch.Tensor:
    """The patch positions' vectors (n × dim, row-major over ``grid``) under ``mean``, ``noise`` or ``roll``."""
    n, dim = patches.shape
    if mode == "mean":
        return patches.mean(0, keepdim=True).expand(n, dim).clone()
    if mode == "noise":
        z = torch.randn(n, dim, generator=noise_generator(seed), dtype=torch.float64)
        z = (z - z.mean(0)) / z.std(0, correction=0)  # each channel's mean and std exactly the embedding's
        return (patches.mean(0, keepdim=True) + patches.std(0, correction=0, keepdim=True) * z.to(patches.dtype))
    if mode == "roll":
        rows, cols = grid
        return torch.roll(patches.reshape(rows, cols, dim), shifts=(rows // 2, cols // 2), dims=(0, 1)).reshape(n, dim)
    raise PosinfoError(f"backbone.pos_embed={mode}: no such control here")


def prefix_tokens(m: torch.nn.Module) -> int:
    """How many leading entries of ``m.pos_embed`` belong to prefix tokens (0 where timm adds none to them)."""
    return 0 if getattr(m, "no_embed_class", False) else int(getattr(m, "num_prefix_tokens", 0))


def grid_of(m: torch.nn.Module, n: int, model: str) -> tuple[int, int]:
    """The rows × cols grid of ``n`` patch positions: the patch embedding's, else a square."""
    size = getattr(getattr(m, "patch_embed", None), "grid_size", None)
    if size is not None and int(size[0]) * int(size[-1]) == n:
        return int(size[0]), int(size[-1])
    side = math.isqrt(n)
    if side * side != n:
        raise PosinfoError(f"backbone.model={model}: its position embedding has {n} patch positions, which form no "
                           f"grid posinfo can tell: {_INSTEAD}")
    return side, side


def check(m: torch.nn.Module, pe: torch.Tensor, mode: str, model: str) -> None:
    """One line if ``mode`` cannot apply to ``m``'s embedding ``pe`` (shapes only: a meta copy will do)."""
    if mode in POS_EMBED_ANY_LAYOUT:
        return
    if pe.dim() != 3 or pe.shape[0] != 1:
        raise PosinfoError(f"backbone.pos_embed={mode}: {model}'s position embedding has shape {tuple(pe.shape)}, "
                           f"not 1 × tokens × dim: {_INSTEAD}")
    if mode == "roll" and math.prod(grid_of(m, pe.shape[1] - prefix_tokens(m), model)) < 2:
        raise PosinfoError(f"backbone.pos_embed=roll: {model} has one patch position, which no roll can move: "
                           "use a larger data.image_size")


def apply(m: torch.nn.Module, pe: torch.Tensor, mode: str, model: str, seed: int) -> None:
    """Apply ``mode`` to ``m``'s position embedding ``pe`` (1 × (prefix + n) × dim) in place."""
    check(m, pe, mode, model)
    with torch.no_grad():
        if mode == "zero":
            pe.zero_()
            return
        prefix = prefix_tokens(m)
        if mode == "shuffle":  # along the embedding's second axis, whatever its layout (as it always was)
            perm = torch.randperm(pe.shape[1] - prefix, generator=torch.Generator().manual_seed(SHUFFLE_SEED))
            pe[:, prefix:] = pe[:, prefix:][:, perm].clone()
            return
        patches = pe[0, prefix:]
        grid = grid_of(m, patches.shape[0], model) if mode == "roll" else (patches.shape[0], 1)
        pe[0, prefix:] = control(patches, mode, grid, seed).clone()


def has_embedding(m: torch.nn.Module) -> bool:
    """Whether ``m`` has a learned position embedding of one vector per token (1 × tokens × dim)."""
    pe = getattr(m, "pos_embed", None)
    return isinstance(pe, torch.Tensor) and pe.numel() > 0 and pe.dim() == 3 and pe.shape[0] == 1


def patch_grid(m: torch.nn.Module, model: str) -> torch.Tensor | None:
    """The patch positions' embedding of ``m`` as a rows × cols × dim tensor (None without one)."""
    if not has_embedding(m):
        return None
    patches = m.pos_embed[0, prefix_tokens(m):].detach().float().cpu()
    rows, cols = grid_of(m, patches.shape[0], model)
    return patches.reshape(rows, cols, -1)
