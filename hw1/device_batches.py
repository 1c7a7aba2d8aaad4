"""The device-side end of every batch: a data module that finishes its batches on the
device after the transfer (the fast pipeline's deferred steps, uint8 to normalised floats,
the model's dtype), as timm's PrefetchLoader normalises on the GPU, and that data module
around ready DataLoaders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from hw1.fast_pipeline import Deferred
from hw1.presets import EvalSpec


class Normalise:
    """The last steps of every uint8 batch, on the batch's device: the deferred colour
    jitter, rotation and shift of ``Deferred`` batches (the fast train pipeline), then
    uint8 to normalised floats (also the eval view and the TTA views). Float batches come
    normalised from their preset (the reference train pipeline) and are only cast to
    ``dtype``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(
        self, x: torch.Tensor | Deferred, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        if isinstance(x, Deferred):
            x = x.render()
        elif x.dtype == torch.uint8:
            x = x.float()
        else:
            return x.to(dtype)
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        # The reference's ToDtype(scale=True) and Normalize, operation for operation, so that
        # the same pixels give the same floats to the bit.
        return x.mul_(1 / 255).sub_(self.mean).div_(self.std).to(dtype)


class DeviceBatches(L.LightningDataModule):
    """A data module that finishes its batches on the device, after the transfer and
    before the model's step and its autocast, as timm's PrefetchLoader normalises on the
    GPU: the model gets normalised floats whatever pipeline made them."""

    normalise: Normalise

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, *rest = batch
        return self.normalise(x, self.input_dtype()), *rest

    def input_dtype(self) -> torch.dtype:
        """The dtype the model takes: its own, bfloat16 or float16 under
        ``trainer.precision=bf16-true`` or ``16-true`` (mixed precision keeps a float32
        model and casts inside autocast); float32 outside a Trainer."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        return module.dtype if module is not None else torch.float32


class LoaderDataModule(DeviceBatches):
    """Ready DataLoaders as a data module, so that ``Trainer.fit`` and ``Trainer.predict``
    finish their batches as they do FolderDataModule's (hw1.predict, hw1.eval, benchmarks,
    tests)."""

    def __init__(
        self, spec: EvalSpec, train: DataLoader | None = None, predict: DataLoader | None = None
    ) -> None:
        super().__init__()
        self.normalise = Normalise(spec.mean, spec.std)
        self.train, self.predict = train, predict

    def train_dataloader(self) -> DataLoader | None:
        return self.train

    def predict_dataloader(self) -> DataLoader | None:
        return self.predict
