"""Callbacks that the stop-signal tests add to a training run (``+callbacks.NAME._target_=``)
to make it misbehave at a chosen point: a signal at a given batch of a given phase, a NaN
loss on one process. Imported by the training subprocesses: ``tests/`` is on their PYTHONPATH."""

from __future__ import annotations

import os
import signal as signal_module

import lightning as L


class SignalAt(L.Callback):
    """Sends ``signal`` to this process as batch ``batch`` of ``phase`` (train, validation
    or sanity) starts, on the process of rank ``rank`` only, once, in the first epoch it
    can or in epoch ``epoch`` (0-based); the batch then runs, as when a scheduler's signal
    lands in the middle of one."""

    def __init__(
        self,
        signal: str,
        phase: str,
        batch: int = 1,
        rank: int = 0,
        epoch: int | None = None,
        times: int = 1,
        group: bool = False,
    ) -> None:
        self.signum = signal_module.Signals[signal]
        self.times = times  # 2: a second Ctrl-C while the run stops
        # True: to the whole process group, as a terminal sends Ctrl-C: the loader workers
        # and the other DDP processes get it too (run_in_process_group's own session)
        self.group = group
        self.phase = phase
        self.batch = batch
        self.rank = rank
        self.epoch = epoch
        self.sent = False

    def _maybe_send(self, trainer: L.Trainer, phase: str, batch_idx: int) -> None:
        if self.sent or phase != self.phase or batch_idx != self.batch:
            return
        if self.epoch is not None and trainer.current_epoch != self.epoch:
            return
        if trainer.global_rank == self.rank:
            self.sent = True
            print(f"rank {trainer.global_rank}: sending {self.signum.name} in {phase}", flush=True)
            for _ in range(self.times):
                if self.group:
                    os.killpg(os.getpgid(0), self.signum)
                else:
                    os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._maybe_send(trainer, "train", batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0) -> None:
        self._maybe_send(trainer, "sanity" if trainer.sanity_checking else "validation", batch_idx)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0) -> None:
        self._maybe_send(trainer, "predict", batch_idx)


class NaNLossAt(L.Callback):
    """Makes the training loss NaN on the process of rank ``rank`` at global step ``step``
    only, by filling that process's (normalised, float) batch with NaN."""

    def __init__(self, step: int, rank: int = 0) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            print(f"rank {trainer.global_rank}: NaN batch at step {self.step}", flush=True)
            batch[0].fill_(float("nan"))
