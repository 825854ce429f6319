"""The loss through the upsampling's Gram (train.loss_at=feature) and the closed-form readout
(readout.solver=ridge), each against an independent dense computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from posinfo import ridge
from posinfo.features import FeatureSource
from posinfo.readout import LinearReadout, build_readout
from posinfo.train import MapLoss, fit_many
from posinfo.upsampling import FeatureLoss, Upsampling, interpolation_matrix


class ArraySource(FeatureSource):
    """Features held in one tensor (N×C×H×W), in the order asked."""

    def __init__(self, x: torch.Tensor):
        self.x, self.n = x, len(x)

    def batches(self, order, batch_size):
        for lo in range(0, len(order), batch_size):
            yield self.x[torch.as_tensor(order[lo : lo + batch_size])]


def _explicit_upsampling(n: int, size: int) -> torch.Tensor:
    """The (size²)×(n²) matrix of F.interpolate, column by column from unit maps."""
    eye = torch.eye(n * n, dtype=torch.float64).view(n * n, 1, n, n)
    return F.interpolate(eye, size=(size, size), mode="bilinear", align_corners=False).view(n * n, -1).t()


@pytest.mark.parametrize("n,size", [(26, 224), (7, 30), (28, 28)])
def test_upsampling_factors_are_pytorchs_bilinear_and_its_gram_is_a_kronecker_product(n, size):
    up = Upsampling.of(n, n, size)
    dense = _explicit_upsampling(n, size)
    assert torch.allclose(up.matrix(), dense, atol=1e-14, rtol=0)
    g_h, g_w = up.gram()
    assert torch.allclose(torch.kron(g_h, g_w), dense.t() @ dense, atol=1e-10, rtol=0)
    assert interpolation_matrix(n, size).shape == (size, n)


@pytest.mark.parametrize("kernel,padding", [(1, 0), (3, 0), (3, 1), (3, 2), (7, 0), (7, 3)])
def test_feature_loss_and_gradient_equal_the_image_loss_in_float64(kernel, padding):
    torch.manual_seed(kernel * 10 + padding)
    fs, size = 12, 40
    readout = build_readout(5, kernel, 1, padding, fs).double()
    x = torch.randn(3, 5, fs, fs, dtype=torch.float64)
    target = torch.rand(size, size, dtype=torch.float64)
    grads = []
    for at in ("image", "feature"):
        readout.zero_grad()
        loss = MapLoss(target, at)(readout(x))
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in readout.parameters()]))
    (li, gi), (lf, gf) = grads
    assert abs(li - lf) <= 1e-10 * max(1.0, abs(li))
    for a, b in zip(gi, gf):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_feature_loss_is_the_mean_squared_error_on_random_maps():
    torch.manual_seed(1)
    y = torch.randn(4, 1, 26, 26, dtype=torch.float64)
    t = torch.rand(224, 224, dtype=torch.float64)
    ref = F.mse_loss(F.interpolate(y, size=(224, 224), mode="bilinear", align_corners=False), t.expand(4, 1, 224, 224))
    assert abs(FeatureLoss(t, 26, 26)(y).item() - ref.item()) < 1e-12


def test_fused_training_with_the_feature_loss_equals_separate_training():
    torch.manual_seed(2)
    src = ArraySource(torch.randn(40, 6, 10, 10))
    targets = [torch.rand(32, 32), torch.rand(32, 32)]

    def readouts():
        out = []
        for i in range(2):
            torch.manual_seed(i)
            out.append(build_readout(6, 3, 1, 0, 10))
        return out

    kw = dict(epochs=3, batch_size=8, lr=0.05, lr_milestones=(2,), seed=0, loss_at="feature", progress=False)
    together = readouts()
    fit_many(together, src, targets, **kw)
    alone = readouts()
    for r, t in zip(alone, targets):
        fit_many([r], src, [t], **kw)
    for a, b in zip(together, alone):
        for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.allclose(pa.float(), pb.float(), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- the closed-form readout


def _toy(n=12, c=3, fs=8, size=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, fs, fs, dtype=torch.float64, generator=g)
    x[:, 0] += torch.linspace(-1, 1, fs, dtype=torch.float64)  # some position to find
    return x, torch.rand(size, size, dtype=torch.float64, generator=g)


def _dense(x, t, std, kernel, padding, lam):
    """min 1/(n·S²) Σ‖U(Φᵢθ) − t‖² + λ‖w‖² by one dense solve of the explicit problem."""
    n, size = len(x), t.shape[-1]
    side = x.shape[-1] + 2 * padding - kernel + 1
    u = _explicit_upsampling(side, size)
    padded = F.pad(x, (padding,) * 4)  # the paper's padding: zeros around the raw features, then standardised
    a = torch.cat([u @ ridge._patches(std(padded[i : i + 1]), kernel)[0] for i in range(n)])
    rhs = t.reshape(-1).repeat(n)
    pen = torch.eye(a.shape[1], dtype=torch.float64)
    pen[-1, -1] = 0
    theta = torch.linalg.solve(a.t() @ a / (n * size * size) + lam * pen, a.t() @ rhs / (n * size * size))
    return theta, float(((a @ theta - rhs) ** 2).mean() + lam * (theta[:-1] ** 2).sum())


def _moments(x, kernel, padding, size, folds=3):
    readout = LinearReadout(x.shape[1], kernel, padding).double()
    readout[0].fit([x])
    side = x.shape[-1] + 2 * padding - kernel + 1
    return ridge.moments([x[:5], x[5:]], ridge.fold_of(len(x), folds), folds, kernel, (side, side), size,
                         readout.features), readout[0], Upsampling.of(side, side, size)


@pytest.mark.parametrize("kernel,padding", [(1, 0), (3, 0), (3, 1)])
def test_ridge_equals_a_dense_least_squares_solution(kernel, padding):
    x, t = _toy()
    sums, std, up = _moments(x, kernel, padding, t.shape[-1])
    got = ridge.solve(sums, [t], up, lambdas=[1e-3])[0]
    theta, _ = _dense(x, t, std, kernel, padding, 1e-3)
    assert torch.allclose(got["weights"], theta, atol=1e-8, rtol=0)


def test_ridge_objective_is_never_above_gradient_descent_on_it():
    """The same linear readout and penalty trained by plain gradient descent ends no lower."""
    x, t = _toy()
    lam = 1e-3
    sums, std, up = _moments(x, 3, 0, t.shape[-1])
    theta = ridge.solve(sums, [t], up, lambdas=[lam])[0]["weights"]
    _, best = _dense(x, t, std, 3, 0, lam)
    w = torch.zeros(theta.numel(), dtype=torch.float64, requires_grad=True)
    a = torch.cat([_explicit_upsampling(6, 20) @ ridge._patches(std(x[i : i + 1]), 3)[0] for i in range(len(x))])
    rhs = t.reshape(-1).repeat(len(x))
    opt = torch.optim.SGD([w], lr=0.05, momentum=0.9)
    for _ in range(300):
        opt.zero_grad()
        loss = ((a @ w - rhs) ** 2).mean() + lam * (w[:-1] ** 2).sum()
        loss.backward()
        opt.step()
    ours = float(((a @ theta - rhs) ** 2).mean() + lam * (theta[:-1] ** 2).sum())
    assert ours <= loss.item() + 1e-12
    assert abs(ours - best) < 1e-10


def test_a_superset_of_channels_never_fits_worse_than_a_subset():
    x, t = _toy(c=4)
    sub_sums, _, up = _moments(x[:, :2], 3, 0, t.shape[-1])
    all_sums, _, _ = _moments(x, 3, 0, t.shape[-1])
    for lam in (1e-6, 1e-2):
        sub = ridge.solve(sub_sums, [t], up, lambdas=[lam])[0]
        full = ridge.solve(all_sums, [t], up, lambdas=[lam])[0]
        assert full["train_loss"] <= sub["train_loss"] + 1e-12


def test_ridge_fits_several_targets_in_one_pass_as_each_alone():
    x, t = _toy()
    t2 = torch.rand_like(t)
    sums, _, up = _moments(x, 3, 1, t.shape[-1])
    both = ridge.solve(sums, [t, t2], up)
    for one, target in zip(both, (t, t2)):
        alone = ridge.solve(sums, [target], up)[0]
        assert one["lambda"] == alone["lambda"]
        assert torch.allclose(one["weights"], alone["weights"], atol=1e-10, rtol=0)


def test_ridge_fit_sets_the_readout_and_reports_its_cross_validation():
    x, t = _toy(n=20)
    readout = LinearReadout(3, 3, 0).double()
    readout[0].fit([x])
    hist = ridge.fit([readout], ArraySource(x), [t], kernel=3, padding=0, feature_size=8, folds=4, batch_size=6,
                     progress=False)[0][-1]
    assert hist["solver"] == "ridge" and len(hist["cv"]) == len(ridge.RELATIVE_LAMBDAS)
    assert min(hist["cv"].values()) == pytest.approx(hist["val_loss"])
    with torch.no_grad():
        pred = F.interpolate(readout(x), size=(20, 20), mode="bilinear", align_corners=False)
    assert float(((pred - t) ** 2).mean()) == pytest.approx(hist["loss"], rel=1e-9)


def test_ridge_refuses_too_few_images_per_fold():
    x, t = _toy(n=6)
    readout = LinearReadout(3, 3, 0).double()
    readout[0].fit([x])
    with pytest.raises(Exception, match="readout.ridge_folds=5 needs at least 10 training images"):
        ridge.fit([readout], ArraySource(x), [t], kernel=3, padding=0, feature_size=8, folds=5, batch_size=6,
                  progress=False)


def test_ridge_pads_the_raw_features_with_zeros_as_the_paper_does():
    """Images that are constant but for noise carry position only through their zero padding: a
    readout that padded standardised features (each channel's mean) would find nothing."""
    g = torch.Generator().manual_seed(3)
    x = 1.0 + 0.01 * torch.randn(16, 2, 8, 8, dtype=torch.float64, generator=g)
    t = torch.linspace(0, 1, 20, dtype=torch.float64).expand(20, 20).contiguous()  # hor
    floor = float(((t - t.mean()) ** 2).mean())
    sums, _, up = _moments(x, 3, 2, 20, folds=4)
    fit = ridge.solve(sums, [t], up)[0]
    assert fit["train_loss"] < 0.5 * floor
    readout = LinearReadout(2, 3, 2).double()
    readout[0].fit([x])
    with torch.no_grad():
        readout[1].weight.copy_(fit["weights"][:-1].view_as(readout[1].weight))
        readout[1].bias.copy_(fit["weights"][-1:])
        pred = F.interpolate(readout(x), size=(20, 20), mode="bilinear", align_corners=False)
    assert float(((pred - t) ** 2).mean()) == pytest.approx(fit["train_loss"], rel=1e-9)


def test_fold_assignment_is_deterministic_and_balanced():
    f = ridge.fold_of(23, 5)
    assert np.array_equal(f, ridge.fold_of(23, 5))
    assert np.bincount(f).max() - np.bincount(f).min() <= 1


# ----------------------------------------------------------------------------- in a job


def test_ridge_job_is_seed_free_records_its_fit_and_reuses_it_for_every_seed(make_cfg, tmp_path):
    from posinfo.job import run

    args = ("backbone=posenet", "target=hor", "input=natural", "readout.padding=1", "readout.solver=ridge",
            "readout.ridge_folds=4")
    a = run(make_cfg(*args, "train.seed=0"), tmp_path / "a")
    b = run(make_cfg(*args, "train.seed=1", "train.lr=0.5"), tmp_path / "b")
    assert a["metrics"] == b["metrics"] and not a["readout_reused"] and b["readout_reused"]
    std = run(make_cfg(*args, "readout.standardize=channel"), tmp_path / "s")  # ridge standardises anyway
    assert std["readout_reused"] and std["metrics"] == a["metrics"]
    fresh = run(make_cfg(*args, "train.seed=2", f"cache.dir={tmp_path}/other"), tmp_path / "c")
    assert fresh["metrics"] == a["metrics"] and not fresh["readout_reused"]  # recomputed: the same numbers
    t = a["training"]
    assert t["solver"] == "ridge" and t["folds"] == 4 and t["converged"]
    assert t["lambda"] > 0 and min(t["cv"].values()) == pytest.approx(t["val_loss"])
    assert a["train_loss"] == pytest.approx(t["final_loss"])


def test_ridge_penalty_is_chosen_without_the_test_images(make_cfg, tmp_path):
    from posinfo.job import run

    args = ("backbone=posenet", "target=gau", "input=natural", "readout.padding=2", "readout.solver=ridge",
            "readout.ridge_folds=4")
    a = run(make_cfg(*args, "data.num_test=4"), tmp_path / "a")
    b = run(make_cfg(*args, "data.num_test=7", f"cache.dir={tmp_path}/other"), tmp_path / "b")
    assert a["training"]["cv"] == b["training"]["cv"] and a["training"]["lambda"] == b["training"]["lambda"]
    assert a["metrics"]["natural"]["n_images"] != b["metrics"]["natural"]["n_images"]


@pytest.mark.parametrize("override,words", [("readout.depth=2", "a deeper readout is not linear"),
                                            ("target=grid", "use readout.solver=sgd with target=grid")])
def test_ridge_refuses_what_has_no_closed_form(make_cfg, tmp_path, override, words):
    from posinfo.errors import PosinfoError
    from posinfo.job import run

    with pytest.raises(PosinfoError, match=words):
        run(make_cfg("backbone=posenet", "readout.solver=ridge", override), tmp_path / "j")


def test_loss_at_changes_the_readout_stores_key(make_cfg, tmp_path):
    from posinfo.job import run

    args = ("backbone=posenet", "target=hor", "input=natural", "readout.padding=1")
    a = run(make_cfg(*args), tmp_path / "a")
    b = run(make_cfg(*args, "train.loss_at=feature"), tmp_path / "b")
    assert not a["readout_reused"] and not b["readout_reused"]
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-4


def test_a_seed_free_ridge_cell_counts_once_and_a_random_backbone_keeps_its_seeds():
    import pandas as pd

    from posinfo.report.cells import seed_free_once

    def rows(weights, backbone="vgg16", solver="ridge"):
        return pd.DataFrame({"train.seed": [2, 0, 1], "readout.solver": solver, "backbone.weights": weights,
                             "backbone": backbone, "spc": [.5, .5, .5]})

    once = seed_free_once(rows("/w/vgg16_imagenet.pth"))
    assert len(once) == 1 and once["train.seed"].iloc[0] == 0
    assert len(seed_free_once(rows("none", backbone="posenet"))) == 1
    assert len(seed_free_once(rows("random"))) == 3  # each seed is another network
    assert len(seed_free_once(rows("/w/vgg16_imagenet.pth", solver="sgd"))) == 3


def test_ridge_fits_xy_per_position_as_a_dense_least_squares_at_the_readouts_resolution():
    """target=xy under readout.solver=ridge: two output maps (x, y) at the readout's own side, no
    upsampling; each output equals an independent dense ridge solve of its coordinate on the
    standardised features of every position, and the readout's conv holds both."""
    from posinfo.kinds import XYKind

    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 3, 6, 6, dtype=torch.float64, generator=g)
    x[:, 1] += torch.linspace(-1, 1, 6, dtype=torch.float64)[None, :]  # some x to find
    kind = XYKind("xy", 96, 6)
    goal = kind.goal().double()
    assert goal.shape == (2, 6, 6)
    readout = LinearReadout(3, 1, 0, outputs=2).double()
    readout[0].fit([x])
    hist = ridge.fit([readout], ArraySource(x), [goal], kernel=1, padding=0, feature_size=6, folds=4, batch_size=7,
                     progress=False)[0][-1]
    assert isinstance(hist["lambda"], list) and len(hist["lambda"]) == 2
    with torch.no_grad():
        pred = readout(x)
    assert pred.shape == (20, 2, 6, 6)
    a = torch.cat([torch.ones(20 * 36, 1, dtype=torch.float64),
                   readout[0](x).permute(0, 2, 3, 1).reshape(-1, 3)], dim=1)  # positions × (1, features)
    pen = torch.eye(4, dtype=torch.float64)
    pen[0, 0] = 0
    for o in range(2):
        rhs = goal[o].reshape(-1).repeat(20)
        theta = torch.linalg.solve(a.t() @ a / len(a) + hist["lambda"][o] * pen, a.t() @ rhs / len(a))
        assert torch.allclose(pred[:, o].reshape(-1), a @ theta, atol=1e-8, rtol=0)
    assert float(((pred - goal) ** 2).mean()) == pytest.approx(hist["loss"], rel=1e-9)
