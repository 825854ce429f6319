"""``predictions.png``: a job's quick look at its readout (analyze.py draws the paper's figures).

Top row: the target, then each input image; bottom row: the readout's prediction for it,
on the target's gray scale. Drawn with PIL: milliseconds per job, not the ~0.4 s of a
matplotlib figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from posinfo.io import atomic_path

TILE = 112  # px per panel


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """A 3×H×W image in [0, 1] as H×W×3 uint8."""
    return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _gray(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def save(path: Path, target: np.ndarray, panels: list[tuple[str, np.ndarray, np.ndarray]], title: str,
         tile: int = TILE) -> None:
    """Draw the target and (label, image, prediction) panels, ``tile`` px each, into ``path`` (atomically)."""
    from PIL import Image, ImageDraw, ImageFont

    t, pad = tile, 4
    font = ImageFont.load_default(size=11)
    title_h, label_h = 18, 15
    width = (len(panels) + 1) * (t + pad) + pad
    canvas = Image.new("RGB", (width, title_h + 2 * (label_h + t) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, 3), title, fill="black", font=font, anchor="ma")
    lo, hi = min(0.0, float(target.min())), 1.0
    rows = [("target", _gray(target, lo, hi), None)] + [(label, img, pred) for label, img, pred in panels]
    y_top, y_bottom = title_h + label_h, title_h + 2 * label_h + t
    for c, (label, top, pred) in enumerate(rows):
        x = pad + c * (t + pad)
        tile = Image.fromarray(top).convert("RGB").resize((t, t), Image.Resampling.BILINEAR)
        canvas.paste(tile, (x, y_top))
        draw.rectangle((x - 1, y_top - 1, x + t, y_top + t), outline=(160, 160, 160))  # a white input stays visible
        draw.text((x + t / 2, y_top - 2), label, fill="black", font=font, anchor="md")
        if pred is not None:
            canvas.paste(Image.fromarray(_gray(pred, lo, hi)).resize((t, t), Image.Resampling.BILINEAR), (x, y_bottom))
            draw.rectangle((x - 1, y_bottom - 1, x + t, y_bottom + t), outline=(160, 160, 160))
    draw.text((pad + t / 2, y_bottom + t / 2), "prediction", fill="black", font=font, anchor="mm")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
