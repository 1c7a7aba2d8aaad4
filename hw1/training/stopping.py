"""Stopping a run safely: on a non-finite loss (before anything after the bad step is
saved), and on SIGTERM or Ctrl-C (saving ``last.ckpt`` at a point every DDP process agrees
on, so ``resume=true`` continues from there).
"""

from __future__ import annotations

import logging
import signal
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hw1.training.checkpoint_io import last_checkpoint
from hw1.utils.compat import stop_fit
from hw1.utils.errors import UserRuntimeError
from hw1.utils.signals import SignalLatch, rerun_text

log = logging.getLogger(__name__)


class NonFiniteLossError(UserRuntimeError):
    """A NaN or infinite training loss: the settings (learning rate, clipping) to change."""


class StopOnNonFiniteLoss(L.Callback):
    """Stops the run on a NaN or infinite training loss, naming the first bad step, before
    anything after that step is saved, on every DDP process at once.

    EarlyStopping's check_finite looks only at the monitored metric after validation, once
    a whole epoch has trained on broken weights. Reading the loss on the host at every step
    would make the CPU wait for the GPU to finish each step before it queues the next one;
    here each step's test stays on the device, and is read every ``check_every_n_steps``
    steps, before each validation, at the end of training and before any checkpoint is
    written. So the run may go on for up to that many steps on broken weights, but it
    names the first bad step, saves nothing after it, and ``last.ckpt`` stays the last good
    one. Under DDP the processes decide together (a loss that is not finite on one process
    stops them all), else the others would wait for it in their next collective.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self._clear()

    def _clear(self) -> None:
        self._steps: list[tuple[int, int, int]] = []  # (epoch, batch, global step) unchecked
        self._first: torch.Tensor | None = None  # index in _steps of the first bad loss, or -1
        self._value: torch.Tensor | None = None  # that loss

    def on_train_start(self, trainer, pl_module) -> None:
        self._clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float().sum()
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._value = torch.zeros((), device=loss.device)
        new = ~torch.isfinite(loss) & (self._first < 0)
        self._first = torch.where(new, len(self._steps), self._first)
        self._value = torch.where(new, loss, self._value)
        self._steps.append((trainer.current_epoch, batch_idx, trainer.global_step))
        if len(self._steps) >= self.check_every_n_steps:
            self.check(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.check(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.check(trainer)  # called before the checkpoint is written

    def check(self, trainer: L.Trainer) -> None:
        """Raises NonFiniteLossError if a loss since the last check was not finite, on any
        process: under DDP a collective, which every process reaches at the same point (the
        same number of steps, the same hooks)."""
        if not self._steps:
            return
        found = torch.stack([self._first.float(), self._value])
        if trainer.world_size > 1:
            found = trainer.strategy.all_gather(found)
        rows = found.reshape(-1, 2).tolist()  # the one read on the host
        steps = self._steps
        self._clear()
        bad = [(int(index), value, rank) for rank, (index, value) in enumerate(rows) if index >= 0]
        if not bad:
            return
        index, value, rank = min(bad)
        epoch, batch_idx, global_step = steps[index]
        where = f" on process {rank}" if trainer.world_size > 1 else ""
        last = last_checkpoint(trainer)
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint yet"
        raise NonFiniteLossError(
            f"training loss is {value} at epoch {epoch + 1}, batch {batch_idx} (global step "
            f"{global_step}){where}: stopped; {kept}. Lower optim.lr, or clip gradients with "
            "trainer.gradient_clip_val=1.0."
        )


def at_once_text(last: Path) -> str:
    """The log line of a second Ctrl-C in training: nothing saved, and how to go on."""
    if last.is_file():
        go_on = f"continue from the last one with resume=true hydra.run.dir={last.parent.parent}"
    else:
        go_on = f"no last.ckpt was saved yet: rerun {rerun_text()}"
    return f"SIGINT again: stopped at once, without saving last.ckpt; {go_on}"


class CheckpointOnSignal(L.Callback):
    """Saves ``last.ckpt`` when the run is stopped with SIGTERM (``kill``, a cluster's
    preemption or time limit) or Ctrl-C (SIGINT) and exits with status 128 + the signal
    (143, 130), so ``resume=true`` continues from where it stopped, in every phase of fit: a
    training batch finishes first, a validation (or the sanity check) runs to its end. A
    second Ctrl-C stops at once, saving nothing, with exit status 130 (SignalLatch); the
    last.ckpt saved before, if any, stays whole.

    Lightning's own handler decides on each process alone, and broadcasts from inside the
    signal handler, where a collective can pair with any other: under DDP, a signal that
    reaches one process (or all of them, a batch apart) stopped one process and left the
    others waiting in the next collective. Here the handler (a SignalLatch) only notes the
    signal; every process asks the others at the same points (after each training batch,
    at the end of a validation) and all stop at the same step, through Lightning's own
    stopping points.
    """

    def __init__(self) -> None:
        self._latch = SignalLatch(announce=self._announce)
        self._stopping: int = 0  # the signal every process agreed to stop on
        self._global_zero = True

    def on_fit_start(self, trainer, pl_module) -> None:
        # Lightning installs its handler after this hook; the ones in place now (Python's,
        # a job scheduler's) are called after ours.
        self._stopping = 0
        self._latch.arm()

    def _install(self, trainer: L.Trainer) -> None:
        """Replaces Lightning's handler, which it installs just before the sanity check (and
        restores the previous ones after fit)."""
        if not self._latch.install():
            return
        self._global_zero = trainer.is_global_zero
        self._latch.at_once = partial(at_once_text, last_checkpoint(trainer))
        if trainer.received_sigterm:  # between Lightning's handler and this hook
            self._latch.received = signal.SIGTERM
            stop_fit(trainer, False)

    def _announce(self, signum: int) -> None:
        if self._global_zero:
            again = "; Ctrl-C again stops at once, without saving"
            log.warning(
                "%s: stopping at the end of this batch (or validation) to save last.ckpt%s",
                signal.Signals(signum).name,
                again if signum == signal.SIGINT else "",
            )

    def _decide(self, trainer: L.Trainer) -> bool:
        """Whether any process received a signal. Every process calls this at the same point:
        under DDP it is a collective (a batch of 1 integer)."""
        if self._stopping:
            return True
        signum = self._latch.received
        if trainer.world_size > 1:
            flag = torch.tensor(signum, device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        self._stopping = signum
        return bool(signum)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._install(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self._install(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._decide(trainer):
            stop_fit(trainer, True)  # at the end of this batch

    # Never within a validation: resumed from its middle, Lightning validates only the
    # batches left, and the epoch's val metrics would be those of a part of the val set.
    # A validation that starts after the stopping batch runs to its end, and ModelCheckpoint
    # sees its result, as in a run that was not stopped.
    def on_validation_start(self, trainer, pl_module) -> None:
        if self._stopping:
            stop_fit(trainer, False)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._decide(trainer):
            stop_fit(trainer, True)

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        # Lightning's next stopping point would come after a training batch.
        if self._stopping:
            raise SIGTERMException

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not self._stopping:
            return
        path = last_checkpoint(trainer)
        try:
            trainer.save_checkpoint(path, weights_only=False)  # everything resume needs
        except NonFiniteLossError as error:  # the weights broke since the last check
            exception.code = 1 if trainer.is_global_zero else 0
            if trainer.is_global_zero:
                log.error("%s; nothing saved on %s", error, signal.Signals(self._stopping).name)
            return
        name = signal.Signals(self._stopping).name
        # Lightning exits with status 0 here; a scheduler must not take the run as finished.
        # Rank zero's status is the run's: Lightning's DDP launcher kills every process as
        # soon as one of its children exits with another status than 0, which could cut
        # rank zero short.
        exception.code = 128 + self._stopping if trainer.is_global_zero else 0
        if trainer.is_global_zero:
            log.warning(
                "%s: saved %s at epoch %d, global step %d; continue with resume=true and "
                "hydra.run.dir=%s",
                name,
                path,
                trainer.current_epoch + 1,
                trainer.global_step,
                path.parent.parent,
            )
