"""The LightningModule: backbone + head, trained with the configured loss, optimizer and
schedule on normalised float batches, and rebuilt from a checkpoint's own configs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from hw1.data.scan import nfc_names
from hw1.models.backbone import Backbone
from hw1.models.param_groups import monitor_name, optimizer_params
from hw1.utils.errors import UserValueError
from hw1.utils.weights import load_checkpoint


def check_eps(optimizer: torch.optim.Optimizer, dtype: torch.dtype) -> None:
    """Refuse an Adam-style ``eps`` that the weights' dtype rounds to 0: float16 weights
    (``trainer.precision=16-true``) and AdamW's 1e-8, which turns them NaN at the first
    step (a gradient whose squared moment underflows is divided by 0)."""
    for group in optimizer.param_groups:
        eps = group.get("eps")
        if isinstance(eps, float) and eps > 0 and torch.tensor(eps, dtype=dtype) == 0:
            raise UserValueError(
                f"optim.eps={eps} is 0 in {dtype} (trainer.precision=16-true): the weights "
                "would turn NaN at the first step. Train with trainer.precision=16-mixed "
                "(float16 compute, float32 weights) or bf16-true, or raise the optimizer's "
                "eps: ++optim.eps=1e-4"
            )


class Classifier(L.LightningModule):
    """Backbone + head, trained with cross-entropy, on normalised float images (the data
    module finishes its batches on the device: ``hw1.data.device_batches.DeviceBatches``).

    It takes the configs (plain dicts with ``_target_``) rather than built objects, so a
    checkpoint's hyper-parameters rebuild the very same model: ``load_from_checkpoint``.
    """

    def __init__(
        self,
        model: dict[str, Any],
        head: dict[str, Any],
        optim: dict[str, Any],
        sched: dict[str, Any],
        class_names: Sequence[str],
        preprocess: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
        mix: dict[str, Any] | None = None,
        backbone_lr_factor: float = 1.0,
        param_groups: dict[str, Any] | None = None,
    ) -> None:
        """``preprocess``: the eval spec (``EvalSpec.to_dict()``), kept so that prediction
        from a checkpoint needs no training overrides. ``loss``: the criterion's config
        (default: plain cross-entropy). ``mix``: ``BatchMix``'s config (default: none).
        ``backbone_lr_factor``: the backbone's learning rate as a fraction of the head's
        (``optim.lr``), for a second parameter group; 1 keeps one group, as the report
        trained. ``param_groups``: ``hw1.models.param_groups.optimizer_params``' options."""
        super().__init__()
        self.save_hyperparameters()
        self.class_names = nfc_names(class_names)  # composed: compared with folders'
        self.backbone: Backbone = instantiate(model)
        self.head = instantiate(
            head, in_features=self.backbone.num_features, num_classes=len(self.class_names)
        )
        self.criterion: nn.Module = instantiate(loss) if loss else nn.CrossEntropyLoss()
        self.mix = instantiate(mix, num_classes=len(self.class_names)) if mix else None
        num_classes = len(self.class_names)
        # validate_args=False: no checks of every batch's labels, which read the values
        # on the host and so make the CPU wait for the GPU at every step.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        # The epoch's mean training loss, weighted by batch size as Lightning's own mean of a
        # logged tensor, as a metric so that its running state can go into a checkpoint
        # (EPOCH_METRICS). nan_strategy=disable: no check that reads the loss on the host.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_confusion = MulticlassConfusionMatrix(num_classes)  # drawn by Figures
        self.val_history: list[dict[str, float]] = []  # per epoch, for metrics.json
        self.train_images = 0  # seen by training steps, for the run summary's images/s
        self.temperature = 1.0  # calibration: see the block at the end of the class

    def setup(self, stage: str) -> None:
        # After the data module's setup: the training set's class counts are known.
        if stage == "fit" and getattr(self.criterion, "class_weights", None):
            targets = self.trainer.datamodule.train_set.targets
            self.criterion.count_classes(targets, len(self.class_names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        if self.mix is not None:
            x, y = self.mix(x, y)
        logits = self(x)
        loss = self.training_loss(x, logits, y)
        # Mixed targets are probabilities: accuracy against the larger share. update(), not
        # a call: the metric's state grows, no accuracy of this batch alone is computed.
        self.train_acc.update(logits, y if y.ndim == 1 else y.argmax(dim=1))
        self.train_images += len(y)
        # Two names rather than Lightning's automatic _step/_epoch suffixes: train/loss is the
        # epoch curve that sits beside val/loss in TensorBoard. batch_size given: Lightning
        # need not search the batch for it. The step loss reaches the host only when the
        # logger writes or the progress bar refreshes (log_every_n_steps, refresh_rate).
        n = len(x)
        # Each batch's loss n times: MeanMetric's weight is ignored under nan_strategy=disable
        # (torchmetrics 1.9), and an expanded view copies nothing.
        self.train_loss.update(loss.detach().expand(n))
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of a training batch ``x`` (hw1.distill's student adds its teachers')."""
        return self.criterion(logits, y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        self.val_confusion.update(logits, y)
        # Plain cross-entropy whatever the training loss, so val/loss compares across runs;
        # sync_dist: under DDP every process sees the same val/loss (EarlyStopping watches it).
        val_loss = nn.functional.cross_entropy(logits, y)
        self.log("val/loss", val_loss, on_epoch=True, prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.val_acc.reset()
        self.val_confusion.reset()
        self.log("val/acc", acc, prog_bar=True)
        if not self.trainer.sanity_checking:
            self.val_history.append({"epoch": self.current_epoch + 1, "val_acc": acc.item()})

    def predict_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, of the logits divided by ``temperature``; for
        (B, views, C, H, W) the mean softmax over the views, all views of the batch in one
        forward pass."""
        if x.ndim == 4:
            return self.calibrated(self(x)).softmax(dim=1).float()
        b, v = x.shape[:2]
        logits = self.calibrated(self(x.flatten(0, 1)))
        return logits.softmax(dim=1).float().view(b, v, -1).mean(dim=1)

    def predict_step(self, batch: tuple[torch.Tensor, Any], _: int) -> tuple[Any, torch.Tensor]:
        x, keys = batch  # keys: file stems (test) or class indices (eval)
        return keys, self.predict_probs(x)

    def configure_optimizers(self) -> dict[str, Any]:
        optim, groups = self.hparams.optim, self.hparams.param_groups or {}
        backbone, head = self.backbone.trainable_parameters(), list(self.head.parameters())
        lr, factor = optim.get("lr"), self.hparams.backbone_lr_factor
        optimizer = instantiate(optim)(optimizer_params(self, backbone, head, lr, factor, **groups))
        check_eps(optimizer, self.dtype)
        scheduler = instantiate(self.hparams.sched)(optimizer)
        return {
            "optimizer": optimizer,
            # "name": LearningRateMonitor's tags, lr/<group> (lr/all for one group)
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": "epoch",
                "name": monitor_name(optimizer.param_groups),
            },
        }

    @classmethod
    def from_config(
        cls,
        cfg: DictConfig,
        class_names: Sequence[str],
        preprocess: dict[str, Any] | None = None,
    ) -> Classifier:
        """The Classifier of a composed run config (conf/train.yaml): its model, head, optim,
        sched, loss, mix and param_groups, resolved to plain dicts, and ``backbone_lr_factor``."""
        groups = {
            group: OmegaConf.to_container(cfg[group], resolve=True)
            for group in ("model", "head", "optim", "sched", "loss", "mix", "param_groups")
        }
        return cls(
            **groups,
            class_names=class_names,
            preprocess=preprocess,
            backbone_lr_factor=cfg.backbone_lr_factor,
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> Classifier:
        """The trained model of a checkpoint, in eval mode, on the CPU.

        Built from the checkpoint's own hyper-parameters with ``weights=None``: its state
        dict replaces the pretrained weights anyway, so nothing is downloaded. Never
        compiled, whatever ``model.compile`` trained with: prediction is one pass over the
        data, which compiling would outlast, and it must run where no compiler is.
        """
        ckpt = load_checkpoint(path, "ckpt_path", need=("state_dict", "hyper_parameters"))
        hparams = dict(ckpt["hyper_parameters"])
        hparams["model"] = {**hparams["model"], "weights": None, "compile": False}
        model = cls(**hparams)
        model.load_state_dict(ckpt["state_dict"])
        model.val_history = ckpt.get("val_history", [])
        model.temperature = stored_temperature(ckpt)
        return model.eval()

    # The training metrics of the epoch under way: Lightning's checkpoints keep neither its
    # own running means nor torchmetrics' states, so a run resumed in the middle of an epoch
    # would log that epoch's training loss and accuracy over the batches after the resume.
    # Each process has its own (torchmetrics adds them up at the epoch's end): all of them
    # are kept, process p's at index p, and each process takes its own back.
    EPOCH_METRICS = ("train_loss", "train_acc")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_history"] = self.val_history
        checkpoint[TEMPERATURE_KEY] = self.temperature
        checkpoint[EPOCH_METRICS_KEY] = {
            name: {k: self._every_process(v) for k, v in getattr(self, name).metric_state.items()}
            for name in self.EPOCH_METRICS
        }

    def _every_process(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` of every DDP process, stacked in rank order (one row without DDP). A
        collective: Lightning calls on_save_checkpoint on every process at the same point."""
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.all_gather(value.detach()).cpu()
        return value.detach().cpu()[None]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = checkpoint.get("val_history", [])
        self.temperature = stored_temperature(checkpoint)
        if not mid_epoch_batches(checkpoint) or self._trainer is None:
            return  # at an epoch's end the saved epoch's were logged already
        rank, processes = self.trainer.global_rank, self.trainer.world_size
        for name, states in checkpoint.get(EPOCH_METRICS_KEY, {}).items():
            metric = getattr(self, name)
            for key, value in states.items():
                if len(value) == processes:  # else another process count: start afresh
                    setattr(metric, key, value[rank].to(self.device))

    # --- Calibration (temperature scaling, hw1.inference.calibration) ---------------------
    # One scalar fitted on the validation split's logits: predict_probs divides the logits
    # by it, so the probabilities are calibrated and the top-1 class is unchanged. It is a
    # plain float, not a buffer, so state dicts stay the same; checkpoints carry it under
    # their top-level "temperature" key (TEMPERATURE_KEY).

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits divided by the fitted temperature (1: as trained)."""
        return logits if self.temperature == 1.0 else logits / self.temperature


TEMPERATURE_KEY = "temperature"
EPOCH_METRICS_KEY = "train_epoch_metrics"


def mid_epoch_batches(ckpt: dict[str, Any]) -> int:
    """How many training batches of its epoch a checkpoint saved in the middle of one
    (a SIGTERM or Ctrl-C) had done; 0 for one saved at an epoch's end."""
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    done = progress.get("current", {}).get("completed", 0)
    return 0 if progress.get("is_last_batch", True) else int(done)


def stored_temperature(checkpoint: dict[str, Any]) -> float:
    """A checkpoint's fitted temperature; 1.0 (uncalibrated) when it has none."""
    return float(checkpoint.get(TEMPERATURE_KEY, 1.0))
