"""Images held by the calling process, as image sets a job reads like its own (``data=python``):
a folder, a list of image files, a tensor, or any torch ``Dataset`` (posinfo.probe), and the new
images a loaded readout predicts on (posinfo.trained).

Each set has a content identity, the cache key of its features: a tensor by a hash of its bytes,
image files by hashes of theirs, a posinfo image set by its own ``identity()``, any other Dataset by
a hash of every item it returns (one pass over it). posinfo.probe registers a set under
``python:<source>-<16 hex digits of that hash>`` and puts the key in ``data.train_dir`` /
``data.test_dir``; the job (``posinfo.job.make_dataset``) asks :func:`dataset` for it. The registry
lives in this process only: ``sweep.py`` composes from YAML and cannot name such a set.

Every image leaves as float32 3×size×size in [0, 1], un-normalised, like posinfo.data's: files
through PIL's bilinear resize (as folders), tensors through torch's bilinear resize with
antialiasing (PIL's filter on a downscale).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from posinfo.data import FolderImages, read_image
from posinfo.errors import PosinfoError
from posinfo.io import user_path
from posinfo.names import PYTHON_DATA

log = logging.getLogger(__name__)

KEY_PREFIX = f"{PYTHON_DATA}:"
KEY_DIGITS = 16
SPLIT_SEED = 0  # the permutation that splits one set into training and test images: fixed, not a job's seed

_SETS: dict[str, "ImageSet"] = {}
_RANGE_FIX = ("posinfo takes RGB in [0, 1], un-normalised (as a folder's images): pass uint8 images or divide by 255, "
              "and undo any normalisation")


class ImageSet(torch.utils.data.Dataset):
    """``n`` images: ``get(i)`` gives item i in any accepted form, returned as 3×size×size in [0, 1]."""

    def __init__(self, source: str, get: Callable[[int], Any], names: list[str], content: str, size: int,
                 indices: list[int] | None = None):
        self.source, self._get, self.content, self.size = source, get, content, int(size)
        self._all_names = list(names)
        self.indices = list(range(len(names))) if indices is None else list(indices)
        self.names = [self._all_names[i] for i in self.indices]
        self.n = len(self.indices)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i) -> torch.Tensor:
        j = self.indices[int(i)]
        return as_image(self._get(j), self.size, f"image {self._all_names[j]}")

    def identity(self) -> dict:
        out = {"kind": PYTHON_DATA, "source": self.source, "content": self.content, "size": self.size, "n": self.n}
        if self.indices != list(range(len(self._all_names))):  # a split or a prefix: which images, in order
            out["indices"] = self.indices
        return out

    def take(self, indices: Sequence[int], size: int | None = None) -> "ImageSet":
        """The images at ``indices`` (of this set), at ``size`` (default: this set's)."""
        return ImageSet(self.source, self._get, self._all_names, self.content, size or self.size,
                        [self.indices[int(i)] for i in indices])

    @property
    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()
        return f"{KEY_PREFIX}{self.source}-{digest[:KEY_DIGITS]}"


# ----------------------------------------------------------------------------- one image


def _from_array(a: np.ndarray, what: str) -> torch.Tensor:
    """An H×W, H×W×1, H×W×3 or H×W×4 array (a PIL image's layout) as a 3×H×W tensor."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise PosinfoError(f"{what}: an array of shape {a.shape} is not an image: give H×W×3 (or a 3×H×W tensor)")
    return torch.from_numpy(np.ascontiguousarray(a[:, :, :3])).permute(2, 0, 1)


def as_image(item: Any, size: int, what: str = "image") -> torch.Tensor:
    """One image (a tensor 3×H×W or 1×H×W, float in [0, 1] or uint8; a PIL image; an H×W×3 array; a
    path; or a Dataset item ``(image, label, ...)``) as float32 3×size×size in [0, 1]."""
    if isinstance(item, (tuple, list)) and item and not isinstance(item[0], (int, float)):
        item = item[0]  # (image, label): torchvision's datasets
    if isinstance(item, (str, Path)):
        return read_image(item, size)
    if not isinstance(item, (torch.Tensor, np.ndarray)):
        try:  # a PIL image, through the same resize as a folder's files
            from PIL import Image

            if isinstance(item, Image.Image):
                item = item.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        except ImportError:  # pragma: no cover - PIL is a dependency
            pass
        item = np.asarray(item)
    x = _from_array(item, what) if isinstance(item, np.ndarray) else item
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise PosinfoError(f"{what}: a tensor of shape {tuple(x.shape)} is not an image: give 3×H×W (N×3×H×W for a set)")
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if not (lo >= 0.0 and hi <= 1.0):  # NaN fails too
        raise PosinfoError(f"{what}: values span [{lo:.3g}, {hi:.3g}]; {_RANGE_FIX}")
    if tuple(x.shape[1:]) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp(0, 1).contiguous()


# ----------------------------------------------------------------------------- sets


def _digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return f"{t.dtype}{tuple(t.shape)}".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _item_bytes(item: Any) -> bytes:
    if isinstance(item, (tuple, list)) and item and not isinstance(item[0], (int, float)):
        item = item[0]
    if isinstance(item, torch.Tensor):
        return _tensor_bytes(item)
    if isinstance(item, (str, Path)):
        return user_path(item).read_bytes()
    return np.ascontiguousarray(np.asarray(item)).tobytes() + str(np.asarray(item).shape).encode()


def _from_tensor(images: torch.Tensor, size: int) -> ImageSet:
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise PosinfoError(f"images: a tensor of shape {tuple(images.shape)} is not a set of images: give N×3×H×W")
    images = images.detach().cpu()
    if images.dtype != torch.uint8 and len(images):  # the whole set before any job (the job checks each image)
        lo, hi = float(images.min()), float(images.max())
        if not (lo >= 0.0 and hi <= 1.0):
            raise PosinfoError(f"images: values span [{lo:.3g}, {hi:.3g}]; {_RANGE_FIX}")
    return ImageSet("tensor", lambda i: images[i], [f"{i:05d}" for i in range(len(images))],
                    _digest([_tensor_bytes(images)]), size)


def _from_files(paths: Sequence[str | Path], size: int, names: list[str] | None = None,
                checked: bool = False) -> ImageSet:
    files = [user_path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise PosinfoError(f"images: no such file '{missing[0]}'" + (f" (+{len(missing) - 1} more)" if len(missing) > 1
                                                                       else "") + ": give existing jpg/png files")
    for p in [] if checked else files:  # each decoded once, as data=folder does: a bad one named before any job
        read_image(p, 8)
    names = names or [p.name for p in files]
    return ImageSet("files", lambda i: files[i], names, _digest([p.read_bytes() for p in files]), size)


def _from_dataset(ds: Any, size: int) -> ImageSet:
    n = len(ds)
    names = [str(x) for x in getattr(ds, "names", [f"{i:05d}" for i in range(n)])]
    if callable(getattr(ds, "identity", None)):  # posinfo's own image sets know what they are
        content = _digest([json.dumps(ds.identity(), sort_keys=True, default=str).encode()])
    else:
        log.info("hashing the %d images of %s once to key their features", n, type(ds).__name__)
        content = _digest([_item_bytes(ds[i]) for i in range(n)])
    as_image(ds[0], size, f"images[0] ({type(ds).__name__})")  # its form and range, before any job
    return ImageSet(type(ds).__name__, lambda i: ds[i], names, content, size)


def image_set(images: Any, size: int) -> ImageSet:
    """``images`` (a folder, an image file, a list of files, a tensor N×3×H×W or 3×H×W, or a Dataset)
    as an ImageSet at ``size``; one line for anything else."""
    if isinstance(images, (str, Path)):
        p = user_path(images)
        if p.is_dir():  # listed (and checked) as data=folder lists a folder; read at whatever size asked
            folder = FolderImages(p, size=size)
            return _from_files([folder.root / name for name in folder.names], size, folder.names, checked=True)
        return _from_files([p], size)
    if isinstance(images, torch.Tensor):
        return _from_tensor(images, size)
    if isinstance(images, (list, tuple)) and images and all(isinstance(x, (str, Path)) for x in images):
        return _from_files(images, size)
    if hasattr(images, "__getitem__") and hasattr(images, "__len__") and len(images) > 0:
        return _from_dataset(images, size)
    raise PosinfoError(f"images={type(images).__name__}: give a folder, an image file, a list of files, "
                       "a tensor N×3×H×W in [0, 1] or a torch Dataset (of at least one image)")


def split(images: ImageSet, test_fraction: float) -> tuple[ImageSet, ImageSet]:
    """Training and test images from one set: a fixed permutation (SPLIT_SEED), the last
    ``test_fraction`` (at least one image) for testing."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise PosinfoError(f"test_fraction={test_fraction}: must lie strictly between 0 and 1, e.g. 0.2")
    if len(images) < 2:
        raise PosinfoError(f"images: {len(images)} image cannot be split into training and test images: "
                           "give at least 2 (better dozens), or test_images=")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    n_test = min(len(images) - 1, max(1, int(round(len(images) * float(test_fraction)))))
    return images.take(sorted(order[:-n_test])), images.take(sorted(order[-n_test:]))


def register(images: ImageSet) -> str:
    """Register ``images`` for jobs of this process; its key (``python:...``)."""
    _SETS[images.key] = images
    return images.key


def dataset(key: Any, n: int | None, size: int) -> ImageSet:
    """The registered set ``key`` at ``size``, its first ``n`` images (None: all)."""
    images = _SETS.get(str(key))
    if images is None:
        raise PosinfoError(f"data.train_dir/test_dir={key}: no such image set in this process: images held in "
                           "Python are probed with posinfo.probe(model, images); from the command line use data=folder")
    count = len(images) if n is None else min(int(n), len(images))
    return images.take(range(count), size)
