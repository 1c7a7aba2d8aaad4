from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hw1.data.datamodule import DemoDataModule, FolderDataModule
from hw1.models.backbone import Backbone
from hw1.models.classifier import Classifier
from hw1.reporting.runs import reference
from hw1.training.run import flatten
from hw1.utils.config import CONF_DIR, compose_config
from hw1.utils.weights import resolve_weights

REFERENCE = reference()
FAMILIES = ["depth", "weights", "head", "lr", "other", "resnext101"]

MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
HEADS = sorted(p.stem for p in (Path(CONF_DIR) / "head").glob("*.yaml"))
ARCH = {
    "resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
    "resnet101": "resnet101", "resnext50": "resnext50_32x4d", "resnext101": "resnext101_32x8d",
}  # fmt: skip


def test_the_groups_have_every_option_the_report_names():
    assert sorted(ARCH) == MODELS
    assert HEADS == ["v0", "v1", "v2", "v3", "v4"]
    for group, options in {
        "data": ["demo", "hw1"], "optim": ["adamw"], "sched": ["constant", "cosine"],
        "loss": ["cross_entropy"], "mix": ["default"],
        "callbacks": ["default", "ema", "freeze_backbone", "swa", "top_k"],
        "trainer": ["cpu", "ddp", "default", "gpu"],
        "experiment": sorted(["demo", *FAMILIES]),
        "recipe": sorted([*REFERENCE, "strong"]),
        "tricks": ["strong"],
    }.items():  # fmt: skip
        assert sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")) == options


def test_defaults_are_the_reports_best_recipe():
    cfg = compose_config()
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
    cfg = compose_config([f"trainer.max_epochs={epochs}"])
    assert cfg.callbacks.early_stopping.patience == patience


def test_early_stopping_mode_follows_the_monitored_metric():
    cfg = compose_config(
        ["callbacks.early_stopping.monitor=val/acc", "callbacks.early_stopping.patience=7"]
    )
    assert cfg.callbacks.early_stopping.mode == "max" and cfg.callbacks.early_stopping.patience == 7


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_composes_and_instantiates(name):
    cfg = compose_config([f"model={name}", "model.weights=null"])
    backbone = instantiate(cfg.model)
    assert isinstance(backbone, Backbone)
    assert backbone.net.__class__.__name__ == "ResNet"
    assert backbone.num_features == (512 if name in ("resnet18", "resnet34") else 2048)


@pytest.mark.parametrize("name", HEADS)
def test_every_head_config_composes_and_instantiates(name):
    cfg = compose_config([f"head={name}", "model=resnet18", "model.weights=null"])
    head = instantiate(cfg.head, in_features=512, num_classes=100)
    assert head[-1].out_features == 100
    model = Classifier.from_config(cfg, class_names=[str(i) for i in range(100)])
    optimizers = model.configure_optimizers()
    assert optimizers["optimizer"].param_groups[0]["lr"] == 1e-4


def test_backbone_lr_factor_is_the_classifiers_not_an_optimizer_argument():
    cfg = compose_config(["model=resnet18", "model.weights=null", "backbone_lr_factor=0.1"])
    assert "backbone_lr_factor" not in cfg.optim  # AdamW's node holds AdamW's arguments only
    optimizer = Classifier.from_config(cfg, ["a", "b"]).configure_optimizers()["optimizer"]
    head, backbone = optimizer.param_groups
    assert backbone["lr"] == pytest.approx(0.1 * head["lr"]) and head["lr"] == cfg.optim.lr


def test_data_config_instantiates_the_datamodule():
    dm = instantiate(compose_config(["data.root=/some/where"]).data)
    assert isinstance(dm, FolderDataModule) and str(dm.root) == "/some/where"
    assert (dm.eval_spec.crop, dm.eval_spec.resize) == (224, 232)  # resnext101's IMAGENET1K_V2


def test_demo_experiment_composes():
    cfg = compose_config(["experiment=demo"])
    assert cfg.model.arch == "resnet18" and cfg.model.weights is None
    assert cfg.trainer.accelerator == "cpu" and cfg.sched.T_max == cfg.trainer.max_epochs
    assert isinstance(instantiate(cfg.data), DemoDataModule)


