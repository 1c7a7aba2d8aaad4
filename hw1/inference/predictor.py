"""Prediction from checkpoints: one model or an ensemble (the mean of their softmax, each
with its own test-time views), gathered across DDP processes, turned into the submission's
rows; ``predict(cfg)`` is ``python -m hw1.predict``'s whole job.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig
from torch.utils.data import Dataset

from hw1.data.datasets import UnlabeledImages, view_loader
from hw1.data.device_batches import LoaderDataModule
from hw1.data.image_check import check_test_images
from hw1.data.scan import display_path
from hw1.models.classifier import Classifier
from hw1.transforms.presets import EvalSpec
from hw1.utils.errors import UserFileNotFoundError, UserValueError, require_positive
from hw1.utils.io import check_writable_file, csv_text, write_atomically
from hw1.utils.progress import progress
from hw1.utils.signals import SignalLatch, latched, stop_if_signalled


def checkpoint_paths(ckpt_path: str | Sequence[str] | None) -> list[Path]:
    if ckpt_path is None:
        raise UserValueError("ckpt_path is required: ckpt_path=PATH or ckpt_path=[A,B,C]")
    paths = ckpt_path if isinstance(ckpt_path, (list, tuple, ListConfig)) else [ckpt_path]
    return [Path(p) for p in paths]


def load_ensemble(paths: Sequence[Path]) -> list[Classifier]:
    models = [Classifier.from_checkpoint(p) for p in paths]
    for path, model in zip(paths[1:], models[1:], strict=True):
        if model.class_names != models[0].class_names:
            raise UserValueError(
                f"{path} was trained on other classes than {paths[0]}: an ensemble needs "
                "checkpoints of the same class folders"
            )
    return models


def ensemble_probs(
    trainer: L.Trainer,
    models: Sequence[Classifier],
    dataset: Dataset,
    tta: str,
    seed: int,
    batch_size: int,
    num_workers: int,
) -> tuple[list[Any], torch.Tensor]:
    """(keys in dataset order, mean class probabilities over models and views)."""
    keys: list[Any] = []
    total = None
    # an ensemble: a count of its checkpoints beside Lightning's bar of each one's batches
    each: Iterable[Classifier] = models
    if len(models) > 1:
        each = progress(models, f"predicted (tta={tta}) with", "checkpoints", each=True)
    for model in each:
        spec = EvalSpec.from_dict(model.hparams.preprocess)
        loader = view_loader(dataset, spec, tta, seed, batch_size, num_workers)
        # Under DDP every process gets the same rows in the same order: the models add up.
        batches = LoaderDataModule(spec, predict=loader)  # normalises on the device
        keys, probs = predict_rows(trainer, model, datamodule=batches)
        total = probs if total is None else total + probs
    return keys, total / len(models)


class StopOnSignal(L.Callback):
    """Stops ``trainer.predict`` at the end of a batch once ``latch`` has noted a SIGTERM
    or Ctrl-C (Lightning notes a SIGTERM, and predicts on): every process decides at the
    same batch (under DDP a collective of one integer), then Stopped leaves predict."""

    def __init__(self, latch: SignalLatch) -> None:
        self.latch = latch

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0):
        signum = self.latch.received
        if trainer.world_size > 1:
            flag = torch.tensor(signum, device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        stop_if_signalled(self.latch, signum)


@contextlib.contextmanager
def stopping_on_signal(trainer: L.Trainer, what: str, again: str | None = None) -> Iterator[None]:
    """While the block runs, a SIGTERM or Ctrl-C stops ``trainer``'s predictions at the end
    of a batch, exit status 143 or 130 (Stopped), with a log line saying what to rerun;
    nothing is written after it (the block writes its outputs once it has them all)."""
    with latched(what, again) as latch:
        callback = StopOnSignal(latch)
        trainer.callbacks.append(callback)
        try:
            yield
            stop_if_signalled(latch)  # one that came after the last batch
        finally:
            trainer.callbacks.remove(callback)


def predict_rows(
    trainer: L.Trainer, model: Classifier, *args: Any, **kwargs: Any
) -> tuple[list[Any], torch.Tensor]:
    """``trainer.predict(model, *args, **kwargs)`` as (keys, probs): one key list and one
    tensor of every image. Under DDP each process predicts its share, and every process
    gets all of them, in rank order."""
    keys, probs = collect(trainer.predict(model, *args, **kwargs))
    if trainer.world_size > 1:
        keys, probs = gather_rows(keys, probs)
    return keys, probs


def collect(batches: list[tuple[Any, torch.Tensor]]) -> tuple[list[Any], torch.Tensor]:
    """``Trainer.predict``'s (keys, probs) batches as one key list and one tensor."""
    keys = [k for batch_keys, _ in batches for k in _as_list(batch_keys)]
    return keys, torch.cat([p for _, p in batches])


