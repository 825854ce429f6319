import urllib.error

import pytest
import torch
import torchvision

from posinfo.encoders import build_encoder
from posinfo.errors import PosinfoError


def test_vgg16_taps_before_pooling():
    torch.manual_seed(0)
    enc = build_encoder("vgg16", "random")
    taps = enc.describe(224)
    assert [t.node for t in taps] == ["features.3", "features.8", "features.15", "features.22", "features.29"]
    assert [t.channels for t in taps] == [64, 128, 256, 512, 512] and sum(t.channels for t in taps) == 1472
    assert [t.size[0] for t in taps] == [224, 112, 56, 28, 14]
    # each tap is a ReLU output that feeds a max-pool
    vgg = torchvision.models.vgg16()
    for t in taps:
        i = int(t.node.split(".")[1])
        assert isinstance(vgg.features[i], torch.nn.ReLU) and isinstance(vgg.features[i + 1], torch.nn.MaxPool2d)


def test_vgg16_without_padding_shrinks_the_taps():
    enc = build_encoder("vgg16", "random", padding="none")
    assert [t.size[0] for t in enc.describe(224)] == [220, 106, 47, 17, 2]


@pytest.mark.parametrize("name,channels", [("resnet18", 960), ("resnet34", 960), ("resnet50", 3840), ("resnet101", 3840), ("resnet152", 3840)])
def test_resnet_taps(name, channels):
    enc = build_encoder(name, "random")
    taps = enc.describe(64)
    assert [t.node for t in taps] == ["layer1", "layer2", "layer3", "layer4"]
    assert sum(t.channels for t in taps) == channels
    assert [t.size[0] for t in taps] == [16, 8, 4, 2]


def test_resnet_stem_is_an_optional_fifth_level_and_single_taps_work():
    taps = build_encoder("resnet18", "random", taps=[0, 1, 2, 3, 4]).describe(64)
    assert [t.name for t in taps] == ["f0", "f1", "f2", "f3", "f4"] and taps[0].channels == 64 and taps[0].size == (32, 32)
    only5 = build_encoder("vgg16", "random", taps=[5]).describe(64)
    assert [(t.name, t.channels) for t in only5] == [("f5", 512)]


def test_padding_modes_reach_every_padded_conv():
    enc = build_encoder("resnet18", "random", padding="reflect")
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.padding_mode == "reflect" for c in convs if c.padding[0] > 0)
    assert sum(c.padding[0] > 0 for c in convs) > 10


def test_partial_padding_is_zero_padding_inside_and_reweighted_at_the_border():
    from posinfo.partialconv import PartialConv2d, make_partial

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 4, 3, padding=1)
    x = torch.randn(1, 2, 9, 9)
    zero = conv(x)
    make_partial(conv)
    assert isinstance(conv, PartialConv2d)
    part = conv(x)
    assert torch.allclose(part[..., 1:-1, 1:-1], zero[..., 1:-1, 1:-1], atol=1e-6)  # interior: the same
    # Corner (0, 0): the 2×2 in-image part of the 3×3 window, scaled by 9/4, plus the bias.
    direct = (conv.weight[:, :, 1:, 1:] * x[0, :, :2, :2]).sum(dim=(1, 2, 3)) * 9 / 4 + conv.bias
    assert torch.allclose(part[0, :, 0, 0], direct, atol=1e-5)
    # Edge (0, 4): a 2×3 part, scaled by 9/6.
    direct = (conv.weight[:, :, 1:, :] * x[0, :, :2, 3:6]).sum(dim=(1, 2, 3)) * 9 / 6 + conv.bias
    assert torch.allclose(part[0, :, 0, 4], direct, atol=1e-5)
    # An averaging filter keeps a constant image constant up to the rim (zero padding darkens it).
    with torch.no_grad():
        conv.weight.fill_(1 / 18), conv.bias.zero_()
    assert torch.allclose(conv(torch.ones(1, 2, 9, 9)), torch.ones(1, 4, 9, 9), atol=1e-6)


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_partial_padding_keeps_the_weights_and_every_tap(name, tmp_path):
    from posinfo.partialconv import PartialConv2d

    torch.manual_seed(0)
    zero = build_encoder(name, "random")
    path = tmp_path / "w.pt"
    torch.save({k: v for k, v in zero.body.state_dict().items()}, path)
    sd = torch.load(path)
    full = torchvision.models.get_model(name).state_dict()
    torch.save({k: sd.get(k, v) for k, v in full.items()}, path)
    zero = build_encoder(name, str(path))
    part = build_encoder(name, str(path), padding="partial")
    assert sum(isinstance(m, PartialConv2d) for m in part.modules()) > 10
    assert set(part.body.state_dict()) == set(zero.body.state_dict())
    x = torch.rand(1, 3, 64, 64)
    fz, fp = zero(x), part(x)
    assert [f.shape for f in fz] == [f.shape for f in fp]
    assert not torch.allclose(fz[0], fp[0])  # the border differs


