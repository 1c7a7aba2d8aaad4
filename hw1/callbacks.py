"""Lightning callbacks that show the training in TensorBoard."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from hw1.figures import confusion_image, hwc, labelled_grid, to_uint8
from hw1.presets import EvalSizes


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
        sizes = EvalSizes.from_dict(pl_module.hparams.preprocess)
        images = to_uint8(x[: self.samples], sizes)
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
