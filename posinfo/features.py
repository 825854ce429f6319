"""What the readout consumes: taps resized to feature_size² and concatenated.

Two interchangeable sources feed training and evaluation:
``CachedFeatures`` reads a memory-mapped array that the frozen encoder filled once per
(backbone configuration, image set); ``LiveFeatures`` recomputes every batch, as the
authors' code does (``cache.enabled=false``). Nothing downstream knows which it got.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from posinfo.encoder import Encoder
from posinfo.errors import PosinfoError
from posinfo.guards import available_ram
from posinfo.names import DEVICE_MEMORY_SHARE, HOST_MEMORY_SHARE, PRECISIONS

log = logging.getLogger(__name__)


def resize_concat(maps: list[torch.Tensor], size: int) -> torch.Tensor:
    """Bilinear resize each tap to size×size and concatenate along channels.

    align_corners=True as in the authors' current code.
    """
    return torch.cat(
        [F.interpolate(m, size=(size, size), mode="bilinear", align_corners=True) for m in maps], dim=1
    )


# Each backbone.precision (posinfo.names) as the dtype its autocast takes; float32 takes none.
AUTOCAST = {p: None if p == "float32" else getattr(torch, p) for p in PRECISIONS}


class FeatureExtractor:
    """images (B×3×H×W in [0,1]) -> features (B×C×size×size, float32) on ``device``.

    ``precision`` (``backbone.precision``): ``float32``, the reference, or ``bfloat16`` /
    ``float16``, the encoder under autocast (its features still returned, and cached, from
    float32). On a GPU the encoder and its input are channels-last, the layout its
    convolution kernels are fastest in; on a CPU they stay as they are, so that float32
    features there are the ones the authors' code computes, bit for bit.
    """

    def __init__(self, encoder: "Encoder | Callable[[], Encoder]", size: int, device: torch.device,
                 precision: str = "float32"):
        """``encoder``: the encoder, or a function that builds it, called only if features are
        computed (a job whose features are all cached never builds one)."""
        if precision not in PRECISIONS:
            raise PosinfoError(f"backbone.precision={precision} is not known: use one of {', '.join(PRECISIONS)}")
        self._encoder = encoder if isinstance(encoder, Encoder) else None
        self._build = None if isinstance(encoder, Encoder) else encoder
        self.size = size
        self.device = device
        self.precision = precision
        self.channels_last = device.type == "cuda"
        self._on_device = False

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder, self._build = self._build(), None
        return self._encoder

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self._on_device:  # a lazy encoder gets its weights only when first needed
            if self.precision == "float16" and self.device.type == "cpu":
                log.warning("backbone.precision=float16 on a CPU: the features are right, but CPUs have no fast float16 "
                            "arithmetic and extraction runs many times slower than in float32 (23× for one job "
                            "measured): use backbone.precision=float32 on a CPU")
            self.encoder.materialize().to(self.device)
            if self.channels_last:
                self.encoder.to(memory_format=torch.channels_last)
            self._on_device = True
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = AUTOCAST[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            maps = self.encoder(x)
        with torch.inference_mode():
            f = resize_concat([m.float() for m in maps], self.size)
            if dtype is torch.float16 and not bool(torch.isfinite(f).all()):
                raise PosinfoError("backbone.precision=float16: the encoder's activations overflow float16 "
                                   "(largest 65504): use backbone.precision=bfloat16 or float32")
        # Out of inference mode so the readout may save it for backward.
        return f.clone()


def extraction_batch_size(device: torch.device, channels: int) -> int:
    """Throughput, not train.batch_size, sets how many images go through the encoder at once."""
    if device.type == "cuda":
        return 128
    return 32 if channels <= 3 else 16


def _loader(dataset: Dataset, batches: list[np.ndarray], num_workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=[b.tolist() for b in batches],
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _chunks(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def fill(
    out: np.ndarray, dataset: Dataset, extractor: FeatureExtractor, num_workers: int, progress: bool = True
) -> None:
    """Run every image of ``dataset`` through the encoder once, writing ``out[i]`` (H×W×C)."""
    from tqdm.auto import tqdm

    n = len(dataset)
    bs = extraction_batch_size(extractor.device, out.shape[-1])
    loader = _loader(dataset, _chunks(np.arange(n), bs), num_workers, extractor.device)
    i = 0
    # disable=None: a bar only on a terminal (logs and Slurm files get the log lines alone)
    with tqdm(total=n, desc=f"features {extractor.encoder.name}", unit="img", disable=None if progress else True) as bar:
        for images in loader:
            f = extractor(images).permute(0, 2, 3, 1).cpu().numpy()
            if out.dtype == np.float16:
                _check_float16_range(f, extractor.encoder.name)
            out[i : i + len(f)] = f.astype(out.dtype, copy=False)
            i += len(f)
            bar.update(len(f))


FLOAT16_MAX = float(np.finfo(np.float16).max)


def _check_float16_range(f: np.ndarray, name: str) -> None:
    # Random-init ResNets in eval mode blow activations up to ~1e8: float16 would store inf.
    peak = float(np.abs(f).max())
    if not np.isfinite(peak) or peak > FLOAT16_MAX:
        raise PosinfoError(
            f"{name} features reach |x|={peak:.3g}, beyond float16's range (65504): use cache.dtype=float32"
        )


class FeatureSource(Protocol):
    """Batches of features (B×C×H×W, float32) in the order given.

    A batch is valid until the next one is asked for (sources may reuse one buffer):
    use it, or copy it, before advancing.
    """

    n: int

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]: ...


class CachedFeatures:
    """Features read from a (memory-mapped) N×H×W×C array: one batch in RAM at a time.

    Stored channels-last because the readout reads it that way: the permuted view is an
    NCHW tensor in channels_last memory format, whose rows are the (B·H·W)×C matrix of
    the readout's GEMM (``readout.OneMapConv2d``). Each batch is copied from the map row
    by row into one reused buffer: a fresh batch-sized tensor per step cost more in page
    faults than the readout's own arithmetic. On a CPU the copy converts to float32; on a
    GPU the rows go into a pinned staging buffer in the stored dtype, cross the bus in it
    and are converted there (``staging`` forces either way, for tests).
    """

    def __init__(self, array: np.ndarray, device: torch.device, staging: bool | None = None):
        self.array = array
        self.n = len(array)
        self.device = device
        self.staging = device.type != "cpu" if staging is None else staging
        self._buf: torch.Tensor | None = None  # kept across epochs: no page faults after the first

    def _buffer(self, rows: int) -> torch.Tensor:
        if self._buf is None or len(self._buf) < rows:
            dtype = torch.from_numpy(np.empty(0, self.array.dtype)).dtype if self.staging else torch.float32
            pin = self.staging and self.device.type == "cuda"
            self._buf = torch.empty((rows, *self.array.shape[1:]), dtype=dtype, pin_memory=pin)
        return self._buf[:rows]

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        for idx in _chunks(order, batch_size):
            # Reading a memmap in index order is sequential I/O; a batch is a set, so
            # its order does not change the loss or BatchNorm statistics.
            idx = np.sort(idx)
            out = self._buffer(len(idx))
            with warnings.catch_warnings():  # the map is read-only; it is only read here
                warnings.simplefilter("ignore", UserWarning)
                for j, i in enumerate(idx):
                    out[j].copy_(torch.from_numpy(self.array[i]))
            if self.staging:
                # A synchronous copy: the staging buffer is refilled for the next batch.
                out = out.to(self.device).float()
            yield out.permute(0, 3, 1, 2)


class ResidentFeatures(CachedFeatures):
    """A cache entry held whole in memory for training (``cache.memory``): in device memory
    (``where="device"``), or in host memory (``"host"``: pinned when the device is a GPU, so
    each batch crosses the bus asynchronously). Loaded on the first request for batches, so
    a job that reuses a stored readout never loads it; kept in the stored dtype (float16:
    half the bytes) and converted per batch. Batches are the same sets, rows sorted, as
    :class:`CachedFeatures` gives, so a readout trains the same from either."""

    def __init__(self, array: np.ndarray, device: torch.device, where: str):
        super().__init__(array, device, staging=False)
        if where not in ("device", "host"):
            raise ValueError(f"where={where!r}: device or host")
        self.where = where
        self._data: torch.Tensor | None = None

    def _load(self) -> torch.Tensor:
        if self._data is None:
            t0 = time.perf_counter()
            with warnings.catch_warnings():  # the map is read-only; it is only read here
                warnings.simplefilter("ignore", UserWarning)
                host = torch.from_numpy(np.ascontiguousarray(self.array))
            if self.where == "device" and self.device.type != "cpu":
                self._data = host.to(self.device)
            elif self.device.type == "cuda":
                self._data = host.pin_memory()
            else:  # host memory, or "device" memory of a CPU device: RAM, not a view of the map
                self._data = host.clone()
            log.info("training features held in %s memory: %.2f GB in %.1f s", self.where,
                     self._data.numel() * self._data.element_size() / 1e9, time.perf_counter() - t0)
        return self._data

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        data = self._load()
        for idx in _chunks(order, batch_size):
            rows = torch.as_tensor(np.sort(idx), device=data.device)
            out = data.index_select(0, rows)
            if out.device != self.device:
                out = out.to(self.device, non_blocking=True)
            yield out.float().permute(0, 3, 1, 2)


def placement(memory: str, nbytes: int, device: torch.device) -> str:
    """Where training features live (``cache.memory``): ``device``, ``host`` or ``disk`` as asked;
    ``auto``: on a GPU, device memory when the entry takes at most DEVICE_MEMORY_SHARE of its free
    memory, else pinned host memory when it takes at most HOST_MEMORY_SHARE of the available RAM,
    else the disk map; on a CPU the disk map (the page cache already keeps what fits, and a copy
    would hold it twice)."""
    if memory != "auto":
        return memory
    if device.type != "cuda":
        return "disk"
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= DEVICE_MEMORY_SHARE * free:
        return "device"
    if nbytes <= HOST_MEMORY_SHARE * available_ram():
        return "host"
    return "disk"


class LiveFeatures:
    """Features recomputed by the encoder for every batch (the authors' way)."""

    def __init__(self, dataset: Dataset, extractor: FeatureExtractor, num_workers: int = 0):
        self.dataset = dataset
        self.extractor = extractor
        self.num_workers = num_workers
        self.n = len(dataset)

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        chunks = [np.sort(c) for c in _chunks(order, batch_size)]
        for images in _loader(self.dataset, chunks, self.num_workers, self.extractor.device):
            yield self.extractor(images)
