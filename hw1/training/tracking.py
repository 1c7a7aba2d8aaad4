"""Experiment tracking: the run's loggers (conf/logger/: tensorboard, csv, mlflow, wandb, any
list of them, or none) and what each gets, the same on all of them: the run's short list of
settings, the metrics Lightning logs, the figures, the final ``metrics.json`` values, the
run's files as artifacts, the git commit and the command line.

Lightning's loggers do the logging; this module fills in what a config cannot know (the
experiment and run names of a sweep's job, a resumed run's ids), and saves the ids in
``<run dir>/tracking.json`` when the run starts, so that ``resume=true`` (or ``ckpt_path=``)
continues the same MLflow run and W&B run, even after a SIGKILL. Checking before training
that each logger's store can be written is ``hw1.training.tracking_checks``; TensorBoard's
HPARAMS tab is ``hw1.training.hparams``.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from omegaconf import DictConfig, OmegaConf

from hw1.training.hparams import end_hparams, hparams_metrics, run_failed, start_hparams
from hw1.training.tracking_checks import artifact_root, class_name, local_store, logger_entries
from hw1.utils.errors import UserRuntimeError
from hw1.utils.io import write_atomically

log = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
# The run's files that go to MLflow and W&B as artifacts when they exist: the submission,
# the run's record, and hw1.eval's report and figure when it wrote them into the run.
ARTIFACTS = ("prediction.csv", "metrics.json", "eval.json", "confusion.png")
# metrics.json's numbers that every logger gets at the end, as final/NAME.
FINAL = (
    "best_val_acc", "best_epoch", "epochs", "test_acc", "params", "trainable_params",
    "train_images_per_s", "wall_time_s",
)  # fmt: skip


# --- before training: names and ids -----------------------------------------------------


def absolute_uri(uri: str) -> str:
    """A local store's URI with an absolute path (``sqlite:///outputs/mlflow.db`` is
    relative to the working directory), so that tracking.json names the same store from
    anywhere; any other URI as it is."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).absolute())
    if parsed.scheme in ("", "file"):
        return Path(parsed.path).absolute().as_uri()
    return uri


def names(cfg: DictConfig, run_dir: Path) -> tuple[str, str]:
    """(experiment, run) names: ``tracking.experiment`` and ``tracking.run`` when set
    (hw1.tune: the study, trial_N); else a sweep is one experiment named after its
    directory, each job a run named like its directory (0_R34_64), and a single run is in
    ``hw1``, named by its directory."""
    given = cfg.get("tracking") or {}
    hydra = HydraConfig.get()
    if hydra.mode == RunMode.MULTIRUN:
        experiment, run_name = str(hydra.sweep.dir), run_dir.name
    else:
        try:
            experiment, run_name = "hw1", str(run_dir.absolute().relative_to(Path.cwd()))
        except ValueError:
            experiment, run_name = "hw1", str(run_dir)
    return given.get("experiment") or experiment, given.get("run") or run_name


