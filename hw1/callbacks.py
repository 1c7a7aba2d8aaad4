"""Lightning callbacks: TensorBoard figures, a frozen-backbone warm-up, and what keeps a run
safe to stop and resume."""

from __future__ import annotations

import logging
import random
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hw1.figures import confusion_image, hwc, labelled_grid, to_uint8
from hw1.presets import EvalSpec

log = logging.getLogger(__name__)


def _tensorboard(trainer: L.Trainer):
    """The SummaryWriter of the run's TensorBoard logger, or None (fast_dev_run, no logger)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class TensorBoardFigures(L.Callback):
    """Images in TensorBoard: a grid of augmented training samples with their class names
    at the first epoch, and the validation confusion matrix every ``confusion_every``
    epochs and at the last one."""

    def __init__(self, confusion_every: int = 10, samples: int = 32) -> None:
        self.confusion_every = max(1, confusion_every)
        self.samples = samples

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        writer = _tensorboard(trainer)
        if (
            writer is None
            or trainer.current_epoch != 0
            or batch_idx != 0
            or not trainer.is_global_zero
        ):
            return
        x, y = batch
        spec = EvalSpec.from_dict(pl_module.hparams.preprocess)
        images = to_uint8(x[: self.samples], spec)
        names = [pl_module.class_names[i] for i in y[: self.samples].tolist()]
        grid = labelled_grid(images, ncol=8, labels=names)
        writer.add_image("train/augmented", hwc(grid), trainer.global_step, dataformats="HWC")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # Runs before the module's own hook, which resets the confusion matrix.
        writer = _tensorboard(trainer)
        if writer is None or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        if epoch % self.confusion_every and epoch != trainer.max_epochs and not trainer.should_stop:
            return
        # compute() gathers the matrix from every DDP process: all of them must call it.
        confusion = pl_module.val_confusion.compute().cpu()
        if trainer.is_global_zero:
            image = confusion_image(confusion, pl_module.class_names)
            writer.add_image("val/confusion", hwc(image), trainer.global_step, dataformats="HWC")


class FreezeBackbone(BaseFinetuning):
    """Train only the head for the first ``epochs`` epochs, then the backbone as configured
    (``model.trainable_stages``).

    Lightning's BackboneFinetuning adds the backbone to the optimizer as a new parameter
    group when it unfreezes it, which a per-group LR schedule (hw1's cosine) cannot follow.
    Here the backbone is in the optimizer from the start and only gets no gradients while
    frozen, with its BatchNorm in eval mode, so the schedule and the optimizer stay as
    they are.
    """

    def __init__(self, epochs: int = 1) -> None:
        super().__init__()
        self.epochs = epochs

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        if self.epochs > 0:
            pl_module.backbone.freeze_stages(0)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer) -> None:
        # From epoch N on, not only at it: a run resumed later is frozen again by setup.
        if epoch >= self.epochs:
            pl_module.backbone.freeze_stages(pl_module.backbone.trainable_stages)


def last_checkpoint(trainer: L.Trainer) -> Path:
    """Where the run's ``last.ckpt`` lives (the resume point)."""
    ckpt = trainer.checkpoint_callback
    folder = (
        Path(ckpt.dirpath) if ckpt is not None else Path(trainer.default_root_dir) / "checkpoints"
    )
    return folder / "last.ckpt"


class NonFiniteLossError(RuntimeError):
    pass


class StopOnNonFiniteLoss(L.Callback):
    """Stops the run at the first NaN or infinite training loss, naming the step.

    EarlyStopping's check_finite looks only at the monitored metric after validation, once
    a whole epoch has trained on broken weights. Raising here ends fit before any further
    checkpoint is written, so ``last.ckpt`` stays the last good one.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or torch.isfinite(loss).all():
            return
        last = last_checkpoint(trainer)
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint yet"
        raise NonFiniteLossError(
            f"training loss is {loss.item()} at epoch {trainer.current_epoch + 1}, batch "
            f"{batch_idx} (global step {trainer.global_step}): stopped; {kept}. Lower optim.lr, "
            "or clip gradients with trainer.gradient_clip_val=1.0."
        )


class CheckpointOnSigterm(L.Callback):
    """Saves ``last.ckpt`` when the run is stopped with SIGTERM (``kill``, a cluster's
    preemption or time limit), so ``resume=true`` continues from the batch it reached.

    Lightning already catches SIGTERM: it finishes the running batch and stops fit with
    SIGTERMException, calling ``on_exception``; it saves nothing itself outside SLURM's
    auto-requeue.
    """

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        path = last_checkpoint(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # everything resume needs
        # Lightning exits with status 0 here; a scheduler must not take the run as finished.
        exception.code = 128 + signal.SIGTERM
        log.warning(
            "SIGTERM: saved %s at epoch %d, global step %d; continue with resume=true and "
            "hydra.run.dir=%s",
            path,
            trainer.current_epoch + 1,
            trainer.global_step,
            path.parent.parent,
        )


class RandomState(L.Callback):
    """Keeps the global random states (torch, CUDA, NumPy, Python) in checkpoints and
    restores them on resume, so a resumed run draws the shuffles and augmentations an
    uninterrupted one would. Lightning restores the model, optimizer, scheduler, loops and
    callbacks, not these. Stored as tensors and plain lists: loadable with weights_only."""

    def state_dict(self) -> dict[str, Any]:
        numpy = np.random.get_state(legacy=False)
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {**numpy, "state": {**numpy["state"], "key": numpy["state"]["key"].tolist()}},
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        numpy = state["numpy"]
        key = np.array(numpy["state"]["key"], dtype=np.uint32)
        np.random.set_state({**numpy, "state": {**numpy["state"], "key": key}})
        random.setstate(state["python"])
