"""A second training stage from a checkpoint's weights: ``init_from=CKPT``.

The new run takes the backbone's and the head's weights (and BatchNorm statistics) and
nothing else: its own optimizer, schedule, epochs and data settings, e.g. a few epochs at a
higher resolution (``stage=hires``). ``ckpt_path=CKPT`` instead resumes a run where it
stopped, optimizer and epoch included.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn

from hw1.data.scan import nfc_names
from hw1.inference.averaging import must_share
from hw1.models.classifier import mid_epoch_batches
from hw1.models.student import DistilledClassifier
from hw1.utils.errors import UserValueError
from hw1.utils.weights import first_keys, load_checkpoint, mismatched_keys

log = logging.getLogger(__name__)


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
    if classes is not None and nfc_names(classes) != nfc_names(model.class_names):
        raise UserValueError(
            f"init_from={path}: its class_names ({len(classes)}: {first_keys(list(classes))}) "
            f"are not this data's ({len(model.class_names)}: {first_keys(model.class_names)}): "
            "a second stage trains on the classes of the first"
        )
    check_state(
        model,
        ckpt,
        f"init_from={path}",
        "Train the second stage with the first stage's model and head settings",
    )
    model.load_state_dict(ckpt["state_dict"])


def check_state(model: nn.Module, ckpt: dict[str, Any], what: str, advice: str) -> None:
    """A clear error naming the first keys that differ when the checkpoint's state dict
    does not fit ``model`` (load_state_dict's lists every key)."""
    hparams = ckpt.get("hyper_parameters", {})
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
            f"{what} ({described(hparams)}) does not fit this model "
            f"({described(model.hparams)}): {'; '.join(problems)}. {advice}"
        )


# What only a checkpoint that Lightning can resume holds: hw1.average's output and a
# state dict saved by hand have the weights alone.
RESUME_ENTRIES = ("optimizer_states", "loops", "epoch", "global_step")


def check_resumable(
    model: nn.Module, path: str | os.PathLike, key: str = "ckpt_path", differs: str | None = None
) -> None:
    """Refuses, before Lightning loads it, a checkpoint that ``model`` cannot continue
    from, with the checks of ``init_from=`` and more: a resume must be the same run, so the
    architecture, head, class names in their order and preprocessing (image size) must be
    the model's, and the file must hold the optimizer and loop states. Else Lightning would
    load another dataset's head with the same class count silently (its labels mapped to
    other classes), or stop with a KeyError on a weights-only file. ``differs``: why this
    run cannot replay the rest of an epoch it stopped in (warn_if_mid_epoch)."""
    ckpt = load_checkpoint(path, key)
    absent = [entry for entry in RESUME_ENTRIES if entry not in ckpt]
    if absent:
        raise UserValueError(
            f"{key}={path} holds weights only (no {', '.join(absent)}: an averaged "
            "checkpoint, or a state dict), nothing to resume from: use init_from="
            f"{path} to start a new run from these weights"
        )
    if ckpt.get("distilled") and not isinstance(model, DistilledClassifier):
        raise UserValueError(
            f"{key}={path} is a distilled student's: resume it with hw1.distill (resume=true "
            f"hydra.run.dir=RUN), or use init_from={path} to start from these weights"
        )
    hparams = ckpt.get("hyper_parameters") or {}
    if hparams:
        theirs, ours = must_share(hparams), must_share(dict(model.hparams))
        differ = [name for name in ours if theirs[name] != ours[name]]
        if differ:
            raise UserValueError(
                f"{key}={path} is not a checkpoint of this run's model: its "
                f"{', '.join(differences(theirs, ours, differ))}. A resume continues the same "
                f"run; use init_from={path} to start a new run from these weights"
            )
    check_state(model, ckpt, f"{key}={path}", "Resume with the run's own settings")
    warn_if_mid_epoch(ckpt, path, differs)


def warn_if_mid_epoch(
    ckpt: dict[str, Any], path: str | os.PathLike, differs: str | None = None
) -> None:
    """A run resumed in the middle of an epoch replays the rest of it as the uninterrupted
    run would (hw1.data.samplers.ResumableLoader, the random states in RandomState), except
    where ``differs`` says why not (its data source, DDP), or from a checkpoint that holds
    no loader state (an older hw1's): then the resume says the run will differ
    (README, "Stop and resume")."""
    done = mid_epoch_batches(ckpt)
    if not done:
        return
    loader_state = ckpt.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
    if differs is None and loader_state.get("combined_loader"):
        return
    why = differs or (
        "the checkpoint holds no loader state (an older hw1 saved it), so the rest of that "
        "epoch is trained on other batches"
    )
    log.warning(
        "%s was saved %d batches into epoch %d, and %s: the resumed run will differ from "
        "an uninterrupted one",
        path,
        done,
        int(ckpt.get("epoch", 0)) + 1,
        why,
    )


def differences(theirs: dict[str, Any], ours: dict[str, Any], names: list[str]) -> list[str]:
    """``name (checkpoint: X, this run: Y)`` for each setting that differs; class names
    by their first entries."""
    shown = []
    for name in names:
        a, b = theirs[name], ours[name]
        if name == "class_names":
            a, b = (f"{len(x)}: {first_keys(list(x))}" for x in (a, b))
        elif isinstance(a, dict) and isinstance(b, dict):  # the entries that differ
            keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
            a, b = ({k: x.get(k) for k in keys} for x in (a, b))
        if name == "preprocess" and isinstance(a, dict) and isinstance(b, dict):  # image size
            a, b = (", ".join(f"{k} {v}" for k, v in x.items()) for x in (a, b))
        shown.append(f"{name} ({a}; this run: {b})")
    return shown