def test_unknown_weights_name_fails_at_composition_time_with_the_choices():
    cfg = compose_config(["model=resnet34", "model.weights=IMAGENET1K_V2"])
    with pytest.raises(InstantiationException, match=r"resnet34 has no such .*IMAGENET1K_V1;"):
        instantiate(cfg.data)


@pytest.mark.parametrize("run_id", sorted(REFERENCE))
def test_every_recipe_sets_the_reports_settings_and_builds(run_id):
    """Each recipe against the report's table (hw1/reporting/reference.csv)."""
    ref = REFERENCE[run_id]
    cfg = compose_config([f"recipe={run_id}"])
    assert cfg.id == run_id
    assert cfg.model.arch == ARCH[ref["arch"]]
    assert cfg.data.batch_size == int(ref["batch_size"])
    assert cfg.model.trainable_stages == (
        int(ref["trainable_stages"]) if ref["trainable_stages"] else None
    )
    assert cfg.model.weights == (ref["weights"] or None)
    assert cfg.head.name == ref["head"]
    dropout = cfg.head.dropout if cfg.head.name != "v4" else ";".join(map(str, cfg.head.dropout))
    assert str(dropout) == ref["dropout"]
    if ref["sched"] == "constant":
        assert cfg.sched._target_.endswith("ConstantLR") and cfg.sched.factor == 1.0
    else:
        assert cfg.sched._target_ == "hw1.training.schedules.cosine_then_flat"
        assert (cfg.sched.T_max, cfg.sched.eta_min) == (int(ref["T_max"]), float(ref["eta_min"]))
    assert cfg.tta == ref["tta"]
    # What the table leaves alone is the report's best recipe, the defaults.
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.trainer.max_epochs) == (1e-4, 1e-3, 100)
    assert cfg.data.image_size == 224 and cfg.data.augment.rotation == 10
    resolve_weights(cfg.model.arch, cfg.model.weights)  # a name this backbone has
    cfg.model.weights = None  # the model, without downloading weights
    with torch.device("meta"):  # ... or allocating its parameters
        model = Classifier.from_config(cfg, class_names=[str(i) for i in range(100)])
    frozen = sum(not p.requires_grad for p in model.backbone.parameters())
    assert (frozen > 0) == (cfg.model.trainable_stages is not None)


def head_params(name: str, F: int = 2048, C: int = 100) -> int:
    """The report's head layers counted by hand: Linear a->b has a*b+b, BatchNorm1d 2b."""
    linear = lambda a, b: a * b + b  # noqa: E731
    return {
        "v0": linear(F, C),
        "v1": linear(F, 500) + linear(500, C),
        "v2": linear(F, 500) + linear(500, 250) + linear(250, C),
        "v3": linear(F, 500) + 2 * 500 + linear(500, 250) + linear(250, C),
        "v4": linear(F, 1024)
        + 2 * 1024
        + linear(1024, 512)
        + 2 * 512
        + linear(512, 256)
        + 2 * 256
        + linear(256, C),
    }[name]


RESNET50_FEATURES_PARAMS = 25_557_032 - (2048 * 1000 + 1000)  # torchvision's count minus fc


@pytest.mark.parametrize(
    ("run_id", "expected"),
    [(f"R50_64_V{i}", RESNET50_FEATURES_PARAMS + head_params(f"v{i}")) for i in range(5)]
    + [("X101_V1", 87_816_936)],  # the report's own figure
)
def test_recipe_parameter_counts(run_id, expected):
    cfg = compose_config([f"recipe={run_id}", "model.weights=null"])
    with torch.device("meta"):
        backbone = instantiate(cfg.model)
        head = instantiate(cfg.head, in_features=backbone.num_features, num_classes=100)
    params = sum(p.numel() for m in (backbone, head) for p in m.parameters())
    assert params == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_sweeps_its_recipes_into_directories_named_by_id(family):
    cfg = compose_config([f"experiment={family}"], return_hydra_config=True)
    assert cfg.family == family
    swept = cfg.hydra.sweeper.params.recipe.split(",")
    assert swept == [i for i, ref in REFERENCE.items() if ref["family"] == family]
    first = swept[0]
    job = compose_config([f"experiment={family}", f"recipe={first}"], return_hydra_config=True)
    job.hydra.job.num = 3  # what Hydra sets for the fourth job of a sweep
    assert job.hydra.sweep.subdir == f"3_{first}"
    job.id = None  # a sweep without recipes keeps Hydra's numbered directories
    assert job.hydra.sweep.subdir == "3"


