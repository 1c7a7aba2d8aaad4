from __future__ import annotations

import pytest
import torch

from hw1.models.classifier import Classifier
from hw1.utils.config import compose_config
from hw1.utils.errors import UserValueError

BASE = ["model=resnet18", "model.weights=null", "head=v3", "optim.lr=0.1"]
# Each part's depth below the head: layer_decay d gives it the head's LR times d**depth.
DEPTH = {"head": 0, "layer4": 1, "layer3": 2, "layer2": 3, "layer1": 4, "conv1": 5, "bn1": 5}


def built(*overrides: str) -> tuple[Classifier, torch.optim.Optimizer, object]:
    model = Classifier.from_config(compose_config([*BASE, *overrides]), ["a", "b", "c"])
    configured = model.configure_optimizers()
    return model, configured["optimizer"], configured["lr_scheduler"]["scheduler"]


def groups_by_name(model: Classifier, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def part(name: str) -> str:
    return "head" if name.startswith("head.") else name.split(".")[2]


def test_by_default_one_group_with_the_optimizers_decay_and_no_option_keys():
    cfg = compose_config(BASE)
    assert "decay_norm_bias" not in cfg.optim and "layer_decay" not in cfg.optim
    model, optimizer, _ = built()
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert "name" not in group and group["weight_decay"] == cfg.optim.weight_decay
    assert len(group["params"]) == len(list(model.parameters()))


def test_without_decay_on_norms_and_biases_the_no_decay_groups_hold_exactly_those():
    model, optimizer, _ = built("param_groups.decay_norm_bias=false")
    groups = groups_by_name(model, optimizer)
    assert len(groups) == len(list(model.parameters()))
    # In a ResNet with a linear head the 1-D parameters are exactly the BatchNorm weights
    # and biases and the biases of convolutions and linear layers.
    undecayed = {n for n, g in groups.items() if g["weight_decay"] == 0}
    one_d = {n for n, p in model.named_parameters() if p.ndim == 1}
    assert undecayed == one_d
    assert "head.1.weight" in undecayed and "backbone.net.bn1.weight" in undecayed
    assert all(g["weight_decay"] == 1e-3 for n, g in groups.items() if n not in one_d)
    assert {g["lr"] for g in groups.values()} == {0.1}
    assert len(optimizer.param_groups) == 2


@pytest.mark.parametrize("factor", [1.0, 0.1])
def test_layer_decay_gives_each_stage_the_next_ones_lr_times_the_factor(factor):
    model, optimizer, scheduler = built(
        "param_groups.layer_decay=0.8", f"backbone_lr_factor={factor}"
    )
    groups = groups_by_name(model, optimizer)
    assert len(groups) == len(list(model.parameters()))
    for name, group in groups.items():
        depth = DEPTH[part(name)]
        expected = 0.1 * (factor if depth else 1.0) * 0.8**depth
        assert group["lr"] == pytest.approx(expected), name
    assert optimizer.param_groups[0]["name"] == "head"
    # The schedule moves every group by the head's curve: the ratios stay.
    before = [g["lr"] for g in optimizer.param_groups]
    optimizer.step()
    scheduler.step()
    after = [g["lr"] for g in optimizer.param_groups]
    assert after[0] < before[0]
    assert [a / after[0] for a in after] == pytest.approx([b / before[0] for b in before])


def test_layer_decay_and_no_decay_compose_and_frozen_stages_are_in_no_group():
    model, optimizer, _ = built(
        "param_groups.layer_decay=0.5", "param_groups.decay_norm_bias=false",
        "model.trainable_stages=2",
    )  # fmt: skip
    groups = groups_by_name(model, optimizer)
    assert {part(n) for n in groups} == {"head", "layer4", "layer3"}
    trainable = {id(p) for p in [*model.backbone.trainable_parameters(), *model.head.parameters()]}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable
    for name, group in groups.items():
        assert group["lr"] == pytest.approx(0.1 * 0.5 ** DEPTH[part(name)])
        p = dict(model.named_parameters())[name]
        assert group["weight_decay"] == (0.0 if p.ndim == 1 else 1e-3), name
    names = [g["name"] for g in optimizer.param_groups]
    assert names == [f"{p}{s}" for p in ("head", "layer4", "layer3") for s in ("", "_no_decay")]


def test_the_freeze_callbacks_backbone_is_in_its_groups_from_the_start():
    # FreezeBackbone holds the backbone without taking it out of the optimizer.
    model, optimizer, _ = built("param_groups.layer_decay=0.8")
    model.backbone.hold(True)
    assert len(groups_by_name(model, optimizer)) == len(list(model.parameters()))


@pytest.mark.parametrize("decay", [0, 1.5, -0.8])
def test_a_layer_decay_outside_0_1_is_refused(decay):
    with pytest.raises(UserValueError, match=rf"param_groups\.layer_decay={decay}"):
        built(f"param_groups.layer_decay={decay}")
