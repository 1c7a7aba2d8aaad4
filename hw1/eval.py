"""Evaluate checkpoints on a labelled split:
``python -m hw1.eval ckpt_path=PATH data.root=ROOT [split=val]``.

Prints and writes ``eval.json`` (accuracy with and without TTA, per-class accuracy, the
ten most confused class pairs) and ``confusion.png`` beside it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont
from torchmetrics.functional.classification import multiclass_confusion_matrix

import hw1  # noqa: F401  (registers the config resolvers)
from hw1.data import ClassFolders, class_names
from hw1.predict import (
    checkpoint_paths,
    ensemble_probs,
    inference_trainer,
    load_ensemble,
    output_path,
    save_probs,
    write_atomically,
)


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


def confusion_png(confusion: torch.Tensor, names: list[str]) -> bytes:
    """The confusion matrix as a heat map, rows true and columns predicted, in folder order,
    row-normalised. Cells stay at least 10 px and every class is labelled, so 100 classes
    remain readable. (torchmetrics' plot needs matplotlib, which hw1 does not depend on.)"""
    n = len(names)
    cell = max(10, 800 // n)
    font = ImageFont.load_default(size=max(9, min(14, cell - 1)))
    header = ("rows: true", "cols: predicted")
    label_w = int(max(font.getlength(text) for text in (*names, *header))) + 8
    size = label_w + n * cell + 1
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    rates = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    for i in range(n):
        for j in range(n):
            shade = 255 - int(255 * rates[i, j].item())
            x, y = label_w + j * cell, label_w + i * cell
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            draw.rectangle([x, y, x + cell, y + cell], fill=colour, outline=(225, 225, 225))
    column_labels = Image.new("RGB", (label_w, n * cell), "white")
    column_draw = ImageDraw.Draw(column_labels)
    for i, name in enumerate(names):
        draw.text((4, label_w + i * cell + cell // 2), name, fill="black", font=font, anchor="lm")
        column_draw.text((4, i * cell + cell // 2), name, fill="black", font=font, anchor="lm")
    # Column labels: written like the row labels, then turned a quarter left to stand on
    # the grid's top edge.
    image.paste(column_labels.rotate(90, expand=True), (label_w, 0))
    for k, text in enumerate(header):
        draw.text((4, 4 + k * (font.size + 4)), text, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    output = output_path(cfg, "eval.json")
    folder = Path(cfg.data.root) / cfg.split
    if not folder.is_dir():
        raise FileNotFoundError(f"data.root={cfg.data.root}: no {cfg.split}/ folder to evaluate")
    paths = checkpoint_paths(cfg.ckpt_path)
    models = load_ensemble(paths)
    names = models[0].class_names
    if set(class_names(folder)) - set(names):
        raise ValueError(
            f"{folder} has class folders the checkpoint was not trained on: "
            f"{sorted(set(class_names(folder)) - set(names))}"
        )
    dataset = ClassFolders(folder, names)
    targets = torch.tensor(dataset.targets)

    L.seed_everything(cfg.seed)
    trainer = inference_trainer(cfg, output)
    results: dict[str, Any] = {
        "ckpt_path": [str(p) for p in paths],
        "split": cfg.split,
        "images": len(dataset),
        "tta": cfg.tta,
    }
    probs_by_tta = {}
    for tta in dict.fromkeys(["none", cfg.tta]):
        args = (trainer, models, dataset, tta, cfg.seed, cfg.data.batch_size, cfg.data.num_workers)
        _, probs_by_tta[tta] = ensemble_probs(*args)
        acc = (probs_by_tta[tta].argmax(dim=1) == targets).float().mean().item()
        results["acc" if tta == "none" else "acc_tta"] = acc
    probs = probs_by_tta[cfg.tta]
    confusion = multiclass_confusion_matrix(probs.argmax(dim=1), targets, num_classes=len(names))
    results |= confusion_report(confusion, names)

    write_atomically(output, json.dumps(results, indent=2))
    write_atomically(output.with_name("confusion.png"), confusion_png(confusion, names))
    if cfg.save_probs:
        save_probs(output.with_suffix(".probs.npz"), targets.tolist(), names, probs)
    summary = {k: v for k, v in results.items() if k != "per_class_acc"}
    print(json.dumps(summary, indent=2))
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
