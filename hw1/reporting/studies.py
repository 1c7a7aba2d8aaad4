"""What ``python -m hw1.tune`` reports on a study, at the end of a search and on ``show``:
the best trial with its settings as a ``python -m hw1.train`` line, trials.csv, and the
plots of the optimisation history and the parameter importances."""

from __future__ import annotations

import io
import shlex
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hw1.utils.io import csv_text, write_atomically


def train_command(trial: FrozenTrial) -> str:
    """The trial's settings as a ready-to-paste training command."""
    return shlex.join(["python", "-m", "hw1.train", *trial.user_attrs.get("overrides", [])])


def trial_rows(trials: list[FrozenTrial]) -> list[list[Any]]:
    """trials.csv: a row per trial, a column per searched key."""
    keys = sorted({k for t in trials for k in t.params})
    rows: list[list[Any]] = [
        ["number", "state", "value", *keys, "duration_s", "run_dir", "fail_reason"]
    ]
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            [
                t.number,
                t.state.name,
                t.value,
                *(t.params.get(k) for k in keys),
                None if duration is None else round(duration, 1),
                t.user_attrs.get("run_dir"),
                t.user_attrs.get("fail_reason"),
            ]
        )
    return rows


def save_figure(figure: Any, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically, then closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_atomically(path, buffer.getvalue())


def plots(study: optuna.Study, folder: Path) -> list[str]:
    """Draws history.png and importances.png in ``folder``; returns a line on each."""
    import matplotlib

    matplotlib.use("Agg")  # files only, with or without a display
    from optuna.visualization import matplotlib as vis

    notes = []
    drawings = (
        ("history.png", vis.plot_optimization_history),
        ("importances.png", vis.plot_param_importances),
    )
    for name, draw in drawings:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as e:
                # Importances need two complete trials whose settings differ.
                notes.append(f"no {name}: {e}")
                continue
        save_figure(axes.figure, folder / name)
        notes.append(f"plot         {folder / name}")
    return notes


def summarise(study: optuna.Study, folder: Path) -> None:
    """Prints the study's best trial and its training command; writes trials.csv and the
    plots in ``folder``."""
    trials = study.get_trials(deepcopy=False)
    write_atomically(folder / "trials.csv", csv_text(trial_rows(trials)))
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    done = ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items() if n)
    print(f"\nstudy {study.study_name}: {done or 'no trials'}")
    complete = counts[TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        monitor = study.user_attrs.get("monitor", "value")
        where = best.user_attrs.get("run_dir")
        print(f"  best {monitor} {best.value:.4f}: trial {best.number}, {where}")
        print(f"  its settings: {train_command(best)}")
    print(f"  trials       {folder / 'trials.csv'}")
    for line in plots(study, folder) if complete else ["no plots: no complete trial"]:
        print(f"  {line}")
