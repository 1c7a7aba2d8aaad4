"""Evaluate checkpoints on a labelled split:
``python -m hw1.eval ckpt_path=PATH data.root=ROOT [split=val] [calibrate=true] [gallery=N]``.

Writes, beside ``eval.json``: ``eval.md`` (the figures a reviewer reads: top-1/top-5 with
95 % intervals, macro and weighted precision/recall/F1, NLL, ECE, each with and without TTA,
the per-class table worst first, the most confused pairs, calibration before and after),
``confusion.png``, ``reliability.png``, ``per_class_f1.png``, and with ``gallery=N``
``gallery.html``. ``calibrate=true`` fits a temperature on the validation split and writes
it into each checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import Dataset
from torchmetrics.functional.classification import multiclass_confusion_matrix

from hw1.data.datasets import ClassFolders
from hw1.data.image_check import readable_samples
from hw1.data.scan import class_names, display_path, labelled_files, nfc_names
from hw1.inference.calibration import fit_temperature, logits_of, store_temperature
from hw1.inference.explain import cam_overlays, require_captum
from hw1.inference.metrics import (
    classification_metrics,
    most_confused,
    per_class_table,
    reliability_bins,
)
from hw1.inference.predictor import (
    checkpoint_paths,
    ensemble_probs,
    inference_trainer,
    load_ensemble,
    output_path,
    save_probs,
    stopping_on_signal,
)
from hw1.models.classifier import Classifier
from hw1.reporting.figures import (
    confusion_image,
    per_class_f1_chart,
    png_bytes,
    reliability_diagram,
)
from hw1.reporting.gallery import Mistake, WeakClass, gallery_html, image_uri
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
    return {"per_class_acc": per_class, "most_confused": most_confused(confusion, names, top)}


class Indexed(Dataset):
    """A labelled dataset whose items are keyed by their index rather than their class:
    prediction rows then name their file (the gallery) and their class, in whatever order
    the processes return them under DDP."""

    def __init__(self, base: ClassFolders) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.base[i][0], i


def split_dataset(cfg: DictConfig, split: str, names: Sequence[str]) -> ClassFolders:
    """The readable images of ``data.root/split``, with the checkpoint's class indices.
    Class folders the checkpoint does not know are an error that lists them."""
    folder = Path(cfg.data.root) / split
    if not folder.is_dir():  # the calibration split; evaluate() checked the evaluated one
        raise UserFileNotFoundError(f"data.root={cfg.data.root}: no {split}/ folder to evaluate")
    unknown = set(class_names(folder)) - set(nfc_names(names))
    if unknown:
        raise UserValueError(
            f"{folder} has class folders the checkpoint was not trained on: {sorted(unknown)}. "
            "Evaluate on the classes it knows: remove or move these folders"
        )
    readable = readable_samples(
        labelled_files(folder, names), folder.parent, cfg.data.max_image_pixels
    )
    dataset = ClassFolders(folder, names, samples=readable)
    if not len(dataset):
        raise UserFileNotFoundError(
            f"{display_path(folder)} has no readable images in its class folders to evaluate"
        )
    return dataset


def predict_split(
    cfg: DictConfig, trainer: L.Trainer, models: Sequence[Classifier], dataset: ClassFolders, tta
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dataset indices, true classes, mean probabilities) of every image, in row order."""
    args = (cfg.seed, cfg.data.batch_size, cfg.data.num_workers)
    keys, probs = ensemble_probs(trainer, models, Indexed(dataset), tta, *args)
    index = torch.tensor(keys, dtype=torch.long)
    return index, torch.tensor(dataset.targets, dtype=torch.long)[index], probs


def calibrate(
    cfg: DictConfig,
    trainer: L.Trainer,
    models: Sequence[Classifier],
    before: dict[str, dict[str, Any]],
) -> list[float]:
    """Fit each model's temperature on the validation split's plain (no-TTA) predictions
    and set it on the model; an ensemble's members get one each, as each checkpoint keeps
    its own. ``before``: the uncalibrated scores of the evaluated split, reused when that
    split is the one to fit on."""
    temperatures = []
    if len(models) == 1 and cfg.calibration_split == cfg.split:
        _, targets, probs = before["none"]["rows"]
        temperatures.append(fit_temperature(logits_of(probs), targets))
    else:
        dataset = split_dataset(cfg, cfg.calibration_split, models[0].class_names)
        for model in models:
            _, targets, probs = predict_split(cfg, trainer, [model], dataset, "none")
            temperatures.append(fit_temperature(logits_of(probs), targets))
    for model, temperature in zip(models, temperatures, strict=True):
        model.temperature = temperature
    return temperatures


