"""Train a classifier: ``python -m hw1.train [overrides]``.

Compose the config, build the data module, model, callbacks, loggers and trainer, fit,
then predict the test folder with the best checkpoint and write ``metrics.json``.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from hw1.training.resume import refuse_a_locked_run_dir, with_run_overrides
from hw1.training.run import train
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import reported

# with_run_overrides's log line, set by main() before Hydra composes the config and logged
# once Hydra has set up the run's logging.
taken_overrides_note: str | None = None

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="train")
def run(cfg: DictConfig) -> float | None:
    if taken_overrides_note:
        log.info(taken_overrides_note)
    with reported():
        metrics = train(cfg)
    return metrics["best_val_acc"]  # for Hydra sweepers that optimise a value


def main() -> None:
    """``python -m hw1.train``: a resumed run's own overrides join the command line before
    Hydra composes the config (Hydra has no hook that runs earlier)."""
    global taken_overrides_note
    with reported():
        refuse_a_locked_run_dir(sys.argv)
    sys.argv, taken_overrides_note = with_run_overrides(sys.argv)
    run()


if __name__ == "__main__":
    main()
