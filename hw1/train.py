"""Train a classifier: ``python -m hw1.train [overrides]``.

Compose the config, build the data module, model, callbacks, loggers and trainer, fit,
then predict the test folder with the best checkpoint and write ``metrics.json``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hw1.training.resume import log_taken_overrides, run_with_resumed_overrides
from hw1.training.run import train
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import reported


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="train")
def run(cfg: DictConfig) -> float | None:
    log_taken_overrides()
    with reported():
        metrics = train(cfg)
    return metrics["best_val_acc"]  # for Hydra sweepers that optimise a value


def main() -> None:
    """``python -m hw1.train``: a resume's saved overrides join the command line first."""
    run_with_resumed_overrides(run)


if __name__ == "__main__":
    main()
