"""Any torchvision or timm model as the frozen encoder (posinfo.encoders.zoo)."""

from __future__ import annotations

import json

import pytest
import torch

from posinfo import cache
from posinfo.encoders import build_encoder
from posinfo.errors import PosinfoError
from posinfo.job import run



def _enc(kind, model, **kw):
    torch.manual_seed(0)
    return build_encoder(kind, kw.pop("weights", "random"), kw.pop("padding", "zeros"), kw.pop("taps", None), "none",
                         model=model, image_size=kw.pop("image_size", 64), **kw)


@pytest.mark.parametrize("kind,model,taps", [
    ("timm", "vit_tiny_patch16_224", [("blocks.0", 192, 4), ("blocks.4", 192, 4), ("blocks.7", 192, 4), ("blocks.11", 192, 4)]),
    ("timm", "convnext_atto", [("stages.0", 40, 16), ("stages.1", 80, 8), ("stages.2", 160, 4), ("stages.3", 320, 2)]),
    ("torchvision", "resnet50", [("relu", 64, 32), ("layer1.2", 256, 16), ("layer3.5", 1024, 4), ("layer4.2", 2048, 2)]),
    ("torchvision", "mobilenet_v3_small", [("features.0", 16, 32), ("features.1", 16, 16), ("features.8", 48, 4),
                                           ("features.12", 576, 2)]),
])
def test_default_taps_are_stage_outputs_at_most_four(kind, model, taps):
    enc = _enc(kind, model)
    got = [(t.name, t.channels, t.size[0]) for t in enc.describe(64)]
    assert got == taps
    maps = enc(torch.rand(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, c, s, s) for _, c, s in taps]


def test_taps_and_nodes_select_levels():
    assert [t.name for t in _enc("timm", "convnext_atto", taps=[3]).describe(64)] == ["stages.3"]
    assert [t.name for t in _enc("timm", "vit_tiny_patch16_224", nodes=["5"]).describe(64)] == ["blocks.5"]
    enc = _enc("torchvision", "resnet50", nodes=["layer2.3.relu_2"])
    assert [(t.name, t.channels) for t in enc.describe(64)] == [("layer2.3.relu_2", 512)]


def test_vit_prefix_tokens_dropped_and_pos_embed_controls():
    keep, zero, shuf = (_enc("timm", "vit_tiny_patch16_224", pos_embed=m) for m in ("keep", "zero", "shuffle"))
    pk, pz, ps = (e.body.model.pos_embed.detach() for e in (keep, zero, shuf))
    assert pk.shape == (1, 197, 192) and torch.count_nonzero(pz) == 0
    assert torch.equal(ps[:, 0], pk[:, 0])  # the class token's embedding stays
    assert not torch.equal(ps[:, 1:], pk[:, 1:])
    assert torch.allclose(ps[:, 1:].norm(dim=-1).sort().values, pk[:, 1:].norm(dim=-1).sort().values)  # same norms
    x = torch.rand(1, 3, 64, 64)
    assert keep(x)[0].shape == (1, 192, 4, 4)  # 64/16 = 4: a 4×4 map of patch tokens only


def test_frozen_parameters_and_batchnorm_statistics():
    enc = _enc("timm", "resnet10t")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc.train()
    enc(torch.rand(4, 3, 64, 64))
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_bad_inputs_are_one_line(tmp_path):
    with pytest.raises(PosinfoError, match="no such timm model.*closest: convnext_tiny"):
        _enc("timm", "convnext_tinyy")
    with pytest.raises(PosinfoError, match="no such torchvision classification model"):
        _enc("torchvision", "resnet51")
    with pytest.raises(PosinfoError, match="needs backbone.model"):
        _enc("timm", None)
    with pytest.raises(PosinfoError, match=r"backbone.taps=\[7\] is not valid for convnext_atto: choose distinct levels 0…3"):
        _enc("timm", "convnext_atto", taps=[7])
    with pytest.raises(PosinfoError, match="has no learned position embedding"):
        _enc("timm", "convnext_atto", pos_embed="zero")
    with pytest.raises(PosinfoError, match="no padded convolution"):
        _enc("timm", "vit_tiny_patch16_224", padding="partial")
    with pytest.raises(PosinfoError, match="backbone.padding=none does not work"):
        _enc("torchvision", "resnet50", padding="none")
    with pytest.raises(PosinfoError, match="has no spatial feature maps"):
        _enc("torchvision", "vit_b_16")
    other = tmp_path / "other.pt"
    torch.save(_enc("timm", "resnet10t").body.model.state_dict(), other)
    with pytest.raises(PosinfoError, match="does not fit timm's convnext_atto .*missing keys"):
        _enc("timm", "convnext_atto", weights=str(other))


def test_weights_file_and_safetensors_load(tmp_path):
    from safetensors.torch import save_file

    src = _enc("timm", "convnext_atto")
    sd = {k: v.contiguous() for k, v in src.body.model.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pt")
    x = torch.rand(1, 3, 64, 64)
    want = src(x)
    for f in ("w.safetensors", "w.pt"):
        torch.manual_seed(123)  # another random init underneath: the file must win
        got = _enc("timm", "convnext_atto", weights=str(tmp_path / f))(x)
        assert all(torch.equal(a, b) for a, b in zip(want, got)), f


def test_jobs_on_a_timm_model_record_taps_and_key_the_cache_by_model_and_pos_embed(make_cfg, tmp_path):
    base = ["backbone=timm", "backbone.model=vit_tiny_patch16_224", "backbone.weights=random", "input=natural"]
    a = run(make_cfg(*base), tmp_path / "a", progress=False)
    assert [f["name"] for f in a["features"]] == ["blocks.0", "blocks.4", "blocks.7", "blocks.11"]
    assert a["readout_in_channels"] == 4 * 192 and a["status"] == "ok"
    probe = a["pos_embed_probe"]  # analysis.embed_probe: a random ViT's embedding is i.i.d. draws, nothing to decode
    assert probe["grid"] == [14, 14] and abs(probe["r2"]) < 0.2 and probe["distance_patches"] > 3
    n = len(cache.list_entries(tmp_path / "cache"))
    run(make_cfg(*base, "backbone.pos_embed=zero"), tmp_path / "b", progress=False)
    assert len(cache.list_entries(tmp_path / "cache")) == n + 2  # its own train and test entries
    run(make_cfg("backbone=timm", "backbone.model=deit_tiny_patch16_224", "backbone.weights=random", "input=natural"),
        tmp_path / "c", progress=False)
    assert len(cache.list_entries(tmp_path / "cache")) == n + 4
    saved = json.loads((tmp_path / "b" / "result.json").read_text())
    assert saved["config"]["backbone"]["pos_embed"] == "zero"
