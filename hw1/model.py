"""The model: a torchvision ResNet/ResNeXt backbone, one of the report's heads, and the
LightningModule that trains them."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.error import URLError

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchvision.models import WeightsEnum, get_model
from torchvision.transforms import v2

from hw1.errors import UserRuntimeError, UserValueError
from hw1.param_groups import optimizer_params
from hw1.weights import check_fits, download_hint, load_checkpoint, resolve_weights, safe_load

STAGES = ("layer1", "layer2", "layer3", "layer4")
STEM = ("conv1", "bn1")


class Backbone(nn.Module):
    """A torchvision ResNet/ResNeXt without its classifier; outputs pooled features.

    ``trainable_stages=N`` trains only the last N of the four residual stages; the stem and
    the earlier stages are frozen and their BatchNorm layers stay in eval mode.
    """

    def __init__(
        self,
        arch: str,
        weights: str | os.PathLike | None = None,
        trainable_stages: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        """``channels_last``: NHWC weights and inputs, the layout tensor cores and oneDNN
        convolve fastest; ``compile``: ``torch.compile`` the network in place (its state
        dict keeps its keys, so checkpoints load either way) with ``compile_backend``
        (``inductor`` generates kernels, with a C++ compiler on the CPU and Triton on GPUs;
        ``aot_eager`` and ``eager`` trace the network but need no compiler)."""
        super().__init__()
        if trainable_stages is not None and not 0 <= trainable_stages <= len(STAGES):
            raise UserValueError(f"model.trainable_stages={trainable_stages}: use null or 0..4")
        resolved = resolve_weights(arch, weights)
        try:
            net = get_model(arch, weights=resolved if isinstance(resolved, WeightsEnum) else None)
        except (URLError, ConnectionError, TimeoutError) as e:
            raise UserRuntimeError(download_hint(resolved)) from e
        self.num_features: int = net.fc.in_features
        net.fc = nn.Identity()
        if isinstance(resolved, Path):
            state = safe_load(resolved)
            # A torchvision state dict carries the 1000-class ImageNet classifier: not ours.
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            check_fits(state, net.state_dict(), f"model.weights={resolved}", arch)
            net.load_state_dict(state)
        self.net = net
        self.trainable_stages = trainable_stages
        self.frozen: tuple[str, ...] = ()
        self.held = False
        self.freeze_stages(trainable_stages)
        self.channels_last = channels_last
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if compile:
            net.compile(backend=compile_backend)

    @staticmethod
    def frozen_by(trainable_stages: int | None) -> tuple[str, ...]:
        """The modules that training only the last N residual stages leaves frozen."""
        if trainable_stages is None:
            return ()
        return STEM + STAGES[: len(STAGES) - trainable_stages]

    def freeze_stages(self, trainable_stages: int | None) -> None:
        """Train only the last N residual stages (None: all): the stem and the earlier
        stages get no gradients and their BatchNorm stays in eval mode."""
        self.frozen = self.frozen_by(trainable_stages)
        for name in STEM + STAGES:
            getattr(self.net, name).requires_grad_(name not in self.frozen)
        self.train(self.training)

    def hold(self, held: bool) -> None:
        """While held (FreezeBackbone's first epochs) the BatchNorm layers of every stage stay
        in eval mode, as a frozen stage's do; the parameters keep ``requires_grad``, so that
        DDP registers them and compiled graphs keep their guards, and the callback drops
        their gradients before each optimizer step."""
        self.held = held
        self.train(self.training)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters ``trainable_stages`` trains, also while a callback holds the whole
        backbone frozen for a few epochs (so that they are in the optimizer from the start)."""
        frozen = self.frozen_by(self.trainable_stages)
        return [
            p for name, m in self.net.named_children() if name not in frozen for p in m.parameters()
        ]

    def train(self, mode: bool = True) -> Backbone:
        # Lightning calls model.train() at every epoch start; frozen BatchNorm must keep its
        # pretrained running statistics, which nn.Module offers no per-module switch for.
        super().train(mode)
        for name in STEM + STAGES if self.held else self.frozen:
            getattr(self.net, name).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


def make_head(
    name: str, in_features: int, num_classes: int, dropout: float | Sequence[float] = 0.5
) -> nn.Sequential:
    """The report's heads v0..v4: v0 dropout and one linear layer; v1 one hidden layer of
    500; v2 two (500, 250); v3 v2 with BatchNorm after the first; v4 three (1024, 512, 256)
    with BatchNorm. ``v4`` takes three dropouts (a single number is used for all three)."""
    F, C = in_features, num_classes
    if name == "v4":
        p1, p2, p3 = (dropout,) * 3 if isinstance(dropout, (int, float)) else dropout
        return nn.Sequential(
            nn.Linear(F, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Dropout(p1),
            nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(p2),
            nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(p3),
            nn.Linear(256, C),
        )  # fmt: skip
    if not isinstance(dropout, (int, float)):
        raise UserValueError(f"head.dropout={dropout}: head {name} takes one number")
    p = dropout
    heads = {
        "v0": lambda: [nn.Dropout(p), nn.Linear(F, C)],
        "v1": lambda: [nn.Linear(F, 500), nn.ReLU(), nn.Dropout(p), nn.Linear(500, C)],
        "v2": lambda: [
            nn.Linear(F, 500), nn.ReLU(), nn.Linear(500, 250), nn.ReLU(),
            nn.Dropout(p), nn.Linear(250, C),
        ],
        "v3": lambda: [
            nn.Linear(F, 500), nn.BatchNorm1d(500), nn.ReLU(), nn.Linear(500, 250), nn.ReLU(),
            nn.Dropout(p), nn.Linear(250, C),
        ],
    }  # fmt: skip
    if name not in heads:
        raise UserValueError(f"head.name={name}: use one of v0, v1, v2, v3, v4")
    return nn.Sequential(*heads[name]())


def _cosine_then_flat(
    epoch: int, base_lr: float, T_max: int, eta_min: float, warmup_epochs: int = 0
) -> float:
    if epoch < warmup_epochs:  # linear: 1/(W+1), 2/(W+1), ... then the cosine from 1
        return (epoch + 1) / (warmup_epochs + 1)
    t = min(epoch - warmup_epochs, T_max - warmup_epochs) / (T_max - warmup_epochs)
    return (eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t)) / 2) / base_lr


