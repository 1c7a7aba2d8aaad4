from __future__ import annotations

import json

import pytest
from conftest import make_hw1_folder, run_train
from hydra.utils import instantiate
from lightning.pytorch.callbacks import StochasticWeightAveraging

from hw1.inference.averaging import check_swa
from hw1.models.classifier import Classifier
from hw1.utils.config import compose_config
from hw1.utils.errors import UserValueError


def callbacks(*overrides: str) -> list:
    cfg = compose_config(["experiment=demo", *overrides], return_hydra_config=True)
    return [instantiate(c) for k, c in cfg.callbacks.items() if c is not None and k != "figures"]


def test_swa_is_a_callback_only_when_asked_for_and_refused_with_early_stopping():
    dirpath = "callbacks.model_checkpoint.dirpath=ckpts"
    assert not any(isinstance(c, StochasticWeightAveraging) for c in callbacks(dirpath))
    chosen = callbacks(dirpath, "callbacks=[default,swa]", "callbacks.early_stopping=null")
    assert sum(isinstance(c, StochasticWeightAveraging) for c in chosen) == 1
    check_swa(chosen)
    with pytest.raises(UserValueError, match="callbacks.early_stopping=null"):
        check_swa(callbacks(dirpath, "callbacks=[default,swa]"))


@pytest.mark.slow
def test_a_swa_run_validates_and_saves_the_average_after_its_batch_norm_epoch(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(12)], train=4, val=1, test=0)
    run_dir = tmp_path / "run"
    overrides = ["callbacks=[default,swa]", "callbacks.early_stopping=null"]
    overrides += ["trainer.max_epochs=2", "sched.T_max=2", "trainer.limit_train_batches=2"]
    proc = run_train(root, run_dir, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the two epochs, then the average's BatchNorm epoch, each validated
    assert [h["epoch"] for h in metrics["val_history"]] == [1, 2, 3]
    assert "Swapping scheduler" in proc.stdout + proc.stderr
    last = Classifier.from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last.class_names == [str(i) for i in range(12)]