def test_the_head_family_skips_x50_v4_as_the_report_did():
    swept = compose_config(["experiment=head"], return_hydra_config=True).hydra.sweeper.params
    assert "X50_32_V4" not in swept.recipe and swept.recipe.count("_V") == 14


def flat(cfg) -> dict[str, object]:
    return flatten(OmegaConf.to_container(cfg, resolve=False))


def changed(a, b) -> set[str]:
    fa, fb = flat(a), flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def test_tricks_strong_adds_its_options_and_nothing_else():
    tricks = flat(OmegaConf.load(Path(CONF_DIR) / "tricks" / "strong.yaml"))
    assert tricks  # it sets something
    on_demo = changed(
        compose_config(["experiment=demo"]), compose_config(["experiment=demo", "tricks=strong"])
    )
    assert on_demo == set(tricks)
    # recipe=strong: the report's best, X101_V1, with the same options (and its own ID)
    strong, best = compose_config(["recipe=strong"]), compose_config(["recipe=X101_V1"])
    assert changed(best, strong) == {*tricks, "id"} and strong.id == "strong"
    assert all(flat(strong)[k] == v for k, v in tricks.items())


@pytest.mark.parametrize(
    "group_name",
    [f"recipe/{p.stem}" for p in sorted((Path(CONF_DIR) / "recipe").glob("*.yaml"))]
    + ["experiment/demo"],
)
def test_a_config_sets_only_what_differs_from_what_it_builds_on(group_name):
    """What it inherits (the recipes in its defaults list) composed alone: each group override
    must choose another option, each of its own keys must change something, and nothing else
    may change. No restated defaults."""
    own = OmegaConf.load(Path(CONF_DIR) / f"{group_name}.yaml")
    entries = list(own.pop("defaults", []))  # "W2" or {"override /head": "v2"}
    parents = [f"recipe={e}" for e in entries if isinstance(e, str)]
    overrides = {
        k.split("/")[-1]: v for e in entries if not isinstance(e, str) for k, v in e.items()
    }
    if overrides:
        inherited = compose_config(parents, return_hydra_config=True).hydra.runtime.choices
        assert [f"{g}: {v}" for g, v in overrides.items() if inherited[g] == v] == []
    group, name = group_name.split("/")
    base = compose_config(parents + [f"{g}={v}" for g, v in overrides.items()])
    assert changed(base, compose_config([f"{group}={name}"])) == set(flat(own))


def test_overrides_apply_on_top_of_a_recipe():
    cfg = compose_config(["recipe=R101_64_l2", "model.arch=resnet18", "data.batch_size=8"])
    assert (cfg.model.arch, cfg.data.batch_size, cfg.model.trainable_stages) == ("resnet18", 8, 2)


@pytest.mark.parametrize("launcher", ["joblib", "slurm"])
def test_sweep_launchers_compose(launcher):
    cfg = compose_config(
        ["experiment=depth", f"hydra/launcher={launcher}"], return_hydra_config=True
    )
    target = cfg.hydra.launcher._target_
    assert target.startswith(
        "hydra_plugins.hydra_joblib_launcher"
        if launcher == "joblib"
        else "hydra_plugins.hydra_submitit_launcher"
    )
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == cfg.trainer.devices


@pytest.mark.parametrize(("group", "options"), [("model", MODELS), ("head", HEADS)])
def test_an_unknown_group_option_lists_the_valid_ones(group, options):
    with pytest.raises(MissingConfigException) as error:
        compose_config([f"{group}=nonexistent99"])
    message = str(error.value)
    assert f"Could not find '{group}/nonexistent99'" in message
    assert all(f"\t{name}\n" in message + "\n" for name in options), message


def test_an_unknown_key_is_named():
    with pytest.raises(ConfigCompositionException, match=r"override 'data\.val_fraction'") as e:
        compose_config(["data.val_fraction=0.1"])
    assert "Key 'val_fraction' is not in struct" in str(e.value.__cause__)


