"""The placement tasks (posinfo.placement) and their convex readout (posinfo.logistic)."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from posinfo import logistic, placement
from posinfo.data import EmbeddedImages
from posinfo.errors import PosinfoError


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny problems: one thread is fastest and keeps the suite's two cores for the other worker.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _toy(n=240, d=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(k, d))
    x = rng.normal(size=(n, d))
    return x, (x @ w.T + rng.normal(size=(n, k))).argmax(1)


def test_logistic_reaches_the_optimum_scipy_finds_and_certifies_it():
    x, y = _toy()
    p = logistic.fit(x, y, 3)
    lam = p.record["lambda"]
    z = torch.as_tensor(((torch.as_tensor(x) - p.mean) / p.std).numpy())

    def f(th):
        th = torch.tensor(th, requires_grad=True)
        loss = logistic._objective(th, z, torch.as_tensor(y), 3, lam)
        loss.backward()
        return float(loss.detach()), th.grad.numpy()

    ref = minimize(f, np.zeros(3 * 13), jac=True, method="L-BFGS-B", options=dict(gtol=1e-12, ftol=1e-16, maxiter=5000))
    ours = np.concatenate([p.weight.numpy(), p.bias.numpy()[:, None]], 1).ravel()
    assert f(ours)[0] <= ref.fun + 1e-9
    # λ-strong convexity: ‖θ − θ*‖ ≤ √(2·gap/λ), the distance the certificate allows
    assert np.linalg.norm(ours - ref.x) <= np.sqrt(2 * logistic.GAP_TOLERANCE / lam) + 1e-7
    assert p.record["gap_bound"] <= logistic.GAP_TOLERANCE
    assert min(p.record["cv"].values()) == p.record["cv"][f"{lam:.0e}"]


def test_logistic_is_deterministic_and_refuses_more_folds_than_images():
    x, y = _toy(n=60)
    a, b = logistic.fit(x, y, 3), logistic.fit(x, y, 3)
    assert torch.equal(a.weight, b.weight) and a.record == b.record
    with pytest.raises(PosinfoError, match="readout.ridge_folds=5"):
        logistic.fit(x[:4], y[:4], 3)


def test_each_image_lands_in_its_cell_of_a_black_canvas_and_classes_are_dealt_evenly():
    base = EmbeddedImages("train", n=18, size=48)
    placed = placement.PlacedImages(base, "grid", 3, seed=1)
    assert np.bincount(placed.labels, minlength=9).tolist() == [2] * 9
    for i in range(4):
        img, (r, c, side) = placed[i], placement.cell_rc("grid", 3, int(placed.labels[i]))
        inside = torch.zeros(48, 48, dtype=torch.bool)
        inside[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = True
        assert img[:, ~inside].abs().max() == 0 and img[:, inside].abs().max() > 0
    diag = placement.PlacedImages(base, "diagonal", 3)
    assert diag.classes == 2 and set(diag.labels) == {0, 1}
    assert diag[int(np.flatnonzero(diag.labels == 1)[0])][:, :24, :24].abs().max() == 0  # bottom-right: top-left empty
    with pytest.raises(PosinfoError, match="data.placement.cells=1"):
        placement.PlacedImages(base, "grid", 1)


def _pooled_features(padding_mode: str, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    # Strides 2: a receptive field as wide as the canvas, and still equivariant to the 16-px shifts
    # between cells (each level's stride divides the shift).
    net = torch.nn.Sequential(*[m for i in range(4) for m in (
        torch.nn.Conv2d(3 if i == 0 else 32, 32, 3, stride=2, padding=1, padding_mode=padding_mode), torch.nn.ReLU())])
    placed = placement.PlacedImages(EmbeddedImages(split, n=n, size=48), "grid", 3, seed=0)
    with torch.no_grad():
        feats = net(torch.stack([placed[i] for i in range(n)]) - 0.5)  # black canvas ≠ the zero padding
    return feats.mean(dim=(2, 3)).double().numpy(), placed.labels


def test_pooled_features_name_the_cell_with_zero_padding_and_not_with_circular_padding():
    """A circularly padded network is equivariant to circular shifts, and moving the image from one cell
    to another is one: its pooled features cannot tell the cells apart. Zero padding breaks that."""
    out = {}
    for mode in ("zeros", "circular"):
        tr_x, tr_y = _pooled_features(mode, 72, "train")
        te_x, te_y = _pooled_features(mode, 36, "test")
        out[mode] = placement.probe(tr_x, tr_y, te_x, te_y, 9, folds=3)
    assert out["zeros"]["acc"] > 0.5 and out["zeros"]["shuffled"]["acc"] < 0.35
    assert out["circular"]["acc"] < 0.3 and out["zeros"]["chance"] == pytest.approx(1 / 9)


def test_a_placement_job_names_the_cell_from_a_padded_cnn_and_not_from_the_image_alone(make_cfg, tmp_path):
    """target=placement end to end: PosENet's "features" are the image itself, whose pooled colour says
    nothing about where it sits; a random VGG16 with zero padding names the cell, and its channel-shuffled
    control does not."""
    from posinfo.job import run

    common = ("target=placement", "readout.solver=ridge", "input=natural", "data.num_train=45", "data.num_test=18",
              "data.image_size=48")
    flat = run(make_cfg("backbone=posenet", *common), tmp_path / "posenet", progress=False)
    vgg = run(make_cfg("backbone=vgg16", "backbone.weights=random", "backbone.taps=[3]", *common), tmp_path / "vgg",
              progress=False)
    assert flat["status"] == vgg["status"] == "ok"
    m, f = vgg["metrics"]["natural"], flat["metrics"]["natural"]
    assert m["chance"] == pytest.approx(1 / 9) and f["accuracy"] < 0.3
    assert m["accuracy"] > 0.6 and m["shuffled_accuracy"] < 0.35
    assert vgg["training"]["solver"] == "logistic" and vgg["training"]["gap_bound"] <= logistic.GAP_TOLERANCE
    rows = (tmp_path / "vgg" / "per_image.csv").read_text().splitlines()
    assert rows[0] == "input,image,accuracy,label,predicted" and len(rows) == 19
    # analyze: a bar of each network's accuracy (its shuffled control beside it), and a table of the two
    from posinfo.report import figures
    from posinfo.report.cells import aggregate
    from posinfo.report.collect import collect

    cells = aggregate(collect([tmp_path / "posenet", tmp_path / "vgg"]))
    names = [f.path.name for f in figures.draw_all(cells, tmp_path / "figs")]
    assert any(n.endswith("_probe_bars.png") for n in names) and not any(n.endswith("_spc_bars.png") for n in names)


@pytest.mark.parametrize("override, message", [
    ("readout.solver=sgd", "readout.solver=sgd with target=placement"),
    ("input=all", "with target=placement: only natural images are placed"),
])
def test_a_placement_job_refuses_what_it_cannot_do_in_one_line(make_cfg, tmp_path, override, message):
    from posinfo.job import run

    with pytest.raises(PosinfoError, match=message) as e:
        run(make_cfg("backbone=posenet", "target=placement", "readout.solver=ridge", "input=natural", override),
            tmp_path / "job", progress=False)
    assert "\n" not in str(e.value)