def test_partial_padding_on_posenet_is_one_line():
    with pytest.raises(PosinfoError, match="does not apply to posenet"):
        build_encoder("posenet", "none", padding="partial")


def test_encoder_is_frozen_and_stays_in_eval_mode():
    enc = build_encoder("resnet18", "random")
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    bn = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = bn.running_mean.clone()
    enc(torch.rand(4, 3, 32, 32) * 5)
    assert torch.equal(before, bn.running_mean)


def test_weights_file_roundtrip_and_bad_files(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.vgg16()
    good = tmp_path / "vgg.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.features.state_dict(prefix="features.").items()}}, good)
    enc = build_encoder("vgg16", str(good))
    w = dict(enc.named_parameters())["body.features.0.weight"]
    assert torch.equal(w, ref.features[0].weight)

    with pytest.raises(PosinfoError, match="does not exist"):
        build_encoder("vgg16", str(tmp_path / "nope.pt"))
    sd = ref.state_dict()
    del sd["features.28.weight"]
    sd["decoder.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(PosinfoError, match=r"missing keys: features\.28\.weight.*unexpected keys: decoder\.weight"):
        build_encoder("vgg16", str(bad))
    r18 = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    with pytest.raises(PosinfoError, match="does not fit torchvision's resnet50"):
        build_encoder("resnet50", str(r18))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PosinfoError, match="not a readable PyTorch state dict"):
        build_encoder("vgg16", str(junk))


def test_imagenet_weights_unavailable_fails_loudly(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    # torchvision's own download function, as imported by its weights enum (no network use even where there is one)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(PosinfoError) as e:
        build_encoder("vgg16", "imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "VGG16_Weights.IMAGENET1K_V1" in msg
    assert "backbone.weights=random" in msg and "vgg16-397923af.pth" in msg


def test_lazy_encoder_gets_its_weights_on_first_use_and_they_equal_eager_ones():
    torch.manual_seed(3)
    lazy = build_encoder("resnet18", "random", lazy=True)
    assert not lazy.materialized and all(p.is_meta for p in lazy.parameters())
    assert sum(t.channels for t in lazy.describe(64)) == 960 and not lazy.materialized  # shapes need no weights
    assert lazy.describe(32)[-1].size == (1, 1)  # in eval mode: BatchNorm accepts a 1×1 map
    with pytest.raises(RuntimeError, match="materialize"):
        lazy(torch.rand(1, 3, 32, 32))
    torch.rand(1000)  # the global RNG moves on before the weights are drawn: they must not change
    lazy.materialize()
    torch.manual_seed(3)
    eager = build_encoder("resnet18", "random")
    assert eager.materialized
    for (k, a), b in zip(lazy.state_dict().items(), eager.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.rand(2, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(lazy(x), eager(x)))


def test_lazy_imagenet_fails_loudly_when_the_weights_are_needed(monkeypatch):
    calls = []

    def offline(*a, **k):
        calls.append(1)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    # As where the check before the download finds the file fetchable (here it may not: it would stop first)
    monkeypatch.setattr("posinfo.encoders.paper.imagenet_problem", lambda name: None)
    enc = build_encoder("vgg16", "imagenet", lazy=True)
    assert calls == [] and enc.describe(64)[0].channels == 64
    with pytest.raises(PosinfoError, match="cannot load ImageNet weights"):
        enc.materialize()
    assert calls == [1]


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(name="resnet50", padding="none"), "backbone.padding=none does not work for resnet50"),
        (dict(name="vgg16", padding="same"), "unknown backbone.padding 'same'"),
        (dict(name="vgg16", taps=[6]), r"backbone.taps=\[6\] is not valid for vgg16"),
        (dict(name="resnet18", taps=[5]), r"backbone.taps=\[5\] is not valid for resnet18"),
        (dict(name="posenet", taps=[1]), "does not apply to posenet"),
        (dict(name="alexnet"), "unknown backbone 'alexnet'"),
    ],
)
def test_bad_backbone_values(kwargs, msg):
    with pytest.raises(PosinfoError, match=msg):
        build_encoder(kwargs.pop("name"), kwargs.pop("weights", "random"), **kwargs)


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_random_weights_follow_torchvisions_init_and_the_seed(name):
    torch.manual_seed(3)
    a = build_encoder(name, "random")
    torch.manual_seed(3)
    b = build_encoder(name, "random")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
        assert va.device.type == "cpu" and torch.isfinite(va.float()).all(), k
    ref = torchvision.models.get_model(name).state_dict()
    convs = [k for k, v in a.state_dict().items() if k.startswith("body.") and v.dim() == 4]
    assert len(convs) >= 13
    for k in convs:  # same distribution as torchvision's own random init: Kaiming normal, fan_out
        w, r = a.state_dict()[k], ref[k.removeprefix("body.")]
        assert w.shape == r.shape and w.std().item() == pytest.approx(r.std().item(), rel=0.15), k
    bns = [k for k in a.state_dict() if k.endswith("running_var")]
    assert all(torch.all(a.state_dict()[k] == 1) for k in bns)
    assert not any(p.is_meta for p in a.parameters())


def test_init_pytorch_is_pytorchs_default_initialisation_not_torchvisions():
    torch.manual_seed(0)
    tv = build_encoder("vgg16", "random")
    torch.manual_seed(0)
    pt = build_encoder("vgg16", "random", init="pytorch")
    tv_sd, pt_sd = tv.state_dict(), pt.state_dict()
    last = next(k for k in reversed(list(pt_sd)) if k.endswith("weight"))  # conv5_3
    bias = last.replace("weight", "bias")
    assert torch.count_nonzero(tv_sd[bias]) == 0 and torch.count_nonzero(pt_sd[bias]) > 0  # non-zero biases
    ratio = (tv_sd[last].std() / pt_sd[last].std()).item()
    assert 2.2 < ratio < 2.6, ratio  # conv5_3's spread 2.4× smaller than torchvision's Kaiming normal
    torch.manual_seed(0)
    again = build_encoder("vgg16", "random", init="pytorch", lazy=True)
    torch.rand(10)  # the weights come from the RNG state at build time, lazy or not
    assert all(torch.equal(a, b) for a, b in zip(again.materialize().state_dict().values(), pt_sd.values()))
    with pytest.raises(PosinfoError, match="unknown backbone.init 'kaiming'"):
        build_encoder("vgg16", "random", init="kaiming")


def test_reduced_precision_runs_the_encoder_under_autocast_and_float32_is_exact():
    """backbone.precision: bfloat16 features are close to float32's but not equal (autocast
    really ran); float32 is the encoder's own output, bit for bit; float16 that overflows
    stops with one line instead of caching infinities."""
    from posinfo.features import FeatureExtractor, resize_concat

    torch.manual_seed(0)
    enc = build_encoder("vgg16", "random")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = resize_concat(enc(x), 8)
    f32 = FeatureExtractor(enc, 8, torch.device("cpu"))(x)
    assert torch.equal(f32, ref)
    bf16 = FeatureExtractor(enc, 8, torch.device("cpu"), "bfloat16")(x)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, ref)
    assert (bf16 - ref).norm() / ref.norm() < 0.02
    with torch.no_grad():
        next(m for m in enc.body.modules() if isinstance(m, torch.nn.Conv2d)).weight.mul_(1e6)  # past float16's 65504
    with pytest.raises(PosinfoError, match="backbone.precision=float16: the encoder's activations overflow"):
        FeatureExtractor(enc, 8, torch.device("cpu"), "float16")(x)
    with pytest.raises(PosinfoError, match="backbone.precision=double is not known"):
        FeatureExtractor(enc, 8, torch.device("cpu"), "double")
