"""Distil an ensemble into one model: ``python -m hw1.distill 'teachers=[A.ckpt,B.ckpt,C.ckpt]'
recipe=ID data.root=ROOT [distill.temperature=T distill.alpha=A]``.

The student is any training config (conf/distill.yaml composes conf/train.yaml), trained
as hw1.train trains, into the same run directory (checkpoints, metrics.json,
prediction.csv, TensorBoard), on the mean of its teachers' softened predictions of each
augmented training batch and on the labels. Its parameter count is checked against the
competition's limit before anything trains. Its checkpoints are plain hw1 checkpoints: the
teachers are not part of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from hw1 import PARAM_LIMIT
from hw1.errors import UserValueError, reported
from hw1.model import Classifier
from hw1.predict import checkpoint_paths, load_ensemble
from hw1.train import ModelMaker, train

log = logging.getLogger(__name__)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    label_loss: torch.Tensor,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, its KL term) with

        loss = alpha * T^2 * KL(p_teachers || softmax(student_logits / T))
               + (1 - alpha) * label_loss

    where ``p_teachers`` (``teacher_probs``) is the mean over the teachers of
    softmax(teacher_logits / T), the KL divergence is summed over the classes and averaged
    over the batch, and ``label_loss`` is the run's criterion (``loss``: cross-entropy) of
    the student's plain logits against the labels. T^2 keeps the soft term's gradients the
    size of the hard one's whatever T (Hinton et al., 2015). Computed in float32."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_student, teacher_probs.float(), reduction="batchmean")
    return alpha * temperature**2 * kl + (1 - alpha) * label_loss, kl


class DistilledClassifier(Classifier):
    """A Classifier trained against teachers (``set_teachers``). Its hyper-parameters and
    state dict are a Classifier's, so its checkpoints load with
    ``Classifier.from_checkpoint``.

    The teachers are kept outside the module (a plain list, not submodules): its state
    dict, its parameter count (metrics.json's ``params``), DDP's gradient buckets and
    ``.train()`` never reach them. ``on_fit_start`` moves them to the student's device and
    dtype (bf16-true / 16-true convert the student's weights; under mixed precision both
    run in the step's autocast)."""

    teachers: list[Classifier]
    temperature: float
    alpha: float

    def set_teachers(
        self, teachers: Sequence[Classifier], temperature: float, alpha: float
    ) -> None:
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise UserValueError(
                f"distill.temperature={temperature} distill.alpha={alpha}: use a temperature "
                "> 0 and an alpha in [0, 1]"
            )
        for teacher in teachers:
            teacher.requires_grad_(False)
            teacher.eval()
        self.teachers = list(teachers)  # a list: not registered as submodules
        self.temperature, self.alpha = temperature, alpha

    def on_fit_start(self) -> None:
        for teacher in self.teachers:
            teacher.to(device=self.device, dtype=self.dtype).eval()

    def teacher_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The teachers' mean softmax(logits / T) of the batch, without autograd."""
        with torch.inference_mode():
            probs = sum((t(x).float() / self.temperature).softmax(dim=1) for t in self.teachers)
        # an inference tensor cannot be saved for the backward pass: a normal copy can
        return (probs / len(self.teachers)).clone()

    def training_loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        label_loss = super().training_loss(x, logits, y)
        loss, kl = distillation_loss(
            logits, self.teacher_probs(x), label_loss, self.temperature, self.alpha
        )
        self.log("train/distill_kl", kl, on_step=False, on_epoch=True)
        self.log("train/label_loss", label_loss, on_step=False, on_epoch=True)
        return loss


def check_param_limit(model: Classifier, recipe: str) -> int:
    """The student's parameter count, refused at the competition's limit or over."""
    params = sum(p.numel() for p in model.parameters())
    if params >= PARAM_LIMIT:
        raise UserValueError(
            f"the student ({recipe}) has {params:,} parameters, over the limit of "
            f"{PARAM_LIMIT:,}: distil into a smaller model (recipe=..., model=resnet50)"
        )
    return params


def teachers_for(
    cfg: DictConfig, class_names: list[str], preprocess: dict[str, Any]
) -> list[Classifier]:
    """The teachers of ``cfg.teachers``, refused unless they know the data's classes, in
    its order, and normalise images as the student does."""
    paths = checkpoint_paths(cfg.teachers) if cfg.teachers else []
    if not paths:
        raise UserValueError("teachers is required: 'teachers=[A.ckpt,B.ckpt,C.ckpt]'")
    teachers = load_ensemble(paths)
    for path, teacher in zip(paths, teachers, strict=True):
        if teacher.class_names != class_names:
            raise UserValueError(
                f"teachers: {path} was trained on other classes than data.root="
                f"{cfg.data.root} has ({len(teacher.class_names)} vs {len(class_names)}, or "
                "in another order): distil on the data the teachers learnt"
            )
        theirs = teacher.hparams.preprocess
        if (theirs["mean"], theirs["std"]) != (preprocess["mean"], preprocess["std"]):
            raise UserValueError(
                f"teachers: {path} normalises images with mean {theirs['mean']} std "
                f"{theirs['std']}, the student with {preprocess['mean']} {preprocess['std']}: "
                "pick a student model whose weights normalise as the teachers'"
            )
        if theirs["crop"] != preprocess["crop"]:
            log.warning(
                "teacher %s was evaluated at %d px, the student trains at %d px: the "
                "teacher sees the student's batches",
                path,
                theirs["crop"],
                preprocess["crop"],
            )
    return teachers


def student_maker(cfg: DictConfig) -> ModelMaker:
    """hw1.train's ``make_model``: the student, its size checked before its teachers load."""

    def make(
        cfg_: DictConfig, class_names: list[str], preprocess: dict[str, Any]
    ) -> DistilledClassifier:
        student = DistilledClassifier.from_config(cfg_, class_names, preprocess)
        params = check_param_limit(student, cfg.id or cfg.model.arch)
        teachers = teachers_for(cfg, class_names, preprocess)
        student.set_teachers(teachers, cfg.distill.temperature, cfg.distill.alpha)
        log.info(
            "distilling %d teachers into %s (%s parameters), T=%s alpha=%s",
            len(teachers),
            cfg.id or cfg.model.arch,
            f"{params:,}",
            cfg.distill.temperature,
            cfg.distill.alpha,
        )
        return student

    return make


def distill(cfg: DictConfig) -> dict[str, Any]:
    return train(cfg, make_model=student_maker(cfg))


@hydra.main(version_base="1.3", config_path="../conf", config_name="distill")
def main(cfg: DictConfig) -> float | None:
    torch.set_float32_matmul_precision("high")
    with reported():
        metrics = distill(cfg)
    return metrics["best_val_acc"]


if __name__ == "__main__":
    main()
