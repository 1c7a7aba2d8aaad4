"""Train a classifier: ``python -m hw1.train [overrides]``.

Compose the config, build the data module, model, callbacks, loggers and trainer, fit,
then predict the test folder with the best checkpoint and write ``metrics.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import hw1  # noqa: F401  (registers the config resolvers)
from hw1.data import FolderDataModule
from hw1.demo import TEST_LABELS
from hw1.model import Classifier
from hw1.predict import collect, csv_text, submission_rows, write_atomically

log = logging.getLogger(__name__)


def predict_folder(
    trainer: L.Trainer, model: Classifier, datamodule: FolderDataModule, ckpt_path: str | None
) -> list[tuple[str, str]]:
    """(image name, class folder name) for every test image, sorted by name."""
    names, probs = collect(trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path))
    return submission_rows(names, probs, model.class_names)


def accuracy_against(rows: list[tuple[str, str]], labels_csv: Path) -> float:
    """Accuracy of the predicted rows against a ``image_name,label`` answer file."""
    with open(labels_csv, newline="") as f:
        truth = {r["image_name"]: r["label"] for r in csv.DictReader(f)}
    return sum(truth[name] == label for name, label in rows) / len(rows)


def train(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    start = time.time()

    datamodule: FolderDataModule = instantiate(cfg.data)
    datamodule.prepare_data()  # fails early, before any model is built, on a bad data.root
    container = OmegaConf.to_container(cfg, resolve=True)
    model = Classifier(
        model=container["model"],
        head=container["head"],
        optim=container["optim"],
        sched=container["sched"],
        class_names=datamodule.class_names,
        preprocess=datamodule.sizes.to_dict(),
    )
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    loggers = [instantiate(lg) for lg in cfg.logger.values() if lg is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    trainer.fit(model, datamodule=datamodule)

    ckpt = trainer.checkpoint_callback
    best_ckpt = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    history = model.val_history
    best = max(history, key=lambda h: h["val_acc"]) if history else None
    metrics: dict[str, Any] = {
        "id": cfg.id,
        "best_val_acc": best["val_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "epochs": trainer.current_epoch,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "best_ckpt": best_ckpt,
        "last_ckpt": ckpt.last_model_path if ckpt is not None and ckpt.last_model_path else None,
        "tta": cfg.tta,
        "val_history": history,
    }

    if datamodule.test_dir.is_dir():
        rows = predict_folder(trainer, model, datamodule, best_ckpt)
        if len(rows) < len(datamodule.test_set):
            # fast_dev_run / limit_predict_batches: a submission must have every test image.
            log.warning(
                "predicted %d of %d test images: no prediction.csv",
                len(rows),
                len(datamodule.test_set),
            )
        elif trainer.is_global_zero:
            write_atomically(
                run_dir / "prediction.csv", csv_text([("image_name", "pred_label"), *rows])
            )
            metrics["prediction_csv"] = str(run_dir / "prediction.csv")
            if (datamodule.root / TEST_LABELS).exists():
                metrics["test_acc"] = accuracy_against(rows, datamodule.root / TEST_LABELS)

    metrics["wall_time_s"] = round(time.time() - start, 1)
    if trainer.is_global_zero:
        write_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        summary = {k: v for k, v in metrics.items() if k != "val_history"}
        print(json.dumps(summary, indent=2))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    torch.set_float32_matmul_precision("high")
    metrics = train(cfg)
    return metrics["best_val_acc"]  # for Hydra sweepers that optimise a value


if __name__ == "__main__":
    main()
