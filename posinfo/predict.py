"""``python -m posinfo.predict JOB_DIR IMAGE…``: a finished job's readout on new images. For each
image (a file, or every image of a folder) a figure of the job's target, the image and the
prediction, with the image's score (SPC, or grid accuracy) against the target, in ``--out``
(default ``JOB_DIR/predict/``), one PNG per image (posinfo.quicklook's layout).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from posinfo.names import PREDICT_DIR

_UNSAFE = re.compile(r"[^\w.-]")  # a folder's relative names hold "/": one flat folder of figures
TILE = 224  # px per panel: the figure is meant to be looked at, not a job's thumbnail


def figures(job_dir: str, images: list[str], out: str | None = None, device: str = "auto") -> list[Path]:
    """Write the figures; their paths."""
    from posinfo import quicklook
    from posinfo.io import user_path
    from posinfo.trained import load

    trained = load(job_dir, device)
    folder = user_path(out) if out else trained.job_dir / PREDICT_DIR
    bb = trained.backbone
    title = f"{bb['name']}{'/' + str(bb['model']) if bb.get('model') else ''} | target {trained.cfg.target.name}"
    written: list[Path] = []
    for image in images:
        ds = trained.images(image)
        outputs = trained.outputs(ds)
        _, rows = trained.score(outputs)
        for name, img, pred, row in zip(ds.names, (ds[i] for i in range(len(ds))), trained.maps(outputs), rows):
            label = f"{Path(name).stem}: " + (f"SPC {row['spc']:.2f}" if "spc" in row else f"acc {row['accuracy']:.2f}")
            path = folder / (_UNSAFE.sub("_", str(Path(name).with_suffix(""))) + ".png")
            quicklook.save(path, trained.target, [(label, quicklook.to_uint8(img), pred)], title, tile=TILE)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posinfo.predict", description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("job_dir", help="a finished job's folder (with result.json and readout.pt)")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--out", help=f"folder for the figures (default JOB_DIR/{PREDICT_DIR}/)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = p.parse_args(argv)

    def run() -> int:
        for path in figures(args.job_dir, args.images, args.out, args.device):
            print(path)
        return 0

    from posinfo.trained import cli

    return cli(run)


if __name__ == "__main__":
    sys.exit(main())
