"""Callbacks that tests add to a training run (``+callbacks.NAME._target_=run_probes.X``) to
read what happens inside it: torch.compile's compilations, each DDP process's weights.
Imported by the training subprocesses: ``tests/`` is on their PYTHONPATH."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class DynamoCounts(L.Callback):
    """Writes torch._dynamo's counts of compiled graphs and the reasons for each
    recompilation (the guards that failed) to ``path`` after fit and after prediction."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def _write(self) -> None:
        from torch._dynamo.utils import counters, guard_failures

        reasons = [r for code_reasons in guard_failures.values() for r in code_reasons]
        self.path.write_text(
            json.dumps(
                {
                    "graphs": counters["stats"]["unique_graphs"],
                    "frames": dict(counters["frames"]),
                    "recompile_reasons": reasons,
                },
                indent=2,
            )
        )

    def on_train_end(self, trainer, pl_module) -> None:
        self._write()

    def on_predict_end(self, trainer, pl_module) -> None:
        self._write()


def checksum(module: torch.nn.Module) -> list[float]:
    """One float64 sum per parameter: equal lists, equal weights (to rounding)."""
    return [p.detach().double().sum().item() for p in module.parameters()]


class BackboneChecksums(L.Callback):
    """Writes ``<folder>/rank<N>.json``: this process's backbone parameter checksums at the
    start of training, after each training epoch, and at the end of training."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.sums: dict[str, list[float]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.sums["start"] = checksum(pl_module.backbone)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.sums[f"epoch{trainer.current_epoch + 1}"] = checksum(pl_module.backbone)

    def on_train_end(self, trainer, pl_module) -> None:
        self.sums["end"] = checksum(pl_module.backbone)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.sums))


class ProgressBarProbe(L.Callback):
    """Prints which progress bar the run's trainer has (progress=tqdm or rich)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        print(f"progress bar: {type(trainer.progress_bar_callback).__name__}", flush=True)
