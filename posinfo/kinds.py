"""Target kinds: what a readout is asked to produce, and how it is scored (docs/method.md).

A target is one of a few *kinds*, looked up once from ``target.name`` (:func:`format_of`,
:func:`make`), never guessed from a name, a label tensor or a tensor's dtype:

- ``map`` (hor, ver, gau, horstp, verstp): the paper's. A map head (conv → BN → sigmoid), the
  MSE against the target map (``train.loss_at`` image | feature), SPC and MAE per image,
  floor = the MAE of the best constant prediction.
- ``cells`` (grid): which of cells² grid cells each readout position lies in. Logits, cross-
  entropy at the readout's resolution, accuracies per image, floor = chance 1/cells².

A kind owns the head's output size, what it trains against and its loss, the scorer (per-image
rows and the means written to result.json), the per_image.csv columns, the floor, the log line,
the picture drawn for predictions.png, and the table format the analysis uses. The readout's
body (kernel, depth, padding) is shared by every kind.

Torch-free at import: the analysis reads the formats (class attributes) without loading torch;
the job's side (a kind bound to a job's sizes, :func:`make`) imports what it uses.
"""

from __future__ import annotations

from typing import Any, ClassVar

from posinfo.errors import PosinfoError
from posinfo.names import MAP_TARGETS

# The kind of each target name (posinfo.names.TARGETS): the one place a name decides it.
TARGET_KINDS = {**{t: "map" for t in MAP_TARGETS}, "grid": "cells"}


class Kind:
    """A target kind. Class attributes: its format (what the analysis needs, torch-free); an
    instance (:func:`make`): the kind bound to one job's target, image size and readout output size."""

    name: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]  # per_image.csv's metric columns, after input and image
    metrics: ClassVar[tuple[str, ...]]  # the per-input means result.json holds (besides n_images), read by collect
    shown: ClassVar[tuple[str, str]]  # the two metrics a table cell shows ...
    labels: ClassVar[tuple[str, str]]  # ... and their headers
    headline: ClassVar[str]  # the main metric: a cell's interval over seeds, its bars
    bootstrapped: ClassVar[tuple[str, ...]]  # per-image columns that get a bootstrap interval over images
    floor_key: ClassVar[str]  # result.json's no-information level: floor_mae (maps) or chance
    # Each metric's no-information level in a table's floor row: a results.csv column, or a number.
    floors: ClassVar[dict[str, str | float]] = {}
    note: ClassVar[str | None] = None  # the tables' note on what the two numbers are
    channels: ClassVar[bool] = False  # analysis.channels (per-channel scores against a map) applies
    # Why readout.solver=ridge (least squares against a map, posinfo.ridge) cannot fit it; None: it can.
    ridge_refusal: ClassVar[str | None] = None
    outputs: int | None = None  # the head: None = one map (BN, sigmoid), else this many linear outputs

    def __init__(self, target: str, size: int, out_size: int):
        self.target, self.size, self.out_size = target, size, out_size

    @classmethod
    def bind(cls, target: Any, size: int, out_size: int) -> "Kind":
        """This kind for a job's ``target`` group (name, range, cells…)."""
        raise NotImplementedError

    def loss(self, at: str, device):
        """The training loss on the readout's raw output (posinfo.train.fit_many), on ``device``;
        ``at``: train.loss_at, where a map's MSE is taken."""
        raise NotImplementedError

    def forward(self, readout, feats):
        """The readout's output on one feature batch, as :meth:`score` takes it."""
        return self.prepare(readout(feats))

    def prepare(self, raw):
        """The readout's raw output (B×outputs×h×w) as :meth:`score` takes it, on the CPU."""
        return raw.float().cpu()

    def score(self, outputs) -> tuple[list[tuple], dict]:
        """Per-image rows (one value per column) and the means over images (result.json's metrics)."""
        raise NotImplementedError

    def picture(self, outputs):
        """The first outputs as size×size float32 pictures (predictions.png, predictions.npz)."""
        raise NotImplementedError

    def floor(self) -> dict:
        """result.json's no-information fields."""
        raise NotImplementedError

    def describe(self, m: dict) -> str:
        """One log line of an input's means."""
        raise NotImplementedError

    def border_profile(self) -> dict:
        """result.json's ``border_profile``: the border-distance bins of every input's profile."""
        raise NotImplementedError


