"""Tests for posinfo.data: embedded dead-leaves images, folders, synthetic inputs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from posinfo.data import (
    CanvasImages,
    EmbeddedImages,
    canvas,
    FolderImages,
    IMAGE_EXTS,
    noise_image,
    synthetic_image,
)
from posinfo.errors import PosinfoError

FIXTURES = Path(__file__).parent / "fixtures"
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _lum(img: torch.Tensor) -> np.ndarray:
    return np.tensordot(LUMA, img.numpy(), axes=1)


def _check_image(img: torch.Tensor, size: int) -> None:
    assert isinstance(img, torch.Tensor)
    assert img.shape == (3, size, size)
    assert img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert img.min() >= 0.0 and img.max() <= 1.0


# ---------------------------------------------------------------- embedded

def test_embedded_shape_dtype_range_names():
    ds = EmbeddedImages("train", n=3, size=48)
    assert len(ds) == 3
    assert ds.names == ["train_00000", "train_00001", "train_00002"]
    for i in range(len(ds)):
        _check_image(ds[i], 48)
    assert EmbeddedImages("test", n=2, size=32).names == ["test_00000", "test_00001"]


def test_embedded_deterministic_in_any_order():
    ds = EmbeddedImages("train", n=6, size=40)
    late = ds[5]
    first = ds[0]
    # Same index again, after other images, and from a fresh dataset with a
    # different n: image i depends only on (seed, split, i).
    assert torch.equal(ds[5], late)
    assert torch.equal(EmbeddedImages("train", n=1, size=40)[0], first)
    assert torch.equal(EmbeddedImages("train", n=None, size=40)[5], late)
    assert torch.equal(ds[-1], late)
    assert not torch.equal(EmbeddedImages("train", n=1, size=40, seed=1)[0], first)


def test_embedded_train_test_disjoint_and_distinct():
    k = 40
    train = EmbeddedImages("train", n=k, size=32)
    test = EmbeddedImages("test", n=k, size=32)
    keys_train = {train[i].numpy().tobytes() for i in range(k)}
    keys_test = {test[i].numpy().tobytes() for i in range(k)}
    assert len(keys_train) == k and len(keys_test) == k  # no repeats inside a split
    assert not keys_train & keys_test  # train and test share no image


def test_embedded_identity():
    a = EmbeddedImages("train", n=10, size=64, seed=3).identity()
    json.dumps(a)  # JSON-able
    assert a == EmbeddedImages("train", n=10, size=64, seed=3).identity()
    assert a["kind"] == "embedded" and a["generator"]
    for other in (
        EmbeddedImages("test", n=10, size=64, seed=3),
        EmbeddedImages("train", n=11, size=64, seed=3),
        EmbeddedImages("train", n=10, size=32, seed=3),
        EmbeddedImages("train", n=10, size=64, seed=4),
    ):
        assert other.identity() != a


def test_embedded_bad_arguments(caplog):
    with pytest.raises(PosinfoError, match="valid"):
        EmbeddedImages("valid")
    with pytest.raises(PosinfoError, match="0"):
        EmbeddedImages("train", n=0)
    with pytest.raises(PosinfoError, match="size"):
        EmbeddedImages("train", size=2)
    with pytest.raises(IndexError):
        EmbeddedImages("test", n=2, size=32)[2]
    with caplog.at_level(logging.WARNING, logger="posinfo.data"):
        ds = EmbeddedImages("test", n=EmbeddedImages.TEST_AVAILABLE + 1, size=32)
    assert len(ds) == EmbeddedImages.TEST_AVAILABLE
    assert "available" in caplog.text


def test_embedded_content_is_not_degenerate():
    ds = EmbeddedImages("train", n=8, size=64)
    means = []
    for i in range(len(ds)):
        img = ds[i]
        arr = img.numpy()
        lum = _lum(img)
        means.append(lum.mean())
        # Many colours (6 bits per channel), real contrast, real colour (not grey).
        q = np.round(arr * 63).astype(np.int64)
        n_colours = len(np.unique(q[0] * 4096 + q[1] * 64 + q[2]))
        assert n_colours > 150, n_colours
        assert lum.std() > 0.04
        assert np.abs(arr[0] - arr[1]).mean() + np.abs(arr[1] - arr[2]).mean() > 0.01
        # Edges: some pixels, not all, sit on a sharp step.
        grad = np.abs(np.diff(lum, axis=1))
        assert 0.01 < (grad > 0.05).mean() < 0.6
    assert 0.2 < np.mean(means) < 0.7  # photographic brightness on average


def test_embedded_amplitude_spectrum_is_about_one_over_f():
    """Natural images have a radially averaged amplitude spectrum ∝ f^-α, α ≈ 1–1.2."""
    size = 128
    ds = EmbeddedImages("test", n=8, size=size)
    power = np.zeros((size, size))
    win = np.hanning(size)
    for i in range(len(ds)):
        lum = _lum(ds[i])
        power += np.abs(np.fft.fft2((lum - lum.mean()) * np.outer(win, win))) ** 2
    f = np.fft.fftfreq(size)
    fr = np.hypot(f[:, None], f[None, :]).ravel()
    edges = np.logspace(np.log10(0.02), np.log10(0.25), 10)
    idx = np.digitize(fr, edges)
    amp = np.sqrt(power.ravel())
    x = [np.log(fr[idx == b].mean()) for b in range(1, len(edges))]
    y = [np.log(amp[idx == b].mean()) for b in range(1, len(edges))]
    slope = np.polyfit(x, y, 1)[0]
    assert -1.6 < slope < -0.8, slope


def _position_stats(lum: np.ndarray) -> dict[str, float]:
    """Per-image statistics that are zero in expectation when nothing depends on position."""
    s = lum.shape[0]
    c = (np.arange(s) - (s - 1) / 2) / s  # x or y in [-0.5, 0.5]
    r = np.hypot(c[:, None], c[None, :])
    ring = np.minimum(np.minimum.outer(np.arange(s), np.arange(s)),
                      np.minimum.outer(np.arange(s)[::-1], np.arange(s)[::-1]))
    # Edge energy from forward differences only, on the (s-1)² grid where both
    # exist, so the statistic itself treats every position alike.
    dx = np.abs(np.diff(lum, axis=1))[:-1, :]
    dy = np.abs(np.diff(lum, axis=0))[:, :-1]
    g = dx + dy
    c2 = (np.arange(s - 1) - (s - 2) / 2) / s
    r2 = np.hypot(c2[:, None], c2[None, :])
    ring2 = ring[:-1, :-1]
    return {
        "lum_slope_x": np.polyfit(c, lum.mean(axis=0), 1)[0],
        "lum_slope_y": np.polyfit(c, lum.mean(axis=1), 1)[0],
        "lum_centre_minus_border": lum[r < 0.2].mean() - lum[ring < s // 8].mean(),
        "edge_slope_x": np.polyfit(c2, g.mean(axis=0), 1)[0],
        "edge_slope_y": np.polyfit(c2, g.mean(axis=1), 1)[0],
        "edge_centre_minus_border": g[r2 < 0.2].mean() - g[ring2 < s // 8].mean(),
        "edge_outer_2px_minus_all": g[ring2 < 2].mean() - g.mean(),
    }


def test_embedded_statistics_are_stationary():
    """Averaged over many images, luminance and edge energy do not depend on x, y or
    the distance to the centre.

    Tolerance: the images are independent, so each per-image statistic's mean over
    K images has standard error std/sqrt(K) (CLT); we allow 4 standard errors
    (two-sided p ≈ 6e-5 per statistic for a stationary generator; the seed is
    fixed, so the outcome is too).  With K = 400 at 64 px this was checked to flag
    a vignette darkening the corners by 10%, a left-right luminance ramp of 0.04,
    a blurred centre, or a border row duplicated by a padding bug; offline runs
    with K = 3000 (64 px) and 500 (224 px) kept every |t| of the generator below 2.
    """
    k, size = 400, 64
    ds = EmbeddedImages("train", n=k, size=size, seed=11)
    rows = [_position_stats(_lum(ds[i])) for i in range(k)]
    for name in rows[0]:
        vals = np.array([row[name] for row in rows])
        t = vals.mean() / (vals.std(ddof=1) / np.sqrt(k))
        assert abs(t) < 4.0, f"{name}: mean {vals.mean():+.4f}, t = {t:+.2f}"


# ---------------------------------------------------------------- synthetic

def _reference_noise() -> np.ndarray:
    return np.asarray(Image.open(FIXTURES / "noise.jpg").convert("RGB")).astype(np.float64) / 255.0


def test_noise_matches_authors_noise_image():
    ref = _reference_noise()
    ours = noise_image(224, seed=0).permute(1, 2, 0).numpy().astype(np.float64)
    # Per channel: mean and std within 1.5/255 (the reference's own channels
    # differ by ~0.6/255), fraction of exact zeros within 2 points.
    np.testing.assert_allclose(ours.mean(axis=(0, 1)), ref.mean(axis=(0, 1)), atol=1.5 / 255)
    np.testing.assert_allclose(ours.std(axis=(0, 1)), ref.std(axis=(0, 1)), atol=1.5 / 255)
    np.testing.assert_allclose((ours == 0).mean(axis=(0, 1)), (ref == 0).mean(axis=(0, 1)), atol=0.02)
    # Tail: the share of bright pixels (> 100/255) is the same (~1%).
    assert abs((ours > 100 / 255).mean() - (ref > 100 / 255).mean()) < 0.005

    def chan_corr(a: np.ndarray) -> float:
        cc = np.corrcoef(a.reshape(-1, 3).T)
        return (cc[0, 1] + cc[0, 2] + cc[1, 2]) / 3

    def lag1(a: np.ndarray) -> float:
        g = a - a.mean(axis=(0, 1))
        return float((g[:, :-1] * g[:, 1:]).mean() / g.var())

    # The reference's channels are strongly correlated (0.87, from its JPEG
    # chroma subsampling) while pixels are nearly independent (0.03).
    assert abs(chan_corr(ours) - chan_corr(ref)) < 0.03
    assert abs(lag1(ours) - lag1(ref)) < 0.03


def test_noise_deterministic_and_sized():
    a = noise_image(32, seed=5)
    _check_image(a, 32)
    assert torch.equal(a, noise_image(32, seed=5))
    assert not torch.equal(a, noise_image(32, seed=6))
    assert torch.equal(synthetic_image("noise", 32, seed=5), a)


def test_black_and_white_are_exact():
    black = synthetic_image("black", 32)
    white = synthetic_image("white", 32)
    _check_image(black, 32)
    _check_image(white, 32)
    assert (black == 0).all() and (white == 1).all()


def test_synthetic_unknown_kind():
    with pytest.raises(PosinfoError, match="grey"):
        synthetic_image("grey", 32)


def test_synthetic_from_file(tmp_path):
    img = synthetic_image("noise", 32, file=str(FIXTURES / "noise.jpg"))
    _check_image(img, 32)
    ref = Image.open(FIXTURES / "noise.jpg").convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    assert torch.equal(img, torch.from_numpy(np.asarray(ref).astype(np.float32) / 255).permute(2, 0, 1))
    with pytest.raises(PosinfoError, match="missing.png"):
        synthetic_image("noise", 32, file=str(tmp_path / "missing.png"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PosinfoError, match="broken.png"):
        synthetic_image("noise", 32, file=str(tmp_path / "broken.png"))


# ---------------------------------------------------------------- folders

def _save(path: Path, w: int = 40, h: int = 30, seed: int = 0, colour=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is None:
        arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        arr = np.full((h, w, 3), colour, dtype=np.uint8)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(arr).save(path, format=fmt)


def _truncated_jpeg(path: Path) -> None:
    _save(path.with_name("tmp_full.jpg"), 64, 64, seed=9)
    data = path.with_name("tmp_full.jpg").read_bytes()
    path.with_name("tmp_full.jpg").unlink()
    path.write_bytes(data[: len(data) // 2])


def test_folder_lists_nested_images_sorted(tmp_path):
    _save(tmp_path / "b.png", seed=1)
    _save(tmp_path / "sub" / "a.JPG", seed=2)
    _save(tmp_path / "sub" / "deeper" / "c.jpeg", seed=3)
    _save(tmp_path / "a.PNG", seed=4)
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "skipped.gif")
    ds = FolderImages(tmp_path, size=32)
    assert ds.names == ["a.PNG", "b.png", "sub/a.JPG", "sub/deeper/c.jpeg"]
    assert len(ds) == 4
    for i in range(len(ds)):
        _check_image(ds[i], 32)
    assert set(IMAGE_EXTS) == {".jpg", ".jpeg", ".png"}


def test_folder_resizes_with_pil_bilinear(tmp_path):
    _save(tmp_path / "solid.png", 50, 30, colour=(255, 128, 0))
    _save(tmp_path / "rand.png", 70, 45, seed=7)
    ds = FolderImages(tmp_path, size=32)
    rand, solid = ds[0], ds[1]
    assert ds.names == ["rand.png", "solid.png"]
    # Aspect ratio is not kept and a solid colour stays exact.
    assert torch.equal(solid, torch.tensor([1.0, 128 / 255, 0.0]).view(3, 1, 1).expand(3, 32, 32))
    expected = Image.open(tmp_path / "rand.png").convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    expected = torch.from_numpy(np.asarray(expected).astype(np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(rand, expected)


def test_folder_skips_unreadable_files_with_a_warning(tmp_path, caplog):
    _save(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    _truncated_jpeg(tmp_path / "sub" / "truncated.jpg")
    with caplog.at_level(logging.WARNING, logger="posinfo.data"):
        ds = FolderImages(tmp_path, size=32)
    assert ds.names == ["good.jpg"]
    assert "bad.jpg" in caplog.text
    assert "truncated.jpg" in caplog.text  # verify() alone would have passed it


def test_folder_errors_name_the_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(PosinfoError, match="nope.*does not exist"):
        FolderImages(missing)
    afile = tmp_path / "file.png"
    _save(afile)
    with pytest.raises(PosinfoError, match="file.png.*not a directory"):
        FolderImages(afile)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(PosinfoError, match="empty.*no image files"):
        FolderImages(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"garbage")
    _truncated_jpeg(broken / "y.jpg")
    with pytest.raises(PosinfoError, match="broken.*none is readable"):
        FolderImages(broken)


def test_folder_n_truncates_and_caps(tmp_path, caplog):
    for i, name in enumerate(["d.png", "a.png", "c.jpg", "b.png"]):
        _save(tmp_path / name, seed=i)
    assert FolderImages(tmp_path, n=2, size=16).names == ["a.png", "b.png"]
    with caplog.at_level(logging.WARNING, logger="posinfo.data"):
        ds = FolderImages(tmp_path, n=10, size=16)
    assert len(ds) == 4 and "10" in caplog.text
    with pytest.raises(PosinfoError):
        FolderImages(tmp_path, n=0)


def test_folder_n_counts_readable_images_only(tmp_path):
    (tmp_path / "a.png").write_bytes(b"garbage")
    _save(tmp_path / "b.png", seed=1)
    _save(tmp_path / "c.png", seed=2)
    _save(tmp_path / "d.png", seed=3)
    assert FolderImages(tmp_path, n=2, size=16).names == ["b.png", "c.png"]


def test_folder_identity_tracks_file_changes(tmp_path):
    _save(tmp_path / "a.png", seed=1)
    _save(tmp_path / "b.png", seed=2)
    ds = FolderImages(tmp_path, size=16)
    ident = ds.identity()
    json.dumps(ident)
    assert ident == FolderImages(tmp_path, size=16).identity()
    assert ident["size"] == 16 and ident["n"] == 2
    assert [f[0] for f in ident["files"]] == ["a.png", "b.png"]
    assert FolderImages(tmp_path, size=32).identity() != ident

    # Same bytes, new mtime only: the content identity (default) stays, the stat identity changes.
    by_stat = FolderImages(tmp_path, size=16, identity_by="stat").identity()
    st = os.stat(tmp_path / "a.png")
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert ds.identity() == ident
    assert FolderImages(tmp_path, size=16, identity_by="stat").identity() != by_stat
    ident2 = ds.identity()
    # New content of another size (mtime restored to rule it out).
    st = os.stat(tmp_path / "b.png")
    _save(tmp_path / "b.png", w=60, h=50, seed=3)
    os.utime(tmp_path / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ds.identity() != ident2


@pytest.mark.parametrize("kind", ["shuffled", "rotated"])
def test_controls_are_exact_permutations_of_the_natural_pixels(kind):
    from posinfo.data import ControlImages

    base = EmbeddedImages("test", n=3, size=32)
    ctl = ControlImages(base, kind, tiles=4, seed=0)
    assert len(ctl) == 3 and ctl.names[0] == f"{kind}_{base.names[0]}"
    for i in range(3):
        a, b = base[i], ctl[i]
        assert not torch.equal(a, b)
        assert torch.equal(a.flatten(1).sort(dim=1).values, b.flatten(1).sort(dim=1).values)  # same pixels, per channel
    if kind == "rotated":
        assert torch.equal(ctl[0][:, 0, 0], base[0][:, -1, -1])
    else:
        # every 8×8 tile of the shuffled image is a tile of the natural one, each used once
        tiles = lambda x: [x[:, r:r + 8, c:c + 8] for r in range(0, 32, 8) for c in range(0, 32, 8)]
        src = tiles(base[0])
        used = [next(j for j, t in enumerate(src) if torch.equal(t, u)) for u in tiles(ctl[0])]
        assert sorted(used) == list(range(16)) and used != list(range(16))
        assert torch.equal(ctl[0], ControlImages(base, kind, tiles=4, seed=0)[0])  # fixed permutation
        assert ctl.identity() != ControlImages(base, kind, tiles=2, seed=0).identity()
    with pytest.raises(PosinfoError, match="input.tiles=5 does not divide data.image_size=32"):
        ControlImages(base, "shuffled", tiles=5)


def test_photos_are_deterministic_crops_of_disjoint_photographs():
    from posinfo.data import PHOTOS_TEST, PHOTOS_TRAIN, PhotoCrops

    assert not set(PHOTOS_TRAIN) & set(PHOTOS_TEST)
    a, b = PhotoCrops("train", n=16, size=32), PhotoCrops("train", n=16, size=32)
    assert all(torch.equal(a[i], b[i]) for i in range(16))  # deterministic
    assert a.names[14].endswith("astronaut") and not torch.equal(a[0], a[14])  # a new crop of the same photo
    test = PhotoCrops("test", size=32)
    assert len(test) == 60 and len(PhotoCrops("train", size=32)) == 240  # the documented defaults
    assert {n.split("_", 2)[2] for n in test.names} == {p.split(".")[0] for p in PHOTOS_TEST}
    x = a[0]
    assert x.shape == (3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.std()) > 0.01
    assert a.identity() != PhotoCrops("train", n=16, size=32, seed=1).identity()


def test_a_job_on_photos_with_the_controls(make_cfg, tmp_path):
    from posinfo.job import run

    res = run(make_cfg("data=photos", "backbone=posenet", "readout.padding=1", "input=controls"), tmp_path / "j",
              progress=False)
    assert res["status"] == "ok" and set(res["metrics"]) == {"natural", "shuffled", "rotated"}
    assert res["metrics"]["natural"]["n_images"] == 4


@pytest.mark.parametrize("color", ["black", "white", "mean", "noise"])
def test_canvas_has_the_border_of_its_width_and_colour_and_the_content_unchanged(color):
    img = EmbeddedImages("test", n=1, size=32)[0]
    out = canvas(img, 5, color, np.random.default_rng(1))
    assert out.shape == (3, 42, 42)
    assert torch.equal(out[:, 5:37, 5:37], img)
    ring = torch.cat([out[:, :5].flatten(1), out[:, -5:].flatten(1), out[:, :, :5].flatten(1), out[:, :, -5:].flatten(1)], 1)
    if color == "noise":
        assert 0.4 < ring.mean() < 0.6 and ring.std() > 0.25
    else:
        want = {"black": torch.zeros(3, 1), "white": torch.ones(3, 1), "mean": img.mean(dim=(1, 2))[:, None]}[color]
        assert torch.allclose(ring, want.expand_as(ring))


def test_canvas_images_are_the_resized_canvas_seeded_per_split_and_index():
    base_tr, base_te = EmbeddedImages("train", n=2, size=32), EmbeddedImages("test", n=2, size=32)
    tr, te = CanvasImages(base_tr, 8, "noise"), CanvasImages(base_te, 8, "noise")
    x = tr[1]
    assert x.shape == (3, 32, 32) and torch.equal(x, tr[1])  # deterministic
    assert not torch.equal(tr[0][:, :2], tr[1][:, :2]) and not torch.equal(tr[0][:, :2], te[0][:, :2])
    black = CanvasImages(base_tr, 8, "black")[0]
    ref = torch.nn.functional.interpolate(canvas(base_tr[0], 8, "black")[None], size=(32, 32), mode="bilinear",
                                          antialias=True)[0].clamp(0, 1)
    assert torch.allclose(black, ref)
    assert black[:, :5].max() < 1e-6 and black[:, 16].std() > 0.01  # 8 of 48 px → 5.3 of 32: black
    assert tr.identity() != CanvasImages(base_tr, 8, "black").identity() != base_tr.identity()
    with pytest.raises(PosinfoError, match="data.canvas.border=-1"):
        CanvasImages(base_tr, -1, "black")
