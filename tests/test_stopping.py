from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from hw1.training.random_state import RandomState
from hw1.training.resume import resume_point
from hw1.utils.config import compose_config
from hw1.utils.errors import UserValueError


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_random_state_restores_every_generator_through_a_weights_only_file(tmp_path):
    L.seed_everything(5)
    draws()
    torch.save({"rng": RandomState().state_dict()}, tmp_path / "rng.ckpt")
    expected = draws()
    L.seed_everything(6)  # a fresh process seeds anew; resume must undo that
    RandomState().load_state_dict(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    assert draws() == expected


def test_resume_without_a_last_checkpoint_says_how_to_point_at_the_run(tmp_path):
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints")],
        logger=False,
    )
    model = None  # not reached: no checkpoint to check it against
    with pytest.raises(FileNotFoundError, match=r"resume=true: no .*last\.ckpt.*hydra\.run\.dir="):
        resume_point(compose_config(["resume=true"]), trainer, model)
    assert resume_point(compose_config(), trainer, model) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")  # a save cut short (R4)
    with pytest.raises(UserValueError, match=r"last\.ckpt: not a readable checkpoint: it is em"):
        resume_point(compose_config(["resume=true"]), trainer, model)
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nope\.ckpt: no such checkpoint"):
        resume_point(compose_config([f"ckpt_path={tmp_path / 'nope.ckpt'}"]), trainer, model)
