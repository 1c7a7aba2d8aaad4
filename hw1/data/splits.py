"""Validation splits of a labelled sample list: a held-out fraction, or K folds; both
stratified by class and seeded."""

from __future__ import annotations

import random
from collections.abc import Sequence


def stratified_split(
    samples: Sequence[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, val) drawn per class with ``seed``: each class with two images or more gives
    ``fraction`` of them (at least one) to val and keeps at least one. Hand-written because
    torch's random_split is not stratified and scikit-learn is not a dependency."""
    rng = random.Random(seed)
    to_val: set[int] = set()
    for indices in _by_class(samples):
        n = len(indices)
        k = min(n - 1, max(1, round(fraction * n)))
        to_val.update(rng.sample(indices, k))
    return _part(samples, to_val)


def fold_split(
    samples: Sequence[tuple[str, int]], folds: int, fold: int, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, val) of fold ``fold`` of ``folds``: each class's images, shuffled with
    ``seed``, are dealt round the folds, continuing where the previous class stopped, so
    folds are disjoint, stratified, cover every image once and differ in size by at most
    one image."""
    rng = random.Random(seed)
    to_val: set[int] = set()
    dealt = 0
    for indices in _by_class(samples):
        shuffled = rng.sample(indices, len(indices))
        to_val.update(i for j, i in enumerate(shuffled) if (dealt + j) % folds == fold)
        dealt += len(indices)
    return _part(samples, to_val)


def _by_class(samples: Sequence[tuple[str, int]]) -> list[list[int]]:
    """The sample indices of each class, classes in index order."""
    by_class: dict[int, list[int]] = {}
    for i, (_, c) in enumerate(samples):
        by_class.setdefault(c, []).append(i)
    return [by_class[c] for c in sorted(by_class)]


def _part(samples: Sequence[tuple[str, int]], to_val: set[int]) -> tuple[list, list]:
    train = [s for i, s in enumerate(samples) if i not in to_val]
    return train, [s for i, s in enumerate(samples) if i in to_val]
