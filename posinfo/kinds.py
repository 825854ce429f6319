"""Target kinds: what a readout is asked to produce, and how it is scored (docs/method.md).

A target is one of a few *kinds*, looked up once from ``target.name`` (:func:`format_of`,
:func:`make`), never guessed from a name, a label tensor or a tensor's dtype:

- ``map`` (hor, ver, gau, horstp, verstp): the paper's. A map head (conv → BN → sigmoid), the
  MSE against the target map (``train.loss_at`` image | feature), SPC and MAE per image,
  floor = the MAE of the best constant prediction.
- ``cells`` (grid): which of cells² grid cells each readout position lies in. Logits, cross-
  entropy at the readout's resolution, accuracies per image, floor = chance 1/cells².
- ``rowcol`` and ``xy`` (per-position probes, issue 24): each readout position names its row and
  its column (two classification heads), or regresses its normalised (x, y) (a linear head); at the
  readout's own resolution, on CNN maps and ViT tokens alike.

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
TARGET_KINDS = {**{t: "map" for t in MAP_TARGETS}, "grid": "cells", "rowcol": "rowcol", "xy": "xy",
                "placement": "placement"}


# by_norm: the share of positions, by feature norm, scored apart (Darcet et al.: ~2% high-norm tokens).
TOP_NORM = 0.02


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
    splits_by_norm: ClassVar[bool] = False  # scored per position: by_norm applies (per-position probes)
    # Why readout.solver=ridge (least squares against a map, posinfo.ridge) cannot fit it; None: it can.
    ridge_refusal: ClassVar[str | None] = None
    outputs: int | None = None  # the head: None = one map (BN, sigmoid), else this many linear outputs
    # Read from globally pooled features by the convex logistic readout (posinfo.placement), one
    # label per image; False: a readout over positions, trained by readout.solver.
    pooled: ClassVar[bool] = False
    # analyze's probe_bars draws its headline per configuration (the kinds with no SPC or grid bars).
    probe_bars: ClassVar[bool] = False

    def __init__(self, target: str, size: int, out_size: int):
        self.target, self.size, self.out_size = target, size, out_size

    @classmethod
    def bind(cls, target: Any, size: int, out_size: int) -> "Kind":
        """This kind for a job's ``target`` group (name, range, cells…); a kind with options reads them."""
        return cls(str(target.name), size, out_size)

    def place(self, dataset, split: str):
        """The images this kind is scored on: the job's own (a placement kind moves them onto a canvas)."""
        return dataset

    def _rows(self, sc, **extra) -> tuple[list[tuple], dict]:
        """Per-image rows and the means of an images × columns array, with the floor and the image count."""
        metrics = {**dict(zip(self.columns, sc.mean(axis=0).tolist())), **self.floor(), "n_images": len(sc), **extra}
        return [tuple(map(float, v)) for v in sc], metrics

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

    def per_position(self, outputs) -> dict | None:
        """Per-position scores (each B×n×n) whose means over positions are per-image metrics; None for
        a kind scored per image only (a map's SPC)."""
        return None

    def by_norm(self, outputs, norms, top: float = TOP_NORM) -> dict:
        """The per-position scores on the positions whose feature norm (``norms``, B×n×n, the readout
        input's at each output position) lies in this input's top ``top`` share, and on the rest: the
        high-norm "artifact" tokens of Darcet et al. (ICLR 2024) hold little position."""
        import torch

        flat = norms.flatten().double()
        threshold = float(torch.quantile(flat, 1 - top)) if len(flat) else float("nan")
        high = norms >= threshold
        parts = self.per_position(outputs)
        out: dict[str, Any] = {"top": top, "threshold": threshold, "n_high": int(high.sum()), "n_rest": int((~high).sum())}
        for name, mask in (("high", high), ("rest", ~high)):
            out[name] = {k: float(v[mask].double().mean()) if bool(mask.any()) else None for k, v in parts.items()}
        return out

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
        return self._rows(sc, border_accuracy=location.border_accuracy(outputs, self.labels_map, bins).mean(axis=0)
                          .round(6).tolist())

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


