"""Distil an ensemble into one model: ``python -m hw1.distill 'teachers=[A.ckpt,B.ckpt,C.ckpt]'
recipe=ID data.root=ROOT [distill.temperature=T distill.alpha=A]``.

The student is any training config (conf/distill.yaml composes conf/train.yaml), trained
as hw1.train trains, into the same run directory (checkpoints, metrics.json,
prediction.csv, TensorBoard), on the mean of its teachers' softened predictions of each
augmented training batch and on the labels. Its parameter count is checked against the
competition's limit before anything trains. Its checkpoints are plain hw1 checkpoints: the
teachers are not part of them.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hw1.training.distillation import distill
from hw1.training.resume import log_taken_overrides, run_with_resumed_overrides
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import reported


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="distill")
def run(cfg: DictConfig) -> float | None:
    log_taken_overrides()
    with reported():
        metrics = distill(cfg)
    return metrics["best_val_acc"]


def main() -> None:
    """``python -m hw1.distill``: ``resume=true hydra.run.dir=RUN`` continues from the run's
    own overrides (the teachers, the student's model, the data), as hw1.train's does."""
    run_with_resumed_overrides(run)


if __name__ == "__main__":
    main()