class MapKind(Kind):
    name = "map"
    columns = ("spc", "mae")
    metrics = ("spc", "mae", "n_nan")
    shown, labels, headline = ("spc", "mae"), ("SPC", "MAE"), "spc"
    bootstrapped = ("spc", "mae")
    floor_key = "floor_mae"
    floors = {"mae": "floor_mae"}
    channels = True

    def __init__(self, target: str, size: int, out_size: int, range: str = "unit"):
        from posinfo import targets
        from posinfo.metrics import Scorer

        super().__init__(target, size, out_size)
        self.map = targets.make(target, size, range)
        self.display = self.map.numpy()
        self.scorer = Scorer(self.display)
        self._floor = targets.floor_mae(self.map)

    @classmethod
    def bind(cls, target: Any, size: int, out_size: int) -> "MapKind":
        return cls(str(target.name), size, out_size, str(target.range))

    def loss(self, at: str, device):
        from posinfo.train import MapLoss

        return MapLoss(self.map.to(device), at)

    def goal(self):
        """What the closed-form readout fits (posinfo.ridge): the map."""
        return self.map

    def prepare(self, raw):
        from posinfo.train import upsample

        return upsample(raw, self.size)[:, 0].float().cpu()  # scored at the image's size, as the paper

    def score(self, outputs) -> tuple[list[tuple], dict]:
        import numpy as np

        from posinfo.metrics import summarize

        preds = outputs.numpy()
        rows = [(self.scorer.spc(p), self.scorer.mae(p)) for p in preds]
        metrics = summarize([s for s, _ in rows], [m for _, m in rows]).as_dict()
        metrics["border_mae"] = np.mean([self.scorer.border_mae(p) for p in preds], axis=0).round(6).tolist()
        return rows, metrics

    def picture(self, outputs):
        return outputs.numpy().astype("float32")

    def floor(self) -> dict:
        return {"floor_mae": self._floor}

    def describe(self, m: dict) -> str:
        spc = "nan" if m["spc"] is None else f"{m['spc']:.3f}"
        return (f"SPC {spc}  MAE {m['mae']:.3f}  ({m['n_images']} images, {m['n_nan']} NaN)  "
                f"floor MAE {self.floor()['floor_mae']:.3f}")

    def border_profile(self) -> dict:
        from posinfo import targets

        s = self.scorer  # the bins of every input's border_mae (docs/method.md, "Border profiles")
        return {"start_px": s.bin_starts, "pixel_fraction": (s.bin_pixels / s.bin_pixels.sum()).round(6).tolist(),
                "floor_mae": s.floor_border_mae(targets.floor_constant(self.map)).round(6).tolist()}


