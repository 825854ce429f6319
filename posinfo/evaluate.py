"""``python -m posinfo.evaluate JOB_DIR --images FOLDER``: a finished job's readout scored on new
images, as the job scores its test images (SPC, MAE and border MAE; or the grid accuracies), with
95% bootstrap intervals over the images and every image's scores, written as JSON to ``--out``
(default ``JOB_DIR/evaluations/<folder name>.json``) and summed up in one line.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from posinfo.errors import PosinfoError
from posinfo.kinds import MapKind, format_of
from posinfo.names import EVALUATIONS_DIR


def evaluate(job_dir: str, images: str, out: str | None = None, device: str = "auto") -> tuple[Path, dict]:
    """Score the job on ``images`` and write the metrics file; its path and contents."""
    from posinfo.io import user_path, write_json
    from posinfo.names import utc_now
    from posinfo.trained import load

    trained = load(job_dir, device)
    metrics = trained.evaluate(images)
    doc = {"job_dir": str(trained.job_dir), "images": str(user_path(images).resolve()),
           "target": str(trained.cfg.target.name), "backbone": trained.backbone, "evaluated": utc_now(),
           "metrics": {k: v for k, v in metrics.items() if k != "per_image"}, "per_image": metrics["per_image"]}
    path = user_path(out) if out else trained.job_dir / EVALUATIONS_DIR / f"{user_path(images).resolve().name}.json"
    try:
        write_json(path, doc)
    except OSError as e:
        raise PosinfoError(f"cannot write {path} ({e.strerror or e}): give a writable file with --out") from None
    return path, doc


def _interval(m: dict, key: str) -> str:
    """``.684 [.651, .702]``; the interval left out where it is undefined (fewer than two images)."""
    lo, hi = m.get(f"{key}_lo"), m.get(f"{key}_hi")
    bounds = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None and math.isfinite(lo) else ""
    return f"{m[key]:.3f}{bounds}"


def summary(doc: dict) -> str:
    """One line: the headline metrics with their intervals, the image count, the floor or chance."""
    m, kind = doc["metrics"], format_of(doc["target"])
    if kind is not MapKind:  # another kind (target=grid: "grid accuracy … (chance …)"): its headline and floor
        return (f"{doc['target']} {kind.headline} {_interval(m, kind.headline)} ({kind.floor_key} "
                f"{m[kind.floor_key]:.3f}), {m['n_images']} image(s)")
    spc = "nan" if m["spc"] is None else _interval(m, "spc")
    return (f"SPC {spc}  MAE {_interval(m, 'mae')} (floor {m['floor_mae']:.3f}), {m['n_images']} image(s), "
            f"{m['n_nan']} NaN")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posinfo.evaluate", description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("job_dir", help="a finished job's folder (with result.json and readout.pt)")
    p.add_argument("--images", required=True, help="a folder of images (or one image file)")
    p.add_argument("--out", help=f"the metrics file (default JOB_DIR/{EVALUATIONS_DIR}/<folder name>.json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = p.parse_args(argv)

    def run() -> int:
        path, doc = evaluate(args.job_dir, args.images, args.out, args.device)
        print(f"{summary(doc)} -> {path}")
        return 0

    from posinfo.trained import cli

    return cli(run)


if __name__ == "__main__":
    sys.exit(main())
