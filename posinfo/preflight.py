"""Checks that cost no computation, so a job that cannot run fails before any job starts:
the backbone's weights are reachable (ImageNet weights cached or fetchable, a weights file
present), the data folders and an input file exist, a patch model can take the image size, and
no setting is one the configuration ignores. Each problem is one line with the fix.
"""

from __future__ import annotations

from omegaconf import DictConfig

from posinfo.guards import no_effect_problems
from posinfo.io import user_path


def job_problems(cfg: DictConfig) -> list[str]:
    """What would stop this job, as one line each (empty: nothing found)."""
    from posinfo import encoders

    out: list[str] = no_effect_problems(cfg)
    data = cfg.data
    bb = encoders.Backbone.of(cfg.backbone)
    out += encoders.adapter(bb.name).problems(bb, int(data.image_size))  # weights reachable, the model's own checks
    if data.name == "folder":
        for key in ("train_dir", "test_dir"):
            folder = data.get(key)
            if folder and not user_path(folder).is_dir():
                out.append(_missing_folder(key, str(folder)))
    file = cfg.input.get("file")
    if file and not user_path(file).is_file():
        out.append(f"input.file={file}: no such file: give an existing jpg/png image, or input.file=null")
    return out


def _missing_folder(key: str, folder: str) -> str:
    """One line for a missing data folder; for a folder of the fetcher's layout (data=duts), the
    command that fetches it."""
    from posinfo.datasets import missing_hint

    fetch = missing_hint(user_path(folder))
    if fetch:
        return f"data.{key}={folder}: no such folder: fetch it with `{fetch}` (or set POSINFO_DATA_DIR to where you fetched it)"
    return f"data.{key}={folder}: no such folder: point it at a folder of jpg/png images"
