"""Average the weights of checkpoints into one model:
``python -m hw1.average 'ckpt_path=[A.ckpt,B.ckpt,C.ckpt]' output=avg.ckpt data.root=ROOT``.

The checkpoints must hold the same model, e.g. the top-k checkpoints of one run; BatchNorm
statistics are recomputed on the training images. The result is a checkpoint hw1.predict
and hw1.eval read as any other (hw1.inference.averaging).
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hw1.inference.averaging import average
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import reported
from hw1.utils.runlock import command_lock


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="average")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir  # its .hydra/, its log, its default output
    with reported(), command_lock(run_dir, "hw1.average"):
        average(cfg)


if __name__ == "__main__":
    main()