def cosine_then_flat(
    optimizer: torch.optim.Optimizer, T_max: int, eta_min: float = 0.0, warmup_epochs: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """CosineAnnealingLR's curve, held at ``eta_min`` after ``T_max`` epochs, optionally
    after ``warmup_epochs`` of linear warm-up (the cosine then runs from there to T_max).

    torch's CosineAnnealingLR is periodic: past T_max it climbs back towards the initial lr,
    as it would over the last 20 of the report's 100 epochs with T_max 80. torch has no
    non-periodic cosine, hence this LambdaLR. With several parameter groups (a backbone
    learning rate below the head's) every group follows the first group's curve, so
    ``eta_min`` is the head's floor and the backbone keeps its ratio to it.
    """
    if not 0 <= warmup_epochs < T_max:
        raise UserValueError(
            f"sched.warmup_epochs={warmup_epochs}: use 0 <= warmup < T_max={T_max}"
        )
    head_lr = optimizer.param_groups[0]["lr"]
    curve = partial(
        _cosine_then_flat,
        base_lr=head_lr,
        T_max=T_max,
        eta_min=eta_min,
        warmup_epochs=warmup_epochs,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, curve)


class BatchMix:
    """MixUp and/or CutMix on a training batch (torchvision's ``v2.MixUp`` / ``v2.CutMix``):
    with probability ``prob`` one of those with a non-zero alpha mixes the batch, and the
    targets become class probabilities. Both alphas 0 (the default): the batch as it is."""

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
    ) -> None:
        mixes = [
            mix(alpha=alpha, num_classes=num_classes)
            for mix, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha))
            if alpha > 0
        ]
        self.mix = v2.RandomChoice(mixes) if mixes else None
        self.prob = prob

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mix is None or torch.rand(()) >= self.prob:
            return x, y
        return self.mix(x, y)


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
    module finishes its batches on the device: ``hw1.device_batches.DeviceBatches``).

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
        trained. ``param_groups``: ``hw1.param_groups.optimizer_params``' options."""
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.backbone: Backbone = instantiate(model)
        self.head = instantiate(
            head, in_features=self.backbone.num_features, num_classes=len(self.class_names)
        )
        self.criterion: nn.Module = instantiate(loss) if loss else nn.CrossEntropyLoss()
        self.mix = instantiate(mix, num_classes=len(self.class_names)) if mix else None
        num_classes = len(self.class_names)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_confusion = MulticlassConfusionMatrix(num_classes)  # drawn by TensorBoardFigures
        self.val_history: list[dict[str, float]] = []  # per epoch, for metrics.json
        self.train_images = 0  # seen by training steps, for the run summary's images/s

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
        # Mixed targets are probabilities: accuracy against the larger share.
        self.train_acc(logits, y if y.ndim == 1 else y.argmax(dim=1))
        self.train_images += len(y)
        # Two names rather than Lightning's automatic _step/_epoch suffixes: train/loss is the
        # epoch curve that sits beside val/loss in TensorBoard.
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of a training batch ``x`` (hw1.distill's student adds its teachers')."""
        return self.criterion(logits, y)

    def on_train_epoch_end(self) -> None:
        # The per-epoch learning rate, beside LearningRateMonitor's per-step curve.
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])

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
        """Class probabilities; for (B, views, C, H, W) the mean softmax over the views,
        all views of the batch in one forward pass."""
        if x.ndim == 4:
            return self(x).softmax(dim=1).float()
        b, v = x.shape[:2]
        return self(x.flatten(0, 1)).softmax(dim=1).float().view(b, v, -1).mean(dim=1)

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
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
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
        return model.eval()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_history"] = self.val_history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = checkpoint.get("val_history", [])
