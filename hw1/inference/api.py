"""hw1's Python API, ``hw1.load_classifier``, and ``hw1.predict`` on any images: a folder,
a file, a glob or a list of paths, from checkpoints or an exported folder.

The command writes what ``ImageClassifier.predict`` returns, so the two agree to the byte.
Checkpoints need the LightningModule, imported only when one is given: an exported folder
runs without Lightning and Hydra.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from hw1.data.image_check import inspect_images, left_out_lines
from hw1.data.scan import image_files, input_files
from hw1.inference.exported import is_export, load_export
from hw1.inference.runtime import (
    DEFAULT_BATCH,
    DEFAULT_SEED,
    DEFAULT_TTA,
    ImageClassifier,
    Member,
    check_topk,
    default_device,
    prediction_text,
)
from hw1.transforms.presets import EvalSpec
from hw1.utils.errors import UserValueError
from hw1.utils.io import csv_text, write_atomically
from hw1.utils.precision import inference_device

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl")  # predictions.csv or predictions.jsonl


def checkpoint_member(model: torch.nn.Module, device: torch.device) -> Member:
    """A Classifier as a member: its eval spec, its network on ``device``, and the
    temperature a calibrated checkpoint carries (1 when none)."""
    model = model.to(device).eval()
    spec = EvalSpec.from_dict(model.hparams.preprocess)
    return Member(spec, model, float(getattr(model, "temperature", 1.0) or 1.0))


def load_classifier(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    runtime: str = "auto",
    device: str | torch.device | None = None,
    tta: str = DEFAULT_TTA,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH,
    num_workers: int = 0,
) -> ImageClassifier:
    """A model to predict images with: a checkpoint, a list of checkpoints (an ensemble:
    their probabilities averaged) or a folder of ``python -m hw1.export``.

    >>> clf = hw1.load_classifier("export/")
    >>> clf.predict(["a.jpg", pil_image], topk=3)[0].labels

    An exported folder runs on ``runtime`` (auto: ONNX when exported, then TorchScript,
    then the safetensors weights) and needs neither Lightning nor Hydra. ``tta``, ``seed``
    and ``batch_size`` are hw1.predict's, with its defaults.
    """
    options = {"tta": tta, "seed": seed, "batch_size": batch_size, "num_workers": num_workers}
    device = torch.device(device) if device is not None else None
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    if len(paths) == 1 and is_export(paths[0]):
        return load_export(paths[0], runtime, device, **options)
    from hw1.inference.predictor import load_ensemble  # Lightning: only for checkpoints

    device = device or default_device()
    models = load_ensemble(paths)
    members = [checkpoint_member(m, device) for m in models]
    source = ", ".join(str(p) for p in paths)
    return ImageClassifier(members, models[0].class_names, device, source=source, **options)


def readable_inputs(files: list[Path], max_pixels: int | None) -> tuple[list[Path], list[str]]:
    """The files that decode, and a line for each left out with its reason (warned)."""
    info = inspect_images(files, None, max_pixels)
    bad = [f for f in files if not info[f].readable]
    lines = left_out_lines(bad, info, max_pixels)
    if lines:
        log.warning("%d files skipped:\n  %s", len(lines), "\n  ".join(lines))
    return [f for f in files if info[f].readable], lines


def predict(cfg: DictConfig) -> Path:
    """hw1.predict: the competition CSV of data.root's test folder from checkpoints, as it
    always was; with ``inputs=`` or an exported folder, ``predict_inputs``."""
    from hw1.inference import predictor

    paths = predictor.checkpoint_paths(cfg.ckpt_path)
    if cfg.get("inputs") is None and not (len(paths) == 1 and is_export(paths[0])):
        return predictor.predict(cfg)
    return predict_inputs(cfg, paths)


def predict_inputs(cfg: DictConfig, paths: list[Path]) -> Path:
    """``inputs=`` (a folder, an image, a glob, a text file of paths) to predictions.csv
    or JSON lines: path, top-k labels and probabilities; unreadable files listed and
    skipped. Without ``inputs=`` (an exported folder as the model): data.root's test folder
    to the competition CSV."""
    from hw1.inference.predictor import checked_test_folder, output_path

    if cfg.inputs is None:
        files = image_files(checked_test_folder(cfg))
    else:
        files = input_files(cfg.inputs)  # before the model loads: a wrong path fails fast
        if cfg.format not in FORMATS:
            raise UserValueError(f"format={cfg.format}: use {' or '.join(FORMATS)}")
    clf = load_classifier(
        [str(p) for p in paths],
        runtime=cfg.runtime,
        device=chosen_device(cfg),
        tta=cfg.tta,
        seed=cfg.seed,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
    )
    summary: dict[str, Any] = {"model": clf.source, "tta": cfg.tta}
    if cfg.inputs is None:
        output = output_path(cfg, "prediction.csv")
        summary |= {"prediction_csv": str(output), **write_submission(clf, files, output)}
    else:
        output = output_path(cfg, f"predictions.{cfg.format}")
        topk = check_topk(cfg.topk, len(clf.class_names))  # before any image is read
        good, skipped = readable_inputs(files, cfg.data.max_image_pixels)
        predictions = clf.predict(good, topk=topk, show_progress=True)
        write_atomically(output, prediction_text(predictions, cfg.format))
        summary |= {"predictions": str(output), "images": len(predictions), "topk": topk}
        summary["skipped"] = skipped
    print(json.dumps(summary, ensure_ascii=False))
    return output


def chosen_device(cfg: DictConfig) -> torch.device | None:
    """trainer.accelerator and trainer.devices, as the Trainer of hw1.predict's checkpoint
    path takes them; None (the runtime's default: CUDA if there is one, ONNX on the CPU)
    for the defaults."""
    trainer = cfg.trainer
    if str(trainer.accelerator) == "auto" and str(trainer.devices) in ("1", "auto"):
        return None
    return inference_device(trainer.accelerator, trainer.devices)


def write_submission(clf: ImageClassifier, files: list[Path], output: Path) -> dict[str, int]:
    """The competition CSV (image name, label) of the test images, as hw1.predict writes it."""
    from hw1.inference.predictor import submission_rows

    rows = submission_rows([f.stem for f in files], clf.probs(files, True), clf.class_names)
    write_atomically(output, csv_text([("image_name", "pred_label"), *rows]))
    return {"images": len(rows)}
