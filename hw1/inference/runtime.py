"""A trained model on any images, outside training: the classifier ``hw1.load_classifier``
returns, and the network an exported folder holds.

``ImageClassifier`` runs the same views, batching and averaging as ``hw1.predict`` on
members that give logits (a checkpoint's network, or an exported file run by
``hw1.inference.exported``), so ``hw1.predict inputs=...`` and ``clf.predict(...)`` give the
same numbers: the command writes what this module returns. ``Net`` and ``ExportNet`` stay
here although the export builds them: their module path is written into every TorchScript
and ONNX file exported, so moving them would change what an export holds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from hw1.data.datasets import ImageInputs, view_loader
from hw1.data.scan import display_path
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.presets import EvalSpec, ViewStack, eval_transform
from hw1.utils.errors import UserValueError
from hw1.utils.io import csv_text
from hw1.utils.progress import progress

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
