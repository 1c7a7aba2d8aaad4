"""MixUp and CutMix on a training batch (``mix.*``), by torchvision's transforms."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


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
