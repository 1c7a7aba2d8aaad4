"""Evaluate checkpoints on a labelled split:
``python -m hw1.eval ckpt_path=PATH data.root=ROOT [split=val]``.

Prints and writes ``eval.json`` (accuracy with and without TTA, per-class accuracy, the
ten most confused class pairs) and ``confusion.png`` beside it.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hw1.inference.evaluation import evaluate
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import reported
from hw1.utils.runlock import command_lock


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="eval")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir  # its .hydra/, its log, its default output
    with reported(), command_lock(run_dir, "hw1.eval"):
        evaluate(cfg)


if __name__ == "__main__":
    main()