def source_tags() -> dict[str, str]:
    """The exact command line, and the git commit of hw1's checkout when it is one."""
    tags = {"hw1.command": shlex.join([Path(sys.executable).name, *sys.argv])}
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0:
            tags["mlflow.source.git.commit"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def saved_ids(cfg: DictConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """The tracked runs' ids a resumed run continues: from its own run directory
    (``resume=true``), or from the run directory of ``ckpt_path``'s checkpoint."""
    if cfg.get("resume"):
        source = run_dir
    elif cfg.get("ckpt_path"):
        source = Path(str(cfg.ckpt_path)).absolute().parent.parent  # <run>/checkpoints/x.ckpt
    else:
        return {}
    path = source / TRACKING_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("%s unreadable (%s): the tracked runs start afresh", path, e)
        return {}


def make_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """The configured loggers, with a sweep's names and a resumed run's ids filled in."""
    experiment, run_name = names(cfg, run_dir)
    saved = saved_ids(cfg, run_dir)
    entries = list(logger_entries(cfg).values())
    loggers = []
    for key, entry in zip(keys(map(class_name, entries)), entries, strict=True):
        kind = class_name(entry)
        extra: dict[str, Any] = {}
        if kind == "MLFlowLogger":
            extra = mlflow_arguments(entry, saved.get(key, {}), experiment, run_name)
        elif kind == "WandbLogger":
            extra = wandb_arguments(entry, saved.get(key, {}), experiment, run_name)
        loggers.append(instantiate(entry, **extra))
    return loggers


def mlflow_arguments(
    entry: DictConfig, saved: dict[str, Any], experiment: str, run_name: str
) -> dict[str, Any]:
    uri = absolute_uri(str(entry.tracking_uri))
    args: dict[str, Any] = {
        "tracking_uri": uri,
        "experiment_name": experiment,
        "run_name": run_name,
        "tags": {**source_tags(), **OmegaConf.to_container(entry.get("tags") or DictConfig({}))},
    }
    if local_store(uri) is not None:
        args["artifact_location"] = artifact_root(entry, uri).as_uri()
    if saved.get("run_id"):
        if saved.get("tracking_uri") == uri:
            args["run_id"] = saved["run_id"]
        else:
            log.warning(
                "the MLflow run %s was in %s, not %s: continuing in a new run",
                saved["run_id"], saved.get("tracking_uri"), uri,
            )  # fmt: skip
    return args


def wandb_arguments(
    entry: DictConfig, saved: dict[str, Any], experiment: str, run_name: str
) -> dict[str, Any]:
    grouped = HydraConfig.get().mode == RunMode.MULTIRUN or experiment != "hw1"
    args = {
        "name": run_name,
        "group": entry.get("group") or (experiment if grouped else None),
        "notes": source_tags()["hw1.command"],
    }
    if saved.get("id"):  # else W&B draws one, which start() saves
        args["id"] = saved["id"]
    return args


def start(
    loggers: Iterable[Logger],
    run_dir: Path,
    params: dict[str, Any],
    metrics: list[str] | None = None,
) -> None:
    """On the main process, before fit: opens the tracked runs (a resumed one set running
    again), saves their ids in tracking.json, and logs the run's settings to every logger;
    TensorBoard gets its HPARAMS entry, the short list with the ``metrics``' tags
    (``hparams_metrics``), whose values come at the end."""
    ids: dict[str, dict[str, Any]] = {}
    for name, logger in named(loggers):
        if isinstance(logger, MLFlowLogger):
            ids[name] = start_mlflow(name, logger)
        elif isinstance(logger, WandbLogger):
            run = logger.experiment
            ids[name] = {"id": run.id, "project": run.project, "dir": str(run.dir)}
            run.config.update({"hw1.git_commit": source_tags().get("mlflow.source.git.commit")})
    if ids:
        write_atomically(run_dir / TRACKING_FILE, json.dumps(ids, indent=2))
    for name, logger in named(loggers):
        if isinstance(logger, TensorBoardLogger):
            start_hparams(logger, params, metrics or hparams_metrics("val"))
        else:
            log_params(name, logger, params)


def keys(class_names: Iterable[str]) -> list[str]:
    """The loggers' keys in tracking.json, from their class names in the run's order:
    mlflow, wandb, ...; mlflow_1 for a second one of a kind."""
    out, seen = [], {}
    for name in class_names:
        base = name.removesuffix("Logger").lower()
        n = seen[base] = seen.get(base, -1) + 1
        out.append(base if n == 0 else f"{base}_{n}")
    return out


def named(loggers: Iterable[Logger]) -> list[tuple[str, Logger]]:
    """Each logger with its key in tracking.json."""
    loggers = list(loggers)
    return list(zip(keys(type(lg).__name__ for lg in loggers), loggers, strict=True))


def start_mlflow(name: str, logger: MLFlowLogger) -> dict[str, Any]:
    uri = logger._tracking_uri  # the URI it was given: it has no getter for it
    try:
        run_id = logger.run_id
        if logger.experiment.get_run(run_id).info.status != "RUNNING":
            logger.experiment.update_run(run_id, status="RUNNING")  # a resumed run
    except Exception as e:
        raise UserRuntimeError(
            f"logger.{name}.tracking_uri={uri}: could not open an MLflow run: "
            f"{type(e).__name__}: {e}"
        ) from e
    return {"tracking_uri": uri, "experiment_id": logger.experiment_id, "run_id": run_id}


def log_params(name: str, logger: Logger, params: dict[str, Any]) -> None:
    """The settings; on a continued MLflow run only those not logged yet (MLflow refuses a
    new value for a logged parameter: a changed one is named in a warning)."""
    if isinstance(logger, MLFlowLogger):
        logged = logger.experiment.get_run(logger.run_id).data.params
        changed = [k for k, v in params.items() if k in logged and logged[k] != str(v)[:250]]
        if changed:
            log.warning(
                "logger.%s: the continued MLflow run keeps its logged %s", name, ", ".join(changed)
            )
        params = {k: v for k, v in params.items() if k not in logged}
        if not params:
            return
    logger.log_hyperparams(params)


# --- during training: figures -----------------------------------------------------------


def has_image_logger(loggers: Iterable[Logger]) -> bool:
    return any(isinstance(lg, (TensorBoardLogger, MLFlowLogger, WandbLogger)) for lg in loggers)


def log_image(loggers: Iterable[Logger], tag: str, image: np.ndarray, step: int) -> None:
    """An HWC uint8 image on every logger that holds images: TensorBoard's IMAGES tab,
    an MLflow artifact ``figures/TAG_stepN.png``, a W&B image; CSV holds none."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            name = f"figures/{tag.replace('/', '_')}_step{step:06d}.png"
            logger.experiment.log_image(logger.run_id, image, artifact_file=name)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image], step=step)


# --- after training: results, files, summary --------------------------------------------


def finish(
    loggers: Iterable[Logger],
    metrics: dict[str, Any],
    run_dir: Path,
    step: int,
) -> None:
    """The results on every logger (TensorBoard: the metrics of its HPARAMS tab; the
    others: final/NAME metrics), the run's files as artifacts, and each run closed."""
    status = "failed" if run_failed(metrics) else "success"
    final = {f"final/{k}": metrics[k] for k in FINAL if isinstance(metrics.get(k), (int, float))}
    files = [run_dir / f for f in ARTIFACTS if (run_dir / f).is_file()]
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            end_hparams(logger, metrics, step)
        else:
            logger.log_metrics(final, step=step)
        if isinstance(logger, MLFlowLogger):
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path))
        elif isinstance(logger, WandbLogger):
            for path in files:
                logger.experiment.save(str(path), base_path=str(run_dir), policy="now")
        logger.finalize(status)
        if isinstance(logger, WandbLogger):
            logger.experiment.finish(exit_code=0 if status == "success" else 1)


