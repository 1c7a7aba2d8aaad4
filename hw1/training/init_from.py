"""A second training stage from a checkpoint's weights: ``init_from=CKPT``.

The new run takes the backbone's and the head's weights (and BatchNorm statistics) and
nothing else: its own optimizer, schedule, epochs and data settings, e.g. a few epochs at a
higher resolution (``stage=hires``). ``ckpt_path=CKPT`` instead resumes a run where it
stopped, optimizer and epoch included.
"""

from __future__ import annotations

import os

from torch import nn

from hw1.utils.errors import UserValueError
from hw1.utils.weights import first_keys, load_checkpoint, mismatched_keys


def check_start(init_from: str | None, ckpt_path: str | None) -> None:
    """A run starts from weights or resumes from a checkpoint, not both."""
    if init_from and ckpt_path:
        raise UserValueError(
            f"init_from={init_from} and ckpt_path={ckpt_path}: give one. init_from starts a "
            "new run from a checkpoint's weights (new optimizer, schedule, epoch 0); "
            "ckpt_path resumes a run from its checkpoint (optimizer and epoch included)"
        )


def described(hparams) -> str:
    """``arch + head NAME`` of a Classifier's hyper-parameters."""
    return f"{hparams.get('model', {}).get('arch')} + head {hparams.get('head', {}).get('name')}"


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy the state dict of the checkpoint at ``path`` into ``model`` (a Classifier), after
    checking that it was trained on the same classes, in the same order, with the same
    backbone and head (the first keys that differ are named)."""
    hint = "; for a torchvision state dict of the backbone use model.weights=FILE"
    ckpt = load_checkpoint(path, "init_from", hint=hint)
    hparams = ckpt.get("hyper_parameters", {})
    classes = hparams.get("class_names")
    if classes is not None and list(classes) != list(model.class_names):
        raise UserValueError(
            f"init_from={path}: its class_names ({len(classes)}: {first_keys(list(classes))}) "
            f"are not this data's ({len(model.class_names)}: {first_keys(model.class_names)}): "
            "a second stage trains on the classes of the first"
        )
    state, own = ckpt["state_dict"], model.state_dict()
    missing, unexpected, reshaped = mismatched_keys(state, own)
    wrong = [f"{k} {tuple(state[k].shape)} (the model: {tuple(own[k].shape)})" for k in reshaped]
    problems = [
        f"{label} {first_keys(keys)}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("other shapes", wrong),
        )
        if keys
    ]
    if problems:
        raise UserValueError(
            f"init_from={path} ({described(hparams)}) does not fit this model "
            f"({described(model.hparams)}): {'; '.join(problems)}. Train the second stage "
            "with the first stage's model and head settings"
        )
    model.load_state_dict(state)
