"""What an export says about its model: ``model.json``'s description (architecture, class
names, the eval transform's numbers, the test-time views, the temperature, hw1's version,
the training run's metrics and command) and ``README.md``, the model card made from it.

Both come from the checkpoint and the files its training run wrote (``metrics.json``, the
run's ``.hydra/`` config), never from the exported files, so ``hw1.inference.export`` can
write the formats and check their parity without knowing how the model is described.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hw1 import PARAM_LIMIT
from hw1.data.scan import labelled_files
from hw1.inference.exported import EXPORT_VERSION, INPUT_NAME, OUTPUT_NAME
from hw1.inference.runtime import DEFAULT_TTA, ExportNet
from hw1.models.classifier import Classifier
from hw1.transforms.presets import EvalSpec, ViewStack


def run_dir_of(ckpt: Path) -> Path | None:
    """The training run a checkpoint came from (run/checkpoints/best.ckpt), if it is there."""
    run = ckpt.resolve().parent.parent
    return run if (run / "metrics.json").is_file() else None


def run_record(run: Path | None) -> dict[str, Any]:
    """What the model card and model.json say about training: the metrics, their date,
    the command, the data root and its settings, from the files the run wrote."""
    if run is None:
        return {}
    metrics_file = run / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    overrides_file, config_file = run / ".hydra" / "overrides.yaml", run / ".hydra" / "config.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    cfg = OmegaConf.load(config_file) if config_file.is_file() else OmegaConf.create()
    keep = ("best_val_acc", "best_epoch", "epochs", "val_images", "test_acc", "test_images")
    return {
        "dir": str(run),
        "date": dt.date.fromtimestamp(metrics_file.stat().st_mtime).isoformat(),
        "metrics": {k: metrics.get(k) for k in keep if metrics.get(k) is not None},
        "command": " ".join(["python -m hw1.train", *overrides]),
        "data_root": OmegaConf.select(cfg, "data.root", default=None),
        "tta": OmegaConf.select(cfg, "tta", default=None),
    }


def class_counts(data_root: str | None, class_names: Sequence[str]) -> dict[str, int] | None:
    """Training images per class, when the run's data root is still there."""
    train = Path(data_root) / "train" if data_root else None
    if train is None or not train.is_dir():
        return None
    counts = Counter(c for _, c in labelled_files(train, class_names))
    return {name: counts[i] for i, name in enumerate(class_names)}


def temperature_of(model: Classifier) -> float:
    """A calibrated model's temperature (hw1's calibration sets it), 1.0 when uncalibrated."""
    return float(getattr(model, "temperature", 1.0) or 1.0)


def hw1_version() -> str:
    try:
        return importlib.metadata.version("hw1")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_meta(
    models: Sequence[Classifier],
    paths: Sequence[Path],
    net: ExportNet,
    record: dict[str, Any],
    files: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """model.json, less the parity figures."""
    first = models[0]
    spec = EvalSpec.from_dict(first.hparams.preprocess)
    single = len(models) == 1
    names = first.class_names
    return {
        "export_version": EXPORT_VERSION,
        "hw1_version": hw1_version(),
        "exported": dt.datetime.now().isoformat(timespec="seconds"),
        "class_names": names,
        "architecture": {
            "members": [
                {
                    "model": dict(m.hparams.model),
                    "head": dict(m.hparams.head),
                    "temperature": temperature_of(m),
                    "checkpoint": str(p),
                }
                for m, p in zip(models, paths, strict=True)
            ],
            "combine": "logits" if single else "log of the members' mean probability",
        },
        "params": sum(p.numel() for p in net.parameters()),
        "preprocess": spec.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, spec.crop, spec.crop],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "steps": (
                f"decode to RGB (EXIF-upright); resize the short side to {spec.resize} "
                f"({spec.interpolation.value}); centre crop {spec.crop}; x / 255; "
                "subtract mean, divide by std"
            ),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(names)],
            "probabilities": "softmax(logits / temperature)",
        },
        # The ensemble's temperatures are inside its graph; a single model's is applied outside.
        "temperature": temperature_of(first) if single else None,
        "tta": {
            "default": DEFAULT_TTA,
            "seed": seed,
            "views": list(ViewStack.REPORT_VIEWS),
            "rotate_degrees": 10,
            "crop_scale": [0.8, 1.0],
            "combine": "mean of the views' probabilities",
            "trained_with": record.get("tta"),
        },
        "files": files,
        "run": record,
    }


def model_card(meta: dict[str, Any], counts: dict[str, int] | None) -> str:
    """README.md of the folder: what the model is, its data, metrics, size, command, use."""
    run, members = meta["run"], meta["architecture"]["members"]
    arch = ", ".join(f"{m['model']['arch']} + head {m['head'].get('name')}" for m in members)
    names = meta["class_names"]
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    lines = [
        f"# {members[0]['model']['arch']} image classifier ({len(names)} classes)",
        "",
        "Written by `python -m hw1.export` from the training run's files; do not edit by hand.",
        "",
        "## Model",
        f"- {'ensemble of ' + str(len(members)) + ': ' if len(members) > 1 else ''}{arch}",
        f"- parameters: {meta['params']:,} ({meta['params'] / PARAM_LIMIT:.1%} of the 100 M limit)",
        f"- input: {meta['input']['steps']}",
        f"- temperature: {meta['temperature'] or 'in the ensemble graph'}"
        + (" (uncalibrated)" if meta["temperature"] == 1.0 else ""),
        f"- files: {', '.join(f['file'] for f in meta['files'].values())}",
        f"- exported by hw1 {meta['hw1_version']} on {meta['exported'][:10]}",
        "",
        "## Data",
        f"- classes: {shown}",
    ]
    if counts:
        values = list(counts.values())
        lines.append(
            f"- training images: {sum(values):,} ({min(values)} to {max(values)} per class, "
            f"median {statistics.median(values):g}) in {run.get('data_root')}"
        )
    else:
        where = run.get("data_root") or "not recorded"
        lines.append(f"- training images: not counted (the data root, {where}, is not here)")
    lines += ["", "## Metrics"]
    if run.get("metrics"):
        lines += [f"- {k}: {v}" for k, v in run["metrics"].items()]
        lines.append(f"- measured: {run['date']}")
    else:
        lines.append("- none recorded: the checkpoint is not in a training run's folder")
    parity = meta.get("parity", {})
    lines += ["", "## Checked against the checkpoint"]
    lines += [
        f"- {k}: max abs logit difference {v['max_abs_logit_diff']:.2g}, same top-1: "
        f"{v['top1_agree']} ({v['images']} images, {v['inputs']} views)"
        for k, v in parity.items()
    ]
    lines += [
        "",
        "## Training command",
        "```",
        run.get("command", "unknown: the checkpoint is not in a training run's folder"),
        "```",
        "",
        "## Intended use and limits",
        "- Photos like the training images, of one of the classes above: it always answers one",
        "  of them, however unlike they are (no 'none of these').",
        "- Accuracy holds for images like the validation set's; expect less on other sources.",
        '- Predict with `hw1.load_classifier("THIS_FOLDER")` or',
        "  `python -m hw1.predict ckpt_path=THIS_FOLDER inputs=PHOTOS`; model.json has the",
        "  preprocessing's numbers for other programs.",
        "",
    ]
    return "\n".join(lines)
