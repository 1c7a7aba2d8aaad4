"""A callback the stream tests add to a training run (``+callbacks.NAME._target_=``): it
records which samples each process trained on. Imported by the training subprocesses:
``tests/`` is on their PYTHONPATH."""

from __future__ import annotations

import json

import lightning as L


class RecordLabels(L.Callback):
    """Appends each finished training batch's labels to ``path`` as a JSON line with the
    rank, epoch and batch index: on shards with one image per class, the labels name the
    samples."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        line = {
            "rank": trainer.global_rank,
            "epoch": trainer.current_epoch,
            "batch": batch_idx,
            "labels": batch[1].tolist(),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