def score(
    cfg: DictConfig,
    trainer: L.Trainer,
    models: Sequence[Classifier],
    dataset: ClassFolders,
) -> dict[str, dict[str, Any]]:
    """Per TTA setting (none, and ``cfg.tta``): the metrics, the per-class table, the
    reliability bins and the rows' (indices, targets, probs)."""
    names = models[0].class_names
    scored = {}
    for tta in dict.fromkeys(["none", cfg.tta]):
        index, targets, probs = predict_split(cfg, trainer, models, dataset, tta)
        scored[tta] = {
            "metrics": classification_metrics(probs, targets, names),
            "per_class": per_class_table(probs, targets, names),
            "reliability": reliability_bins(probs, targets),
            "rows": (index, targets, probs),
        }
    return scored


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    output = output_path(cfg, "eval.json")
    if not (Path(cfg.data.root) / cfg.split).is_dir():  # before loading any checkpoint
        raise UserFileNotFoundError(
            f"data.root={cfg.data.root}: no {cfg.split}/ folder to evaluate"
        )
    if cfg.get("gallery_cam"):
        require_captum()  # before any work: one line naming hw1[explain]
    paths = checkpoint_paths(cfg.ckpt_path)
    models = load_ensemble(paths)
    names = models[0].class_names
    dataset = split_dataset(cfg, cfg.split, names)

    L.seed_everything(cfg.seed)
    trainer = inference_trainer(cfg, output)
    results: dict[str, Any] = {
        "ckpt_path": [str(p) for p in paths],
        "split": cfg.split,
        "images": len(dataset),
        "tta": cfg.tta,
    }
    with stopping_on_signal(trainer, "evaluating"):
        before = None
        if cfg.calibrate:
            for model in models:
                model.temperature = 1.0
            before = score(cfg, trainer, models, dataset)
            results["temperature"] = calibrate(cfg, trainer, models, before)
            results["calibrated_on"] = cfg.calibration_split
        else:
            results["temperature"] = [m.temperature for m in models]
        scored = score(cfg, trainer, models, dataset)
        results["acc"] = scored["none"]["metrics"]["top1"]
        results["acc_tta"] = scored[cfg.tta]["metrics"]["top1"]
        results["metrics"] = {tta: s["metrics"] for tta, s in scored.items()}
        if before is not None:
            results["metrics_uncalibrated"] = {tta: s["metrics"] for tta, s in before.items()}
        results["per_class"] = scored[cfg.tta]["per_class"]
        index, targets, probs = scored[cfg.tta]["rows"]
    confusion = multiclass_confusion_matrix(probs.argmax(dim=1), targets, num_classes=len(names))
    results |= confusion_report(confusion, names)
    if not trainer.is_global_zero:  # DDP: every process has every row, one writes
        return results

    if cfg.calibrate:
        for path, model in zip(paths, models, strict=True):
            store_temperature(path, model.temperature)
    write_outputs(cfg, output, results, scored, before, confusion, dataset, models[0])
    if cfg.save_probs:
        order = index.argsort()  # the dataset's order
        save_probs(output.with_suffix(".probs.npz"), targets[order].tolist(), names, probs[order])
    print(eval_markdown(results, figures=False))
    return results


def write_outputs(
    cfg: DictConfig,
    output: Path,
    results: dict[str, Any],
    scored: dict[str, dict[str, Any]],
    before: dict[str, dict[str, Any]] | None,
    confusion: torch.Tensor,
    dataset: ClassFolders,
    model: Classifier,
) -> None:
    """eval.json, eval.md, the figures and (gallery=N) gallery.html beside ``output``;
    ``gallery_cam``: each mistake there with ``model``'s Grad-CAM (an ensemble's first)."""
    names = list(results["per_class_acc"])
    final = scored[cfg.tta]
    panels = {}
    if before is not None:
        panels["before calibration"] = (
            before[cfg.tta]["reliability"],
            before[cfg.tta]["metrics"]["ece"],
        )
        panels["after calibration"] = (final["reliability"], final["metrics"]["ece"])
    else:
        panels[f"tta={cfg.tta}"] = (final["reliability"], final["metrics"]["ece"])
    figures = {
        "confusion.png": confusion_image(confusion, names),
        "reliability.png": reliability_diagram(panels),
        "per_class_f1.png": per_class_f1_chart(final["per_class"], f"F1 per class (tta={cfg.tta})"),
    }
    for name, image in figures.items():
        write_atomically(output.with_name(name), png_bytes(image))
    if cfg.gallery:
        index, targets, probs = final["rows"]
        cam_model = model if cfg.get("gallery_cam") else None
        page = gallery_page(
            dataset, names, index, targets, probs, final["per_class"], cfg.gallery, cam_model
        )
        write_atomically(output.with_name("gallery.html"), page)
        results["gallery"] = str(output.with_name("gallery.html"))
    write_atomically(output, json.dumps(results, indent=2))
    write_atomically(output.with_name("eval.md"), eval_markdown(results))


