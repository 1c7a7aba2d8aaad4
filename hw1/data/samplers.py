"""The training order: class imbalance (class counts, inverse-frequency weights, a sampler
that draws each class equally often, ``data.sampler=balanced``), the shuffle, each sample's
draw seed, and the loader that resumes an epoch where it stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, WeightedRandomSampler

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
        self.seed, self.epoch = seed, 0
        generator = torch.Generator().manual_seed(seed)
        super().__init__(per_class[targets], len(targets), replacement=True, generator=generator)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed + epoch)


def draw_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the random draws (crop, flip, jitter, ...) of the sample at ``position``
    of epoch ``epoch``'s order: a function of the run's seed and the sample's place in the
    run alone, not of which loader worker or which loader iterator serves it (as the test-time
    views' seeds are, ``hw1.transforms.presets.ViewStack``)."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + position) % 2**63


class ShuffledOrder(RandomSampler):
    """torch's RandomSampler, its permutation drawn from ``seed`` and the epoch alone
    (Lightning calls ``set_epoch``), not from the global generator at the moment the loader
    iterates: a run resumed in the middle of an epoch gets that epoch's order back."""

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.seed, self.epoch = seed, 0
        super().__init__(data_source, generator=torch.Generator().manual_seed(seed))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)


class SeededDraws(Sampler[tuple[int, int]]):
    """``order``'s indices (a ShuffledOrder or a BalancedSampler) with the seed of each
    one's random draws (``draw_seed``), for ``SeededSamples``: the same sample at the same
    place of the same epoch is augmented the same way in every run of the seed, whatever
    the worker count, and after a resume (torch seeds each loader worker at iterator
    creation, so a resumed run's workers would draw other augmentations)."""

    def __init__(self, order: Sampler[int], seed: int = 0) -> None:
        self.order, self.seed, self.epoch = order, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.order):
            yield index, draw_seed(self.seed, self.epoch, position)


class ResumableLoader(DataLoader):
    """A DataLoader that a run stopped in the middle of an epoch (SIGTERM, Ctrl-C) resumes
    on the batches the uninterrupted run would have trained on next.

    Lightning's fit loop keeps a loader's ``state_dict()`` in the checkpoint and, resuming
    mid-epoch, hands it to ``load_state_dict`` before it iterates (the interface of
    torchdata's StatefulDataLoader, which would add a dependency and replays workers' state
    this order does not need). The state is the epoch and the number of batches the loader
    served in it; the resumed iteration skips that many batches of indices, unread, so
    with an order drawn from (seed, epoch) (ShuffledOrder, BalancedSampler) and draws
    seeded per sample (SeededDraws) the rest of the epoch is the uninterrupted run's. The
    skip is made on the batches of indices each process takes (``_index_sampler``), so it
    holds under DDP, where Lightning wraps the sampler in its DistributedSamplerWrapper."""

    _resume_at: tuple[int, int] | None = None  # (epoch, batches) of a loaded state
    _served: tuple[int, int] = (0, 0)  # (epoch, batches served) of the current iteration
    _skip = 0  # batches of indices the iterator being made leaves out

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._served
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "epoch" in state and "batches" in state:  # else another loader's: start afresh
            self._resume_at = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self) -> Iterator[Any]:
        epoch = int(getattr(self.sampler, "epoch", 0))
        skip = 0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            skip = min(self._resume_at[1], len(self))
        self._resume_at = None
        self._served = (epoch, skip)
        self._skip = skip
        iterator = super().__iter__()  # takes its indices from _index_sampler, skipping
        self._skip = 0
        for batch in iterator:
            self._served = (epoch, self._served[1] + 1)
            yield batch

    @property
    def _index_sampler(self) -> Any:
        # DataLoader's iterators take their indices from this (private) property, each
        # process's own batches of indices; there, and only there, the batches already
        # trained on can be left out unread, with or without Lightning's DDP wrapper
        # (tests/test_compat.py checks torch still reads it).
        return SkippedBatches(super()._index_sampler, self)


class SkippedBatches:
    """``batches`` (a loader's batches of indices) less the first ``loader._skip``, as the
    loader had it when iteration began."""

    def __init__(self, batches: Iterable[Any], loader: ResumableLoader) -> None:
        self.batches, self.loader = batches, loader

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.batches), self.loader._skip, None)
