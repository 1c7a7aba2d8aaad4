"""The optimizer's parameter groups: the backbone's learning rate factor, layer-wise
learning rate decay and no weight decay on normalisation weights and biases.

The groups follow the parameters' names in ``Classifier``: ``head.*`` and
``backbone.net.<stage>.*``, with the stem ``conv1``/``bn1`` and the stages ``layer1..4``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from hw1.utils.errors import UserValueError

# From the head down: each stage's learning rate is the one above's times layer_decay.
DEPTH_ORDER = ("head", "layer4", "layer3", "layer2", "layer1", "stem")


STEM = ("conv1", "bn1")


NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def stage_of(name: str) -> str:
    """``head``, ``layer1``..``layer4`` or ``stem`` for a Classifier parameter's name."""
    parts = name.split(".")
    if parts[0] == "head":
        return "head"
    child = parts[2] if parts[:2] == ["backbone", "net"] else ""
    if child.startswith("layer"):
        return child
    if child in STEM:
        return "stem"
    raise ValueError(f"{name}: not a parameter of the head or of a ResNet stage")


def lr_scales(layer_decay: float | None, backbone_lr_factor: float = 1.0) -> dict[str, float]:
    """Each part's learning rate as a fraction of the head's (``optim.lr``): the backbone's
    stages times ``backbone_lr_factor``, and with ``layer_decay`` d, layer4 d, layer3 d², ...,
    the stem d⁵."""
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise UserValueError(
            f"param_groups.layer_decay={layer_decay}: use null or a factor in (0, 1], e.g. 0.8"
        )
    d = 1.0 if layer_decay is None else layer_decay
    return {
        part: 1.0 if part == "head" else backbone_lr_factor * d**depth
        for depth, part in enumerate(DEPTH_ORDER)
    }


def no_decay_names(module: nn.Module) -> set[str]:
    """The names of every bias and of every normalisation layer's weight."""
    names = set()
    for prefix, m in module.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            if pname == "bias" or isinstance(m, NORMS):
                names.add(f"{prefix}.{pname}" if prefix else pname)
    return names


def part_of(stage: str, layer_decay: float | None, backbone_lr_factor: float) -> str:
    """The group a stage's parameters join: its own with layer_decay, else the head's or the
    backbone's when their learning rates differ, else one for all."""
    if layer_decay is not None:
        return stage
    if backbone_lr_factor != 1.0:
        return "head" if stage == "head" else "backbone"
    return "all"


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    backbone_lr_factor: float = 1.0,
    layer_decay: float | None = None,
    no_decay: set[str] | None = None,
) -> list[dict[str, Any]]:
    """The optimizer's groups for the trainable parameters ``named``, the head's first (the
    schedule follows the first group): one per learning rate (``part_of``), each
    split into a group with the optimizer's weight decay and one without (``no_decay``:
    names). Frozen stages have no group; each group is named for LearningRateMonitor."""
    scales = lr_scales(layer_decay, backbone_lr_factor)
    no_decay = no_decay or set()
    by_depth = sorted(named, key=lambda item: DEPTH_ORDER.index(stage_of(item[0])))
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, p in by_depth:
        stage = stage_of(name)
        part, decays = part_of(stage, layer_decay, backbone_lr_factor), name not in no_decay
        if (part, decays) not in groups:
            group = {"params": [], "name": part, "lr": lr * scales[stage]}
            if not decays:
                group |= {"name": f"{part}_no_decay", "weight_decay": 0.0}
            groups[(part, decays)] = group
        groups[(part, decays)]["params"].append(p)
    return list(groups.values())


def optimizer_params(
    model: nn.Module,
    backbone: list[nn.Parameter],
    head: list[nn.Parameter],
    lr: float,
    backbone_lr_factor: float = 1.0,
    decay_norm_bias: bool = True,
    layer_decay: float | None = None,
) -> list[Any]:
    """What the optimizer is built on: the trainable ``backbone`` and ``head`` parameters of
    ``model`` (a Classifier) as one list when every parameter shares the learning rate and
    the weight decay; the head and the backbone as two groups for a ``backbone_lr_factor``
    alone; otherwise ``param_groups``."""
    if decay_norm_bias and layer_decay is None:
        if backbone_lr_factor == 1.0:
            return backbone + head
        return [
            {"params": head, "name": "head"},
            {"params": backbone, "lr": lr * backbone_lr_factor, "name": "backbone"},
        ]
    trainable = {id(p) for p in backbone + head}
    named = [(n, p) for n, p in model.named_parameters() if id(p) in trainable]
    no_decay = None if decay_norm_bias else no_decay_names(model)
    return param_groups(named, lr, backbone_lr_factor, layer_decay, no_decay)


def monitor_name(groups: list[dict[str, Any]]) -> str:
    """The schedule's name for LearningRateMonitor, which tags each group's learning rate
    NAME/<group name> when there are several (or one named group) and NAME alone for one
    unnamed group: ``lr/all`` then, so that every curve is in TensorBoard's ``lr/`` group."""
    return "lr/all" if len(groups) == 1 and "name" not in groups[0] else "lr"