def gallery_page(
    dataset: ClassFolders,
    names: Sequence[str],
    index: torch.Tensor,
    targets: torch.Tensor,
    probs: torch.Tensor,
    per_class: Sequence[dict[str, Any]],
    count: int,
    cam_model: Classifier | None = None,
    weak_classes: int = 10,
) -> str:
    """gallery.html: the ``count`` mistakes with the highest top-1 probability (each with
    ``cam_model``'s Grad-CAM overlay when given), and the ``weak_classes`` lowest-F1
    classes with what their images were taken for."""
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != targets).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:count]
    top_p, top_i = probs.topk(min(3, len(names)), dim=1)
    mistakes = [
        Mistake(
            path=display_path(dataset.samples[int(index[r])][0]),
            true=names[int(targets[r])],
            top=[(names[i], p) for i, p in zip(top_i[r].tolist(), top_p[r].tolist(), strict=True)],
        )
        for r in wrong.tolist()
    ]
    if cam_model is not None:
        files = [Path(dataset.samples[int(index[r])][0]) for r in wrong.tolist()]
        overlays = cam_overlays(cam_model, files)
        for mistake, path in zip(mistakes, files, strict=True):
            if path in overlays:
                mistake.cam = image_uri(Image.fromarray(overlays[path]))
    confusion = multiclass_confusion_matrix(predicted, targets, num_classes=len(names))
    weak = []
    for row in [r for r in per_class if r["f1"] is not None][:weak_classes]:
        c = names.index(row["class"])
        counts = confusion[c].clone()
        counts[c] = 0
        top = [(names[j], int(counts[j])) for j in counts.argsort(descending=True)[:3] if counts[j]]
        weak.append(WeakClass(row["class"], row["f1"], row["recall"], row["support"], top))
    return gallery_html("hw1 error gallery", mistakes, weak)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(metrics: dict[str, Any], key: str) -> str:
    lo, hi = metrics[f"{key}_ci95"]
    return f"{metrics[key]:.4f} [{lo:.3f}, {hi:.3f}]"


SUMMARY_ROWS = [
    ("precision (macro)", "precision_macro"),
    ("recall (macro)", "recall_macro"),
    ("F1 (macro)", "f1_macro"),
    ("precision (weighted)", "precision_weighted"),
    ("recall (weighted)", "recall_weighted"),
    ("F1 (weighted)", "f1_weighted"),
    ("NLL", "nll"),
    ("ECE (15 bins)", "ece"),
]


def eval_markdown(results: dict[str, Any], figures: bool = True) -> str:
    """eval.md: the summary table (a column per TTA setting), calibration before and after,
    the figures, the per-class table worst first and the most confused pairs. Without
    ``figures``, the console's version: the summary and calibration only."""
    metrics = results["metrics"]
    settings = list(metrics)
    head = "| metric | " + " | ".join(f"tta={t}" for t in settings) + " |"
    lines = [
        f"# Evaluation of {', '.join(results['ckpt_path'])}",
        "",
        f"Split `{results['split']}`, {results['images']} images. Intervals: 95 % Wilson.",
        "",
        head,
        "|---" * (len(settings) + 1) + "|",
    ]
    k = metrics[settings[0]]["top5_k"]
    lines.append("| top-1 | " + " | ".join(_ci(metrics[t], "top1") for t in settings) + " |")
    lines.append(f"| top-{k} | " + " | ".join(_ci(metrics[t], "top5") for t in settings) + " |")
    for label, key in SUMMARY_ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(metrics[t][key]) for t in settings) + " |")
    lines += ["", *calibration_lines(results)]
    if not figures:
        return "\n".join(lines)
    if results.get("gallery"):
        lines += ["", "The most confident mistakes: [gallery.html](gallery.html)"]
    lines += [
        "",
        "![reliability](reliability.png)",
        "",
        "## Per class (worst F1 first)",
        "",
        "![F1 per class](per_class_f1.png)",
        "",
        "| class | precision | recall | F1 | images |",
        "|---|---|---|---|---|",
    ]
    for row in results["per_class"]:
        values = " | ".join(_fmt(row[key]) for key in ("precision", "recall", "f1"))
        lines.append(f"| {row['class']} | {values} | {row['support']} |")
    lines += ["", "## Most confused (true → predicted)", "", "![confusion](confusion.png)", ""]
    lines += [f"- {p['true']} → {p['pred']}: {p['count']}" for p in results["most_confused"]]
    return "\n".join(lines) + "\n"


def calibration_lines(results: dict[str, Any]) -> list[str]:
    """The calibration section: the temperature, and NLL and ECE before and after."""
    temperatures = ", ".join(f"{t:.3f}" for t in results["temperature"])
    if "metrics_uncalibrated" not in results:
        note = "stored in the checkpoint" if any(t != 1 for t in results["temperature"]) else ""
        return [f"Temperature: {temperatures} {note}".rstrip() + " (calibrate=true fits one)."]
    before, after = results["metrics_uncalibrated"], results["metrics"]
    lines = [
        "## Calibration",
        "",
        f"Temperature {temperatures}, fitted on `{results['calibrated_on']}` and written into "
        "the checkpoint (top-1 unchanged).",
        "",
        "| | NLL before | NLL after | ECE before | ECE after |",
        "|---|---|---|---|---|",
    ]
    for tta in after:
        lines.append(
            f"| tta={tta} | {before[tta]['nll']:.4f} | {after[tta]['nll']:.4f} | "
            f"{before[tta]['ece']:.4f} | {after[tta]['ece']:.4f} |"
        )
    return lines
