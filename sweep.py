"""Run one posinfo job, or a grid of them with -m.

    python sweep.py backbone=posenet target=gau readout.padding=1
    python sweep.py -m backbone=vgg16,resnet152 target=hor,ver,gau
    python sweep.py -m experiment=table1
    python sweep.py -m experiment=table1 hydra/launcher=joblib hydra.launcher.n_jobs=4
    python sweep.py -m experiment=table1 hydra/launcher=slurm_gpu      # docs/cluster.md

Bad values stop the command with one line before Hydra composes anything; SIGTERM is
turned into an interrupt (like Ctrl-C), so a killed sweep cleans up after itself; see
posinfo.sweep.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from posinfo.sweep.task import cli, run


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    cli(main, conf_dir=Path(__file__).resolve().parent / "conf")
