"""Data modules that finish their batches on the device after the transfer (as timm's
PrefetchLoader normalises on the GPU), so the model gets normalised floats whatever
pipeline made them; and that data module around ready DataLoaders.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from hw1.transforms.device import FinishOnDevice
from hw1.transforms.presets import EvalSpec


class DeviceBatches(L.LightningDataModule):
    """A data module that finishes its batches on the device, after the transfer and
    before the model's step and its autocast, as timm's PrefetchLoader normalises on the
    GPU: the model gets normalised floats whatever pipeline made them."""

    finish: FinishOnDevice

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, *rest = batch
        return self.finish(x, self.input_dtype()), *rest

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
        self.finish = FinishOnDevice(spec.mean, spec.std)
        self.train, self.predict = train, predict

    def train_dataloader(self) -> DataLoader | None:
        return self.train

    def predict_dataloader(self) -> DataLoader | None:
        return self.predict
