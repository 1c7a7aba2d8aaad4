"""One training run from a composed config (``python -m hw1.train``, and each trial of
hw1.tune and the student of hw1.distill): build the data module, model, callbacks, loggers
and trainer, fit, predict the test folder with the best checkpoint, and write the run's
outputs (prediction.csv, metrics.json, the summary).
"""

from __future__ import annotations

import csv
import json
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from hw1 import PARAM_LIMIT
from hw1.data.datamodule import FolderDataModule
from hw1.data.demo import TEST_LABELS
from hw1.inference.averaging import check_swa
from hw1.inference.predictor import predict_rows, stopping_on_signal, submission_rows
from hw1.models.classifier import Classifier
from hw1.training import hparams, tracking, tracking_checks
from hw1.training.callbacks import check_progress_bar
from hw1.training.checkpoint_io import (
    last_checkpoint,
    model_checkpoint,
    remove_stale_temporaries,
)
from hw1.training.final_metrics import evaluate_and_calibrate, scored_split
from hw1.training.init_from import check_start, load_weights
from hw1.training.resume import resume_point, save_run_config
from hw1.utils.errors import UserValueError
from hw1.utils.io import csv_text, write_atomically
from hw1.utils.precision import use_tensor_cores
from hw1.utils.runlock import command_lock, first_process
from hw1.utils.signals import Stopped
from hw1.utils.weights import safe_load

log = logging.getLogger(__name__)


ModelMaker = Callable[[DictConfig, list[str], dict[str, Any]], Classifier]


def predict_folder(
    trainer: L.Trainer, model: Classifier, datamodule: FolderDataModule, ckpt_path: str | None
) -> list[tuple[str, str]]:
    """(image name, class folder name) for every test image, sorted by name, predicted
    with the weights in ``ckpt_path`` (the model's own without one)."""
    if ckpt_path:
        # Loaded here rather than by trainer.predict(ckpt_path=...): that also hands the
        # checkpoint to EMAWeightAveraging, which puts the raw weights back in place of
        # the averaged ones its state_dict holds, the ones that were validated.
        model.load_state_dict(safe_load(ckpt_path)["state_dict"])
    names, probs = predict_rows(trainer, model, datamodule=datamodule)
    return submission_rows(names, probs, model.class_names)


def accuracy_against(rows: list[tuple[str, str]], labels_csv: Path) -> float:
    """Accuracy of the predicted rows against a ``image_name,label`` answer file."""
    with open(labels_csv, newline="") as f:
        truth = {r["image_name"]: r["label"] for r in csv.DictReader(f)}
    return sum(truth[name] == label for name, label in rows) / len(rows)


HPARAM_GROUPS = (
    "id",
    "family",
    "seed",
    "tta",
    "data",
    "model",
    "head",
    "optim",
    "backbone_lr_factor",
    "param_groups",
    "init_from",
    "sched",
    "loss",
    "mix",
    "trainer",
)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """The leaves of nested dicts as ``{"group.key": value}``."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as flat ``group.key`` scalars, which TensorBoard's HPARAMS tab,
    MLflow and W&B can show and compare across the runs of a sweep; Hydra's own keys
    (``_target_``, ``_partial_``) are left out."""
    container = OmegaConf.to_container(cfg, resolve=True)
    flat = flatten({k: container[k] for k in HPARAM_GROUPS if k in container})
    flat = {k: v for k, v in flat.items() if not k.rsplit(".", 1)[-1].startswith("_")}
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def summary_text(metrics: dict[str, Any], run_dir: Path, tracked: Sequence[str] = ()) -> str:
    """The end-of-training summary for the console; ``tracked``: where each logger put the
    run (``tracking.summary_lines``)."""
    params = metrics["params"]
    limit = "under" if params < PARAM_LIMIT else "OVER"
    name = f"hw1 run {metrics['id']}" if metrics["id"] else "hw1 run"
    lines = ["", f"{name} finished in {metrics['wall_time_s']:.0f} s"]
    if metrics["best_val_acc"] is not None:
        lines.append(
            f"  best val acc   {metrics['best_val_acc']:.4f} at epoch {metrics['best_epoch']}"
            f" of {metrics['epochs']}"
        )
    if "test_acc" in metrics:
        lines.append(f"  test acc       {metrics['test_acc']:.4f} (tta={metrics['tta']})")
    lines += [
        f"  parameters     {params:,} ({limit} the 100 M limit)",
        f"  training       {metrics['train_images_per_s']:.1f} images/s",
    ]
    for label, key in (("best ckpt", "best_ckpt"), ("prediction", "prediction_csv")):
        if metrics.get(key):
            lines.append(f"  {label:<14} {metrics[key]}")
    for label, key in (("prediction", "prediction_error"), ("evaluation", "evaluation_error")):
        if key in metrics:
            lines.append(f"  {label:<14} FAILED: {metrics[key]}")
    lines.append(f"  metrics        {run_dir / 'metrics.json'}")
    lines += tracked
    return "\n".join(lines)


