"""Hyperparameter search with Optuna: ``python -m hw1.tune search=NAME [n_trials=N] ...``.

Each trial is an ordinary training run (hw1.train's ``train``) in ``<dir>/<trial number>/``,
its settings sampled from the search space (conf/search/) on top of the command line's
training overrides; it reports ``val/acc`` each epoch to the pruner, which may stop it, and
scores its best. The study lives in Optuna's storage (SQLite under the study's folder by
default, or any SQLAlchemy URL), so the same command continues a stopped search and several
processes can share one study.

    python -m hw1.tune show study_name=NAME [storage=URL]   best settings, trials.csv, plots
    python -m hw1.tune lr <training overrides>               Lightning's learning-rate finder
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import optuna

from hw1.training.tuning import find_lr, search, show, split_overrides, tune_config
from hw1.utils.errors import reported

COMMANDS = ("show", "lr")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args and args[0] in COMMANDS else "search"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress() prints each trial
    with reported():
        ours, theirs = split_overrides(args)
        cfg, choice = tune_config(ours)
        if command == "show":
            show(cfg, theirs)
        elif command == "lr":
            find_lr(cfg, theirs)
        else:
            search(cfg, choice, theirs)


if __name__ == "__main__":
    main()
