"""Average the weights of checkpoints into one model:
``python -m hw1.average 'ckpt_path=[A.ckpt,B.ckpt,C.ckpt]' output=avg.ckpt data.root=ROOT``.

The checkpoints must hold the same model (architecture, head, classes, preprocessing),
e.g. the top-k checkpoints of one run. Their floating-point tensors are averaged; integer
buffers (BatchNorm's ``num_batches_tracked``) are the first checkpoint's. Averaged weights
do not match the averaged BatchNorm statistics, so those are recomputed with a pass over
the training images, with the eval transform (``torch.optim.swa_utils.update_bn``). The
result is a checkpoint that hw1.predict and hw1.eval read as any other.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, StochasticWeightAveraging
from omegaconf import DictConfig
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from hw1.data.datasets import ClassFolders
from hw1.data.image_check import readable_samples
from hw1.data.scan import display_path, labelled_files, nfc_names
from hw1.inference.predictor import checkpoint_paths
from hw1.models.classifier import Classifier
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.presets import EvalSpec, eval_preset
from hw1.utils.errors import UserFileNotFoundError, UserValueError, require_positive
from hw1.utils.io import check_writable_file, write_atomically
from hw1.utils.precision import inference_device
from hw1.utils.progress import progress
from hw1.utils.signals import SignalLatch, latched, stop_if_signalled
from hw1.utils.weights import load_checkpoint

# model settings that change how a model runs, not which weights it has
RUN_ONLY = ("weights", "compile", "compile_backend", "channels_last")


def check_swa(callbacks: Sequence[Any]) -> None:
    """Refuse Lightning's StochasticWeightAveraging beside EarlyStopping: SWA puts the
    average in place of the weights only at the last epoch, which a stopped run never
    reaches: it would end with its raw weights, silently."""
    kinds = {type(c) for c in callbacks}
    if StochasticWeightAveraging in kinds and EarlyStopping in kinds:
        raise UserValueError(
            "callbacks=[default,swa] with early stopping: a run stopped early never gets the "
            "weight average. Add callbacks.early_stopping=null"
        )


def must_share(hparams: dict[str, Any]) -> dict[str, Any]:
    """What checkpoints must share to be averaged: the architecture and its frozen
    stages, the head, the classes and the preprocessing."""
    model = {k: v for k, v in hparams["model"].items() if k not in RUN_ONLY}
    return {
        "model": model,
        "head": hparams["head"],
        "class_names": nfc_names(hparams["class_names"]),  # as the folders' (scan.nfc)
        "preprocess": hparams.get("preprocess"),
    }


def load_checkpoints(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The checkpoints, refused unless every one holds the first one's model."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise UserValueError(
            f"ckpt_path={[str(p) for p in paths]}: averaging needs two checkpoints or more: "
            "'ckpt_path=[A.ckpt,B.ckpt]'"
        )
    need = ("state_dict", "hyper_parameters")
    ckpts = [load_checkpoint(path, "ckpt_path", need) for path in paths]
    first = must_share(ckpts[0]["hyper_parameters"])
    for path, ckpt in zip(paths[1:], ckpts[1:], strict=True):
        other = must_share(ckpt["hyper_parameters"])
        differ = [key for key in first if other[key] != first[key]]
        if differ:
            raise UserValueError(
                f"{path} holds another model than {paths[0]} (its {', '.join(differ)} "
                f"differ): average only checkpoints of the same model, e.g. one run's top-k"
            )
    return ckpts


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor (computed in float64, kept in its dtype);
    other tensors are the first state dict's."""
    averaged = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total = sum(s[key].double() for s in states)
            averaged[key] = (total / len(states)).to(first.dtype)
        else:
            averaged[key] = first.clone()
    return averaged


