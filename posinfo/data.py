"""Images: embedded dead-leaves images, folders of photos, synthetic black/white/noise.

Every image leaves this module as a float32 tensor of shape 3×size×size with
values in [0, 1] (pixel space; any normalisation happens later, in the job).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from posinfo.errors import PosinfoError

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")

# Bump whenever a change alters the pixels of any embedded image: it is part of
# identity(), so feature caches keyed on it are invalidated.
GENERATOR_VERSION = "deadleaves-v1"

_SPLIT_IDS = {"train": 0, "test": 1}
_NOISE_STREAM = 2  # a SeedSequence word no embedded split uses
_MIN_SIZE = 8
# Folders with more files than this get a progress bar for the readability check.
_PROGRESS_MIN_FILES = 200


# --------------------------------------------------------------------------
# pixel helpers
# --------------------------------------------------------------------------

def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    """H×W×3 array in [0,1] (or uint8) -> float32 tensor 3×H×W in [0,1]."""
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _load_resized(path: Path, size: int) -> torch.Tensor:
    """Load an image file as RGB, resize to size×size with PIL bilinear (aspect not kept).

    This is what the authors' torchvision Resize((224, 224)) does on a PIL image.
    """
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return _to_tensor(np.asarray(im))


def _check_readable(path: Path) -> str | None:
    """Decode the file once; return None when it is readable, else the reason."""
    try:
        with Image.open(path) as im:
            # Decoding fully (not just verify()) catches truncated JPEGs; draft()
            # lets libjpeg decode at reduced scale, which still reads every byte.
            im.draft("RGB", (64, 64))
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
    except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
        return f"{type(e).__name__}: {e}"
    return None


def _check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < _MIN_SIZE:
        raise PosinfoError(
            f"image size {size!r} is invalid: use an integer >= {_MIN_SIZE} (e.g. data.image_size=224)"
        )
    return int(size)


def _check_n(n: int | None, what: str) -> int | None:
    if n is None:
        return None
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise PosinfoError(f"{what} = {n!r} is invalid: use a positive integer or null (all images)")
    return int(n)


# --------------------------------------------------------------------------
# embedded images: the dead-leaves model
# --------------------------------------------------------------------------
#
# Dead leaves: an infinite sequence of opaque shapes, each with i.i.d. size,
# position, orientation and colour; the image is what is seen looking through
# the stack.  Rendering front to back (each shape paints only the pixels no
# earlier shape covered; stop when everything is covered) draws the exact
# stationary model with a finite number of shapes.  With radii p(r) ∝ r^-3 the
# model is scale invariant between rmin and rmax, which gives the ≈1/f amplitude
# spectrum of natural photographs (Lee, Mumford & Huang 2001).
#
# Position must carry no information, so the model is made exactly stationary:
# a shape of radius r is placed uniformly over every centre from which it could
# touch the frame, the rendered frame is padded by the blur's support and then
# cropped (so no border handling ever enters the pixels), and nothing else in
# the pipeline looks at x or y.

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
_TILE = 8              # px; granularity of the coverage bookkeeping

# Luminance-neutral opponent directions in RGB (Rec.601 luma weights):
# red-green and yellow-blue; adding them leaves 0.299R+0.587G+0.114B unchanged.
_LUMA = np.array([0.299, 0.587, 0.114])
_E_RG = np.array([1.0, -1.0, 0.0]) - np.dot(_LUMA, [1.0, -1.0, 0.0])
_E_YB = (np.array([1.0, 1.0, -2.0]) - np.dot(_LUMA, [1.0, 1.0, -2.0])) / 2.0


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


def _render_owner(rng: np.random.Generator, n: int, rmin: float, rmax: float) -> tuple[np.ndarray, dict]:
    """Front-to-back dead-leaves occlusion on an n×n grid.

    Returns the owner map (index of the front-most shape at each pixel) and the
    parameters of the shapes that own at least one pixel candidate.
    """
    owner = np.full(n * n, -1, dtype=np.int64)
    uncovered = n * n
    keep: dict[str, list[np.ndarray]] = {k: [] for k in ("cx", "cy", "r", "ca", "sa", "ax", "bx", "rect")}
    n_kept = 0
    nt = -(-n // _TILE)
    batch = _BATCH0
    while uncovered > 0:
        k = batch
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
        ok = (x1 >= x0) & (y1 >= y0)
        # Cull exactly: a shape can only paint uncovered pixels, so enumerate its
        # candidate pixels only inside the T×T tiles of its box that still hold
        # an uncovered pixel (tile counts taken at the batch start).
        free_t = np.zeros((nt * _TILE, nt * _TILE), dtype=np.int32)
        free_t[:n, :n] = (owner < 0).reshape(n, n)
        tile_free = free_t.reshape(nt, _TILE, nt, _TILE).sum(axis=(1, 3)) > 0
        sel = np.flatnonzero(ok)
        tx0, tx1 = x0[sel] // _TILE, x1[sel] // _TILE
        ty0, ty1 = y0[sel] // _TILE, y1[sel] // _TILE
        tw = tx1 - tx0 + 1
        t_who, t_loc = _ragged_arange(tw * (ty1 - ty0 + 1))
        tx = tx0[t_who] + t_loc % tw[t_who]
        ty = ty0[t_who] + t_loc // tw[t_who]
        live = tile_free[ty, tx]
        t_who, tx, ty = t_who[live], tx[live], ty[live]
        s_of_t = sel[t_who]
        # Pixel range of each (shape, tile) pair: the tile clipped to the shape's box.
        px0 = np.maximum(tx * _TILE, x0[s_of_t])
        px1 = np.minimum(tx * _TILE + _TILE - 1, x1[s_of_t])
        py0 = np.maximum(ty * _TILE, y0[s_of_t])
        py1 = np.minimum(ty * _TILE + _TILE - 1, y1[s_of_t])
        kept = np.unique(s_of_t)
        if s_of_t.size:
            w = px1 - px0 + 1
            pair, loc = _ragged_arange(w * (py1 - py0 + 1))
            px = px0[pair] + loc % w[pair]
            py = py0[pair] + loc // w[pair]
            s = s_of_t[pair]
            u = px + 0.5 - cx[s]
            v = py + 0.5 - cy[s]
            a = u * ca[s] + v * sa[s]
            b = -u * sa[s] + v * ca[s]
            ra, rb = a / ax[s], b / bx[s]
            inside = np.where(rect[s], (np.abs(ra) <= 1.0) & (np.abs(rb) <= 1.0), ra * ra + rb * rb <= 1.0)
            pix = py * n + px
            m = inside & (owner[pix] < 0)
            pix, s = pix[m], s[m]
            if pix.size:
                # Candidates are listed in shape order, which is depth order (front
                # first), so after a stable sort by pixel the first candidate of
                # each pixel is its front-most shape.
                order = np.argsort(pix, kind="stable")
                pix, s = pix[order], s[order]
                first = np.ones(pix.size, dtype=bool)
                first[1:] = pix[1:] != pix[:-1]
                owner[pix[first]] = n_kept + np.searchsorted(kept, s[first])
                uncovered -= int(first.sum())
            for name, arr in (("cx", cx), ("cy", cy), ("r", r), ("ca", ca), ("sa", sa),
                              ("ax", ax), ("bx", bx), ("rect", rect)):
                keep[name].append(arr[kept])
            n_kept += kept.size
        batch = min(batch * 2, _BATCH_MAX)
    shapes = {k: np.concatenate(v) for k, v in keep.items()}
    return owner.reshape(n, n), shapes


def _shape_colours(rng: np.random.Generator, k: int) -> np.ndarray:
    """k base colours (k×3, RGB in [0,1]) from a natural-looking distribution.

    Each image has a small palette of scene colours (most shapes are variations
    of a few materials, as in a photo), luminance is broad and skewed dark, and
    chroma is low and mostly along the yellow-blue (daylight) axis.
    """
    n_pal = int(rng.integers(3, 7))
    pal_l = rng.beta(1.6, 2.0, n_pal)
    pal_rg = rng.normal(0.0, 0.07, n_pal)
    pal_yb = rng.normal(0.02, 0.13, n_pal)
    # Some palette entries are vivid (flowers, paint, sky), most are muted.
    vivid = rng.random(n_pal) < 0.25
    pal_rg[vivid] *= 2.5
    pal_yb[vivid] *= 2.0
    which = rng.integers(0, n_pal, k)
    free = rng.random(k) < 0.3  # the rest of the world: colours off the palette
    lum = np.where(free, rng.beta(1.6, 2.0, k), pal_l[which] + rng.normal(0.0, 0.06, k))
    rg = np.where(free, rng.normal(0.0, 0.06, k), pal_rg[which] + rng.normal(0.0, 0.02, k))
    yb = np.where(free, rng.normal(0.02, 0.10, k), pal_yb[which] + rng.normal(0.0, 0.03, k))
    # Dark and bright surfaces are less chromatic.
    lum = np.clip(lum, 0.0, 1.0)
    sat = np.clip(4.0 * lum * (1.0 - lum), 0.15, 1.0)
    rgb = lum[:, None] + sat[:, None] * (rg[:, None] * _E_RG + yb[:, None] * _E_YB)
    return np.clip(rgb, 0.0, 1.0)


def _render_embedded(rng: np.random.Generator, size: int) -> np.ndarray:
    """One dead-leaves image, H×W×3 float32 in [0,1]; depends only on the rng state."""
    n = size + 2 * _PAD
    rmax = max(_R_MAX_FRAC * size, 2.0 * _R_MIN)
    owner, sh = _render_owner(rng, n, _R_MIN, rmax)
    k = sh["r"].size

    base = _shape_colours(rng, k)
    # Shading: a linear luminance ramp across each shape (lighting on a curved or
    # tilted surface), up to about ±0.12 from the centre to the rim.
    g_amp = rng.exponential(0.05, k)
    g_dir = rng.uniform(0.0, 2.0 * np.pi, k)
    gx, gy = g_amp * np.cos(g_dir), g_amp * np.sin(g_dir)
    # Texture: per-shape amplitude of a fine luminance grain (many surfaces are
    # smooth, some rough); a little independent chroma grain as in real sensors.
    tex = np.where(rng.random(k) < 0.5, rng.exponential(0.01, k), rng.exponential(0.05, k))
    grain = gaussian_filter(rng.standard_normal((n, n)), 0.6, mode="wrap")
    grain /= grain.std() + 1e-12
    chroma_grain = rng.normal(0.0, 0.008, (n, n, 3))

    yy, xx = np.mgrid[0:n, 0:n]
    o = owner
    ramp = (gx[o] * (xx + 0.5 - sh["cx"][o]) + gy[o] * (yy + 0.5 - sh["cy"][o])) / sh["r"][o]
    ramp = np.clip(ramp, -0.25, 0.25)  # elongated shapes: keep the rim from saturating
    lum_delta = ramp + tex[o] * grain
    img = base[o] + lum_delta[..., None] + chroma_grain

    # Per-image exposure and white balance: photos differ in both.
    img = img * np.exp(rng.normal(0.0, 0.15)) * np.exp(rng.normal(0.0, 0.04, 3))
    img = np.clip(img, 0.0, 1.0)
    img = gaussian_filter(img, sigma=(_BLUR_SIGMA, _BLUR_SIGMA, 0.0), mode="nearest", truncate=_PAD / _BLUR_SIGMA)
    # Crop the padding: every kept pixel's blur support lay inside the rendered
    # frame, so the border mode above never reaches the output.
    img = img[_PAD:_PAD + size, _PAD:_PAD + size]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def embedded_image(split: str, index: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """Image `index` of an embedded split, generated on its own (3×size×size in [0,1])."""
    if split not in _SPLIT_IDS:
        raise PosinfoError(f"embedded split {split!r} is unknown: use 'train' or 'test'")
    size = _check_size(size)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_IDS[split], int(index)]))
    return _to_tensor(_render_embedded(rng, size))


class EmbeddedImages(torch.utils.data.Dataset):
    """Procedural natural-like images (dead-leaves model), deterministic, no download.

    Image i of a split depends only on (seed, split, i), so train and test never
    share an image and any image can be generated alone (e.g. in a DataLoader worker).
    """

    TRAIN_AVAILABLE = 2000
    TEST_AVAILABLE = 500

    def __init__(self, split: str, n: int | None = None, size: int = 224, seed: int = 0) -> None:
        if split not in _SPLIT_IDS:
            raise PosinfoError(f"embedded split {split!r} is unknown: use 'train' or 'test'")
        n = _check_n(n, f"number of embedded {split} images")
        self.split = split
        self.size = _check_size(size)
        self.seed = int(seed)
        available = self.TRAIN_AVAILABLE if split == "train" else self.TEST_AVAILABLE
        if n is not None and n > available:
            logger.warning(
                "asked for %d embedded %s images but %d are available; using all %d",
                n, split, available, available,
            )
            n = available
        self.n = available if n is None else n
        self.names: list[str] = [f"{split}_{i:05d}" for i in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i) -> torch.Tensor:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"embedded {self.split} index {i} out of range 0..{self.n - 1}")
        return embedded_image(self.split, i, self.size, self.seed)

    def identity(self) -> dict:
        """Everything that determines the pixels, JSON-able (for caches and result.json)."""
        return {
            "kind": "embedded",
            "split": self.split,
            "n": self.n,
            "size": self.size,
            "seed": self.seed,
            "generator": GENERATOR_VERSION,
        }


# --------------------------------------------------------------------------
# folders of image files
# --------------------------------------------------------------------------

class FolderImages(torch.utils.data.Dataset):
    """All jpg/jpeg/png files under a folder (recursive), sorted by relative path."""

    def __init__(self, root: str | Path, n: int | None = None, size: int = 224) -> None:
        self.root = Path(root).expanduser()
        self.size = _check_size(size)
        n = _check_n(n, f"number of images from '{self.root}'")
        if not self.root.exists():
            raise PosinfoError(f"data folder '{self.root}' does not exist: set data.train_dir/test_dir to a folder of jpg/png images")
        if not self.root.is_dir():
            raise PosinfoError(f"data folder '{self.root}' is not a directory: point data.train_dir/test_dir at the folder that holds the images")

        candidates = sorted(
            (p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
             if p.suffix.lower() in IMAGE_EXTS and p.is_file()),
        )
        if not candidates:
            raise PosinfoError(
                f"data folder '{self.root}' has no image files ({', '.join(IMAGE_EXTS)}, any case, searched recursively): "
                "point data.train_dir/test_dir at a folder of images"
            )

        # Check each file once here, so a bad file is reported by name at the start
        # instead of crashing a DataLoader worker halfway through a run.
        want = len(candidates) if n is None else n
        names: list[str] = []
        bad = 0
        it = candidates
        if len(candidates) > _PROGRESS_MIN_FILES and want > _PROGRESS_MIN_FILES:
            from tqdm import tqdm

            it = tqdm(candidates, desc=f"checking images in {self.root.name}", unit="img", leave=False)
        for rel in it:
            if len(names) >= want:
                break
            reason = _check_readable(self.root / rel)
            if reason is None:
                names.append(rel)
            else:
                bad += 1
                logger.warning("skipping unreadable image '%s': %s", self.root / rel, reason)
        if hasattr(it, "close"):
            it.close()
        if not names:
            raise PosinfoError(
                f"data folder '{self.root}' has {len(candidates)} image files but none is readable: "
                "replace or remove the broken files"
            )
        if n is not None and len(names) < n:
            logger.warning(
                "asked for %d images from '%s' but only %d readable ones exist; using all %d",
                n, self.root, len(names), len(names),
            )
        if bad:
            logger.warning("skipped %d unreadable file(s) in '%s'", bad, self.root)
        self.names: list[str] = names
        self.n = len(names)
        logger.info("data folder '%s': %d images at %d px", self.root, self.n, self.size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i) -> torch.Tensor:
        return _load_resized(self.root / self.names[int(i)], self.size)

    def identity(self) -> dict:
        """Root, size, n and each file's (relpath, byte size, mtime_ns): changes when a file does."""
        files = []
        for rel in self.names:
            st = os.stat(self.root / rel)
            files.append([rel, st.st_size, st.st_mtime_ns])
        return {
            "kind": "folder",
            "root": str(self.root.resolve()),
            "size": self.size,
            "n": self.n,
            "files": files,
        }