class CellKind(Kind):
    """target=grid (posinfo.location): logits over cells² cells at each readout position."""

    name = "cells"
    columns = ("accuracy", "accuracy_norm", "row_accuracy", "col_accuracy")
    metrics = (*columns, "chance")
    shown, labels, headline = ("accuracy", "accuracy_norm"), ("acc", "acc norm"), "accuracy"
    bootstrapped = ("accuracy", "accuracy_norm")
    floor_key = "chance"
    floors = {"accuracy": "chance", "accuracy_norm": 0.0, "row_accuracy": "chance", "col_accuracy": "chance"}
    ridge_refusal = "the location target's readout is a classifier (cross-entropy), not a least-squares problem"
    note = ("grid (the location target): the two numbers are the accuracy of the cell predicted at each position and "
            "the normalised accuracy (accuracy − chance)/(1 − chance), not SPC and MAE; its 'floor' row is chance "
            "(1/cells²) and 0 (docs/method.md, \"The location target\").")

    def __init__(self, target: str, size: int, out_size: int, cells: int):
        from posinfo import location

        super().__init__(target, size, out_size)
        self.cells, self.outputs = cells, cells * cells
        self.labels_map = location.labels(cells, out_size)  # each output position's cell
        self.display = location.display_map(cells, size).numpy()

    @classmethod
    def bind(cls, target: Any, size: int, out_size: int) -> "CellKind":
        return cls(str(target.name), size, out_size, int(target.cells))

    def loss(self, at: str, device):
        from posinfo.train import LabelLoss

        return LabelLoss(self.labels_map.to(device))

    def score(self, outputs) -> tuple[list[tuple], dict]:
        from posinfo import location
        from posinfo.metrics import border_bins

        sc = location.scores(outputs, self.labels_map, self.cells)
        bins, _ = border_bins(*self.labels_map.shape)
        metrics = {**dict(zip(self.columns, sc.mean(axis=0).tolist())), **self.floor(), "n_images": len(sc),
                   "border_accuracy": location.border_accuracy(outputs, self.labels_map, bins).mean(axis=0)
                   .round(6).tolist()}
        return [tuple(map(float, v)) for v in sc], metrics

    def picture(self, outputs):
        import torch

        shown = outputs.argmax(dim=1, keepdim=True).float() / (self.cells * self.cells - 1)
        return torch.nn.functional.interpolate(shown, size=(self.size, self.size), mode="nearest")[:, 0].numpy()

    def floor(self) -> dict:
        from posinfo import location

        return {"chance": location.chance(self.cells)}

    def describe(self, m: dict) -> str:
        return (f"grid accuracy {m['accuracy']:.3f} (chance {m['chance']:.3f})  rows {m['row_accuracy']:.3f}  "
                f"columns {m['col_accuracy']:.3f}  ({m['n_images']} images)")

    def border_profile(self) -> dict:
        import numpy as np

        from posinfo.metrics import border_bins

        bins, starts = border_bins(*self.labels_map.shape)
        scale = self.size / self.labels_map.shape[-1]
        return {"start_px": [int(round(s * scale)) for s in starts],
                "pixel_fraction": (np.bincount(bins.ravel()) / bins.size).round(6).tolist(), "floor_mae": None}


KINDS: dict[str, type[Kind]] = {k.name: k for k in (MapKind, CellKind)}


# results.csv's measured columns beyond the map's (posinfo.analysis.cells), and the bootstrap interval
# columns of every kind, in a fixed order: the kinds' own, declared once above.
EXTRA_METRICS = tuple(dict.fromkeys(m for k in KINDS.values() for m in k.metrics if m not in MapKind.metrics))
BOOTSTRAPPED = tuple(dict.fromkeys(m for k in KINDS.values() for m in k.bootstrapped))
INTERVAL_COLUMNS = tuple(f"{m}_{e}" for m in BOOTSTRAPPED for e in ("lo", "hi"))


def lookup(target: Any) -> type[Kind] | None:
    """The kind of a target name as the analysis reads it from a job folder; None when unknown or
    missing (a job whose config could not be read)."""
    return KINDS.get(TARGET_KINDS.get(target)) if isinstance(target, str) else None


def format_of(target: str) -> type[Kind]:
    """The kind of ``target`` (a target name), as a class: its format, torch-free."""
    try:
        return KINDS[TARGET_KINDS[target]]
    except KeyError:
        raise PosinfoError(f"target={target}: no such target; choose one of {', '.join(TARGET_KINDS)}") from None


def make(target: Any, size: int, out_size: int) -> Kind:
    """The kind of a job's ``target`` group (name, range, cells…), bound to its image size and the
    readout's output size (out_size × out_size positions)."""
    return format_of(str(target.name)).bind(target, size, out_size)
