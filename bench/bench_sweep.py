"""Benchmark: the 5-target sweep with the feature cache vs without, vs extraction alone.

    python bench/bench_sweep.py [--backbone vgg16] [--num-train N] [--num-test M]
                                [--epochs 15] [--image-size 224] [--device auto]
                                [--out bench/results]

In one run, on the same data and machine, it times three child processes:

1. ``extraction``: posinfo's own extraction path (``posinfo.cache.get_or_create``
   filled by ``posinfo.features.fill``) over the train + test images once, i.e. the
   one-pass limit of any sweep on this backbone configuration (run before and again
   after the sweeps; the faster pass counts);
2. ``sweep_cached``: ``python sweep.py -m target=hor,ver,gau,horstp,verstp ...`` with a
   fresh, empty cache directory (the first job pays the extraction);
3. ``sweep_uncached``: the same sweep with ``cache.enabled=false`` (features recomputed
   every batch of every epoch of every job, as the original authors' code does);
4. ``sweep_unfused``: the cached sweep with ``sweep.fuse=false`` (each job trains its own
   readout, reading the features itself), and ``sweep_one_target``: the cached sweep of the
   first target alone; each with its own empty cache. ``sweep_cached`` trains the five
   readouts together (``sweep.fuse``, the default); the ratios say what fusion buys.

Wall time and peak resident memory are measured per child (``os.wait4``). It prints a
table, the ratios against the targets of issue 6, a check that the cached and uncached
sweeps' metrics agree (natural SPC and MAE within 0.005), and writes everything, with
the machine's description, to ``<out>/bench_<host>_<timestamp>.csv``.

The defaults (VGG16, random weights, 20 train / 8 test images at 224 px, 15 epochs)
keep the uncached sweep under ~10 minutes on a 2-core laptop CPU.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("hor", "ver", "gau", "horstp", "verstp")
TOLERANCE = 0.005
# Issue 6 targets (2 CPU cores, VGG16 random weights, 5-target sweep at 15 epochs).
TARGET_SPEEDUP = 10.0  # uncached / cached >= this
TARGET_VS_EXTRACTION = 2.0  # cached / extraction alone <= this
# Issue 14 targets (2 CPU cores, scaled): fused 5-target sweep vs extraction, training vs one target's, memory.
TARGET_FUSED_VS_EXTRACTION = 1.3
TARGET_FUSED_TRAIN_VS_ONE = 1.5
TARGET_FUSED_RSS = 1.10

COLUMNS = [
    "host", "timestamp", "cpu_model", "cpu_cores", "torch_threads", "python", "torch", "torchvision",
    "device", "gpu_name", "backbone", "weights", "num_train", "num_test", "epochs", "image_size", "targets",
    "run", "wall_s", "inner_s", "cpu_s", "load_1m", "peak_rss_mb", "images", "images_per_s", "jobs_ok", "jobs",
    "jobs_total_s", "jobs_features_s", "jobs_train_s", "jobs_eval_s", "outside_jobs_s", "returncode",
    "extraction_passes_s", "speedup_uncached_over_cached", "cached_over_extraction",
    "cached_over_extraction_process", "cached_over_in_sweep_extraction", "uncached_over_extraction",
    "metrics_agree", "max_abs_dspc", "max_abs_dmae",
    "fused_train_over_one_target", "unfused_train_over_one_target", "unfused_over_fused", "fused_rss_over_unfused",
    "fused_metrics_max_abs_diff",
]
RUNS = ("extraction", "sweep_cached", "sweep_unfused", "sweep_one_target", "sweep_uncached")
SWEEPS = RUNS[1:]


# --------------------------------------------------------------------------- helpers


def _child_env() -> dict:
    """Children import posinfo from this checkout, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(cmd: list[str], log_path: Path, cwd: Path) -> dict:
    """Run ``cmd``; return its wall time, CPU time and peak RSS (its own and its waited-for
    children's, e.g. posinfo's forked job processes), and its exit status. Output goes to
    ``log_path``."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: do not leave the child running
            proc.terminate()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    rss_mb = ru.ru_maxrss / (1 << 20) if sys.platform == "darwin" else ru.ru_maxrss / 1024
    # CPU seconds (user + system) well below wall x cores on an idle machine means waiting
    # (I/O, or other processes holding the cores: see load_1m, the load before it started).
    cpu = ru.ru_utime + ru.ru_stime
    return {"wall_s": wall, "cpu_s": cpu, "load_1m": load, "peak_rss_mb": rss_mb, "returncode": proc.returncode}


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def common_overrides(a: argparse.Namespace) -> list[str]:
    weights = [] if a.backbone == "posenet" else [f"backbone.weights={a.weights}"]
    workers = [] if a.num_workers is None else [f"data.num_workers={a.num_workers}"]
    return [
        f"backbone={a.backbone}", *weights, *workers,
        f"train.epochs={a.epochs}",
        f"data.num_train={a.num_train}", f"data.num_test={a.num_test}", f"data.image_size={a.image_size}",
        f"device={a.device}",
        *a.set,
    ]


def machine_info(device: str) -> dict:
    import torch
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = int(device.split(":")[1]) if ":" in device else 0
        gpu = torch.cuda.get_device_name(idx)
    return {
        "host": socket.gethostname().split(".")[0],
        "cpu_model": cpu,
        "cpu_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": device,
        "gpu_name": gpu,
    }


# --------------------------------------------------------------------------- extraction (child)


def extract_only(a: argparse.Namespace) -> None:
    """Child process: posinfo's extraction path over train + test once, into a fresh cache."""
    t_start = time.perf_counter()
    import torch
    from hydra import compose, initialize_config_dir

    from posinfo import job
    from posinfo.encoders import build_encoder
    from posinfo.features import CachedFeatures, FeatureExtractor
    from posinfo.sources import open_features

    # The job's own feature path (sources.open_features: cache.get_or_create with the job's
    # entry shape and layout, filled by features.fill), into a fresh cache directory.
    overrides = [*common_overrides(a), f"cache.dir={a.extract_cache_dir}", "cache.enabled=true"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    bb, data = cfg.backbone, cfg.data
    size, fs = int(data.image_size), int(cfg.readout.feature_size)
    device = job.resolve_device(cfg.device)
    torch.manual_seed(int(cfg.train.seed))
    encoder = build_encoder(bb.name, str(bb.weights), str(bb.padding), bb.taps, str(data.normalize))
    extractor = FeatureExtractor(encoder, fs, device)
    c = sum(t.channels for t in encoder.describe(size))
    if hasattr(job, "resolve_num_workers"):  # data.num_workers may be "auto"
        num_workers = job.resolve_num_workers(data.get("num_workers", "auto"), device)
    else:
        num_workers = int(data.get("num_workers", 0) or 0)
    datasets = [job.make_dataset(data, "train"), job.make_dataset(data, "test")]
    key_fields = {"bench": "extraction", "backbone": bb.name, "image_size": size, "feature_size": fs}
    t_setup = time.perf_counter() - t_start

    t0 = time.perf_counter()
    for split, ds in zip(("train", "test"), datasets):
        src = open_features(split, ds, extractor, c, key_fields, job.cache_settings(cfg.cache), num_workers, False)
        if not isinstance(src, CachedFeatures):
            raise SystemExit(f"extraction: the {split} features were not cached (cache.max_gb or free disk?)")
        del src
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    n = sum(len(ds) for ds in datasets)
    Path(a.extract_only).write_text(
        json.dumps({"seconds": seconds, "images": n, "channels": c, "setup_s": t_setup, "device": str(device)})
    )


# --------------------------------------------------------------------------- sweeps


def read_jobs(sweep_dir: Path) -> dict[str, dict]:
    """result.json of each job of a sweep, by target."""
    out = {}
    for p in sorted(sweep_dir.rglob("result.json")):
        res = json.loads(p.read_text())
        out[res.get("choices", {}).get("target") or res["config"]["target"]["name"]] = res
    return out


def sweep_stats(jobs: dict[str, dict], wall: float) -> dict:
    ok = [r for r in jobs.values() if r.get("status") == "ok"]
    tot = {k: sum(r.get("timing", {}).get(k, 0.0) for r in ok) for k in ("total_s", "features_s", "train_s", "eval_s")}
    return {
        "jobs_ok": len(ok),
        "jobs": len(jobs),
        "jobs_total_s": tot["total_s"],
        "jobs_features_s": tot["features_s"],
        "jobs_train_s": tot["train_s"],
        "jobs_eval_s": tot["eval_s"],
        "outside_jobs_s": wall - tot["total_s"],
    }


def compare_metrics(cached: dict[str, dict], uncached: dict[str, dict], targets: list[str]) -> tuple[bool, float, float, list[str]]:
    lines, ok, dspc_max, dmae_max = [], True, 0.0, 0.0
    for t in targets:
        a, b = cached.get(t), uncached.get(t)
        if not a or not b or a.get("status") != "ok" or b.get("status") != "ok":
            ok = False
            lines.append(f"  {t:<7} missing or failed job (cached: {a and a.get('status')}, uncached: {b and b.get('status')})")
            continue
        ma, mb = a["metrics"]["natural"], b["metrics"]["natural"]
        if ma["spc"] is None or mb["spc"] is None:
            dspc = 0.0 if ma["spc"] is None and mb["spc"] is None else float("inf")
        else:
            dspc = abs(ma["spc"] - mb["spc"])
        dmae = abs(ma["mae"] - mb["mae"])
        good = dspc <= TOLERANCE and dmae <= TOLERANCE
        ok &= good
        dspc_max, dmae_max = max(dspc_max, dspc), max(dmae_max, dmae)
        fmt = lambda v: "  nan" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"  {t:<7} SPC {fmt(ma['spc'])} vs {fmt(mb['spc'])} (|d| {dspc:.4f})   "
            f"MAE {ma['mae']:.3f} vs {mb['mae']:.3f} (|d| {dmae:.4f})   {'ok' if good else 'DIFFERENT'}"
        )
    return ok, dspc_max, dmae_max, lines