def data_and_model(
    cfg: DictConfig, make_model: ModelMaker = Classifier.from_config
) -> tuple[FolderDataModule, Classifier]:
    """The run's data module, checked, and its model (also for hw1.tune's LR finder).
    ``make_model(cfg, class_names, preprocess)`` builds the model (hw1.distill's student)."""
    datamodule: FolderDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.validate()  # fails early, before any model is built, on a bad data.root
    model = make_model(cfg, datamodule.class_names, datamodule.eval_spec.to_dict())
    return datamodule, model


def train(
    cfg: DictConfig,
    extra_callbacks: Sequence[L.Callback] = (),
    make_model: ModelMaker = Classifier.from_config,
) -> dict[str, Any]:
    """Build the data module, model, callbacks, loggers and trainer from ``cfg``, fit,
    predict the test folder with the best checkpoint; write the run's outputs.
    ``extra_callbacks`` join the configured ones (hw1.tune's pruning callback);
    ``make_model`` builds the model (hw1.distill's student). The run directory is locked
    (hw1.utils.runlock) meanwhile: a second run there is refused."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with command_lock(run_dir, f"hw1.{HydraConfig.get().job.name}"):
        return train_in(run_dir, cfg, extra_callbacks, make_model)


def train_in(
    run_dir: Path,
    cfg: DictConfig,
    extra_callbacks: Sequence[L.Callback] = (),
    make_model: ModelMaker = Classifier.from_config,
) -> dict[str, Any]:
    """train()'s work, in its locked ``run_dir``."""
    require_multirun_for_a_family(cfg)
    check_start(cfg.init_from, cfg.ckpt_path)
    # An unreachable tracking server stops the run before anything.
    tracking_checks.check_stores(cfg)
    check_progress_bar(cfg.callbacks)  # progress=rich without rich: before anything either
    use_tensor_cores()
    L.seed_everything(cfg.seed, workers=True)
    start = time.time()

    datamodule, model = data_and_model(cfg, make_model)
    if cfg.init_from and not cfg.resume:  # resumed, a stage continues from its own last.ckpt
        load_weights(model, cfg.init_from)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks += extra_callbacks
    check_swa(callbacks)
    loggers = tracking.make_loggers(cfg, run_dir)
    if not loggers:  # logger=none: Lightning refuses a learning-rate monitor with no logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    if first_process():  # the lock's holder: no save of another process is under way
        remove_stale_temporaries(last_checkpoint(trainer).parent)
    # Every logger gets the short list of settings (flat_hparams), not Lightning's own
    # logging of the model's hyper-parameters: save_hyperparameters(logger=False), the same
    # hyper-parameters kept for the checkpoint.
    model.save_hyperparameters(dict(model.hparams), logger=False)
    if trainer.is_global_zero:
        tags = hparams.hparams_metrics(scored_split(datamodule))
        tracking.start(trainer.loggers, run_dir, flat_hparams(cfg), tags)

    ckpt_path = resume_point(cfg, trainer, model)
    if trainer.is_global_zero:
        save_run_config(cfg)  # a resume's settings, now that they have been checked
    fit_start = time.time()
    # weights_only: a checkpoint may hold tensors and plain containers, never code
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = fit_metrics(cfg, trainer, model, datamodule, time.time() - fit_start)
    metrics["wall_time_s"] = round(time.time() - start, 1)
    if trainer.is_global_zero:  # the fit's record, whatever predicting does
        write_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=2))

    again = f"python -m hw1.{HydraConfig.get().job.name} resume=true hydra.run.dir={run_dir}"
    failed = "prediction_error"  # which step an error is reported against
    try:
        with stopping_on_signal(trainer, "the end-of-training prediction", again):
            rows = predict_test_folder(trainer, model, datamodule, metrics["best_ckpt"])
        if rows is not None and trainer.is_global_zero:
            metrics |= write_prediction(rows, run_dir, datamodule.root)
        # Temperature scaling and the full metrics (test/... or val/...), after the
        # submission is safely written.
        failed = "evaluation_error"
        metrics |= evaluate_and_calibrate(
            trainer, model, datamodule, metrics["best_ckpt"], cfg.calibrate
        )
    except Stopped as e:  # metrics.json and the checkpoints are kept; a resume predicts
        metrics[failed] = f"stopped by {signal.Signals(e.signum).name}"
        raise
    except Exception as e:
        # Re-raised once the fit's outputs are complete: the run exits non-zero, as it did
        # not deliver all it was asked for, and the error is reported as any other.
        metrics[failed] = f"{type(e).__name__}: {e}"
        log.error(failed_step_text(cfg, metrics, datamodule.root))
        raise
    finally:
        metrics["wall_time_s"] = round(time.time() - start, 1)
        if trainer.is_global_zero:
            write_run_outputs(cfg, trainer, metrics, run_dir)
    return metrics