class BatchNormPass(nn.Module):
    """The model as ``update_bn`` trains it: BatchNorm layers gather statistics, but
    dropout stays off (the statistics are those of the network that predicts), and the
    BatchNorm of frozen stages, which the model keeps in eval mode, keep theirs."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> BatchNormPass:
        super().train(mode)
        for m in self.model.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def frozen_norms(model: Classifier) -> dict[str, dict[str, torch.Tensor]]:
    """The buffers of the BatchNorm layers that stay in eval mode in training mode (frozen
    stages): update_bn resets every BatchNorm it finds, these are put back after it."""
    was_training = model.training
    model.train()
    kept = {
        name: {k: v.clone() for k, v in m.state_dict().items()}
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training
    }
    model.train(was_training)
    return kept


def normalised(
    loader: DataLoader, finish: FinishOnDevice, device: torch.device, latch: SignalLatch
) -> Iterator[torch.Tensor]:
    """The loader's batches on ``device``, normalised; stopped (Stopped) between two once
    ``latch`` has noted a SIGTERM or Ctrl-C."""
    for x, _ in loader:
        stop_if_signalled(latch)
        yield finish(x.to(device))
    stop_if_signalled(latch)


def recalibrate_batch_norm(
    model: Classifier, batches: Iterable[torch.Tensor], total: int | None = None
) -> None:
    """Recompute the running statistics of ``model``'s BatchNorm layers as the average over
    ``batches`` (update_bn's cumulative average), with a progress bar."""
    kept = frozen_norms(model)
    shown = progress(batches, "BatchNorm statistics from", "batches", total=total)
    update_bn(shown, BatchNormPass(model))
    modules = dict(model.named_modules())
    for name, buffers in kept.items():
        modules[name].load_state_dict(buffers)
    model.eval()


def training_images(root: Path, model: Classifier, max_pixels: int | None) -> ClassFolders:
    """The readable training images of ``root`` with the model's eval transform."""
    folder = root / "train"
    if not folder.is_dir():
        raise UserFileNotFoundError(
            f"data.root={root}: no train/ folder, whose images give the averaged model its "
            "BatchNorm statistics"
        )
    spec = EvalSpec.from_dict(model.hparams.preprocess)
    samples = readable_samples(labelled_files(folder, model.class_names), root, max_pixels)
    if not samples:
        raise UserFileNotFoundError(
            f"{display_path(folder)} has no readable images in the checkpoint's class folders "
            f"({', '.join(model.class_names[:5])}, ...)"
        )
    return ClassFolders(folder, model.class_names, eval_preset(spec), samples)


def averaged_checkpoint(ckpts: Sequence[dict[str, Any]], paths: Sequence[Path]) -> dict[str, Any]:
    """A checkpoint of the averaged weights with the first one's hyper-parameters, as
    ``Classifier.from_checkpoint`` reads it; no optimizer state (nothing to resume)."""
    first = ckpts[0]
    return {
        "hyper_parameters": first["hyper_parameters"],
        "state_dict": average_state_dicts([c["state_dict"] for c in ckpts]),
        "pytorch-lightning_version": first.get("pytorch-lightning_version", L.__version__),
        "averaged_from": [str(p) for p in paths],
        "val_history": [],
    }


def average(cfg: DictConfig) -> Path:
    if not cfg.output:
        raise UserValueError("output is required: output=avg.ckpt")
    output = Path(cfg.output)
    check_writable_file(output, "output")
    require_positive(data__batch_size=cfg.data.batch_size)
    if cfg.get("device") is not None:  # the key hw1.average took before it took trainer.*
        raise UserValueError(
            f"device={cfg.device}: hw1.average takes the keys of the other commands now: "
            "trainer.accelerator=cpu|gpu|auto and trainer.devices=[N] for GPU N"
        )
    device = inference_device(cfg.trainer.accelerator, cfg.trainer.devices)
    paths = checkpoint_paths(cfg.ckpt_path)
    ckpt = averaged_checkpoint(load_checkpoints(paths), paths)
    model = Classifier.from_checkpoint(paths[0])
    model.load_state_dict(ckpt["state_dict"])
    dataset = training_images(Path(cfg.data.root), model, cfg.data.max_image_pixels)

    L.seed_everything(cfg.seed)
    model.to(device)
    loader = DataLoader(
        dataset,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    finish = FinishOnDevice(model.hparams.preprocess["mean"], model.hparams.preprocess["std"])
    with latched("averaging") as latch:
        batches = normalised(loader, finish, device, latch)
        recalibrate_batch_norm(model, batches, total=len(loader))
    ckpt["state_dict"] = {k: v.cpu() for k, v in model.state_dict().items()}

    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    write_atomically(output, buffer.getvalue())
    print(json.dumps({"output": str(output), "averaged": len(paths), "bn_images": len(dataset)}))
    return output
