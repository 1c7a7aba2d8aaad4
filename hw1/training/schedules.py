"""The report's learning-rate schedule: linear warm-up, cosine decay over ``T_max`` epochs,
then flat at ``eta_min``.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from hw1.utils.errors import UserValueError


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
