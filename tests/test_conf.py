from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, compose_cfg
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hw1.data import DemoDataModule, FolderDataModule
from hw1.model import Backbone, Classifier

MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
HEADS = sorted(p.stem for p in (Path(CONF_DIR) / "head").glob("*.yaml"))
ARCH = {
    "resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
    "resnet101": "resnet101", "resnext50": "resnext50_32x4d", "resnext101": "resnext101_32x8d",
}  # fmt: skip


def test_the_groups_have_every_option_the_spec_names():
    assert sorted(ARCH) == MODELS
    assert HEADS == ["v0", "v1", "v2", "v3", "v4"]
    for group, options in {
        "data": ["demo", "hw1"], "optim": ["adamw"], "sched": ["constant", "cosine"],
        "trainer": ["cpu", "ddp", "default", "gpu"], "experiment": ["demo"],
    }.items():  # fmt: skip
        assert sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")) == options


def test_defaults_are_the_reports_best_recipe():
    cfg = compose_cfg()
    assert cfg.model.arch == "resnext101_32x8d" and cfg.model.weights == "IMAGENET1K_V2"
    assert cfg.model.trainable_stages is None
    assert (cfg.head.name, cfg.head.dropout) == ("v1", 0.5)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-4, 1e-3)
    assert (cfg.sched.T_max, cfg.sched.eta_min) == (80, 1e-5)
    assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.data.image_size) == (100, 64, 224)
    assert cfg.data.root == "data" and cfg.id is None
    assert cfg.callbacks.early_stopping.patience == 2  # the report's epochs // 50
    assert cfg.callbacks.early_stopping.mode == "min"  # it watches val/loss


@pytest.mark.parametrize(("epochs", "patience"), [(100, 2), (10, 1), (1, 1), (500, 10)])
def test_early_stopping_patience_follows_max_epochs(epochs, patience):
    cfg = compose_cfg([f"trainer.max_epochs={epochs}"])
    assert cfg.callbacks.early_stopping.patience == patience


def test_early_stopping_mode_follows_the_monitored_metric():
    cfg = compose_cfg(
        ["callbacks.early_stopping.monitor=val/acc", "callbacks.early_stopping.patience=7"]
    )
    assert cfg.callbacks.early_stopping.mode == "max" and cfg.callbacks.early_stopping.patience == 7


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_composes_and_instantiates(name):
    cfg = compose_cfg([f"model={name}", "model.weights=null"])
    backbone = instantiate(cfg.model)
    assert isinstance(backbone, Backbone)
    assert backbone.net.__class__.__name__ == "ResNet"
    assert backbone.num_features == (512 if name in ("resnet18", "resnet34") else 2048)


@pytest.mark.parametrize("name", HEADS)
def test_every_head_config_composes_and_instantiates(name):
    cfg = compose_cfg([f"head={name}", "model=resnet18", "model.weights=null"])
    head = instantiate(cfg.head, in_features=512, num_classes=100)
    assert head[-1].out_features == 100
    model = Classifier(
        **{k: OmegaConf.to_container(cfg[k]) for k in ("model", "head", "optim", "sched")},
        class_names=[str(i) for i in range(100)],
    )
    optimizers = model.configure_optimizers()
    assert optimizers["optimizer"].param_groups[0]["lr"] == 1e-4


def test_data_config_instantiates_the_datamodule():
    dm = instantiate(compose_cfg(["data.root=/some/where"]).data)
    assert isinstance(dm, FolderDataModule) and str(dm.root) == "/some/where"
    assert (dm.sizes.crop, dm.sizes.resize) == (224, 232)  # resnext101's IMAGENET1K_V2


def test_demo_experiment_composes():
    cfg = compose_cfg(["experiment=demo"])
    assert cfg.model.arch == "resnet18" and cfg.model.weights is None
    assert cfg.trainer.accelerator == "cpu" and cfg.sched.T_max == cfg.trainer.max_epochs
    assert isinstance(instantiate(cfg.data), DemoDataModule)


def test_unknown_weights_name_fails_at_composition_time_with_the_choices():
    cfg = compose_cfg(["model=resnet34", "model.weights=IMAGENET1K_V2"])
    with pytest.raises(InstantiationException, match=r"resnet34 has no such .*IMAGENET1K_V1;"):
        instantiate(cfg.data)


def test_ddp_trainer_config_is_lightnings_ddp_on_gpus():
    cfg = compose_cfg(["trainer=ddp", "trainer.num_nodes=2", "trainer.sync_batchnorm=true"])
    assert (cfg.trainer.strategy, cfg.trainer.accelerator) == ("ddp", "gpu")
    assert (cfg.trainer.num_nodes, cfg.trainer.sync_batchnorm) == (2, True)
    assert cfg.trainer.precision == "bf16-mixed"


def test_device_side_model_options_reach_the_backbone():
    cfg = compose_cfg(["model=resnet18", "model.weights=null", "model.channels_last=true"])
    backbone = instantiate(cfg.model)
    assert backbone.channels_last and cfg.model.compile is False
    assert backbone.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