class RowColKind(Kind):
    """target=rowcol: each readout output position names its row and its column among the output
    map's out_size (two classification heads, cross-entropy at the readout's own resolution, no
    upsampling). Per image: the share of positions whose row, column, and both are right, and the
    mean grid distance (cells) between the position named and the true one."""

    name = "rowcol"
    probe_bars = True
    columns = ("accuracy", "row_accuracy", "col_accuracy", "distance")
    metrics = (*columns, "chance", "chance_line", "chance_distance")
    shown, labels, headline = ("accuracy", "distance"), ("acc", "dist"), "accuracy"
    bootstrapped = ("accuracy", "distance")
    floor_key = "chance"
    floors = {"accuracy": "chance", "row_accuracy": "chance_line", "col_accuracy": "chance_line",
              "distance": "chance_distance"}
    ridge_refusal = "each position's row and column are classes (cross-entropy), not a least-squares problem"
    splits_by_norm = True
    note = ("rowcol (per-position probe): the two numbers are the share of readout positions whose row and column are "
            "both named right (chance 1/n², n positions per side) and the mean grid distance, in cells, between the "
            "position named and the true one; its 'floor' row is chance (docs/method.md, \"Per-position probes\").")

    def __init__(self, target: str, size: int, out_size: int):
        import torch

        super().__init__(target, size, out_size)
        self.outputs = 2 * out_size  # row logits, then column logits
        idx = torch.arange(out_size)
        self.rows, self.cols = idx[:, None].expand(out_size, out_size), idx[None, :].expand(out_size, out_size)
        self.display = ((self.rows * out_size + self.cols).float() / max(1, out_size * out_size - 1)).numpy()

    def loss(self, at: str, device):
        from posinfo.train import LabelLoss

        n = self.out_size
        row, col = LabelLoss(self.rows.to(device)), LabelLoss(self.cols.to(device))
        return SplitLoss(lambda out: (row(out[:, :n]) + col(out[:, n:])) / 2)

    def named(self, outputs):
        """Each position's predicted (row, column): two B×n×n long tensors."""
        n = self.out_size
        return outputs[:, :n].argmax(dim=1), outputs[:, n:].argmax(dim=1)

    def per_position(self, outputs) -> dict:
        r, c = self.named(outputs)
        row_ok, col_ok = (r == self.rows).float(), (c == self.cols).float()
        dist = ((r - self.rows).float() ** 2 + (c - self.cols).float() ** 2).sqrt()
        return dict(zip(self.columns, (row_ok * col_ok, row_ok, col_ok, dist)))

    def score(self, outputs) -> tuple[list[tuple], dict]:
        import numpy as np

        parts = self.per_position(outputs)
        return self._rows(np.stack([parts[k].mean(dim=(1, 2)).numpy() for k in self.columns], axis=1).astype(np.float64))

    def picture(self, outputs):
        import torch

        r, c = self.named(outputs)
        shown = ((r * self.out_size + c).float() / max(1, self.out_size ** 2 - 1))[:, None]
        return torch.nn.functional.interpolate(shown, size=(self.size, self.size), mode="nearest")[:, 0].numpy()

    def floor(self) -> dict:
        import torch

        n = self.out_size
        pos = torch.stack([self.rows.flatten(), self.cols.flatten()], dim=1).double()
        # A guess uniform over the n² positions: its expected distance to each true position, averaged.
        chance_distance = float(torch.cdist(pos, pos).mean())
        return {"chance": 1.0 / (n * n), "chance_line": 1.0 / n, "chance_distance": chance_distance}

    def describe(self, m: dict) -> str:
        return (f"rowcol accuracy {m['accuracy']:.3f} (chance {m['chance']:.3f})  rows {m['row_accuracy']:.3f}  "
                f"columns {m['col_accuracy']:.3f} (chance {m['chance_line']:.3f})  distance {m['distance']:.2f} cells "
                f"(chance {m['chance_distance']:.2f})  ({m['n_images']} images)")

    def border_profile(self) -> dict:
        return {}  # positions, not pixels: no border-distance profile


class XYKind(Kind):
    """target=xy: each readout output position regresses its normalised (x, y), the centre of its
    cell of the output map in [0, 1] (a linear head of two outputs, MSE at the readout's own
    resolution). Per image: R² over both coordinates, and the mean distance in pixels of the input
    image between the position predicted and the true one."""

    name = "xy"
    probe_bars = True
    columns = ("r2", "distance_px")
    metrics = (*columns, "floor_px")
    shown, labels, headline = ("r2", "distance_px"), ("R²", "px"), "r2"
    bootstrapped = ("r2", "distance_px")
    floor_key = "floor_px"
    floors = {"r2": 0.0, "distance_px": "floor_px"}
    splits_by_norm = True
    note = ("xy (per-position probe): the two numbers are R² of the predicted normalised (x, y) of each readout "
            "position and the mean distance in pixels of the input image to the true position; its 'floor' row is "
            "R² 0 and the distance of a constant prediction at the centre (docs/method.md, \"Per-position probes\").")

    def __init__(self, target: str, size: int, out_size: int):
        import torch

        super().__init__(target, size, out_size)
        self.outputs = 2
        centre = (torch.arange(out_size, dtype=torch.float32) + 0.5) / out_size
        self.xy = torch.stack([centre[None, :].expand(out_size, out_size), centre[:, None].expand(out_size, out_size)])
        self.display = self.xy[0].numpy() * 0.5 + self.xy[1].numpy() * 0.5

    def goal(self):
        """What the closed-form readout fits (posinfo.ridge): the x and the y map, at the readout's
        own resolution (no upsampling: each output position against its own coordinates)."""
        return self.xy

    def loss(self, at: str, device):
        import torch.nn.functional as F

        goal = self.xy.to(device)[None]
        return SplitLoss(lambda out: F.mse_loss(out, goal.expand_as(out)))

    def per_position(self, outputs) -> dict:
        """The distance in pixels (R² is a ratio over all positions, not a mean of them)."""
        err = outputs.double() - self.xy[None].double()
        return {"distance_px": (err ** 2).sum(dim=1).sqrt() * self.size}

    def score(self, outputs) -> tuple[list[tuple], dict]:
        import numpy as np

        goal = self.xy[None].double()
        sst = float(((goal - goal.mean(dim=(2, 3), keepdim=True)) ** 2).sum())
        r2 = 1 - ((outputs.double() - goal) ** 2).sum(dim=(1, 2, 3)).numpy() / sst
        px = self.per_position(outputs)["distance_px"].mean(dim=(1, 2)).numpy()
        return self._rows(np.stack([r2, px], axis=1))

    def picture(self, outputs):
        import torch

        shown = outputs.clamp(0, 1).mean(dim=1, keepdim=True)  # (x + y) / 2, as the target's picture
        return torch.nn.functional.interpolate(shown, size=(self.size, self.size), mode="nearest")[:, 0].numpy()

    def floor(self) -> dict:
        # The best constant (least squares) is the mean position, the centre: its mean distance in pixels.
        d = ((self.xy - self.xy.mean(dim=(1, 2), keepdim=True)) ** 2).sum(dim=0).sqrt().mean()
        return {"floor_px": float(d) * self.size}

    def describe(self, m: dict) -> str:
        return (f"xy R² {m['r2']:.3f}  distance {m['distance_px']:.1f} px (constant prediction {m['floor_px']:.1f} px)  "
                f"({m['n_images']} images)")

    def border_profile(self) -> dict:
        return {}  # positions, not pixels: no border-distance profile


