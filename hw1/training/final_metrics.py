"""The end of training: temperature scaling fitted on the validation split and written
into the best checkpoint, then the full metrics (``hw1.inference.metrics``) of the best
weights, logged as ``test/...`` when the data root holds the test answers (the demo's
test_labels.csv) and as ``val/...`` otherwise, and returned for metrics.json."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch

from hw1.data.datamodule import FolderDataModule
from hw1.data.datasets import UnlabeledImages, view_loader
from hw1.data.demo import TEST_LABELS
from hw1.data.device_batches import LoaderDataModule
from hw1.inference.calibration import fit_temperature, logits_of, store_temperature
from hw1.inference.metrics import classification_metrics
from hw1.inference.predictor import predict_rows
from hw1.models.classifier import Classifier
from hw1.utils.weights import safe_load

# The figures logged (and kept in metrics.json) of hw1.inference.metrics' summary.
LOGGED = (
    "top1",
    "top5",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "f1_weighted",
    "nll",
    "ece",
)


def plain_probs(
    trainer: L.Trainer, model: Classifier, datamodule: FolderDataModule, dataset
) -> tuple[list[Any], torch.Tensor]:
    """(keys, probabilities) of ``dataset``'s images through the plain eval view."""
    hp = datamodule.hparams
    loader = view_loader(
        dataset, datamodule.eval_spec, "none", hp.seed, hp.batch_size, hp.num_workers
    )
    return predict_rows(
        trainer, model, datamodule=LoaderDataModule(datamodule.eval_spec, predict=loader)
    )


def val_probs(
    trainer: L.Trainer, model: Classifier, datamodule: FolderDataModule
) -> tuple[torch.Tensor, torch.Tensor]:
    """(true classes, probabilities) of the validation images, plain eval view: the data
    module's own val loader (whatever its source: folders, a CSV, shards), its labels as
    the rows' keys."""
    loader = datamodule.val_dataloader()
    keys, probs = predict_rows(
        trainer, model, datamodule=LoaderDataModule(datamodule.eval_spec, predict=loader)
    )
    return torch.as_tensor(keys), probs


def scored_split(datamodule: FolderDataModule) -> str:
    """The split the end of training scores: test when test_labels.csv names its images
    (the demo), else val."""
    labelled = (Path(datamodule.root) / TEST_LABELS).exists()
    return "test" if labelled and datamodule.layout.test_images() else "val"


def labelled_test_probs(
    trainer: L.Trainer, model: Classifier, datamodule: FolderDataModule
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(true classes, probabilities) of the test images when test_labels.csv names them."""
    if scored_split(datamodule) != "test":
        return None
    labels_csv = Path(datamodule.root) / TEST_LABELS
    with open(labels_csv, newline="") as f:
        truth = {r["image_name"]: r["label"] for r in csv.DictReader(f)}
    keys, probs = plain_probs(
        trainer, model, datamodule, UnlabeledImages(datamodule.layout.test_dir)
    )
    index = {name: i for i, name in enumerate(model.class_names)}
    return torch.tensor([index[truth[k]] for k in keys]), probs


def evaluate_and_calibrate(
    trainer: L.Trainer,
    model: Classifier,
    datamodule: FolderDataModule,
    best_ckpt: str | None,
    calibrate: bool,
) -> dict[str, Any]:
    """The best weights' temperature (fitted when ``calibrate``, stored in ``best_ckpt``)
    and metrics, logged to the run's loggers; the entries of metrics.json."""
    if best_ckpt:
        model.load_state_dict(safe_load(best_ckpt)["state_dict"])
    model.temperature = 1.0
    targets, probs = val_probs(trainer, model, datamodule)
    out: dict[str, Any] = {}
    if calibrate:
        before = classification_metrics(probs, targets, model.class_names)
        model.temperature = fit_temperature(logits_of(probs), targets)
        probs = logits_of(probs).div(model.temperature).softmax(dim=1).float()
        out["val_ece_uncalibrated"], out["val_nll_uncalibrated"] = before["ece"], before["nll"]
        if best_ckpt and trainer.is_global_zero:
            store_temperature(best_ckpt, model.temperature)
    out["temperature"] = model.temperature
    split, scored = "val", (targets, probs)
    tested = labelled_test_probs(trainer, model, datamodule)
    if tested is not None:
        split, scored = "test", tested
    true, predicted = scored
    metrics = classification_metrics(predicted, true, model.class_names)
    out |= {f"{split}_{k}": metrics[k] for k in LOGGED}
    logged = {f"{split}/{k}": metrics[k] for k in LOGGED} | {
        f"{split}/temperature": model.temperature
    }
    if calibrate:
        logged |= {"val/ece_uncalibrated": out["val_ece_uncalibrated"]}
    for logger in trainer.loggers:
        logger.log_metrics(logged, step=trainer.global_step)
    return out
