import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES
from posinfo import targets
from posinfo.errors import PosinfoError


def authors_target(name: str, size: int = 224) -> np.ndarray:
    """The authors' way: 256 px PNG -> PIL bilinear to size -> min-max to [0, 1]."""
    im = Image.open(FIXTURES / f"gt_{name}.png").convert("L").resize((size, size), Image.BILINEAR)
    a = np.asarray(im, dtype=np.float64)
    return (a - a.min()) / (a.max() - a.min())


@pytest.mark.parametrize("name", targets.NAMES)
def test_analytic_targets_match_the_authors_pngs(name):
    ours = targets.make(name, 224).numpy()
    d = np.abs(ours - authors_target(name))
    assert d.mean() < 0.01 and d.max() < 0.05, (name, d.mean(), d.max())


@pytest.mark.parametrize("name", targets.NAMES)
def test_targets_are_float_maps_in_unit_range(name):
    t = targets.make(name, 64)
    assert t.shape == (64, 64) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert float(t.max()) - float(t.min()) > 0.99


def test_naming_trap_hor_varies_along_x_horstp_along_y():
    hor, horstp = targets.make("hor", 32), targets.make("horstp", 32)
    assert torch.all(hor[0] == hor[5]) and hor[0, 0] == 0 and hor[0, -1] == 1
    assert torch.all(horstp[:, 0] == horstp[:, 7]) and not torch.all(horstp[0] == horstp[5])
    assert horstp[0, 0] > 0.98  # bright at the top
    assert torch.equal(targets.make("verstp", 32), horstp.T)
    assert torch.equal(targets.make("ver", 32), hor.T)


def test_gaussian_centre_is_one_and_corners_zero():
    g = targets.make("gau", 65)
    assert g[32, 32] == pytest.approx(1.0) and g[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(g, g.flip(0)) and torch.allclose(g, g.T)


@pytest.mark.parametrize("name,floor", [("hor", 0.251), ("ver", 0.251), ("gau", 0.197), ("horstp", 0.317)])
def test_floor_mae_is_the_best_constant(name, floor):
    t = targets.make(name, 224)
    f = targets.floor_mae(t)
    assert f == pytest.approx(floor, abs=0.002)
    # no constant in [0, 1] does better than the floor
    for c in np.linspace(0, 1, 41):
        assert float((t - c).abs().mean()) >= f - 1e-6


def test_signed_stripes_reproduce_the_papers_stripe_mae_levels():
    t = targets.make("horstp", 224, "signed")
    assert float(t.min()) == pytest.approx(-1, abs=1e-3) and float(t.max()) == pytest.approx(1, abs=1e-3)
    assert float((t - 0.5).abs().mean()) == pytest.approx(0.718, abs=0.002)
    assert targets.floor_mae(t) == pytest.approx(0.637, abs=0.002)


def test_bad_target_values_raise_clear_errors():
    with pytest.raises(PosinfoError, match="unknown target 'diag'"):
        targets.make("diag", 32)
    with pytest.raises(PosinfoError, match="stripes only"):
        targets.make("hor", 32, "signed")
    with pytest.raises(PosinfoError, match="target.range 'neg'"):
        targets.make("horstp", 32, "neg")