class PlacementKind(Kind):
    """target=placement (posinfo.placement): each image shrunk into one cell of a black canvas
    (target.layout grid: a target.cells² grid, GAPNet; diagonal: top-left or bottom-right, 4QI),
    its cell named from globally pooled features by the certified-optimal logistic readout.
    Per image: whether the cell is named right; the channel-shuffle control beside it."""

    name = "placement"
    probe_bars = True
    columns = ("accuracy", "label", "predicted")
    metrics = ("accuracy", "chance", "shuffled_accuracy")
    shown, labels, headline = ("accuracy", "shuffled_accuracy"), ("acc", "shuffled"), "accuracy"
    bootstrapped = ("accuracy",)
    floor_key = "chance"
    floors = {"accuracy": "chance", "shuffled_accuracy": "chance"}
    pooled = True
    note = ("placement (GAPNet / 4QI): the two numbers are the share of test images whose cell is named right from "
            "globally pooled features, and the same with each image's channels shuffled (the readout refit); its "
            "'floor' row is chance, 1/classes (docs/method.md, \"Placement tasks\").")

    def __init__(self, target: str, size: int, out_size: int, layout: str, cells: int):
        from posinfo import placement

        super().__init__(target, size, out_size)
        self.layout, self.cells = layout, cells
        self.outputs = placement.classes(layout, cells)  # validates
        self.labels_of: dict[str, Any] = {}
        self.display = placement.cell_map(layout, cells, size)

    @classmethod
    def bind(cls, target: Any, size: int, out_size: int) -> "PlacementKind":
        return cls(str(target.name), size, out_size, str(target.layout), int(target.cells))

    def place(self, dataset, split: str):
        from posinfo import placement

        placed = placement.PlacedImages(dataset, self.layout, self.cells, seed=placement.SPLIT_SEEDS[split])
        self.labels_of[split] = placed.labels
        return placed

    def score(self, outputs) -> tuple[list[tuple], dict]:
        import numpy as np

        label = np.asarray(self.labels_of["test"])[: len(outputs)]
        pred = outputs.argmax(dim=1).numpy()
        rows, metrics = self._rows(np.stack([(pred == label).astype(float), label, pred], axis=1).astype(np.float64))
        for name in ("label", "predicted"):  # per-image facts, not scores: no mean in result.json
            metrics.pop(name)
        return rows, metrics

    def picture(self, outputs):
        from posinfo import placement

        return placement.cell_pictures(self.layout, self.cells, self.size, outputs.argmax(dim=1).tolist())

    def floor(self) -> dict:
        return {"chance": 1.0 / self.outputs}

    def describe(self, m: dict) -> str:
        return f"placement accuracy {m['accuracy']:.3f} (chance {m['chance']:.3f})  ({m['n_images']} images)"

    def border_profile(self) -> dict:
        return {}  # one class per image: no border-distance profile


class SplitLoss:
    """A loss computed by ``fn`` on the raw output; it never shares a GEMM with map readouts."""

    stackable = False

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, out):
        return self.fn(out)


KINDS: dict[str, type[Kind]] = {k.name: k for k in (MapKind, CellKind, RowColKind, XYKind, PlacementKind)}


# results.csv's measured columns beyond the map's (posinfo.report.cells), and the bootstrap interval
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
