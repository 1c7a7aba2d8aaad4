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


class TrainingRecord(L.Callback):
    """Appends to ``path`` a JSON line per finished training batch (rank, epoch, batch
    index, the labels, the sum of the model's input: the samples and their augmentation, and
    the sums of the first weights after the step)
    and one per epoch's end (its logged metrics, the training ones included), and the
    weights at the end of training to ``path``.weights.pt: what a run stopped and resumed
    must have done as the uninterrupted one did."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _append(self, line: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        self._append(
            {
                "rank": trainer.global_rank,
                "epoch": trainer.current_epoch,
                "batch": batch_idx,
                "labels": y.tolist(),
                "input_sum": x.double().sum().item(),
                "weights": checksum(pl_module)[:3],  # the stem's, after this step
            }
        )

    def _metrics(self, trainer, when: str, leave_out: tuple[str, ...] = ()) -> None:
        metrics = {
            k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k not in leave_out
        }
        line = {"rank": trainer.global_rank, "epoch": trainer.current_epoch, "when": when}
        self._append({**line, **metrics})

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # The model logs train/lr in its own on_train_epoch_end, after the callbacks': here
        # it would be the previous epoch's (none after a resume); on_train_end has it.
        self._metrics(trainer, "epoch end", leave_out=("train/lr",))

    def on_train_end(self, trainer, pl_module) -> None:
        self._metrics(trainer, "train end")
        # The weights at the end (last.ckpt is not that: Lightning rewrites it only with a
        # new best checkpoint, and at the end of a fit that saved none).
        if trainer.is_global_zero:  # DDP: the same weights on every process
            torch.save(pl_module.state_dict(), f"{self.path}.weights.pt")
