"""Checkpoints saved before hw1's layered layout name the old code paths in their configs
(``hw1.model.Backbone``, ...). hw1.utils.weights.MOVED_TARGETS maps them; every command
that reads a checkpoint goes through it."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import run_train
from hydra.utils import get_object

from hw1.inference.averaging import load_checkpoints
from hw1.inference.evaluation import evaluate
from hw1.inference.predictor import predict
from hw1.models.classifier import Classifier
from hw1.training.init_from import load_weights
from hw1.utils.config import compose_config
from hw1.utils.weights import MOVED_TARGETS, current_targets

OLD_PATHS = {new: old for old, new in MOVED_TARGETS.items()}


def test_every_new_path_imports_and_no_old_one_does():
    for old, new in MOVED_TARGETS.items():
        assert callable(get_object(new)), new
        with pytest.raises(ImportError):  # no shim left at the old path
            get_object(old)


def test_nested_targets_are_rewritten_and_others_kept():
    hparams = {
        "model": {"_target_": "hw1.model.Backbone", "arch": "resnet18"},
        "optim": {"_target_": "torch.optim.AdamW", "lr": 1e-3},
        "extra": [{"_target_": "hw1.model.BatchMix"}, "hw1.model.Backbone"],
    }
    new = current_targets(hparams)
    assert new["model"] == {"_target_": "hw1.models.backbone.Backbone", "arch": "resnet18"}
    assert new["optim"]["_target_"] == "torch.optim.AdamW"
    assert new["extra"] == [{"_target_": "hw1.transforms.mix.BatchMix"}, "hw1.model.Backbone"]


def as_before_the_move(node):
    """A checkpoint's hyper-parameters as hw1 saved them before the layers."""
    if isinstance(node, dict):
        return {
            k: OLD_PATHS.get(v, v) if k == "_target_" else as_before_the_move(v)
            for k, v in node.items()
        }
    return node


@pytest.fixture(scope="module")
def old_checkpoint(trained_run, tmp_path_factory):
    _, _, run_dir = trained_run
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["hyper_parameters"] = as_before_the_move(dict(ckpt["hyper_parameters"]))
    targets = [v.get("_target_") for v in ckpt["hyper_parameters"].values() if isinstance(v, dict)]
    assert "hw1.model.Backbone" in targets and "hw1.imbalance.CrossEntropyLoss" in targets
    path = tmp_path_factory.mktemp("old") / "old.ckpt"
    torch.save(ckpt, path)
    return path


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_an_old_checkpoint_predicts_the_same_csv(trained_run, old_checkpoint, tmp_path):
    root, _, run_dir = trained_run
    outs = {}
    for name, ckpt in (("new", run_dir / "checkpoints" / "best.ckpt"), ("old", old_checkpoint)):
        overrides = [f"ckpt_path={ckpt}", f"data.root={root}", f"output={tmp_path / name}.csv"]
        cfg = compose_config([*overrides, "data.num_workers=0", "trainer=cpu"], "predict")
        outs[name] = rows(predict(cfg))
    assert outs["old"] == outs["new"] and len(outs["old"]) > 1


@pytest.mark.slow
def test_an_old_checkpoint_evaluates_averages_and_starts_a_stage(
    trained_run, old_checkpoint, tmp_path
):
    root, _, run_dir = trained_run
    new = run_dir / "checkpoints" / "best.ckpt"
    overrides = [f"ckpt_path={old_checkpoint}", f"data.root={root}", "split=val"]
    overrides += [f"output={tmp_path / 'eval.json'}", "data.num_workers=0", "trainer=cpu"]
    assert evaluate(compose_config(overrides, config_name="eval"))["acc"] > 0.5
    old, current = load_checkpoints([old_checkpoint, new])  # the same model to average
    assert old["hyper_parameters"]["model"] == current["hyper_parameters"]["model"]
    model = Classifier.from_checkpoint(new)
    load_weights(model, old_checkpoint)  # init_from=
    for key, value in Classifier.from_checkpoint(old_checkpoint).state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.slow
def test_an_old_checkpoint_resumes_training(trained_run, old_checkpoint, tmp_path):
    root, _, _ = trained_run
    proc = run_train(
        root, tmp_path / "run", f"ckpt_path={old_checkpoint}", "trainer.max_epochs=9",
        "sched.T_max=8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    old = torch.load(old_checkpoint, weights_only=True)
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # continued from the old checkpoint's epoch and step, not from the start
    assert resumed["epoch"] > old["epoch"] and resumed["global_step"] > old["global_step"]
    assert resumed["hyper_parameters"]["model"]["_target_"] == "hw1.models.backbone.Backbone"
