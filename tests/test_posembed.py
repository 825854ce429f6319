"""Position-embedding controls (backbone.pos_embed=mean|noise|roll, posinfo.encoders.posembed) and the
embedding probe (posinfo.embedprobe, analysis.embed_probe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posinfo import encoders
from posinfo.embedprobe import positions, probe
from posinfo.encoders import Backbone, build_encoder, posembed

VIT = "vit_tiny_patch16_224"  # 14×14 patch positions after one class token, 192 channels


@pytest.fixture(scope="module")
def vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model(VIT, dynamic_img_size=True)


def _controlled(vit, mode, seed=0):
    pe = vit.pos_embed.detach().clone()
    posembed.apply(vit, pe, mode, VIT, seed)
    return pe[0]


def test_the_embedding_probe_is_exact_on_a_linear_code_and_at_chance_on_noise():
    rng = np.random.default_rng(0)
    rows, cols, dim = 12, 14, 32
    linear = positions(rows, cols) @ rng.normal(size=(2, dim)) + rng.normal(size=dim)  # (x, y) linearly, any offset
    exact = probe(linear.reshape(rows, cols, dim))
    assert exact["r2"] == pytest.approx(1.0, abs=1e-6) and exact["distance_patches"] < 1e-4
    assert exact["grid"] == [rows, cols] and exact["chance_distance_patches"] > 3
    noise = probe(rng.normal(size=(rows, cols, dim)))  # i.i.d. vectors: nothing to decode
    assert abs(noise["r2"]) < 0.1
    assert noise["distance_patches"] == pytest.approx(noise["chance_distance_patches"], rel=0.1)
    assert probe(linear.reshape(rows, cols, dim)) == exact  # folds from a fixed permutation: deterministic


def test_mean_noise_and_roll_change_the_embedding_as_specified_and_keep_the_class_token(vit):
    keep = vit.pos_embed.detach()[0]
    mean, noise, roll = (_controlled(vit, m) for m in ("mean", "noise", "roll"))
    for pe in (mean, noise, roll):
        assert torch.equal(pe[0], keep[0])  # the class token keeps its own embedding
    patches = keep[1:]
    # mean: every position the same vector, the positions' mean
    assert torch.allclose(mean[1:], patches.mean(0, keepdim=True).expand_as(patches), atol=1e-7)
    # noise: each channel's spread over positions within 10% of the embedding's, a new draw per seed only
    ratio = noise[1:].std(0, correction=0) / patches.std(0, correction=0)
    assert bool(((ratio > 0.9) & (ratio < 1.1)).all()), (ratio.min(), ratio.max())
    assert torch.equal(_controlled(vit, "noise"), noise) and not torch.equal(_controlled(vit, "noise", seed=1), noise)
    # roll: a derangement (each position holds another position's vector), the vectors themselves unchanged
    source = [int(torch.nonzero((patches == v).all(1))[0]) for v in roll[1:]]
    assert sorted(source) == list(range(196)) and all(s != i for i, s in enumerate(source))
    r, c = divmod(0, 14)
    assert source[0] == ((r - 7) % 14) * 14 + (c - 7) % 14  # the grid shifted by half its side in both axes


def test_the_vit_adapter_lays_its_patch_embedding_out_row_major_and_other_families_have_none():
    torch.manual_seed(0)
    enc = build_encoder("timm", "random", model=VIT, image_size=32, lazy=True)
    adapter = encoders.adapter("timm")
    grid = adapter.pos_embed(enc)
    pe = enc.body.model.pos_embed.detach()[0]
    assert grid.shape == (14, 14, 192) and torch.equal(grid[2, 5], pe[1 + 2 * 14 + 5])  # after the class token
    torch.manual_seed(0)  # the same weights, rolled when they are loaded
    rolled = adapter.pos_embed(build_encoder("timm", "random", model=VIT, pos_embed="roll", image_size=32, lazy=True))
    assert torch.equal(rolled, torch.roll(grid, shifts=(7, 7), dims=(0, 1)))
    assert encoders.adapter("vgg16").pos_embed(build_encoder("vgg16", "random", lazy=True)) is None
    assert not encoders.adapter("vgg16").may_have_pos_embed(Backbone("vgg16"))
    assert adapter.pos_embed(build_encoder("timm", "random", model="convnext_atto", image_size=32, lazy=True)) is None


def test_pos_embed_enters_the_cache_key_only_when_not_kept_and_noise_with_its_seed():
    assert Backbone("timm", pos_embed="keep", seed=3).pos_embed_key() is None  # keep: entries keep their keys
    assert Backbone("timm", pos_embed="roll", seed=3).pos_embed_key() == "roll"
    assert Backbone("timm", pos_embed="noise", seed=3).pos_embed_key() == "noise(seed=3)"