def max_metric_diff(a: dict[str, dict], b: dict[str, dict]) -> float:
    """The largest |difference| of any metric of any input between two sweeps' jobs (inf if one is missing)."""
    worst = 0.0
    for t in set(a) | set(b):
        if t not in a or t not in b or a[t].get("status") != "ok" or b[t].get("status") != "ok":
            return float("inf")
        for kind, ma in a[t]["metrics"].items():
            for m, v in ma.items():
                w = b[t]["metrics"].get(kind, {}).get(m)
                if isinstance(v, float) and isinstance(w, float):
                    worst = max(worst, abs(v - w))
                elif v != w and not isinstance(v, (list, dict)):
                    return float("inf")
    return worst


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/bench_sweep.py",
        description="Time the 5-target posinfo sweep cached vs uncached vs feature extraction alone.",
    )
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--weights", default="random", help="backbone.weights (speed does not depend on them)")
    p.add_argument("--num-train", type=int, default=20)
    p.add_argument("--num-test", type=int, default=8)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data.num_workers (image generation/decoding processes; default: the config's)")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets of the sweep")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder of the CSV")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra Hydra override for every run (repeatable), e.g. --set cache.dtype=float32")
    p.add_argument("--skip-uncached", action="store_true", help="do not time the uncached sweep")
    p.add_argument("--skip-fuse", action="store_true", help="do not time the unfused and the one-target sweeps")
    p.add_argument("--extraction-runs", type=int, default=2,
                   help="extraction passes (the first before the sweeps, the others after); the fastest counts")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (sweeps, logs, caches)")
    p.add_argument("--extract-only", help=argparse.SUPPRESS)  # child mode: write its JSON here
    p.add_argument("--extract-cache-dir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.extract_only:
        extract_only(a)
        return 0
    if not hasattr(os, "wait4"):
        print("bench_sweep.py needs os.wait4 (Linux or macOS) to measure each child's peak memory", file=sys.stderr)
        return 2

    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    info = machine_info(a.device)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="posinfo-bench-"))
    print(
        f"posinfo bench: {a.backbone} ({a.weights}), {len(targets)} targets, {a.epochs} epochs, "
        f"{a.num_train} train + {a.num_test} test images at {a.image_size} px\n"
        f"machine: {info['cpu_model']}, {info['cpu_cores']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), device {info['device']}{' (' + info['gpu_name'] + ')' if info['gpu_name'] else ''}\n"
        f"work dir: {tmp}",
        flush=True,
    )
    py = sys.executable
    common = common_overrides(a)
    sweep = [py, str(ROOT / "sweep.py"), "-m", *common, f"target={','.join(targets)}"]
    results: dict[str, dict] = {}
    failed = False
    try:
        # Untimed warm-up: byte-compiles a clean checkout and warms the file cache, so
        # whichever run comes first does not pay for it alone.
        run_child([py, "-c", "import posinfo.job, posinfo.runner, hydra, torchvision, matplotlib.pyplot"], tmp / "warmup.log", tmp)

        self_cmd = [py, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:])]

        def extraction_step(i: int) -> tuple[str, list[str]]:
            return f"extraction_{i}", [*self_cmd, "--extract-only", str(tmp / f"extraction_{i}.json"),
                                       "--extract-cache-dir", str(tmp / f"cache_extraction_{i}")]

        steps = [
            extraction_step(1),
            ("sweep_cached", [*sweep, f"cache.dir={tmp / 'cache'}", f"hydra.sweep.dir={tmp / 'sweep_cached'}"]),
        ]
        if not a.skip_fuse:
            steps += [("sweep_unfused", [*sweep, "sweep.fuse=false", f"cache.dir={tmp / 'cache_unfused'}",
                                         f"hydra.sweep.dir={tmp / 'sweep_unfused'}"]),
                      ("sweep_one_target", [py, str(ROOT / "sweep.py"), "-m", *common, f"target={targets[0]}",
                                            f"cache.dir={tmp / 'cache_one'}", f"hydra.sweep.dir={tmp / 'sweep_one_target'}"])]
        if not a.skip_uncached:
            steps.append(("sweep_uncached", [*sweep, "cache.enabled=false", f"cache.dir={tmp / 'cache_unused'}",
                                             f"hydra.sweep.dir={tmp / 'sweep_uncached'}"]))
        # Extraction again after the sweeps: on a machine shared with other work, one short
        # window can be slowed down; the faster of the two passes is the one-pass limit.
        steps += [extraction_step(i) for i in range(2, a.extraction_runs + 1)]
        for name, cmd in steps:
            print(f"running {name} ...", flush=True)
            r = run_child(cmd, tmp / f"{name}.log", tmp)
            results[name] = r
            print(f"  {name}: {r['wall_s']:.1f} s (CPU {r['cpu_s']:.1f} s, load before {r['load_1m']:.2f}), "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, exit {r['returncode']}", flush=True)
            if r["returncode"] != 0:
                failed = True
                print(f"  {name} failed; last lines of {tmp / (name + '.log')}:\n{_tail(tmp / (name + '.log'))}", flush=True)

        passes = []
        for name in [n for n, _ in steps if n.startswith("extraction_")]:
            r = results.pop(name)
            if r["returncode"] == 0:
                e = json.loads((tmp / f"{name}.json").read_text())
                r.update(inner_s=e["seconds"], images=e["images"], images_per_s=e["images"] / e["seconds"])
            passes.append(r)
        ok_passes = [r for r in passes if r.get("inner_s")]
        ex = dict(min(ok_passes, key=lambda r: r["inner_s"]) if ok_passes else passes[0])
        ex["peak_rss_mb"] = max(r["peak_rss_mb"] for r in passes)
        ex["extraction_passes_s"] = " ".join(f"{r['inner_s']:.2f}" if r.get("inner_s") else "failed" for r in passes)
        results = {"extraction": ex, **results}
        jobs = {}
        for name in SWEEPS:
            if name in results:
                jobs[name] = read_jobs(tmp / name)
                results[name].update(sweep_stats(jobs[name], results[name]["wall_s"]))
                results[name]["inner_s"] = results[name]["jobs_total_s"]

        # Ratios.
        ext_s = ex.get("inner_s")
        cached_s = results["sweep_cached"]["wall_s"]
        ratios = {}
        if "sweep_uncached" in results:
            ratios["speedup_uncached_over_cached"] = results["sweep_uncached"]["wall_s"] / cached_s
        # The same pass inside the cached sweep: its first job fills the cache.
        in_sweep = max((r.get("timing", {}).get("features_s", 0.0) for r in jobs["sweep_cached"].values()), default=0.0)
        if in_sweep > 0:
            ratios["cached_over_in_sweep_extraction"] = cached_s / in_sweep
        if ext_s:
            ratios["cached_over_extraction"] = cached_s / ext_s
            # Like for like: both are whole processes (interpreter, imports, config, backbone).
            ratios["cached_over_extraction_process"] = cached_s / ex["wall_s"]
            if "sweep_uncached" in results:
                ratios["uncached_over_extraction"] = results["sweep_uncached"]["wall_s"] / ext_s
        agree = None
        lines: list[str] = []
        if "sweep_uncached" in jobs:
            agree, dspc, dmae, lines = compare_metrics(jobs["sweep_cached"], jobs["sweep_uncached"], targets)
            ratios.update(metrics_agree=agree, max_abs_dspc=dspc, max_abs_dmae=dmae)
        if "sweep_unfused" in jobs and "sweep_one_target" in jobs:
            one = results["sweep_one_target"]["jobs_train_s"]
            ratios.update(
                fused_train_over_one_target=results["sweep_cached"]["jobs_train_s"] / one if one else float("nan"),
                unfused_train_over_one_target=results["sweep_unfused"]["jobs_train_s"] / one if one else float("nan"),
                unfused_over_fused=results["sweep_unfused"]["wall_s"] / cached_s,
                fused_rss_over_unfused=results["sweep_cached"]["peak_rss_mb"] / results["sweep_unfused"]["peak_rss_mb"],
                fused_metrics_max_abs_diff=max_metric_diff(jobs["sweep_cached"], jobs["sweep_unfused"]),
            )

        # Table.
        print()
        head = (f"{'run':<15} {'wall s':>8} {'inner s':>8} {'CPU s':>8} {'load':>5} {'peak RSS MB':>12} "
                f"{'images':>7} {'img/s':>7} {'jobs ok':>8}")
        print(head)
        print("-" * len(head))
        for name in RUNS:
            if name not in results:
                continue
            r = results[name]
            inner = f"{r['inner_s']:.1f}" if r.get("inner_s") is not None else "-"
            img = str(r["images"]) if r.get("images") else "-"
            ips = f"{r['images_per_s']:.2f}" if r.get("images_per_s") else "-"
            jobs_ok = f"{r['jobs_ok']}/{r['jobs']}" if "jobs" in r else "-"
            print(f"{name:<15} {r['wall_s']:>8.1f} {inner:>8} {r['cpu_s']:>8.1f} {r['load_1m']:>5.2f} "
                  f"{r['peak_rss_mb']:>12.0f} {img:>7} {ips:>7} {jobs_ok:>8}")
        print("(extraction: inner s = the encoder pass over train+test alone, the faster of "
              f"{a.extraction_runs} passes ({ex.get('extraction_passes_s', '')} s); sweeps: inner s = sum of the jobs' "
              "timing.total_s, the rest of wall s is process start, imports and Hydra; CPU s = user+system "
              "of the child and its children; load = 1-min load average before the run, on "
              f"{info['cpu_cores']} cores)")
        for name in SWEEPS:
            if name in results and results[name].get("jobs"):
                r = results[name]
                print(f"{name}: jobs' features {r['jobs_features_s']:.1f} s, train {r['jobs_train_s']:.1f} s, "
                      f"eval {r['jobs_eval_s']:.1f} s, rest of jobs {r['jobs_total_s'] - r['jobs_features_s'] - r['jobs_train_s'] - r['jobs_eval_s']:.1f} s, "
                      f"outside jobs {r['outside_jobs_s']:.1f} s")
        print()
        if "speedup_uncached_over_cached" in ratios:
            v = ratios["speedup_uncached_over_cached"]
            print(f"cached speedup (uncached / cached):         {v:6.1f}x   target >= {TARGET_SPEEDUP:g}x   "
                  f"{'MET' if v >= TARGET_SPEEDUP else 'MISSED'}")
        if "cached_over_extraction" in ratios:
            for key, what in (("cached_over_extraction_process", "extraction process (wall/wall)"),
                              ("cached_over_extraction", "the encoder pass alone")):
                v = ratios[key]
                print(f"cached sweep / {what + ':':<29}{v:6.2f}x   target <= {TARGET_VS_EXTRACTION:g}x   "
                      f"{'MET' if v <= TARGET_VS_EXTRACTION else 'MISSED'}")
            print("  (the process includes what every run pays once: interpreter, imports, config, backbone build;\n"
                  "   the pass alone does not, so with few images its ratio is dominated by those fixed costs)")
        if "cached_over_in_sweep_extraction" in ratios:
            print(f"cached sweep / its own extraction (1st job): {ratios['cached_over_in_sweep_extraction']:6.2f}x   "
                  f"(the same pass timed inside the sweep, {in_sweep:.1f} s)")
        if "uncached_over_extraction" in ratios:
            print(f"uncached sweep / extraction alone:          {ratios['uncached_over_extraction']:6.1f}x")
        if "fused_train_over_one_target" in ratios:
            checks = [("fused sweep (sweep_cached) / extraction process:", ratios.get("cached_over_extraction_process"),
                       TARGET_FUSED_VS_EXTRACTION),
                      ("training, 5 fused targets / one target's:", ratios["fused_train_over_one_target"],
                       TARGET_FUSED_TRAIN_VS_ONE),
                      ("peak RSS, fused / unfused sweep:", ratios["fused_rss_over_unfused"], TARGET_FUSED_RSS)]
            for what, v, goal in checks:
                if v is not None:
                    print(f"{what:<45}{v:6.2f}x   target <= {goal:g}x   {'MET' if v <= goal else 'MISSED'}")
            print(f"{'training, 5 unfused targets / one target' + chr(39) + 's:':<45}"
                  f"{ratios['unfused_train_over_one_target']:6.2f}x   (jobs' train_s summed)")
            print(f"{'unfused sweep / fused sweep (wall):':<45}{ratios['unfused_over_fused']:6.2f}x")
            d = ratios["fused_metrics_max_abs_diff"]
            print(f"fused vs unfused metrics (every input, SPC/MAE/accuracy): max |d| {d:.2e}   "
                  f"{'EQUAL' if d <= 1e-5 else 'DIFFER'} (within 1e-5)")
            failed |= not d <= 1e-5
        if agree is not None:
            print(f"cached vs uncached metrics (natural SPC and MAE within {TOLERANCE}): {'AGREE' if agree else 'DIFFER'}")
            print("\n".join(lines))
            failed |= not agree

        # CSV.
        a.out.mkdir(parents=True, exist_ok=True)
        csv_path = a.out / f"bench_{info['host']}_{stamp}.csv"
        setup = {
            **info, "timestamp": stamp, "backbone": a.backbone, "weights": a.weights if a.backbone != "posenet" else "none",
            "num_train": a.num_train, "num_test": a.num_test, "epochs": a.epochs, "image_size": a.image_size,
            "targets": " ".join(targets),
        }
        with open(csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for name in RUNS:
                if name in results:
                    row = {**setup, "run": name, **results[name], **ratios}
                    w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
        print(f"\nwrote {csv_path}")
    finally:
        if a.keep or failed:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
