"""Class imbalance on the data side: class counts, inverse-frequency weights, and a sampler
that draws each class equally often (``data.sampler=balanced``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import WeightedRandomSampler

from hw1.utils.errors import UserValueError

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
