"""The distilled student: a Classifier trained on its teachers' softened predictions of each
augmented batch and on the labels (Hinton et al.'s loss, ``distillation_loss``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from hw1.models.classifier import Classifier
from hw1.utils.errors import UserValueError


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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # hw1.train resuming it would continue without its teachers (check_resumable)
        checkpoint["distilled"] = True

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
