from __future__ import annotations

import itertools

from hw1.data.splits import fold_split, stratified_split


def test_stratified_split_gives_every_class_of_two_a_val_image():
    samples = [(f"{c}/{i}", c) for c in range(3) for i in range(c + 1)]  # 1, 2, 3 images
    train, val = stratified_split(samples, 0.01, seed=0)
    assert sorted(c for _, c in val) == [1, 2] and len(train) == 4


def test_folds_are_disjoint_stratified_seeded_and_cover_the_data():
    samples = [(f"{c}/{i}", c) for c in range(4) for i in range(7 + c)]  # 7, 8, 9, 10 a class
    vals = [fold_split(samples, 3, k, seed=5)[1] for k in range(3)]
    assert sorted(x for v in vals for x in v) == sorted(samples)  # every image once
    assert all(not set(a) & set(b) for a, b in itertools.combinations(vals, 2))
    for v in vals:
        per_class = [sum(c == k for _, c in v) for k in range(4)]
        assert all(abs(n - (7 + k) / 3) < 1 for k, n in enumerate(per_class))  # stratified
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    train, val = fold_split(samples, 3, 1, seed=5)
    assert sorted(train + val) == sorted(samples) and val == vals[1]
    assert fold_split(samples, 3, 1, seed=6)[1] != val
