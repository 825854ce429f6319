import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from posinfo.errors import PosinfoError
from posinfo.metrics import Scorer, border_bins, border_distance, is_constant, summarize
from posinfo.readout import OneMapConv2d, build_readout, map_convs, output_size
from posinfo.targets import make


def test_readout_shapes_and_layers():
    r = build_readout(1472, kernel=3, depth=1, padding=0)
    assert r(torch.rand(2, 1472, 28, 28)).shape == (2, 1, 26, 26)
    assert [type(m) for m in r] == [OneMapConv2d, nn.BatchNorm2d, nn.Sigmoid]
    assert isinstance(r[0], nn.Conv2d) and set(r.state_dict()) >= {"0.weight", "0.bias"}  # nn.Conv2d's state_dict
    r2 = build_readout(8, kernel=3, depth=3, padding=1)
    convs = [m for m in r2 if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(8, 8), (8, 8), (8, 1)]
    assert sum(isinstance(m, nn.ReLU) for m in r2) == 2 and isinstance(r2[-1], nn.Sigmoid)
    assert r2(torch.rand(2, 8, 28, 28)).shape == (2, 1, 28, 28)
    assert output_size(28, 7, 1, 0) == 22


def test_map_convs_of_a_fused_group_equal_each_conv2d_in_values_and_gradients():
    """Several one-map convolutions on one input (a fused group's last layers, one GEMM):
    each output and each parameter's gradient is its own F.conv2d's (float64)."""
    torch.manual_seed(5)
    convs = [OneMapConv2d(6, k, p).double() for k, p in [(1, 0), (3, 1), (7, 3), (3, 0)]]
    for cv in convs:
        nn.init.normal_(cv.bias)
    x = torch.randn(3, 6, 11, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    outs = map_convs(x, convs)
    refs = [F.conv2d(x, cv.weight, cv.bias, padding=cv.padding) for cv in convs]
    gs = [torch.randn_like(r) for r in refs]
    params = [x] + [t for cv in convs for t in (cv.weight, cv.bias)]
    got = torch.autograd.grad(outs, params, gs)
    want = torch.autograd.grad(refs, params, gs)
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kernel,padding", [(1, 0), (3, 0), (3, 1), (7, 0), (7, 3), (3, 4)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_one_map_conv_equals_conv2d_values_and_gradients(kernel, padding, channels_last):
    """The readout's last layer is a GEMM-based convolution: it must be F.conv2d exactly
    (float64), in its output and in the gradients of input, weight and bias."""
    torch.manual_seed(kernel * 10 + padding)
    conv = OneMapConv2d(6, kernel, padding).double()
    nn.init.normal_(conv.bias)
    x = torch.randn(3, 6, 11, 9, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=padding)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    want = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_readout_trains_like_one_built_on_nn_conv2d():
    """Five SGD steps of the default readout match the same readout with a plain
    nn.Conv2d as its last layer (float32, same init), step for step."""
    torch.manual_seed(0)
    fast = build_readout(32, kernel=3, depth=2, padding=1)
    slow = build_readout(32, kernel=3, depth=2, padding=1)
    slow[3] = nn.Conv2d(32, 1, 3, padding=1)
    slow.load_state_dict(fast.state_dict())
    tgt = make("hor", 28)[None, None].expand(8, 1, 28, 28)
    feats = torch.rand(8, 32, 28, 28).contiguous(memory_format=torch.channels_last)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (fast, slow)]
    for _ in range(5):
        for m, opt in zip((fast, slow), opts):
            opt.zero_grad()
            F.mse_loss(m(feats), tgt).backward()
            opt.step()
    for (k, a), b in zip(fast.state_dict().items(), slow.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def test_readout_init_is_xavier_uniform_with_zero_bias():
    torch.manual_seed(0)
    r = build_readout(64, kernel=3, depth=1)
    conv = r[0]
    fan_in, fan_out = 64 * 9, 1 * 9
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert torch.all(conv.bias == 0)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(kernel=0), "readout.kernel=0 is below 1"),
        (dict(kernel=29), "readout.kernel=29 is larger than the 28×28"),
        (dict(padding=-1), "readout.padding=-1 is negative"),
        (dict(depth=0), "readout.depth=0 is below 1"),
        (dict(kernel=7, depth=6), "shrinks"),
    ],
)
def test_bad_readout_values(kwargs, msg):
    with pytest.raises(PosinfoError, match=msg):
        build_readout(3, **{"kernel": 3, "depth": 1, "padding": 0, **kwargs})


def test_spc_equals_scipy_spearman_including_ties():
    rng = np.random.default_rng(0)
    t = make("gau", 64).numpy()
    s = Scorer(t)
    for _ in range(3):
        p = np.round(t + rng.normal(0, 0.3, t.shape), 1)  # rounding makes many ties
        assert s.spc(p) == pytest.approx(scipy.stats.spearmanr(p.ravel(), t.ravel()).statistic, abs=1e-12)
    assert s.mae(t) == 0 and s.mae(np.zeros_like(t)) == pytest.approx(t.mean())


