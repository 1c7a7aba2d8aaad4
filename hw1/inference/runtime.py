"""A trained model on any images, outside training: the classifier ``hw1.load_classifier``
returns, and reading a folder ``python -m hw1.export`` wrote.

An exported folder runs without Lightning and Hydra: onnxruntime (or TorchScript, or the
safetensors weights in a network rebuilt from ``model.json``) computes the logits, and the
same views, batching and averaging as ``hw1.predict`` turn them into probabilities. So
``hw1.predict inputs=...`` and ``clf.predict(...)`` give the same numbers: the command
writes what this module returns.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from hw1.data.datasets import ImageInputs, view_loader
from hw1.data.scan import display_path
from hw1.models.backbone import Backbone, make_head
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.presets import EvalSpec, ViewStack, eval_transform
from hw1.utils.errors import UserFileNotFoundError, UserValueError, import_extra
from hw1.utils.io import csv_text
from hw1.utils.progress import progress

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
DEFAULT_TOPK = 5
# hw1.predict's defaults (conf/predict.yaml), so the API and the command agree unasked.
DEFAULT_TTA, DEFAULT_SEED, DEFAULT_BATCH = "report", 42, 64


class Net(nn.Module):
    """A Classifier's network without its training machinery: backbone, then head."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


class ExportNet(nn.Module):
    """What an export holds, on normalised float images: one model's logits, or for an
    ensemble the log of its members' mean probability (each member's logits divided by its
    temperature), whose softmax is that mean, as hw1.predict averages an ensemble."""

    def __init__(self, nets: Sequence[nn.Module], temperatures: Sequence[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(nets)
        self.temperatures = [float(t) for t in temperatures]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](images)
        logp = [
            (net(images) / t).log_softmax(dim=1)
            for net, t in zip(self.members, self.temperatures, strict=True)
        ]
        return torch.logsumexp(torch.stack(logp), dim=0) - math.log(len(logp))


@dataclass
class Member:
    """One model as the runtime sees it: its eval spec, its logits on a normalised float
    batch, and its calibration temperature (1: uncalibrated)."""

    spec: EvalSpec
    logits: Callable[[torch.Tensor], torch.Tensor]
    temperature: float = 1.0


@dataclass(frozen=True)
class Prediction:
    """One image's top-k: the labels, most probable first, and their probabilities."""

    path: str
    labels: tuple[str, ...]
    probs: tuple[float, ...]


def view_probs(member: Member, views: torch.Tensor) -> torch.Tensor:
    """(B, classes) probabilities of normalised (B, views, C, H, W) images: the mean
    softmax over the views, all views in one forward pass (Classifier.predict_probs'
    computation, with the temperature)."""
    b, v = views.shape[:2]
    logits = member.logits(views.flatten(0, 1)).float() / member.temperature
    return logits.softmax(dim=1).view(b, v, -1).mean(dim=1)


def check_topk(topk: int | None, classes: int) -> int:
    """``topk``, or 5 capped at the number of classes when not given."""
    if topk is None:
        return min(DEFAULT_TOPK, classes)
    if not 1 <= int(topk) <= classes:
        raise UserValueError(f"topk={topk}: the model has {classes} classes; use 1 to {classes}")
    return int(topk)


def image_name(item: str | os.PathLike | Image.Image, index: int) -> str:
    """How a prediction names its image: the path as given, or the position of a PIL image."""
    if isinstance(item, Image.Image):
        return f"<image {index}>"
    return display_path(item)


class ImageClassifier:
    """A trained model that predicts any images: file paths or PIL images, batched, with
    hw1.predict's preprocessing, test-time views and ensemble averaging."""

    def __init__(
        self,
        members: Sequence[Member],
        class_names: Sequence[str],
        device: torch.device,
        tta: str = DEFAULT_TTA,
        seed: int = DEFAULT_SEED,
        batch_size: int = DEFAULT_BATCH,
        num_workers: int = 0,
        source: str = "",
    ) -> None:
        ViewStack(members[0].spec, tta)  # checks tta
        self.members, self.class_names = list(members), list(class_names)
        self.device, self.tta, self.seed = device, tta, seed
        self.batch_size, self.num_workers, self.source = batch_size, num_workers, source

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """An RGB PIL image to the normalised float (C, H, W) tensor the model takes (the
        plain eval view; the first member's, for an ensemble)."""
        return eval_transform(self.members[0].spec)

    def __repr__(self) -> str:
        return (
            f"ImageClassifier({self.source!r}, {len(self.class_names)} classes, "
            f"{len(self.members)} model(s), tta={self.tta}, device={self.device})"
        )

    @torch.inference_mode()
    def probs(
        self, images: Sequence[str | os.PathLike | Image.Image], show_progress: bool = False
    ) -> torch.Tensor:
        """(images, classes) probabilities, in the order given: the mean over the members
        and the test-time views. ``show_progress``: a bar or a count of the batches on
        stderr (hw1.utils.progress), as hw1.predict shows."""
        dataset = ImageInputs(images)
        loaders = [
            view_loader(dataset, m.spec, self.tta, self.seed, self.batch_size, self.num_workers)
            for m in self.members
        ]
        batches: Iterable[tuple[int, torch.Tensor]] = (
            (i, x) for i, loader in enumerate(loaders) for x, _ in loader
        )
        if show_progress:
            batches = progress(batches, "predicted", "batches", sum(len(lo) for lo in loaders))
        finishes = [FinishOnDevice(m.spec.mean, m.spec.std) for m in self.members]
        per_member: list[list[torch.Tensor]] = [[] for _ in self.members]
        for i, x in batches:
            member = self.members[i]
            per_member[i].append(view_probs(member, finishes[i](x.to(self.device))).cpu())
        return sum(torch.cat(probs) for probs in per_member) / len(self.members)

    def predict(
        self,
        images: str | os.PathLike | Image.Image | Sequence[Any],
        topk: int | None = None,
        show_progress: bool = False,
    ) -> list[Prediction]:
        """The top-k labels and probabilities of each image (one image, or a list of paths
        and PIL images), in the order given; ``topk`` defaults to 5 (at most the classes);
        ``show_progress`` as ``probs``'."""
        items = [images] if isinstance(images, (str, os.PathLike, Image.Image)) else list(images)
        k = check_topk(topk, len(self.class_names))
        if not items:
            return []
        values, indices = self.probs(items, show_progress).topk(k, dim=1)
        return [
            Prediction(
                image_name(item, i),
                tuple(self.class_names[j] for j in idx),
                tuple(float(p) for p in vals),
            )
            for i, (item, vals, idx) in enumerate(
                zip(items, values.tolist(), indices.tolist(), strict=True)
            )
        ]


def prediction_text(predictions: Sequence[Prediction], fmt: str) -> str:
    """predictions.csv (path, then label_i, prob_i for each of the top k) or JSON lines;
    probabilities with 6 decimals, UTF-8 labels written as they are (the csv module quotes
    commas and quotes)."""
    if fmt == "jsonl":
        return "".join(
            json.dumps(
                {"path": p.path, "labels": list(p.labels), "probs": [round(x, 6) for x in p.probs]},
                ensure_ascii=False,
            )
            + "\n"
            for p in predictions
        )
    if fmt != "csv":
        raise UserValueError(f"format={fmt}: use csv or jsonl")
    k = max((len(p.labels) for p in predictions), default=0)
    header = ["path"] + [f"{what}_{i}" for i in range(1, k + 1) for what in ("label", "prob")]
    rows = [
        [p.path]
        + [v for label, x in zip(p.labels, p.probs, strict=True) for v in (label, f"{x:.6f}")]
        for p in predictions
    ]
    return csv_text([header, *rows])


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- exported folders


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
