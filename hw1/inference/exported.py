"""Reading a folder ``python -m hw1.export`` wrote, without Lightning and Hydra: its
``model.json`` checked, each file's checksum checked, and the model run on onnxruntime,
TorchScript, or the safetensors weights in a network rebuilt from ``model.json``.

What it returns is an ``hw1.inference.runtime.ImageClassifier``, the classifier a checkpoint
gives too, so an export predicts with the same views and averaging as ``hw1.predict``. The
export's writer (``hw1.inference.export``) reads its folder back through here for its parity
check, so the two agree on the format by construction.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hw1.inference.runtime import ExportNet, ImageClassifier, Member, Net, default_device
from hw1.models.backbone import Backbone, make_head
from hw1.transforms.presets import EvalSpec
from hw1.utils.errors import UserFileNotFoundError, UserValueError, import_extra

MODEL_JSON = "model.json"
# model.json's layout; a reader of another version says so rather than misreading it.
EXPORT_VERSION = 1
# The files of each format, in the folder.
FORMAT_FILES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "safetensors": "model.safetensors",
}
# Which runtime an exported folder runs on by default, fastest first on a CPU
# (python -m hw1.bench infer; docs/performance.md): the first whose file the folder has.
RUNTIME_ORDER = ("onnx", "torchscript", "safetensors")
# The network's input and output names in the ONNX graph.
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder (an export, or meant as one) rather than a checkpoint."""
    return Path(path).is_dir()


def export_error(folder: Path, what: str) -> UserValueError:
    return UserValueError(
        f"{folder / MODEL_JSON}: {what}. It is not as python -m hw1.export wrote it (edited, "
        "or from another version): export the checkpoint again (python -m hw1.export "
        "ckpt_path=CKPT output=DIR)"
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The keys model.json must have, and their types: enough to run the model.
REQUIRED = {
    "export_version": int,
    "class_names": list,
    "preprocess": dict,
    "architecture": dict,
    "files": dict,
    "input": dict,
}


def read_model_json(folder: str | os.PathLike) -> dict[str, Any]:
    """An exported folder's model.json, checked: present, valid JSON of this version, the
    keys and types a runtime needs, class names as text, a readable eval spec."""
    folder = Path(folder)
    path = folder / MODEL_JSON
    if not path.is_file():
        raise UserFileNotFoundError(
            f"{folder}: no {MODEL_JSON}, so not a folder python -m hw1.export wrote (or its "
            "model.json was removed): give a checkpoint, or export one again with "
            "python -m hw1.export ckpt_path=CKPT output=DIR"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise export_error(folder, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise export_error(folder, "not a JSON object")
    for key, kind in REQUIRED.items():
        if not isinstance(meta.get(key), kind):
            raise export_error(folder, f"{key} is missing or not a {kind.__name__}")
    if meta["export_version"] != EXPORT_VERSION:
        raise export_error(folder, f"export_version {meta['export_version']}, not {EXPORT_VERSION}")
    names = meta["class_names"]
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise export_error(folder, "class_names must be distinct names, as text")
    try:
        EvalSpec.from_dict(meta["preprocess"])
    except (KeyError, TypeError, ValueError) as e:
        raise export_error(folder, f"preprocess is not an eval spec ({e!r})") from None
    temperature = meta.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise export_error(folder, f"temperature={temperature!r}: null or a positive number")
    return meta


def weights_file(folder: Path, meta: dict[str, Any], runtime: str) -> Path:
    """The file of ``runtime`` in an export, its checksum checked against model.json."""
    entry = meta["files"].get(runtime)
    if not isinstance(entry, dict) or "file" not in entry:
        have = ", ".join(sorted(meta["files"])) or "none"
        raise UserValueError(
            f"{folder}: no {runtime} file in this export (it has: {have}). Choose one of those "
            f"with runtime=..., or export it again with format=[{runtime}]"
        )
    path = folder / entry["file"]
    if not path.is_file():
        raise UserFileNotFoundError(
            f"{path}: missing from the export that {folder / MODEL_JSON} describes: copy the "
            "whole folder, or export the checkpoint again"
        )
    if entry.get("sha256") and sha256(path) != entry["sha256"]:
        raise UserValueError(
            f"{path}: its checksum is not the one {folder / MODEL_JSON} records: the file was "
            "replaced or damaged. Copy the whole folder again, or export the checkpoint again"
        )
    return path


def pick_runtime(meta: dict[str, Any], runtime: str) -> str:
    """``runtime``, or for ``auto`` the fastest (RUNTIME_ORDER) of the formats exported."""
    if runtime == "auto":
        for name in RUNTIME_ORDER:
            if name in meta["files"]:
                return name
        raise UserValueError("the export lists no model file: export it again")
    if runtime not in RUNTIME_ORDER:
        raise UserValueError(f"runtime={runtime}: use auto, {', '.join(RUNTIME_ORDER)}")
    return runtime


def onnx_logits(path: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    ort = import_extra("onnxruntime", "export", "Running an exported model")
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), providers=providers)

    def logits(x: torch.Tensor) -> torch.Tensor:
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy()})
        return torch.from_numpy(out)

    return logits


