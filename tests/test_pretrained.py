"""Jobs on real trained backbones: the shared VGG16 files (a folder given by $POSINFO_TEST_WEIGHTS;
.ci/run sets it to ../shared/weights). Skipped, with the reason, where it is not set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from posinfo.encoders import build_encoder
from posinfo.data import EmbeddedImages
from posinfo.job import run

WEIGHTS = os.environ.get("POSINFO_TEST_WEIGHTS")
pytestmark = pytest.mark.skipif(
    not WEIGHTS or not (Path(WEIGHTS) / "vgg16_imagenet.pth").is_file(),
    reason="POSINFO_TEST_WEIGHTS is not set to a folder holding vgg16_imagenet.pth (CI sets ../shared/weights)",
)


def test_a_small_job_on_the_shared_imagenet_vgg16(make_cfg, tmp_path):
    w = Path(WEIGHTS) / "vgg16_imagenet.pth"
    res = run(make_cfg("backbone=vgg16", f"backbone.weights={w}", "input=natural", "target=hor"), tmp_path / "j",
              progress=False)
    assert res["status"] == "ok" and res["readout_in_channels"] == 1472
    m = res["metrics"]["natural"]
    assert 0 <= m["mae"] <= 1 and m["n_images"] == 4 and res["training"]["steps"] == 4  # 2 epochs × 2 batches
    # Trained taps are two orders of magnitude larger than random ones on [0, 1] input (the
    # weights' README: mean |x| 45 at f1 against 0.08): the file really is a trained VGG16.
    images = torch.stack([EmbeddedImages("test", n=2, size=64)[i] for i in range(2)])
    torch.manual_seed(0)
    trained = build_encoder("vgg16", str(w))(images)
    random = build_encoder("vgg16", "random")(images)
    assert trained[0].abs().mean() > 50 * random[0].abs().mean()


def test_the_edge_detection_vgg16_fits_and_differs_from_imagenet():
    a = build_encoder("vgg16", str(Path(WEIGHTS) / "vgg16_imagenet.pth")).state_dict()
    b = build_encoder("vgg16", str(Path(WEIGHTS) / "vgg16_hed.pth")).state_dict()
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)
