"""Settings that would make a job meaningless or impossible, refused before it does anything, each
with one line naming the key, the value and the fix (issue 22): options that have no effect in
the configuration they are given in (a measurement labelled with a setting it never used), and
sizes whose arrays no memory here holds (an estimate made before anything is allocated, instead
of an allocator error of hundreds of GB after the job started).

Torch-free: ``posinfo.schema.check_config`` runs both at every job's entrance, and
``posinfo.preflight`` runs the settings check for a whole sweep before any job starts (the
memory is the machine's, so that check waits for the machine that runs the job).
"""

from __future__ import annotations

import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posinfo.names import SELF_CONTAINED_DATA, STRIPES, SYNTHETIC_KINDS

# Bytes per pixel of the arrays a job holds at data.image_size: float32 maps (the target, a
# prediction) and float32 RGB images (an image, an image on its canvas).
MAP_BYTES = 4
IMAGE_BYTES = 3 * 4


def _get(cfg: DictConfig, key: str) -> Any:
    """A value of a composed config, its type checked (schema.check_config) or not (posinfo.preflight
    checks a sweep's compositions before any job): an unset required value (???) reads as None."""
    return OmegaConf.select(cfg, key, default=None)


def no_effect_problems(cfg: DictConfig) -> list[str]:
    """One line per setting that the configuration ignores."""
    out = []
    target, rng = _get(cfg, "target.name"), _get(cfg, "target.range")
    if rng not in (None, "unit") and target not in STRIPES:
        out.append(f"target.range={rng} has no effect on target={target}: it applies to the stripes "
                   f"({', '.join(STRIPES)}) only; drop target.range (or use target.range=unit)")
    data = _get(cfg, "data.name")
    if data in SELF_CONTAINED_DATA:  # folder reads the dirs; posinfo.probe's python data names its images by them
        for key in ("data.train_dir", "data.test_dir"):
            if _get(cfg, key) not in (None, ""):
                out.append(f"{key}={_get(cfg, key)} has no effect with data={data}, whose images are its own: "
                           f"use data=folder to read that folder, or drop {key}")
    return out


def available_ram() -> int:
    """Bytes of RAM available now (Linux: MemAvailable; elsewhere the free pages); 0 if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} bytes"


def _maps_held(cfg: DictConfig) -> int:
    """How many full-size maps a job holds at once, at least: its target, and the predictions of
    one evaluated input, kept for scoring (every test image's; a synthetic input is one image)."""
    kinds = list(_get(cfg, "input.kinds"))
    n_test = _get(cfg, "data.num_test")
    images = n_test if isinstance(n_test, int) and any(k not in SYNTHETIC_KINDS for k in kinds) else 1
    return 1 + images


def memory_problems(cfg: DictConfig, ram: int | None = None) -> list[str]:
    """One line per size whose arrays alone exceed ``ram`` bytes (default: the RAM available now).

    A lower bound of what the job allocates, so a size it refuses could never have run: one
    image on its canvas (``data.canvas.border``), and the target and predictions at
    ``data.image_size`` (the encoder's activations come on top)."""
    ram = available_ram() if ram is None else ram
    size, border = _get(cfg, "data.image_size"), _get(cfg, "data.canvas.border")
    if ram <= 0 or size <= 0:
        return []  # nothing known to compare with
    out = []
    side = size + 2 * border
    if border and IMAGE_BYTES * side * side > ram:
        fits = max(0, (math.isqrt(ram // IMAGE_BYTES) - size) // 2)
        out.append(f"data.canvas.border={border}: one image on its {side}×{side} canvas takes "
                   f"{_size(IMAGE_BYTES * side * side)}, more than the {_size(ram)} of memory available: "
                   f"use data.canvas.border≤{fits}")
    n = _maps_held(cfg)
    need = (MAP_BYTES * n + IMAGE_BYTES) * size * size
    if need > ram:
        fits = math.isqrt(ram // (MAP_BYTES * n + IMAGE_BYTES))
        out.append(f"data.image_size={size}: the job holds {n} maps and an image of {size}×{size} pixels "
                   f"(the target, {n - 1} test prediction(s)), about {_size(need)}, more than the {_size(ram)} of "
                   f"memory available: use data.image_size≤{fits}")
    return out
