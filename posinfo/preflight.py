"""Checks that cost no computation, so a job that cannot run fails before any job starts:
the backbone's weights are reachable (ImageNet weights cached or fetchable, a weights file
present), the data folders and an input file exist, a patch model can take the image size, and
no setting is one the configuration ignores. Each problem is one line with the fix.
"""

from __future__ import annotations

from omegaconf import DictConfig

from posinfo.guards import no_effect_problems
from posinfo.io import user_path
from posinfo.names import MODEL_ZOOS


def job_problems(cfg: DictConfig) -> list[str]:
    """What would stop this job, as one line each (empty: nothing found)."""
    out: list[str] = no_effect_problems(cfg)
    bb, data = cfg.backbone, cfg.data
    weights = str(bb.weights)
    zoo = bb.name in MODEL_ZOOS
    if zoo:
        from posinfo.errors import PosinfoError
        from posinfo.zoo import check_model, image_size_problem

        try:
            check_model(str(bb.name), bb.get("model"))
        except PosinfoError as e:
            return [str(e)]
        size = image_size_problem(str(bb.name), str(bb.model), int(data.image_size))
        if size:
            out.append(size)
    if bb.name != "posenet" and weights == "imagenet":
        problem = _pretrained_problem(str(bb.name), bb.get("model"))
        if problem:
            out.append(problem)
    elif bb.name != "posenet" and weights not in ("random", "none") and not user_path(weights).is_file():
        out.append(f"backbone.weights file '{weights}' does not exist: give a path to a "
                   f"{'checkpoint' if zoo else 'state-dict file'}, or imagenet, or random")
    if data.name == "folder":
        for key in ("train_dir", "test_dir"):
            folder = data.get(key)
            if folder and not user_path(folder).is_dir():
                out.append(_missing_folder(key, str(folder)))
    file = cfg.input.get("file")
    if file and not user_path(file).is_file():
        out.append(f"input.file={file}: no such file: give an existing jpg/png image, or input.file=null")
    return out


def _pretrained_problem(name: str, model: str | None) -> str | None:
    """Whether the pretrained weights of a built-in backbone or of a timm/torchvision model are reachable."""
    if name in MODEL_ZOOS:
        from posinfo.zoo import pretrained_problem

        return pretrained_problem(name, str(model))
    from posinfo.backbones import imagenet_problem

    return imagenet_problem(name)


def _missing_folder(key: str, folder: str) -> str:
    """One line for a missing data folder; for a folder of the fetcher's layout (data=duts), the
    command that fetches it."""
    from posinfo.datasets import missing_hint

    fetch = missing_hint(user_path(folder))
    if fetch:
        return f"data.{key}={folder}: no such folder: fetch it with `{fetch}` (or set POSINFO_DATA_DIR to where you fetched it)"
    return f"data.{key}={folder}: no such folder: point it at a folder of jpg/png images"
