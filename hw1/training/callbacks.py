"""Lightning callbacks: figures for the loggers and a frozen-backbone warm-up. What keeps a run
safe to stop and resume is in ``hw1.training.stopping`` and ``hw1.training.checkpoint_io``."""

from __future__ import annotations

import lightning as L
from omegaconf import DictConfig

from hw1.reporting.figures import confusion_card, hwc, labelled_grid, to_uint8
from hw1.training.tracking import has_image_logger, log_image
from hw1.transforms.presets import EvalSpec
from hw1.utils.errors import import_extra


def check_progress_bar(callbacks: DictConfig) -> None:
    """progress=rich needs rich (``hw1[rich]``): refused in one line before the data is
    read, rather than by Lightning's ModuleNotFoundError from inside Hydra's instantiate."""
    bar = callbacks.get("progress_bar")
    if bar is not None and str(bar.get("_target_", "")).endswith(".RichProgressBar"):
        import_extra("rich", "rich", "progress=rich")


def _draws(trainer: L.Trainer) -> bool:
    """Whether any of the run's loggers holds images (TensorBoard, MLflow, W&B; not CSV,
    none under fast_dev_run or logger=none): no figure is drawn for nobody."""
    return has_image_logger(trainer.loggers)


class Figures(L.Callback):
    """Images for every logger that holds them (TensorBoard, MLflow, W&B): a grid of
    augmented training samples with their class names at the first epoch, and the
    validation confusion matrix every ``confusion_every`` epochs and at the last one."""

    def __init__(self, confusion_every: int = 10, samples: int = 32) -> None:
        self.confusion_every = max(1, confusion_every)
        self.samples = samples

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (
            not _draws(trainer)
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
        log_image(trainer.loggers, "train/augmented", hwc(grid), trainer.global_step)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # Runs before the module's own hook, which resets the confusion matrix.
        if not _draws(trainer) or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        if epoch % self.confusion_every and epoch != trainer.max_epochs and not trainer.should_stop:
            return
        # compute() gathers the matrix from every DDP process: all of them must call it.
        confusion = pl_module.val_confusion.compute().cpu()
        if trainer.is_global_zero:
            image = confusion_card(confusion, pl_module.class_names)  # readable in a card
            log_image(trainer.loggers, "val/confusion", hwc(image), trainer.global_step)


class FreezeBackbone(L.Callback):
    """Train only the head for the first ``epochs`` epochs, then the backbone as configured
    (``model.trainable_stages``).

    The backbone is in the optimizer from the start and its parameters require gradients
    throughout; while frozen, its BatchNorm layers are in eval mode and its gradients are
    dropped before each optimizer step, which then leaves it as it is (no update, no weight
    decay, no moment estimates). So the optimizer and the LR schedule stay as they are, and
    under DDP every process's backbone stays the same: DDP synchronises only the parameters
    that require gradients when it wraps the model, which happens after a callback's
    ``setup``, where Lightning's BaseFinetuning switches them off. The frozen epochs cost
    as much as the others, as the backbone's gradients are still computed.
    """

    def __init__(self, epochs: int = 1) -> None:
        self.epochs = epochs

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # Every epoch, not only the first and the last frozen one: a resumed run too.
        pl_module.backbone.hold(trainer.current_epoch < self.epochs)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # After DDP's all-reduce, before gradient clipping and the step.
        if pl_module.backbone.held:
            for p in pl_module.backbone.parameters():
                p.grad = None
