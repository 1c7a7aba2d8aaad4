"""A callback that a training-run test adds (``+callbacks.NAME._target_=``) to make the
end-of-training prediction fail as a GPU running out of memory does. Imported by the
training subprocess: ``tests/`` is on its PYTHONPATH."""

from __future__ import annotations

import lightning as L
import torch


class OutOfMemoryInPredict(L.Callback):
    """Raises CUDA's out-of-memory error as the first prediction batch starts."""

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised by the test)")


class OutOfMemoryInEvaluation(L.Callback):
    """Lets the end-of-training prediction of the test folder through, then raises CUDA's
    out-of-memory error in the next prediction: the evaluation's pass over val."""

    def __init__(self) -> None:
        self.predictions = 0

    def on_predict_start(self, trainer, pl_module):
        self.predictions += 1

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.predictions > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised by the test)")
