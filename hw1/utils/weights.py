"""Which weights a backbone starts from (``model.weights``), and loading checkpoints and
state dicts safely."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torchvision.models import WeightsEnum, get_model_weights

from hw1.utils.errors import UserFileNotFoundError, UserValueError


def resolve_weights(arch: str, weights: str | os.PathLike | None) -> WeightsEnum | Path | None:
    """``model.weights`` is null, a torchvision weights name of ``arch``, or a state-dict file."""
    if weights is None:
        return None
    text = str(weights)
    if os.sep in text or text.endswith((".pth", ".pt")) or Path(text).exists():
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserFileNotFoundError(f"model.weights={text}: no such state-dict file")
        return path
    enum = get_model_weights(arch)
    try:
        return enum.verify(text)
    except (KeyError, ValueError):
        names = ", ".join(dict.fromkeys(["DEFAULT", *enum.__members__]))
        raise UserValueError(
            f"model.weights={text}: {arch} has no such torchvision weights. "
            f"It has: {names}; or use null (random init) or a path to a state-dict file."
        ) from None


def download_hint(weights: WeightsEnum) -> str:
    """What to do when torchvision's weights are neither cached nor downloadable."""
    expected = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return (
        f"could not load {weights} and could not download it (offline?). Put the file at "
        f"{expected} (fetch it from {weights.url}), or pass model.weights=PATH to a local "
        f"state-dict file, or model.weights=null to train from scratch."
    )


def safe_load(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only. A
    pickle can run any code on load; a file that needs more is refused, not trusted.

    Its errors tell two cases apart, both naming the file: a file that is not a readable
    checkpoint (empty, cut short, not an archive, text: torch raises EOFError, RuntimeError,
    KeyError or UnpicklingError for these), and one that holds code, which names the global
    it would have called. Neither quotes torch's advice to load with ``weights_only=False``,
    which would run that code."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = unsafe_global(str(e))
        if refused is None:
            raise UserValueError(damaged_text(path)) from None
        raise UserValueError(
            f"{path}: refused to load: it holds code, not only tensors and plain containers "
            f"(loading it would call {refused}). Loading a checkpoint runs the code it holds: "
            "use only files you trust, saved by hw1, Lightning or torchvision."
        ) from None
    except (EOFError, RuntimeError, KeyError, ValueError, IndexError, zipfile.BadZipFile):
        # How torch fails on a file that is no checkpoint: EOFError (empty), RuntimeError
        # (a cut zip archive), KeyError/IndexError/ValueError (text or other bytes).
        raise UserValueError(damaged_text(path)) from None
    except OSError as e:
        # torch's zip reader raises EINVAL on some cut archives; a file that cannot be
        # opened at all (permissions) is another problem, reported as it is.
        if isinstance(e, PermissionError | FileNotFoundError | IsADirectoryError):
            raise
        raise UserValueError(damaged_text(path)) from None


# How torch's weights-only unpickler names the global it refused, in its wordings so far:
# "Unsupported global: GLOBAL posix.system" (2.4-2.6), "Trying to load unsupported GLOBAL
# posix.system whose module posix is blocked" (2.7 on).
UNSAFE_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def unsafe_global(message: str) -> str | None:
    """The global (``module.name``) that torch refused to load, from its error message."""
    found = UNSAFE_GLOBAL.search(message)
    return found.group(1) if found else None


def damaged_text(path: Path) -> str:
    """Why the file at ``path`` is no checkpoint, from what it is: empty, not a zip archive
    (torch has saved checkpoints as one since 1.6) or a damaged one."""
    size = path.stat().st_size
    if size == 0:
        what = "it is empty (0 bytes)"
    elif not zipfile.is_zipfile(path):
        what = f"it is not a checkpoint archive ({size:,} bytes, cut short or another kind of file)"
    else:
        what = f"its archive is damaged ({size:,} bytes)"
    return (
        f"{path}: not a readable checkpoint: {what}. A save or copy cut short leaves such a "
        "file: use another checkpoint (a run keeps last.ckpt and its best), or copy it again."
    )


def load_checkpoint(
    path: str | os.PathLike, key: str, need: tuple[str, ...] = ("state_dict",), hint: str = ""
) -> dict[str, Any]:
    """The checkpoint of ``hw1.train`` at ``path``, read by ``safe_load``; the errors name
    the setting ``key`` it was given as: no such file, or a file without the entries
    ``need`` (then ``hint``, what to use instead)."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"{key}={path}: no such checkpoint")
    ckpt = safe_load(path)
    absent = [entry for entry in need if entry not in ckpt]
    if absent:
        raise UserValueError(
            f"{key}={path}: not a checkpoint of hw1.train (no {'/'.join(absent)}){hint}"
        )
    if "hyper_parameters" in ckpt:
        ckpt["hyper_parameters"] = current_targets(ckpt["hyper_parameters"])
    return ckpt


# A checkpoint names the code that builds its model: the ``_target_`` of each config it
# stores (Classifier.from_config). These moved when hw1's flat modules became layers
# (docs/architecture.md); a checkpoint saved before then names the old paths, and
# load_checkpoint, every command's reader, rewrites them. A class that moves again adds a
# row here; nothing is left behind at the old path.
MOVED_TARGETS = {
    "hw1.model.Backbone": "hw1.models.backbone.Backbone",
    "hw1.model.make_head": "hw1.models.backbone.make_head",
    "hw1.model.cosine_then_flat": "hw1.training.schedules.cosine_then_flat",
    "hw1.model.BatchMix": "hw1.transforms.mix.BatchMix",
    "hw1.imbalance.CrossEntropyLoss": "hw1.models.losses.ClassWeightedCrossEntropy",
}


def current_targets(node: Any) -> Any:
    """``node`` (a checkpoint's hyper-parameters: dicts, lists, values) with every
    ``_target_`` of MOVED_TARGETS replaced by its current path."""
    if isinstance(node, dict):
        return {
            k: MOVED_TARGETS.get(v, v) if k == "_target_" else current_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list | tuple):
        return type(node)(current_targets(v) for v in node)
    return node


def first_keys(keys: list[str]) -> str:
    """The first three keys, and ``...`` when there are more."""
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def mismatched_keys(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """The keys of a model's state dict ``own`` that ``state`` lacks, the keys of ``state``
    the model lacks, and the keys both hold with other shapes."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    return missing, unexpected, reshaped


def check_fits(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], what: str, arch: str
) -> None:
    """A clear error, naming the first keys, when a state dict is not for this network
    (load_state_dict's message lists every key of a wrong file)."""
    missing, unexpected, reshaped = mismatched_keys(state, own)
    wrong = [f"{k} {tuple(state[k].shape)} (the model has {tuple(own[k].shape)})" for k in reshaped]
    problems = [
        f"{label} ({len(keys)}): {first_keys(keys)}"
        for label, keys in (
            ("other shapes", wrong),
            ("missing", missing),
            ("unexpected", unexpected),
        )
        if keys
    ]
    if problems:
        raise UserValueError(
            f"{what} does not fit {arch}: " + "; ".join(problems) + ". Is it a state dict "
            f"of torchvision's {arch}?"
        )
