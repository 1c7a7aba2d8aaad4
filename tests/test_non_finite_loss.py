"""StopOnNonFiniteLoss: the run stops on a NaN/inf loss, naming its step, saving nothing
after it, without reading the loss on the host at every step (which would wait for the
GPU to finish each step before the next can be queued)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hw1.training.stopping import NonFiniteLossError, StopOnNonFiniteLoss

HOST_READS = ("__bool__", "item", "tolist", "__float__", "__int__")


@pytest.fixture
def host_reads(monkeypatch) -> list[str]:
    """Every tensor read on the host (a device sync on a GPU), by name."""
    reads: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def fake_trainer(tmp_path) -> SimpleNamespace:
    """What the callback reads of a single-process Trainer."""
    return SimpleNamespace(
        current_epoch=0, global_step=0, world_size=1, checkpoint_callbacks=[],
        default_root_dir=str(tmp_path), sanity_checking=False,
    )  # fmt: skip


def train_steps(callback, trainer, losses: list[float]) -> None:
    for loss in losses:
        trainer.global_step += 1
        batch_idx = trainer.global_step - 1
        callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, batch_idx)


def test_the_loss_is_read_once_per_check_not_once_per_step(tmp_path, host_reads):
    callback, trainer = StopOnNonFiniteLoss(check_every_n_steps=5), fake_trainer(tmp_path)
    train_steps(callback, trainer, [1.0, 0.9, 0.8, 0.7])
    assert host_reads == []
    train_steps(callback, trainer, [0.6])  # the 5th: checked
    assert len(host_reads) == 1


def test_the_first_bad_step_is_named_at_the_next_check(tmp_path):
    callback, trainer = StopOnNonFiniteLoss(check_every_n_steps=5), fake_trainer(tmp_path)
    train_steps(callback, trainer, [1.0, 0.9, float("inf")])  # batch 2, global step 3
    expected = r"loss is inf at epoch 1, batch 2 \(global step 3\)"
    with pytest.raises(NonFiniteLossError, match=expected):
        train_steps(callback, trainer, [float("nan"), 0.5])


def test_nothing_is_saved_after_a_bad_step_that_was_not_checked_yet(tmp_path):
    callback, trainer = StopOnNonFiniteLoss(check_every_n_steps=100), fake_trainer(tmp_path)
    train_steps(callback, trainer, [1.0, float("nan")])
    # ModelCheckpoint's (and every other) save calls on_save_checkpoint before writing
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, batch 1 \(global"):
        callback.on_save_checkpoint(trainer, None, {})
    # and a validation on the broken weights does not start
    train_steps(callback, trainer, [float("nan")])
    with pytest.raises(NonFiniteLossError, match="batch 2"):
        callback.on_validation_start(trainer, None)


def test_finite_losses_pass_every_check(tmp_path):
    callback, trainer = StopOnNonFiniteLoss(check_every_n_steps=2), fake_trainer(tmp_path)
    train_steps(callback, trainer, [1.0, 2.0, 3.0])
    callback.on_save_checkpoint(trainer, None, {})
    callback.on_validation_start(trainer, None)
    callback.on_train_end(trainer, None)