# --------------------------------------------------------------------------
# synthetic evaluation inputs
# --------------------------------------------------------------------------

# The authors' noise image (reference/noise.jpg, 224×224) measured here:
#   per-channel mean 25.4/24.8/25.3 (of 255), std 23.6/24.1/23.3, exact zeros
#   14.2/12.6/15.1 %, cross-channel correlation 0.87, lag-1 autocorrelation 0.03,
#   diagonal lag 0.047, none at lag 8.  Its JPEG tables are exactly the IJG
#   quality-75 tables with 4:2:0 chroma subsampling, i.e. PIL's default save().
# The channel correlation and the short-range correlation are JPEG artefacts: a
# fit over source distributions followed by that same JPEG round trip gives
#   source = max(0, N(0, 59/255)) i.i.d. per pixel and channel (50% zeros),
# which after the round trip reproduces every statistic above (mean 25.2, std 23.7,
# zeros 13.9 %, channel correlation 0.870, lag-1 0.032, diagonal 0.046).  A pure
# i.i.d. generator could match the marginals but would be colourful noise with
# uncorrelated channels, unlike what the authors' network was evaluated on.
_NOISE_SIGMA = 59.0 / 255.0
_NOISE_JPEG_QUALITY = 75


def noise_image(size: int = 224, seed: int = 0) -> torch.Tensor:
    """Dark colour noise matching the authors' noise.jpg (see the fit above); 3×size×size."""
    size = _check_size(size)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _NOISE_STREAM]))
    src = np.maximum(rng.normal(0.0, _NOISE_SIGMA, (size, size, 3)), 0.0)
    src = np.clip(np.rint(src * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(src, "RGB").save(buf, format="JPEG", quality=_NOISE_JPEG_QUALITY, subsampling="4:2:0")
    buf.seek(0)
    with Image.open(buf) as im:
        return _to_tensor(np.asarray(im.convert("RGB")))


SYNTHETIC_KINDS = ("black", "white", "noise")


def synthetic_image(kind: str, size: int = 224, seed: int = 0, file: str | None = None) -> torch.Tensor:
    """A synthetic evaluation input: 'black' (0), 'white' (1), 'noise', or an image file.

    With `file`, that file is loaded and resized like folder images instead (kind
    is then only a label).  Values are in pixel space, before any normalisation.
    """
    size = _check_size(size)
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise PosinfoError(f"input file '{path}' does not exist: set input.file to an existing jpg/png image or null")
        reason = _check_readable(path)
        if reason is not None:
            raise PosinfoError(f"input file '{path}' is not a readable image ({reason}): use a valid jpg/png or input.file=null")
        return _load_resized(path, size)
    if kind == "black":
        return torch.zeros(3, size, size, dtype=torch.float32)
    if kind == "white":
        return torch.ones(3, size, size, dtype=torch.float32)
    if kind == "noise":
        return noise_image(size, seed)
    raise PosinfoError(f"synthetic input kind {kind!r} is unknown: use one of {', '.join(SYNTHETIC_KINDS)}")
