"""The dead-leaves generator behind the embedded images (pure numpy, no torch).

Dead leaves: an infinite sequence of opaque shapes, each with i.i.d. size,
position, orientation and colour; the image is what is seen looking through
the stack.  Rendering front to back (each shape paints only the pixels no
earlier shape covered; stop when everything is covered) draws the exact
stationary model with a finite number of shapes.  With radii p(r) ∝ r^-3 the
model is scale invariant between rmin and rmax, which gives the ≈1/f amplitude
spectrum of natural photographs (Lee, Mumford & Huang 2001).

Position must carry no information, so the model is made exactly stationary:
a shape of radius r is placed uniformly over every centre from which it could
touch the frame, the rendered frame is padded by the blur's support and then
cropped (so no border handling ever enters the pixels), and nothing else in
the pipeline looks at x or y.

``render(rng, size)`` draws one image; posinfo.data turns (seed, split, index) into the
rng and the pixels into a tensor.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

_R_MIN = 1.5            # px; the smallest leaves (texture-scale detail)
_R_MAX_FRAC = 0.4       # rmax = 0.4·size: a few large regions per image, as in photos
_MAX_ASPECT = 4.0       # shape elongation (long/short axis), log-uniform in [1, 4]
_P_RECT = 0.4           # fraction of rectangles (straight edges, corners); rest ellipses
# Max distance from centre to any point of a shape, in units of r (area = π r²):
# ellipse semi-axes r·√e and r/√e -> r·√e <= 2r; rectangle half-diagonal
# r/2·√(π(e+1/e)) <= 1.83r for e <= 4.
_KAPPA = 2.0
_BLUR_SIGMA = 0.7       # px; a camera's optical blur, anti-aliases the shape edges
_PAD = 3                # px rendered beyond each side: ceil(4·σ), cropped after blur
_BATCH0 = 256           # shapes drawn per vectorised batch (doubles as coverage rises)
_BATCH_MAX = 16384
_MAX_BATCHES = 100     # ~1.5M shapes; a typical 224 px image needs 7 batches


def _sample_radii(rng: np.random.Generator, k: int, n_frame: int, rmin: float, rmax: float) -> np.ndarray:
    """Draw k radii of the shapes that can touch an n_frame² frame.

    Shapes have p(r) ∝ r^-3 per unit area; a shape of radius r can touch the frame
    from a box of side n_frame + 2κr, so the radii of the shapes we must draw have
    density ∝ r^-3·(n + 2κr)² = n²r^-3 + 4nκ r^-2 + 4κ² r^-1: a mixture of three
    power laws, each drawn exactly by inverting its CDF.
    """
    n, kap = float(n_frame), _KAPPA
    w = np.array([
        n * n * (rmin ** -2 - rmax ** -2) / 2.0,
        4.0 * n * kap * (1.0 / rmin - 1.0 / rmax),
        4.0 * kap * kap * np.log(rmax / rmin),
    ])
    comp = rng.choice(3, size=k, p=w / w.sum())
    u = rng.random(k)
    r = np.empty(k)
    m = comp == 0
    r[m] = (rmin ** -2 - u[m] * (rmin ** -2 - rmax ** -2)) ** -0.5
    m = comp == 1
    r[m] = 1.0 / (1.0 / rmin - u[m] * (1.0 / rmin - 1.0 / rmax))
    m = comp == 2
    r[m] = rmin * (rmax / rmin) ** u[m]
    return r


def _ragged_arange(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts c_k return (owner k repeated c_k times, 0..c_k-1 for each k)."""
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    local = np.arange(total) - np.repeat(starts, counts)
    return owner, local