def failed_step_text(cfg: DictConfig, metrics: dict[str, Any], data_root: Path) -> str:
    """What a failed end-of-training prediction or evaluation kept, and how to redo it."""
    ckpt = metrics["best_ckpt"] or metrics["last_ckpt"]
    if "prediction_error" in metrics:
        again = (
            f"predict again with: python -m hw1.predict ckpt_path={ckpt} "
            f"data.root={data_root} tta={cfg.tta}"
            if ckpt
            else "no checkpoint was saved to predict from"
        )
        return (
            "the end-of-training prediction failed, no prediction.csv: "
            f"{metrics['prediction_error']}\nmetrics.json, the checkpoints and the logs are "
            f"kept; {again}"
        )
    return (
        "the end-of-training evaluation (calibration and the full metrics) failed: "
        f"{metrics['evaluation_error']}\nprediction.csv, metrics.json, the checkpoints and "
        f"the logs are kept; evaluate again with: python -m hw1.eval ckpt_path={ckpt} "
        f"data.root={data_root} calibrate={str(cfg.calibrate).lower()}"
    )


def require_multirun_for_a_family(cfg: DictConfig) -> None:
    if cfg.family and HydraConfig.get().mode == RunMode.RUN:
        raise UserValueError(
            f"experiment={cfg.family} is a sweep of the report's family {cfg.family!r}: run it "
            f"with -m (python -m hw1.train -m experiment={cfg.family}), or one of its runs "
            f"with recipe=ID"
        )


def fit_metrics(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: Classifier,
    datamodule: FolderDataModule,
    fit_seconds: float,
) -> dict[str, Any]:
    """metrics.json as fit leaves it: the best validation epoch, the checkpoints, the
    parameter counts and the training speed."""
    ckpt = model_checkpoint(trainer)
    history = model.val_history
    best = max(history, key=lambda h: h["val_acc"]) if history else None
    folds = datamodule.hparams.folds
    return {
        "id": cfg.id,
        "family": cfg.family,
        "seed": cfg.seed,
        "init_from": cfg.init_from,  # the checkpoint a second stage started from
        "val_images": len(datamodule.val_set),  # for the confidence intervals of hw1.report
        "folds": folds,  # cross-validation: hw1.report pools the folds
        "fold": datamodule.hparams.fold if folds else None,
        "best_val_acc": best["val_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "epochs": trainer.current_epoch,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "best_ckpt": ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None,
        "last_ckpt": ckpt.last_model_path if ckpt is not None and ckpt.last_model_path else None,
        "tta": cfg.tta,
        # train_images counts this process's batches; under DDP each process has its own.
        "train_images_per_s": round(model.train_images * trainer.world_size / fit_seconds, 1),
        "val_history": history,
    }


def predict_test_folder(
    trainer: L.Trainer, model: Classifier, datamodule: FolderDataModule, ckpt_path: str | None
) -> list[tuple[str, str]] | None:
    """The rows of prediction.csv; None when the test folder has no images, or when not
    every image was predicted (fast_dev_run, limit_predict_batches): that is no submission."""
    if not datamodule.layout.test_images():
        return None
    rows = predict_folder(trainer, model, datamodule, ckpt_path)
    if len(rows) < len(datamodule.test_set):
        log.warning(
            "predicted %d of %d test images: no prediction.csv", len(rows), len(datamodule.test_set)
        )
        return None
    return rows


def write_prediction(rows: list[tuple[str, str]], run_dir: Path, data_root: Path) -> dict[str, Any]:
    """Writes prediction.csv; returns its entries of metrics.json, with the test accuracy
    when the data root holds the answers (the demo's test_labels.csv)."""
    path = run_dir / "prediction.csv"
    write_atomically(path, csv_text([("image_name", "pred_label"), *rows]))
    entries: dict[str, Any] = {"prediction_csv": str(path)}
    if (data_root / TEST_LABELS).exists():
        entries["test_acc"] = accuracy_against(rows, data_root / TEST_LABELS)
        entries["test_images"] = len(rows)
    return entries


def write_run_outputs(
    cfg: DictConfig, trainer: L.Trainer, metrics: dict[str, Any], run_dir: Path
) -> None:
    """metrics.json, the results and files on every logger (the settings and results in
    TensorBoard's HPARAMS tab), and the console summary."""
    write_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    tracking.finish(trainer.loggers, metrics, run_dir, trainer.global_step)
    print(summary_text(metrics, run_dir, tracking.summary_lines(trainer.loggers, run_dir)))
