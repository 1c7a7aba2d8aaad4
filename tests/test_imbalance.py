from __future__ import annotations

from collections import Counter

import lightning as L
import pytest
import torch
from conftest import datamodule, make_hw1_folder
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import RandomSampler

from hw1.check import report
from hw1.data.samplers import BalancedSampler, class_counts, inverse_frequency
from hw1.models.classifier import Classifier
from hw1.models.losses import ClassWeightedCrossEntropy
from hw1.utils.config import compose_config
from hw1.utils.errors import UserValueError

TARGETS = [0] * 30 + [1] * 6 + [2] * 3


def imbalanced_folder(root, per_class=(12, 4, 2)):
    """Classes a, b, c with ``per_class`` train images (3 val each)."""
    make_hw1_folder(root, ["a", "b", "c"], train=max(per_class), val=3, test=1)
    for name, n in zip("abc", per_class, strict=True):
        for i in range(n, max(per_class)):
            (root / "train" / name / f"{i}.jpg").unlink()


def test_the_balanced_sampler_draws_every_class_equally_often():
    sampler = BalancedSampler(TARGETS, seed=0)
    drawn = Counter()
    for epoch in range(100):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == len(TARGETS)
        drawn.update(TARGETS[i] for i in indices)
    total = sum(drawn.values())
    # Shuffling would draw class 0 77 % of the time; 4 standard deviations of the share: 0.03.
    for c in range(3):
        assert drawn[c] / total == pytest.approx(1 / 3, abs=0.03), drawn


def test_the_balanced_sampler_is_seeded_per_epoch():
    a, b = BalancedSampler(TARGETS, seed=1), BalancedSampler(TARGETS, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(BalancedSampler(TARGETS, seed=2)) != list(BalancedSampler(TARGETS, seed=1))


def test_under_ddp_each_process_takes_its_share_of_the_same_draws():
    # What Lightning does with a custom sampler under DDP: DistributedSamplerWrapper.
    targets = TARGETS + [2]  # 40 indices: two equal shares, no padding
    for epoch in (0, 5):
        shares = []
        for rank in (0, 1):
            wrapper = DistributedSamplerWrapper(
                BalancedSampler(targets, seed=3), num_replicas=2, rank=rank, shuffle=True
            )
            wrapper.set_epoch(epoch)
            shares.append(list(wrapper))
        whole = BalancedSampler(targets, seed=3)
        whole.set_epoch(epoch)
        assert len(shares[0]) == len(shares[1]) == 20
        assert Counter(shares[0] + shares[1]) == Counter(whole)


def test_data_sampler_balanced_samples_train_only_and_shuffles_without_it(tmp_path):
    root = tmp_path / "data"
    imbalanced_folder(root)
    dm = datamodule(root, sampler="balanced")
    dm.setup("fit")
    assert isinstance(dm.train_dataloader().sampler.order, BalancedSampler)
    assert not isinstance(getattr(dm.val_dataloader().sampler, "order", None), BalancedSampler)
    plain = datamodule(root)
    plain.setup("fit")
    assert isinstance(plain.train_dataloader().sampler.order, RandomSampler)
    with pytest.raises(UserValueError, match="data.sampler=weighted"):
        datamodule(root, sampler="weighted")


def test_class_weights_are_the_inverse_frequency_with_mean_one():
    counts = class_counts(TARGETS, 3)
    assert counts.tolist() == [30, 6, 3]
    weights = inverse_frequency(counts)
    assert weights.mean().item() == pytest.approx(1.0)
    products = (weights * counts).tolist()  # weight x count: the same for every class
    assert products == pytest.approx([products[0]] * 3)
    assert inverse_frequency(torch.tensor([5, 5])).tolist() == [1.0, 1.0]
    with pytest.raises(UserValueError, match=r"class indices \[1\]"):
        inverse_frequency(torch.tensor([5, 0]))


def fitted_criterion(root, class_weights: str | None) -> torch.nn.Module:
    cfg = compose_config(
        ["model=resnet18", "model.weights=null", "head=v0", f"loss.class_weights={class_weights}"]
    )
    dm = datamodule(root)
    dm.validate()
    model = Classifier.from_config(cfg, dm.class_names)
    # No batch: the weights are set when fit sets up, after the data module's setup.
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=0, limit_val_batches=0, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert "criterion.weight" not in model.state_dict()  # counted again on resuming
    return model.criterion


def test_loss_class_weights_balanced_weights_by_the_training_sets_counts(tmp_path):
    root = tmp_path / "data"
    imbalanced_folder(root)
    criterion = fitted_criterion(root, "balanced")
    inverse = torch.tensor([1 / 12, 1 / 4, 1 / 2])
    assert criterion.weight.tolist() == pytest.approx((inverse / inverse.mean()).tolist())
    assert fitted_criterion(root, "null").weight is None
    with pytest.raises(UserValueError, match="loss.class_weights=inverse"):
        ClassWeightedCrossEntropy(class_weights="inverse")


def test_check_suggests_the_options_for_an_imbalanced_train_set_only(tmp_path):
    suggestion = "data.sampler=balanced"
    imbalanced_folder(tmp_path / "skewed", per_class=(9, 3, 4))  # max/min 3
    text, _ = report(compose_config([f"data.root={tmp_path / 'skewed'}"], config_name="check"))
    assert "train's classes are imbalanced (max/min 3.0)" in text and suggestion in text, text
    assert "loss.class_weights=balanced" in text
    imbalanced_folder(tmp_path / "mild", per_class=(8, 3, 4))  # max/min 2.7
    text, _ = report(compose_config([f"data.root={tmp_path / 'mild'}"], config_name="check"))
    assert "max/min" in text and suggestion not in text, text
