"""Evaluation of checkpoints on a labelled split (``python -m hw1.eval``): accuracy with and
without TTA, per-class accuracy, the most confused class pairs, and the confusion image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torchmetrics.functional.classification import multiclass_confusion_matrix

from hw1.data.datasets import ClassFolders
from hw1.data.scan import class_names, display_path, labelled_files, readable_samples
from hw1.inference.predictor import (
    checkpoint_paths,
    ensemble_probs,
    inference_trainer,
    load_ensemble,
    output_path,
    save_probs,
    stopping_on_signal,
)
from hw1.reporting.figures import confusion_image, png_bytes
from hw1.utils.errors import UserFileNotFoundError, UserValueError
from hw1.utils.io import write_atomically


def confusion_report(confusion: torch.Tensor, names: list[str], top: int = 10) -> dict[str, Any]:
    """Per-class accuracy and the most confused (true, predicted) pairs of a confusion
    matrix (rows: true class, columns: predicted)."""
    support = confusion.sum(dim=1)
    per_class = {
        name: (confusion[i, i] / support[i]).item() if support[i] else None
        for i, name in enumerate(names)
    }
    off = confusion.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().sort(descending=True)
    pairs = [
        {"true": names[i // len(names)], "pred": names[i % len(names)], "count": int(c)}
        for c, i in zip(counts[:top].tolist(), flat[:top].tolist(), strict=True)
        if c > 0
    ]
    return {"per_class_acc": per_class, "most_confused": pairs}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    output = output_path(cfg, "eval.json")
    folder = Path(cfg.data.root) / cfg.split
    if not folder.is_dir():
        raise UserFileNotFoundError(
            f"data.root={cfg.data.root}: no {cfg.split}/ folder to evaluate"
        )
    paths = checkpoint_paths(cfg.ckpt_path)
    models = load_ensemble(paths)
    names = models[0].class_names
    unknown = set(class_names(folder)) - set(names)
    if unknown:
        raise UserValueError(
            f"{folder} has class folders the checkpoint was not trained on: {sorted(unknown)}"
        )
    readable = readable_samples(
        labelled_files(folder, names), folder.parent, cfg.data.max_image_pixels
    )
    dataset = ClassFolders(folder, names, samples=readable)
    if not len(dataset):
        raise UserFileNotFoundError(
            f"{display_path(folder)} has no readable images in its class folders to evaluate"
        )

    L.seed_everything(cfg.seed)
    trainer = inference_trainer(cfg, output)
    results: dict[str, Any] = {
        "ckpt_path": [str(p) for p in paths],
        "split": cfg.split,
        "images": len(dataset),
        "tta": cfg.tta,
    }
    probs_by_tta = {}
    with stopping_on_signal(trainer, "evaluating"):
        for tta in dict.fromkeys(["none", cfg.tta]):
            args = (trainer, models, dataset, tta, cfg.seed, cfg.data.batch_size)
            # The keys are the class indices, in the order of the rows (under DDP, not the
            # dataset's: each process predicted its share).
            keys, probs_by_tta[tta] = ensemble_probs(*args, cfg.data.num_workers)
            targets = torch.tensor(keys)
            acc = (probs_by_tta[tta].argmax(dim=1) == targets).float().mean().item()
            results["acc" if tta == "none" else "acc_tta"] = acc
    probs = probs_by_tta[cfg.tta]
    confusion = multiclass_confusion_matrix(probs.argmax(dim=1), targets, num_classes=len(names))
    results |= confusion_report(confusion, names)
    if not trainer.is_global_zero:  # DDP: every process has every row, one writes
        return results

    write_atomically(output, json.dumps(results, indent=2))
    write_atomically(
        output.with_name("confusion.png"), png_bytes(confusion_image(confusion, names))
    )
    if cfg.save_probs:
        save_probs(output.with_suffix(".probs.npz"), targets.tolist(), names, probs)
    summary = {k: v for k, v in results.items() if k != "per_class_acc"}
    print(json.dumps(summary, indent=2))
    return results