def test_upsampled_constant_is_constant_although_scipy_ranks_its_ripples():
    # PosENet on a black image: one value everywhere, upsampled bilinearly.
    const = torch.full((1, 1, 26, 26), 0.4815162342)
    up = F.interpolate(const, size=(224, 224), mode="bilinear", align_corners=False)[0, 0].numpy()
    # Float ripples, if any, are far below the tolerance; a perturbed map shows what scipy does with them.
    rip = up + np.random.default_rng(1).normal(0, 1e-7, up.shape).astype(np.float32)
    t = make("hor", 224).numpy()
    assert not math.isnan(scipy.stats.spearmanr(rip.ravel(), t.ravel()).statistic)
    assert is_constant(up) and is_constant(rip)
    assert math.isnan(Scorer(t).spc(rip))
    assert not is_constant(rip + 1e-3 * t)


def test_summary_ignores_and_counts_nans():
    s = summarize([0.5, math.nan, 0.7], [0.1, 0.2, 0.3])
    assert s.spc == pytest.approx(0.6) and s.n_nan == 1 and s.n_images == 3 and s.mae == pytest.approx(0.2)
    allnan = summarize([math.nan], [0.25])
    assert allnan.spc is None and allnan.n_nan == 1 and allnan.mae == 0.25


def test_train_steps_gives_exactly_that_many_steps_with_the_milestones_scaled():
    import torch

    from posinfo.train import fit

    class Source:  # 10 items of 4×6×6 features, batches of 4: 3 batches an epoch
        n = 10

        def batches(self, order, batch_size):
            for i in range(0, len(order), batch_size):
                yield torch.ones(len(order[i:i + batch_size]), 4, 6, 6)

    from posinfo.readout import build_readout

    torch.manual_seed(0)
    readout = build_readout(4, 3, 1, 0, 6)
    hist = fit(readout, Source(), torch.rand(8, 8), epochs=15, batch_size=4, lr_milestones=(10,), steps=7,
               progress=False)
    assert sum(len(h["step_losses"]) for h in hist) == 7 and len(hist) == 3  # 3 + 3 + 1
    # epoch 10 of 15 -> step round(10/15·7) = 5: the lr drops after 5 steps, so epoch 2 (steps 4-6)
    # starts at 0.1 and epoch 3 (step 7) at 0.01
    assert [h["lr"] for h in hist] == [0.1, 0.1, pytest.approx(0.01)]
    assert sum(len(h["step_losses"]) for h in fit(build_readout(4, 3, 1, 0, 6), Source(), torch.rand(8, 8), epochs=2,
                                                    batch_size=4, progress=False)) == 6  # no steps: whole epochs


def test_training_outcome_rule():
    from posinfo.train import outcome, resolve_steps

    flat = outcome([1.0] * 50 + [0.5] * 50)
    assert flat["converged"] and flat["final_loss"] == 0.5 and flat["rel_change_last20"] == 0.0 and flat["steps"] == 100
    falling = outcome(list(np.linspace(1.0, 0.1, 100)))  # still falling 40% per tenth at the end
    assert not falling["converged"] and falling["rel_change_last20"] > 0.3
    assert resolve_steps("paper") == 4950 and resolve_steps(None) is None and resolve_steps("120") == 120


def test_border_bins_average_to_the_whole_image_mae():
    target = make("gau", 50).numpy()
    scorer = Scorer(target)
    pred = np.random.default_rng(0).random((50, 50))
    prof = scorer.border_mae(pred)
    assert len(prof) == 8 and scorer.bin_pixels.sum() == 2500
    assert np.dot(prof, scorer.bin_pixels) / 2500 == pytest.approx(scorer.mae(pred))
    d = border_distance(5, 7)
    assert d[0].tolist() == [0] * 7 and d[2].tolist() == [0, 1, 2, 2, 2, 1, 0]
    labels, starts = border_bins(224, 224)
    assert starts == [0, 14, 28, 42, 56, 70, 84, 98] and labels[0, 100] == 0 and labels[111, 112] == 7
    assert labels[13, 50] == 0 and labels[14, 50] == 1


def test_a_prediction_exact_at_the_border_and_wrong_in_the_centre_has_that_profile():
    target = make("hor", 64).numpy()
    scorer = Scorer(target)
    pred = target.copy()
    inner = border_distance(64, 64) >= 16  # bins 5…8 (4 px each at 64 px)
    pred[inner] = np.clip(pred[inner] + 0.25, None, 2.0)
    prof = scorer.border_mae(pred)
    assert prof[:4].tolist() == [0, 0, 0, 0]
    assert prof[4:] == pytest.approx([0.25] * 4)