def gather_rows(keys: list[Any], probs: torch.Tensor) -> tuple[list[Any], torch.Tensor]:
    """Every process's (keys, probs), on every process. all_gather_object because keys
    may be strings, and the shares may differ in length (Lightning's predict sampler
    repeats no image to even them out)."""
    shares: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(shares, (keys, probs.cpu()))
    return [k for share, _ in shares for k in share], torch.cat([p for _, p in shares])


def _as_list(keys: Any) -> list[Any]:
    return keys.tolist() if isinstance(keys, torch.Tensor) else list(keys)


def submission_rows(
    names: Sequence[str], probs: torch.Tensor, class_names: Sequence[str]
) -> list[tuple[str, str]]:
    """The rows of prediction.csv: (image name, class folder name), sorted by name."""
    labels = [class_names[i] for i in probs.argmax(dim=1).tolist()]
    return sorted(zip(names, labels, strict=True))


def save_probs(
    path: Path, keys: Sequence[Any], class_names: Sequence[str], probs: torch.Tensor
) -> None:
    """The class probabilities, for ensembling runs later: ``np.load(path)`` gives
    ``keys``, ``class_names`` and ``probs`` (rows in ``keys`` order)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, keys=np.array(keys), class_names=np.array(class_names), probs=probs.numpy()
    )
    write_atomically(path, buffer.getvalue())


def output_path(cfg: DictConfig, default_name: str) -> Path:
    """``output=FILE``, or ``default_name`` in the Hydra run directory; checked before any
    work (check_writable_file), with the data settings the work needs."""
    require_positive(data__batch_size=cfg.data.batch_size)
    if cfg.output:
        output = Path(cfg.output)
        check_writable_file(output, "output")
        return output
    return Path(HydraConfig.get().runtime.output_dir) / default_name


def inference_trainer(cfg: DictConfig, output: Path) -> L.Trainer:
    return instantiate(
        cfg.trainer,
        default_root_dir=str(output.parent),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def checked_test_folder(cfg: DictConfig) -> Path:
    """data.root's test folder, its images checked before any model is loaded: nothing
    is written on error."""
    test_dir = Path(cfg.data.root) / "test"
    if not test_dir.is_dir():
        raise UserFileNotFoundError(f"data.root={cfg.data.root}: no test/ folder to predict")
    if not check_test_images(test_dir, cfg.data.max_image_pixels):
        raise UserFileNotFoundError(f"{display_path(test_dir)} has no images to predict")
    return test_dir


def predict(cfg: DictConfig) -> Path:
    """The competition's prediction.csv of data.root's test folder, from checkpoints
    (``hw1.inference.api.predict`` sends other images and exported folders elsewhere)."""
    output = output_path(cfg, "prediction.csv")
    test_dir = checked_test_folder(cfg)
    models = load_ensemble(checkpoint_paths(cfg.ckpt_path))
    class_names = models[0].class_names

    L.seed_everything(cfg.seed)
    trainer = inference_trainer(cfg, output)
    with stopping_on_signal(trainer, "predicting"):
        names, probs = ensemble_probs(
            trainer,
            models,
            UnlabeledImages(test_dir),
            cfg.tta,
            cfg.seed,
            cfg.data.batch_size,
            cfg.data.num_workers,
        )
    rows = submission_rows(names, probs, class_names)
    if not trainer.is_global_zero:  # DDP: every process has every row, one writes
        return output
    write_atomically(output, csv_text([("image_name", "pred_label"), *rows]))
    if cfg.save_probs:
        save_probs(output.with_suffix(".probs.npz"), names, class_names, probs)
    print(json.dumps({"prediction_csv": str(output), "images": len(rows), "tta": cfg.tta}))
    return output
