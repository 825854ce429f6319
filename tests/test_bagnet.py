"""BagNet-9/17/33 (posinfo.encoders.bagnet): taps, receptive fields, official checkpoints, offline ImageNet weights."""

from __future__ import annotations

import pytest
import torch

from posinfo.encoders import bagnet
from posinfo.encoders import build_encoder
from posinfo.errors import PosinfoError

CHANNELS = [64, 256, 512, 1024, 2048]
# Tap sizes at 64 px, by hand: stem 64 -> 62 (valid 3×3); a stride-2 valid 3×3 gives
# (n - 3) // 2 + 1, a stride-2 1×1 gives ceil(n / 2); layer4 (stride 1) loses 2 with a 3×3.
SIZES_VALID = {"bagnet9": [62, 30, 14, 7, 7], "bagnet17": [62, 30, 14, 6, 6], "bagnet33": [62, 30, 14, 6, 4]}
RECEPTIVE_FIELD = {"bagnet9": 9, "bagnet17": 17, "bagnet33": 33}


@pytest.mark.parametrize("name", sorted(SIZES_VALID))
def test_taps_are_the_four_stages_and_the_stem_with_their_shapes(name):
    torch.manual_seed(0)
    enc = build_encoder(name, "random", "none", taps=[0, 1, 2, 3, 4])
    maps = enc(torch.rand(2, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(c, s, s) for c, s in zip(CHANNELS, SIZES_VALID[name])]
    assert [(t.channels, t.size) for t in enc.describe(64)] == [(c, (s, s)) for c, s in zip(CHANNELS, SIZES_VALID[name])]
    assert [t.node for t in enc.describe(64)] == ["relu", "layer1", "layer2", "layer3", "layer4"]
    # the default taps are the authors' layer1..layer4; padded 3×3 convs keep every stride's size
    assert [t.name for t in build_encoder(name, "random", "none").describe(64)] == ["f1", "f2", "f3", "f4"]
    assert [t.size[0] for t in build_encoder(name, "random", "zeros").describe(64)] == [32, 16, 8, 8]


@pytest.mark.parametrize("name", sorted(RECEPTIVE_FIELD))
def test_one_unit_of_the_last_tap_sees_exactly_its_receptive_field(name):
    """The input pixels whose change moves one unit of layer4 (its gradient's support) span
    9/17/33 px, no more (a 3×3 too many) and no less (a 1×1 too many)."""
    torch.manual_seed(0)
    enc = build_encoder(name, "random", "none", taps=[4])
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    out = enc.body(x)["f4"]  # the body, not the encoder: the encoder runs under inference mode
    i = out.shape[-1] // 2
    out[0, :, i, i].sum().backward()
    rows, cols = torch.nonzero(x.grad[0].abs().sum(0), as_tuple=True)
    assert rows.max() - rows.min() + 1 == RECEPTIVE_FIELD[name]
    assert cols.max() - cols.min() + 1 == RECEPTIVE_FIELD[name]
    # a unit's window starts at 8 × its index (the stride before layer3), as a valid network's must
    assert rows.min() == cols.min() == 8 * i


def _official_checkpoint(name: str, path, seed: int = 1) -> torch.nn.Module:
    """A random BagNet saved as the official pre-trained files are: a DataParallel ``module.``
    prefix inside ``state_dict``, the classifier included, no num_batches_tracked."""
    torch.manual_seed(seed)
    model = bagnet.bagnet(name)
    for m in model.modules():  # non-trivial statistics, so a mix-up of BatchNorm buffers shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    sd = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["module.fc.weight"], sd["module.fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save({"epoch": 90, "arch": name, "state_dict": sd}, path)
    return model.eval()


def test_official_checkpoint_loads_and_a_wrong_key_is_named(tmp_path):
    good = tmp_path / "bagnet8.pth.tar"
    model = _official_checkpoint("bagnet9", good)
    model.conv2.padding = (0, 0)  # backbone.padding=none: the published, valid layout
    for m in model.modules():
        if isinstance(m, bagnet.Bottleneck):
            m.conv2.padding = (0, 0)
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        want = model(x)
    got = build_encoder("bagnet9", str(good), "none", taps=[4])(x)[0]
    assert torch.allclose(got, want, atol=1e-5)

    sd = torch.load(good, weights_only=True)["state_dict"]
    sd["module.layer1.0.conv2.weights"] = sd.pop("module.layer1.0.conv2.weight")
    bad = tmp_path / "bad.pth.tar"
    torch.save(sd, bad)
    with pytest.raises(PosinfoError) as e:
        build_encoder("bagnet9", str(bad), "none")
    msg = str(e.value)
    assert "\n" not in msg and "missing keys: layer1.0.conv2.weight" in msg
    assert "unexpected keys: layer1.0.conv2.weights" in msg and "bagnet8-34f4ccd2.pth.tar" in msg
    with pytest.raises(PosinfoError, match=r"does not fit bagnet33 \(.*wrong shapes: layer3\.0\.conv2\.weight"):
        build_encoder("bagnet33", str(good), "none")  # BagNet-9's 1×1 where BagNet-33 has a 3×3


def test_imagenet_weights_offline_fail_at_once_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(bagnet, "_URL_BASE", "http://127.0.0.1:9/")  # the discard port: nothing listens
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    problem = bagnet.imagenet_problem("bagnet17", timeout_s=2)
    assert problem is not None and "\n" not in problem
    assert "bagnet16-105524de.pth.tar" in problem and "backbone.weights=/path/to/bagnet16-105524de.pth.tar" in problem
    with pytest.raises(PosinfoError, match="download bagnet16-105524de.pth.tar from http://127.0.0.1:9/"):
        build_encoder("bagnet17", "imagenet", "none")