def summary_lines(loggers: Iterable[Logger], run_dir: Path) -> list[str]:
    """Where each logger put the run, for the end-of-run summary."""
    lines = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"  {'TensorBoard':<14} tensorboard --logdir {run_dir}")
        elif isinstance(logger, CSVLogger):
            lines.append(f"  {'CSV':<14} {Path(logger.log_dir) / 'metrics.csv'}")
        elif isinstance(logger, MLFlowLogger):
            uri = logger._tracking_uri  # see start_mlflow
            lines.append(f"  {'MLflow':<14} run {logger.run_id} in {uri}")
            if local_store(uri) is not None:
                lines.append(f"  {'':<14} mlflow ui --backend-store-uri {uri}")
        elif isinstance(logger, WandbLogger):
            lines.append(f"  {'W&B':<14} run {logger.version} in {logger.save_dir}/wandb")
    return lines


# --- hw1.tune ---------------------------------------------------------------------------


def end_trial(run_dir: Path, number: int, state: str) -> None:
    """An hw1.tune trial's number and Optuna state (COMPLETE, PRUNED, FAIL) on its MLflow
    runs, a pruned one marked KILLED (Lightning marked it FAILED as the pruner stopped it);
    and a W&B run a stopped trial left open is finished, so the next trial gets its own."""
    path = run_dir / TRACKING_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    for ids in saved.values():
        if "run_id" not in ids or "tracking_uri" not in ids:
            continue
        from mlflow import MlflowClient

        client = MlflowClient(ids["tracking_uri"])
        client.set_tag(ids["run_id"], "optuna.trial", str(number))
        client.set_tag(ids["run_id"], "optuna.state", state)
        if state == "PRUNED":
            client.set_terminated(ids["run_id"], "KILLED")
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=0 if state != "FAIL" else 1)
