"""Run one posinfo job, or a grid of them with -m.

    python sweep.py backbone=posenet target=gau readout.padding=1
    python sweep.py -m backbone=vgg16,resnet152 target=hor,ver,gau
    python sweep.py -m experiment=table1
"""

import hydra
from omegaconf import DictConfig

from posinfo.runner import run


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
