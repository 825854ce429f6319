"""A single job (no -m) gets the checks a sweep makes before any job, and pretrained weights
that cannot be fetched stop it at once, without the hub's retries or a download that fails
(issue 22, item 5)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from sweep_helpers import env_with

FIX = "download them once where there is network"


@pytest.mark.parametrize("backbone, line", [
    (["backbone=timm", "backbone.model=resnet18"],
     "cannot load timm's pretrained weights for resnet18 (not cached, and URLError fetching it): " + FIX),
    (["backbone=vgg16"],
     "cannot load ImageNet weights VGG16_Weights.IMAGENET1K_V1 for vgg16 (not in the torch hub cache, and URLError "
     "fetching it): " + FIX),
])
def test_a_single_job_whose_pretrained_weights_are_out_of_reach_stops_at_once_with_one_line(tmp_path, backbone, line):
    # Empty torch hub and Hugging Face caches and a proxy that refuses: offline, wherever the test runs.
    env = env_with(tmp_path, TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"),
                   https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    job = tmp_path / "job"
    r = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *backbone, "backbone.weights=imagenet",
                        "data.image_size=32", "data.num_train=8", "data.num_test=4", "device=cpu",
                        f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={job}"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert r.stderr.splitlines() == [f"posinfo: error: {line}" + r.stderr.split(FIX, 1)[1].rstrip("\n")], out[-3000:]
    assert "Retrying" not in out and "Downloading" not in out
    assert not job.exists()  # stopped before the job, its folder included


def test_a_quoted_reason_is_cut_at_a_sentence_or_a_word_never_inside_one():
    from posinfo.errors import reason

    hub = RuntimeError("An error happened while trying to locate the file on the Hub and we cannot find the requested "
                       "files in the local cache. Please check your connection and try again or make sure your "
                       "Internet connection is on.\nmore")
    assert reason(hub) == ("An error happened while trying to locate the file on the Hub and we cannot find the "
                           "requested files in the local cache.")
    assert reason(ValueError("word " * 40)) == "word " * 31 + "word …"
    assert reason(OSError()) == "OSError"