def torchscript_logits(path: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        module = torch.jit.load(str(path), map_location=device)
    return module.eval()


def rebuild(architecture: dict[str, Any], classes: int) -> ExportNet:
    """The network model.json's ``architecture`` describes (each member's backbone and
    head settings), with random weights, for a safetensors state dict to fill."""
    nets = []
    for member in architecture.get("members", []):
        model = {k: v for k, v in member["model"].items() if k != "_target_"}
        model |= {"weights": None, "compile": False, "channels_last": False}
        backbone = Backbone(**model)
        head = {k: v for k, v in member["head"].items() if k != "_target_"}
        nets.append(
            Net(backbone, make_head(**head, in_features=backbone.num_features, num_classes=classes))
        )
    temperatures = [m.get("temperature") or 1.0 for m in architecture.get("members", [])]
    return ExportNet(nets, temperatures).eval()


def safetensors_logits(
    path: Path, meta: dict[str, Any], device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    st = import_extra("safetensors.torch", "export", "Reading model.safetensors")
    net = rebuild(meta["architecture"], len(meta["class_names"]))
    try:
        net.load_state_dict(st.load_file(str(path)))
    except (KeyError, RuntimeError) as e:
        raise export_error(
            path.parent, f"its architecture does not fit {path.name} ({e})"
        ) from None
    return net.to(device)


def export_member(folder: Path, meta: dict[str, Any], runtime: str, device: torch.device) -> Member:
    """The model of an exported folder on ``runtime`` (after model.json's checks)."""
    path = weights_file(folder, meta, runtime)
    loaders = {
        "onnx": lambda: onnx_logits(path, device),
        "torchscript": lambda: torchscript_logits(path, device),
        "safetensors": lambda: safetensors_logits(path, meta, device),
    }
    spec = EvalSpec.from_dict(meta["preprocess"])
    member = Member(spec, loaders[runtime](), float(meta.get("temperature") or 1.0))
    crop = spec.crop
    with torch.inference_mode():
        out = member.logits(torch.zeros(1, 3, crop, crop, device=device))
    if out.shape != (1, len(meta["class_names"])):
        raise export_error(
            folder,
            f"it names {len(meta['class_names'])} classes, the model gives {out.shape[-1]}",
        )
    return member


def load_export(
    folder: str | os.PathLike,
    runtime: str = "auto",
    device: torch.device | None = None,
    **options: Any,
) -> ImageClassifier:
    folder = Path(folder)
    meta = read_model_json(folder)
    runtime = pick_runtime(meta, runtime)
    # onnxruntime runs on the CPU unless its CUDA build is installed; the others follow torch
    device = device or (torch.device("cpu") if runtime == "onnx" else default_device())
    member = export_member(folder, meta, runtime, device)
    return ImageClassifier([member], meta["class_names"], device, source=str(folder), **options)
