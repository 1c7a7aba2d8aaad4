"""TensorBoard as people open it (hw1.training.hparams's TensorBoard logger and HPARAMS
entry, the learning-rate tags): read back from the event files with TensorBoard's own
EventAccumulator and the hparams plugin's protos."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.data import DataLoader, TensorDataset

from hw1.models.classifier import Classifier
from hw1.training import hparams, tracking
from hw1.utils.config import compose_config

BASE = ["model=resnet18", "model.weights=null", "head=v0", "optim.lr=0.01"]
GROUPS = {"train", "val", "test", "lr"}  # TensorBoard's scalar groups: a tag's first part


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def plugin_data(acc: EventAccumulator, tag: str) -> HParamsPluginData:
    return HParamsPluginData.FromString(acc.PluginTagToContent("hparams")[tag])


def test_the_hparams_tab_has_the_short_list_and_the_metrics_even_before_the_end(tmp_path):
    logger = hparams.TensorBoard(save_dir=str(tmp_path), name="tb", version="")
    params = {
        "model.arch": "resnet18", "optim.lr": 0.01, "optim.betas": "[0.9, 0.999]",
        "data.batch_size": 16, "trainer.max_epochs": 2, "seed": 42, "data.root": "/data",
    }  # fmt: skip
    metrics = hparams.hparams_metrics("test")
    tracking.start([logger], tmp_path, params, metrics)
    logger.experiment.flush()
    # A run that never finishes (a crash in fit) already has its entry, metrics n/a.
    acc = events(tmp_path / "tb")
    experiment = plugin_data(acc, "_hparams_/experiment").experiment
    assert [m.name.tag for m in experiment.metric_infos] == metrics
    assert metrics[:2] == ["val/best_acc", "test/top1"]  # the plugin shows the first five
    names = {h.name for h in experiment.hparam_infos}
    assert names == {"optim.lr", "data.batch_size", "trainer.max_epochs", "seed"}
    started = plugin_data(acc, "_hparams_/session_start_info").session_start_info
    assert started.hparams["optim.lr"].number_value == 0.01
    assert not acc.Tags()["scalars"]

    finished = {"best_val_acc": 0.75, "best_epoch": 2, "test_acc": 0.7, "epochs": 2}
    tracking.finish([logger], finished, tmp_path, step=10)
    acc = events(tmp_path / "tb")
    assert {"val/best_acc", "val/best_epoch", "test/prediction_acc"} <= set(acc.Tags()["scalars"])
    assert acc.Scalars("val/best_acc")[-1].value == pytest.approx(0.75)
    ended = plugin_data(acc, "_hparams_/session_end_info").session_end_info
    assert ended.status == 1  # STATUS_SUCCESS
    assert "optim.betas" in (tmp_path / "tb" / "hparams.yaml").read_text()  # the full list


def test_the_short_list_is_the_chosen_groups_the_main_keys_and_the_command_lines():
    params = {
        "model.arch": "resnet18", "model._target_": "x.y", "optim.lr": 0.1, "optim.eps": 1e-8,
        "loss.label_smoothing": 0.1, "seed": 1, "tta": "report",
    }  # fmt: skip
    choices = {
        "model": "resnet18", "optim": "adamw", "loss": "smoothing", "logger": "csv",
        "experiment": None,
    }  # fmt: skip
    short = hparams.hparams_settings(params, choices, ["loss", "optim.eps"])
    assert short == {
        "model": "resnet18", "optim": "adamw", "loss": "smoothing",
        "seed": 1, "tta": "report", "optim.lr": 0.1, "optim.eps": 1e-8,
    }  # fmt: skip
    assert list(short)[:3] == ["model", "optim", "loss"]


def tiny_fit(tmp_path: Path, *overrides: str) -> EventAccumulator:
    """Two training steps of a 32 px resnet18 with conf/logger/tensorboard.yaml's logger
    and a per-step LearningRateMonitor, as conf/callbacks/default.yaml has it."""
    cfg = compose_config([*BASE, *overrides])
    model = Classifier.from_config(cfg, ["a", "b", "c"])
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 3)
    trainer = L.Trainer(
        max_epochs=1, limit_val_batches=0, log_every_n_steps=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        logger=instantiate(cfg.logger.tensorboard, save_dir=str(tmp_path)),  # as conf/ has it
        callbacks=[LearningRateMonitor(logging_interval="step")],
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=8))
    return events(tmp_path / "tb")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), {"lr/all"}),
        (("sched=constant",), {"lr/all"}),
        (("backbone_lr_factor=0.1",), {"lr/head", "lr/backbone"}),
        (
            ("param_groups.layer_decay=0.8",),
            {"lr/head", "lr/layer4", "lr/layer3", "lr/layer2", "lr/layer1", "lr/stem"},
        ),
    ],
)
def test_every_learning_rate_curve_is_in_the_lr_group(tmp_path, overrides, expected):
    scalars = set(tiny_fit(tmp_path, *overrides).Tags()["scalars"])
    assert {t for t in scalars if t.startswith("lr")} == expected
    assert {t.split("/")[0] for t in scalars} <= GROUPS, scalars  # no epoch, no hp_metric
