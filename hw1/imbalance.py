"""Class imbalance: a sampler that draws each class equally often (``data.sampler=balanced``)
and inverse-frequency class weights for the loss (``loss.class_weights=balanced``), both
from the training set's class counts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import WeightedRandomSampler

from hw1.errors import UserValueError

# hw1.check suggests the options above when train's largest class has this many times
# the images of its smallest.
IMBALANCED = 3.0


def class_counts(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Images per class index."""
    return torch.bincount(torch.as_tensor(targets, dtype=torch.long), minlength=num_classes)


def inverse_frequency(counts: torch.Tensor) -> torch.Tensor:
    """Class weights proportional to 1 / count, scaled to a mean of 1 (a balanced set: all 1)."""
    if (counts == 0).any():
        empty = (counts == 0).nonzero().flatten().tolist()
        raise UserValueError(
            f"loss.class_weights=balanced: class indices {empty} have no training image, so "
            "they have no inverse frequency"
        )
    inverse = 1.0 / counts.double()
    return (inverse / inverse.mean()).float()


class BalancedSampler(WeightedRandomSampler):
    """Draws ``len(targets)`` indices per epoch with replacement, each class equally likely.

    Seeded with ``seed`` + the epoch (Lightning calls ``set_epoch``): the draws repeat on
    resuming, and under DDP, where Lightning wraps the sampler in its
    ``DistributedSamplerWrapper``, every process draws the same indices and takes its own
    share of them."""

    def __init__(self, targets: Sequence[int], seed: int = 0) -> None:
        targets = torch.as_tensor(targets, dtype=torch.long)
        per_class = 1.0 / class_counts(targets, int(targets.max()) + 1).double()
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        super().__init__(per_class[targets], len(targets), replacement=True, generator=generator)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """torch's cross-entropy with ``class_weights``: null (none) or ``balanced``
    (``inverse_frequency`` of the training set's counts, set by ``Classifier.setup`` through
    ``count_classes`` once the data is known). The weights are not saved with the model:
    a resumed run counts its data again."""

    def __init__(self, class_weights: str | None = None, **kwargs) -> None:
        if class_weights not in (None, "balanced"):
            raise UserValueError(f"loss.class_weights={class_weights}: use null or balanced")
        super().__init__(**kwargs)
        self.class_weights = class_weights
        self.register_buffer("weight", self.weight, persistent=False)

    def count_classes(self, targets: Sequence[int], num_classes: int) -> None:
        if self.class_weights == "balanced":
            self.weight = inverse_frequency(class_counts(targets, num_classes))
