"""Smoke test of bench/bench_sweep.py: the one command runs end to end and writes its CSV."""

import csv
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_bench_sweep_runs_and_writes_its_csv(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "bench_sweep.py"),
            "--backbone", "posenet", "--num-train", "8", "--num-test", "4",
            "--epochs", "1", "--image-size", "32", "--device", "cpu", "--out", str(out), "--extraction-runs", "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cached speedup (uncached / cached)" in proc.stdout
    assert "metrics (natural SPC and MAE within 0.005): AGREE" in proc.stdout
    assert "fused vs unfused metrics (every input, SPC/MAE/accuracy)" in proc.stdout and "EQUAL (within 1e-5)" in proc.stdout
    files = list(out.glob("bench_*.csv"))
    assert len(files) == 1
    with open(files[0], newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        columns = reader.fieldnames
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from bench_sweep import COLUMNS
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert columns == COLUMNS
    for col in ("cpu_model", "cpu_cores", "torch", "device", "gpu_name", "wall_s", "peak_rss_mb",
                "speedup_uncached_over_cached", "cached_over_extraction", "metrics_agree"):
        assert col in columns
    assert [r["run"] for r in rows] == ["extraction", "sweep_cached", "sweep_unfused", "sweep_one_target", "sweep_uncached"]
    by = {r["run"]: r for r in rows}
    for r in rows:
        assert float(r["wall_s"]) > 0 and float(r["peak_rss_mb"]) > 50 and r["returncode"] == "0"
        assert r["backbone"] == "posenet" and r["device"] == "cpu" and int(r["cpu_cores"]) >= 1
    assert int(by["extraction"]["images"]) == 12 and float(by["extraction"]["images_per_s"]) > 0
    for name in ("sweep_cached", "sweep_unfused", "sweep_uncached"):
        assert by[name]["jobs_ok"] == "5" and by[name]["jobs"] == "5"
    assert by["sweep_one_target"]["jobs_ok"] == "1"
    assert float(by["sweep_cached"]["fused_metrics_max_abs_diff"]) <= 1e-5
    assert float(by["sweep_cached"]["fused_train_over_one_target"]) > 0
    assert by["sweep_cached"]["metrics_agree"] == "True"
    assert float(by["sweep_cached"]["speedup_uncached_over_cached"]) > 0
    # The temporary folder (sweeps, caches) is removed; nothing lands in the checkout or cwd.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_bench_readout_runs_and_the_two_convolutions_agree():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_readout.py"), "--channels", "16", "--batch", "4",
         "--repeats", "1", "--image-size", "32"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for row in ("load: CachedFeatures (reused buffer)", "step: OneMapConv2d, channels-last", "step: nn.Conv2d, NCHW"):
        assert row in proc.stdout
    assert "OneMapConv2d vs nn.Conv2d output: max |difference|" in proc.stdout


@pytest.mark.slow
def test_bench_protocol_runs_the_table1_grid_on_its_standin_data_and_writes_its_csv(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_protocol.py"), "--scale", "0.001", "--backbones", "posenet",
         "--seeds", "0", "--device", "cpu", "--authors-batches", "1", "--data-dir", str(tmp_path / "data"),
         "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list((tmp_path / "data" / "train").glob("*.jpg"))) == 11  # 10,553 × 0.001
    assert len(list((tmp_path / "data" / "test").glob("*.jpg"))) == 1
    assert "authors' design (estimated) / posinfo:" in proc.stdout and "an extrapolation, not a run" in proc.stdout
    (path,) = out.glob("protocol_*.csv")
    with open(path, newline="") as fh:
        rows = {r["phase"]: r for r in csv.DictReader(fh)}
    sweep = rows["Table 1 sweep (wall)"]
    assert sweep["jobs"] == sweep["jobs_ok"] == "5"  # PosENet × 5 targets × 1 seed, all ok
    assert float(rows["jobs: readout training (sum)"]["steps_per_s"]) > 0
    assert float(rows["decode (PIL, 1 process)"]["images_per_s"]) > 0
    assert float(rows["authors' design, estimated (sum)"]["wall_s"]) > 0
    # full scale, projected: each per-image phase × 1/scale (1000 here), the fixed costs once, and they add up
    proj = {k.split(": ", 1)[1]: float(v["wall_s"]) for k, v in rows.items()
            if k.startswith("full scale, projected") and v["wall_s"]}
    total = proj.pop("the Table 1 sweep")
    assert total == pytest.approx(sum(proj.values()), rel=2e-3)
    assert proj["readout training (cache reads included)"] == pytest.approx(
        1000 * float(rows["jobs: readout training (sum)"]["wall_s"]), rel=2e-3)
    assert proj["outside jobs (fixed)"] < total and "a projection, not a run" in proc.stdout


@pytest.mark.slow
def test_bench_precision_compares_bfloat16_with_float32_features_and_numbers(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_precision.py"), "--weights", "random", "--targets", "hor",
         "--num-train", "8", "--num-test", "4", "--image-size", "32", "--epochs", "1", "--device", "cpu",
         "--out", str(out), "--set", "train.batch_size=4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "bfloat16: extraction" in proc.stdout and "largest |ΔSPC|" in proc.stdout
    (path,) = out.glob("precision_*.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["precision"], r["input"]) for r in rows} == {(p, k) for p in ("float32", "bfloat16")
                                                            for k in ("natural", "black", "white", "noise")}
    bf = [r for r in rows if r["precision"] == "bfloat16"]
    # bf16 features really differ from float32's, and only by bf16's rounding
    assert all(0 < float(r["feature_rel_l2"]) < 0.05 for r in bf)
    assert all(float(r["d_spc"]) == pytest.approx(float(r["spc"]) - float(next(
        f for f in rows if f["precision"] == "float32" and f["input"] == r["input"])["spc"])) for r in bf
               if r["spc"] not in ("", "None"))


def test_gpu_checks_fit_their_device_budget_and_parse():
    """bench/gpu_checks.sh runs on a lent GPU machine with minutes of device time: its steps' time
    limits must add up to under 8 minutes, and the script must at least parse."""
    import re
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_checks.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    fixed = sum(int(v) for v in re.findall(r"^timeout (\d+) ", text, flags=re.M))
    per_probe = re.search(r"echo (\d+) \|\| echo (\d+)", text)  # step 5: GPU and CPU limits, two probes each
    total = fixed + 2 * (int(per_probe.group(1)) + int(per_probe.group(2)))
    assert total <= 480, f"the time limits add up to {total} s"