def _row_extent(v: np.ndarray, c: np.ndarray, s: np.ndarray, a: np.ndarray, b: np.ndarray,
                rect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x-interval [ul, ur] (relative to the centre) of a shape on the row at height v.

    The shape is an ellipse (semi-axes a, b) or rectangle (half-sides a, b) rotated
    by the angle with cosine c and sine s.  An empty row gives ul > ur.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        # Ellipse: P u² + 2 Q v u + (R v² - 1) <= 0.
        ia, ib = 1.0 / (a * a), 1.0 / (b * b)
        p = c * c * ia + s * s * ib
        q = c * s * (ia - ib) * v
        disc = q * q - p * ((s * s * ia + c * c * ib) * v * v - 1.0)
        root = np.sqrt(np.maximum(disc, 0.0))
        el_l = np.where(disc >= 0, (-q - root) / p, np.inf)
        el_r = np.where(disc >= 0, (-q + root) / p, -np.inf)
        # Rectangle: |c u + s v| <= a and |-s u + c v| <= b, two slabs in u.
        # c or s can be ~0 (axis-aligned): guard so the slab becomes all-or-nothing.
        cs = np.where(np.abs(c) < 1e-12, 1e-12, c)
        ss = np.where(np.abs(s) < 1e-12, 1e-12, s)
        l1, r1 = (-a - s * v) / cs, (a - s * v) / cs
        l2, r2 = (c * v - b) / ss, (c * v + b) / ss
        re_l = np.maximum(np.minimum(l1, r1), np.minimum(l2, r2))
        re_r = np.minimum(np.maximum(l1, r1), np.maximum(l2, r2))
    return np.where(rect, re_l, el_l), np.where(rect, re_r, el_r)


def _draw_shapes(rng: np.random.Generator, k: int, n: int, rmin: float, rmax: float) -> dict[str, np.ndarray]:
    """k shapes in depth order (front first): centre, size, orientation, kind, and the
    bounding box of the pixels whose centre they may cover, clipped to the frame."""
    r = _sample_radii(rng, k, n, rmin, rmax)
    cx = rng.uniform(-_KAPPA * r, n + _KAPPA * r)
    cy = rng.uniform(-_KAPPA * r, n + _KAPPA * r)
    rect = rng.random(k) < _P_RECT
    aspect = np.exp(rng.uniform(0.0, np.log(_MAX_ASPECT), k))
    theta = rng.uniform(0.0, np.pi, k)
    # Semi-axes (ellipse) or half-sides (rectangle) with area π r².
    sq = np.sqrt(aspect)
    ax = np.where(rect, r * sq * np.sqrt(np.pi) / 2.0, r * sq)
    bx = np.where(rect, r / sq * np.sqrt(np.pi) / 2.0, r / sq)
    ca, sa = np.cos(theta), np.sin(theta)
    aca, asa = np.abs(ca), np.abs(sa)
    hw = np.where(rect, ax * aca + bx * asa, np.sqrt((ax * ca) ** 2 + (bx * sa) ** 2))
    hh = np.where(rect, ax * asa + bx * aca, np.sqrt((ax * sa) ** 2 + (bx * ca) ** 2))
    # Pixel j has its centre at j + 0.5; candidate pixels are those whose
    # centre lies in the shape's bounding box, clipped to the frame.
    x0 = np.maximum(np.ceil(cx - hw - 0.5), 0).astype(np.int64)
    x1 = np.minimum(np.floor(cx + hw - 0.5), n - 1).astype(np.int64)
    y0 = np.maximum(np.ceil(cy - hh - 0.5), 0).astype(np.int64)
    y1 = np.minimum(np.floor(cy + hh - 0.5), n - 1).astype(np.int64)
    return dict(cx=cx, cy=cy, r=r, ca=ca, sa=sa, ax=ax, bx=bx, rect=rect, x0=x0, x1=x1, y0=y0, y1=y1)


def _row_spans(sh: dict[str, np.ndarray], owner: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """(shape, row, first pixel, last pixel) of every row span of a shape that may still
    paint an uncovered pixel."""
    x0, x1, y0, y1 = sh["x0"], sh["x1"], sh["y0"], sh["y1"]
    ok = (x1 >= x0) & (y1 >= y0)
    # Cull exactly: a shape can only paint pixels that are still uncovered.
    # Coverage at the batch start is summarised by a summed-area table
    # (whole boxes) and row prefix sums (row spans); shapes later in the
    # same batch are resolved by depth order (_paint).
    free = (owner < 0).reshape(n, n)
    row_cum = np.zeros((n, n + 1), dtype=np.int32)
    np.cumsum(free, axis=1, out=row_cum[:, 1:])
    sat = np.zeros((n + 1, n + 1), dtype=np.int32)
    np.cumsum(row_cum[:, 1:], axis=0, out=sat[1:, 1:])
    x0c, x1c = np.clip(x0, 0, n - 1), np.clip(x1, 0, n - 1)
    y0c, y1c = np.clip(y0, 0, n - 1), np.clip(y1, 0, n - 1)
    cnt = sat[y1c + 1, x1c + 1] - sat[y0c, x1c + 1] - sat[y1c + 1, x0c] + sat[y0c, x0c]
    sel = np.flatnonzero(ok & (cnt > 0))
    # One (shape, row) pair per row of the box; the shape's extent on that row
    # is an interval (ellipses and rectangles are convex), found analytically.
    s, loc = _ragged_arange(y1[sel] - y0[sel] + 1)
    s = sel[s]
    py = y0[s] + loc
    if not s.size:
        return s, py, py, py
    v = py + 0.5 - sh["cy"][s]
    ul, ur = _row_extent(v, sh["ca"][s], sh["sa"][s], sh["ax"][s], sh["bx"][s], sh["rect"][s])
    xl = np.maximum(np.ceil(sh["cx"][s] + ul - 0.5), 0).astype(np.int64)
    xr = np.minimum(np.floor(sh["cx"][s] + ur - 0.5), n - 1).astype(np.int64)
    live = xr >= xl
    s, py, xl, xr = s[live], py[live], xl[live], xr[live]
    live = row_cum[py, xr + 1] - row_cum[py, xl] > 0
    return s[live], py[live], xl[live], xr[live]


def _paint(owner: np.ndarray, spans: tuple[np.ndarray, ...], kept: np.ndarray, first_id: int, n: int) -> int:
    """Give every uncovered pixel of the spans to its front-most shape; the number painted."""
    s, py, xl, xr = spans
    span, loc = _ragged_arange(xr - xl + 1)
    pix = py[span] * n + xl[span] + loc
    s = s[span]
    m = owner[pix] < 0
    pix, s = pix[m], s[m]
    if not pix.size:
        return 0
    # Candidates are listed in shape order, which is depth order (front
    # first), so after a stable sort by pixel the first candidate of
    # each pixel is its front-most shape.
    order = np.argsort(pix, kind="stable")
    pix, s = pix[order], s[order]
    first = np.ones(pix.size, dtype=bool)
    first[1:] = pix[1:] != pix[:-1]
    owner[pix[first]] = first_id + np.searchsorted(kept, s[first])
    return int(first.sum())


_SHAPE_FIELDS = ("cx", "cy", "r", "ca", "sa", "ax", "bx", "rect")


def _render_owner(rng: np.random.Generator, n: int, rmin: float, rmax: float) -> tuple[np.ndarray, dict]:
    """Front-to-back dead-leaves occlusion on an n×n grid.

    Returns the owner map (index of the front-most shape at each pixel) and the
    parameters of the shapes that own at least one pixel candidate.
    """
    owner = np.full(n * n, -1, dtype=np.int64)
    uncovered = n * n
    keep: dict[str, list[np.ndarray]] = {k: [] for k in _SHAPE_FIELDS}
    n_kept = 0
    batch = _BATCH0
    n_batches = 0
    while uncovered > 0:
        n_batches += 1
        if n_batches > _MAX_BATCHES:  # only a rasterisation bug leaves pixels uncoverable
            raise RuntimeError(f"dead-leaves rendering left {uncovered} pixels uncovered after {n_batches - 1} batches")
        sh = _draw_shapes(rng, batch, n, rmin, rmax)
        spans = _row_spans(sh, owner, n)
        kept = np.unique(spans[0])
        if spans[0].size:
            uncovered -= _paint(owner, spans, kept, n_kept, n)
            for name in _SHAPE_FIELDS:
                keep[name].append(sh[name][kept])
            n_kept += kept.size
        batch = min(batch * 2, _BATCH_MAX)
    shapes = {k: np.concatenate(v) for k, v in keep.items()}
    return owner.reshape(n, n), shapes


# Scene materials (sRGB in [0,1]) and how often a scene contains each: mostly
# the muted colours of outdoor and indoor scenes, now and then a vivid one.
_MATERIALS = np.array([
    [0.22, 0.32, 0.12], [0.35, 0.45, 0.18], [0.62, 0.55, 0.35],  # foliage, grass, dry grass
    [0.38, 0.28, 0.18], [0.75, 0.66, 0.50], [0.48, 0.47, 0.44],  # soil, sand, rock
    [0.07, 0.07, 0.08], [0.55, 0.70, 0.88], [0.80, 0.82, 0.85],  # shadow, sky, overcast sky
    [0.18, 0.30, 0.38], [0.50, 0.34, 0.20], [0.58, 0.28, 0.20],  # water, wood, brick
    [0.85, 0.65, 0.55], [0.88, 0.87, 0.83], [0.62, 0.60, 0.56],  # skin, white wall, concrete
    [0.25, 0.25, 0.27], [0.80, 0.12, 0.10], [0.90, 0.78, 0.15],  # asphalt, red, yellow
    [0.10, 0.25, 0.70], [0.50, 0.25, 0.60], [0.90, 0.50, 0.10],  # blue, purple, orange
    [0.05, 0.45, 0.25],                                          # green paint
])
_MATERIAL_P = np.array([3, 3, 2, 3, 2, 3, 3, 2, 2, 2, 2, 2, 1.5, 2, 2, 2, 0.7, 0.7, 0.7, 0.5, 0.7, 0.5])
_MATERIAL_P = _MATERIAL_P / _MATERIAL_P.sum()
_FIELD_GRID = 64        # cells of the periodic grid that holds the region fields
_FIELD_CORR = 0.3       # correlation length of the region fields, in units of size


def _scene_palette(rng: np.random.Generator) -> np.ndarray:
    """The 3–6 materials of one scene (m×3 RGB): anchors with brightness and tint jitter."""
    m = int(rng.integers(3, 7))
    idx = rng.choice(len(_MATERIALS), size=m, replace=False, p=_MATERIAL_P)
    pal = _MATERIALS[idx] * np.exp(rng.normal(0.0, 0.3, (m, 1))) + rng.normal(0.0, 0.04, (m, 3))
    return np.clip(pal, 0.0, 1.0)


def _region_labels(rng: np.random.Generator, cx: np.ndarray, cy: np.ndarray, m: int,
                   lo: float, hi: float, corr: float) -> np.ndarray:
    """Material of each shape: argmax of m smooth random fields at its centre.

    The fields are stationary Gaussian fields made by FFT on a torus that is
    larger than the square [lo, hi]² holding every centre by 4 correlation
    lengths, so their statistics (hence the regions) do not depend on position
    and the wrap-around couples nothing that reaches the frame.
    """
    period = (hi - lo) + 4.0 * corr
    g = _FIELD_GRID
    f = np.fft.fftfreq(g, d=period / g)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    amp = np.exp(-k2 * (np.pi * corr) ** 2)  # Gaussian covariance of width ~corr
    white = rng.standard_normal((m, g, g))
    fields = np.fft.ifft2(np.fft.fft2(white) * amp).real
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-12
    fields += rng.normal(0.0, 0.5, (m, 1, 1))  # some materials cover more of the scene
    # Bilinear lookup on the periodic grid.  Interpolation makes the field a bit
    # smoother between nodes than at them; a random grid phase per image keeps
    # that from being tied to frame position.
    phase = rng.uniform(0.0, 1.0, 2)
    gx = (cx - lo) / period * g + phase[0]
    gy = (cy - lo) / period * g + phase[1]
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = gx - ix, gy - iy
    ix0, iy0, ix1, iy1 = ix % g, iy % g, (ix + 1) % g, (iy + 1) % g
    val = (fields[:, iy0, ix0] * (1 - fx) * (1 - fy) + fields[:, iy0, ix1] * fx * (1 - fy)
           + fields[:, iy1, ix0] * (1 - fx) * fy + fields[:, iy1, ix1] * fx * fy)
    return np.argmax(val, axis=0)


def render(rng: np.random.Generator, size: int) -> np.ndarray:
    """One dead-leaves image, H×W×3 float32 in [0,1]; depends only on the rng state."""
    n = size + 2 * _PAD
    rmax = max(_R_MAX_FRAC * size, 2.0 * _R_MIN)
    owner, sh = _render_owner(rng, n, _R_MIN, rmax)
    k = sh["r"].size

    # Colour: each shape is a variation of one of the scene's materials, chosen by
    # smooth region fields (a meadow here, a wall there); a few shapes are clutter
    # of any material.  Brightness varies more than hue, as with real surfaces.
    pal = _scene_palette(rng)
    margin = _KAPPA * rmax
    mat = _region_labels(rng, sh["cx"], sh["cy"], len(pal), -margin, n + margin, _FIELD_CORR * size)
    clutter = rng.random(k) < 0.1
    mat[clutter] = rng.integers(0, len(pal), int(clutter.sum()))
    base = pal[mat] * np.exp(rng.normal(0.0, 0.18, (k, 1))) + rng.normal(0.0, 0.025, (k, 3))
    # Shading: a linear luminance ramp across each shape (lighting on a curved or
    # tilted surface), typically ±0.05 from the centre to the rim.
    g_amp = rng.exponential(0.05, k)
    g_dir = rng.uniform(0.0, 2.0 * np.pi, k)
    gxr = g_amp * np.cos(g_dir) / sh["r"]
    gyr = g_amp * np.sin(g_dir) / sh["r"]
    g_off = gxr * (sh["cx"] - 0.5) + gyr * (sh["cy"] - 0.5)
    # Texture: per-shape amplitude of a fine luminance grain (many surfaces are
    # smooth, some rough).
    tex = np.where(rng.random(k) < 0.5, rng.exponential(0.01, k), rng.exponential(0.05, k))
    np.minimum(tex, 0.15, out=tex)
    grain = rng.standard_normal((n, n), dtype=np.float32)
    grain = gaussian_filter(grain, 0.6, mode="wrap")
    grain *= 1.0 / (grain.std() + 1e-12)

    o = owner
    xs = np.arange(n, dtype=np.float32)
    ramp = gxr.astype(np.float32)[o] * xs[None, :] + gyr.astype(np.float32)[o] * xs[:, None] - g_off.astype(np.float32)[o]
    # Elongated shapes: keep the far rim from saturating.
    np.clip(ramp, -0.25, 0.25, out=ramp)
    lum = ramp + tex.astype(np.float32)[o] * grain
    # Per-image exposure and white balance: photos differ in both.
    gain = (np.exp(rng.normal(0.0, 0.15)) * np.exp(rng.normal(0.0, 0.04, 3))).astype(np.float32)
    img = (base.astype(np.float32)[o] + lum[..., None]) * gain
    np.clip(img, 0.0, 1.0, out=img)
    img = gaussian_filter(img, sigma=(_BLUR_SIGMA, _BLUR_SIGMA, 0.0), mode="nearest", truncate=_PAD / _BLUR_SIGMA)
    # Crop the padding: every kept pixel's blur support lay inside the rendered
    # frame, so the border mode above never reaches the output.
    img = img[_PAD:_PAD + size, _PAD:_PAD + size]
    return np.clip(img, 0.0, 1.0)
