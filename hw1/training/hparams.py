"""TensorBoard's side of a run: the logger without Lightning's ``epoch`` scalar, and the
HPARAMS tab, one row per run. Its entry is written as the run starts (so a run that fails
or stops early has one too), with a short list of settings that fits the tab, and its
metrics and end status come when the run ends. torch's SummaryWriter.add_hparams would
write it into a sub-folder of its own and cannot mark the settings the command line set,
so the plugin's summaries are built and edited here.

``hw1.training.tracking`` calls ``start_hparams`` and ``end_hparams`` for a TensorBoard
logger where the other loggers get their settings and final values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from hw1.utils.compat import tensorboard_file_writer

# TensorBoard's HPARAMS tab: the config groups chosen (their names, never a _target_ path)
# and the few values a user sets most, besides whatever the command line set.
HPARAMS_GROUPS = ("experiment", "recipe", "stage", "tricks", "model", "optim", "sched")
HPARAMS_KEYS = (
    "seed", "tta", "model.weights", "data.image_size", "data.batch_size", "optim.lr",
    "trainer.max_epochs", "trainer.precision",
)  # fmt: skip


class TensorBoard(TensorBoardLogger):
    """Lightning's TensorBoardLogger without the ``epoch`` scalar that Lightning adds to
    every dict it logs: it would be a top-level group of its own beside ``train/``,
    ``val/``, ``test/`` and ``lr/``, and TensorBoard's x-axis is the step anyway (the CSV
    logger keeps its epoch column)."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)


def hparams_settings(
    params: dict[str, Any], choices: dict[str, Any], overridden: Iterable[str]
) -> dict[str, Any]:
    """The HPARAMS tab's short list: the chosen config groups (``HPARAMS_GROUPS``, and any
    group the command line chose), the values of ``HPARAMS_KEYS`` and of every key the
    command line set (``overridden``); the full list stays in hparams.yaml, MLflow, W&B."""
    overridden = list(overridden)
    groups = [g for g in choices if g in HPARAMS_GROUPS or g in overridden]
    chosen = {g: str(choices[g]) for g in groups if choices[g] is not None}
    keys = [k for k in (*HPARAMS_KEYS, *overridden) if k in params and k not in chosen]
    return chosen | {k: params[k] for k in keys if params[k] is not None}


def command_line() -> tuple[dict[str, Any], list[str]]:
    """(the config groups' choices, the keys the command line set), from Hydra: empty
    outside a Hydra run."""
    if not HydraConfig.initialized():
        return {}, []
    hydra = HydraConfig.get()
    keys = [o.split("=", 1)[0].lstrip("+~") for o in hydra.overrides.task if "=" in o]
    return dict(hydra.runtime.choices), [k for k in keys if not k.startswith("hydra")]


def hparams_metrics(scored: str) -> list[str]:
    """The HPARAMS tab's metrics, most wanted first (it shows the first five): the best
    validation accuracy and the final figures of the split the run scores at the end
    (``scored``: test when its answers exist, else val), all of them scalars of the run."""
    tags = ["val/best_acc", f"{scored}/top1", f"{scored}/f1_macro", f"{scored}/ece"]
    return [*tags, "val/best_epoch", *(["test/prediction_acc"] if scored == "test" else [])]


def start_hparams(logger: TensorBoardLogger, params: dict[str, Any], metrics: list[str]) -> None:
    """TensorBoard's HPARAMS entry, written as the run starts so that a run that fails or
    stops early has one too (its metrics n/a): the short list of settings and the metrics'
    tags, whose values are the run's own scalars of those names. The settings the command
    line set are marked as differing, which TensorBoard sorts first and shows (of ~15, it
    shows 5 until more are ticked): the plugin always puts the settings left of the
    metrics, so the list is kept short instead."""
    choices, overridden = command_line()
    settings = hparams_settings(params, choices, overridden)
    experiment, session_start, _ = hparams_summaries(settings, dict.fromkeys(metrics))
    _edit_plugin_data(experiment, lambda d: _mark_differs(d, overridden))
    writer = tensorboard_file_writer(logger.experiment)
    writer.add_summary(experiment)
    writer.add_summary(session_start)
    logger.hparams.update(params)  # hparams.yaml keeps the full list


def _mark_differs(data: Any, names: list[str]) -> None:
    for info in data.experiment.hparam_infos:
        info.differs = info.name in names


def _edit_plugin_data(summary: Any, edit) -> None:
    """Applies ``edit`` to the HParamsPluginData inside an hparams ``summary``."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    metadata = summary.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(metadata.content)
    edit(data)
    metadata.content = data.SerializeToString()


def run_failed(metrics: dict[str, Any]) -> bool:
    """Whether the end-of-training prediction or evaluation failed (the fit itself ended)."""
    return "prediction_error" in metrics or "evaluation_error" in metrics


def end_hparams(logger: TensorBoardLogger, metrics: dict[str, Any], step: int) -> None:
    """The results as the HPARAMS metrics' scalars, and the session's end and status."""
    from tensorboard.plugins.hparams.api_pb2 import Status

    values = {
        "val/best_acc": metrics.get("best_val_acc"),
        "val/best_epoch": metrics.get("best_epoch"),
        "test/prediction_acc": metrics.get("test_acc"),
    }
    logger.log_metrics({k: v for k, v in values.items() if v is not None}, step)
    _, _, session_end = hparams_summaries({}, {})
    status = Status.Value("STATUS_FAILURE" if run_failed(metrics) else "STATUS_SUCCESS")
    _edit_plugin_data(session_end, lambda d: setattr(d.session_end_info, "status", status))
    tensorboard_file_writer(logger.experiment).add_summary(session_end)