def test_ddp_trainer_config_is_lightnings_ddp_on_gpus():
    cfg = compose_config(["trainer=ddp", "trainer.num_nodes=2", "trainer.sync_batchnorm=true"])
    assert (cfg.trainer.strategy, cfg.trainer.accelerator) == ("ddp", "gpu")
    assert (cfg.trainer.num_nodes, cfg.trainer.sync_batchnorm) == (2, True)
    assert cfg.trainer.precision == "bf16-mixed"


def test_device_side_model_options_reach_the_backbone():
    cfg = compose_config(["model=resnet18", "model.weights=null", "model.channels_last=true"])
    backbone = instantiate(cfg.model)
    assert backbone.channels_last and cfg.model.compile is False
    assert backbone.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("cpus", "slurm", "overrides", "workers"),
    [
        (4, None, [], 3),  # one CPU stays with the training process
        (1, None, [], 0),  # no CPU to spare: load in the training process
        (64, None, [], 8),  # capped: more workers cost memory and start-up, not speed
        (64, "6", [], 5),  # SLURM's --cpus-per-task, whatever the node has
        (33, None, ["trainer=ddp", "trainer.devices=4"], 7),  # 4 processes share 33 CPUs
        (64, "9", ["trainer=ddp", "trainer.devices=4"], 8),  # SLURM gives each task its own
        (64, None, ["experiment=demo"], 1),  # the demo's own number stays
    ],
)
def test_data_workers_follow_the_cpus_the_process_may_use(
    monkeypatch, cpus, slurm, overrides, workers
):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))
    if slurm is None:
        monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    else:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm)
    names = ("train",) if "experiment=demo" in overrides else ("train", "predict", "eval")
    for name in names:
        assert compose_config(overrides, config_name=name).data.num_workers == workers, name
    assert compose_config([*overrides, "data.num_workers=2"]).data.num_workers == 2


def test_a_slurm_job_asking_for_n_cpus_gets_n_minus_one_workers(monkeypatch):
    cfg = compose_config(["hydra/launcher=slurm", "trainer=ddp"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    # srun's task gets them too: SLURM 22.05 on no longer passes sbatch's on to it.
    assert "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK" in launcher.setup
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(128)))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(launcher.cpus_per_task))
    workers = compose_config(["trainer=ddp", "trainer.devices=4"]).data.num_workers
    assert workers == launcher.cpus_per_task - 1


@pytest.mark.parametrize(
    ("overrides", "gpus", "expected"),
    [
        (["trainer=gpu"], 0, True),
        (["trainer=ddp", "model=resnet50"], 0, True),
        (["trainer=gpu", "model.channels_last=false"], 0, False),  # the user's word wins
        (["trainer=cpu"], 1, False),
        ([], 1, True),  # trainer.accelerator=auto on a machine with a GPU: the GPU
        ([], 0, False),
        (["trainer.accelerator=cpu"], 1, False),
    ],
)
def test_runs_on_a_gpu_use_channels_last_unless_turned_off(monkeypatch, overrides, gpus, expected):
    """NHWC is the layout tensor cores convolve in: every convolutional backbone takes it
    on a GPU."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert compose_config(overrides).model.channels_last is expected
    for name in MODELS:
        assert compose_config([*overrides, f"model={name}"]).model.channels_last is expected


def test_a_users_own_recipe_composes_from_another_folder(tmp_path):
    """Users add config groups without editing the package: --config-dir (or
    hydra.searchpath) puts their folder before hw1's pkg://hw1.conf."""
    (tmp_path / "mine" / "recipe").mkdir(parents=True)
    (tmp_path / "mine" / "recipe" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - R50_64_V3\nid: mine\noptim:\n  lr: 3e-4\n"
    )
    for where in (
        ["--config-dir", str(tmp_path / "mine")],
        [f"hydra.searchpath=[file://{tmp_path / 'mine'}]"],
    ):
        cmd = [sys.executable, "-m", "hw1.train", *where, "recipe=mine", "--cfg", "job"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        cfg = OmegaConf.create(proc.stdout)
        assert (cfg.id, cfg.optim.lr, cfg.head.name, cfg.model.arch) == (
            "mine",
            3e-4,
            "v3",
            "resnet50",
        )
