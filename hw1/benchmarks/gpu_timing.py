"""How the GPU check kit (``hw1.benchmarks.gpu_check``) measures training: its workload sizes, a
Trainer.fit timed over a given number of steps after untimed warm-up ones, the peak memory,
in-memory batches that take the loader out of the figure, and the float32 matmul precision
a part runs under."""

from __future__ import annotations

import contextlib
import gc
import resource
import time
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from hw1.benchmarks.common import BENCH_CLASSES
from hw1.data.device_batches import LoaderDataModule
from hw1.models.classifier import Classifier
from hw1.transforms.presets import eval_spec


@dataclass(frozen=True)
class KitSize:
    """The GPU check's workloads: ``FULL`` for a GPU, ``QUICK`` a toy of each for the CPU."""

    arch: str
    image_size: int
    batch_size: int
    warmup: int  # untimed training steps first: cuDNN's autotuning, compiling
    steps: int  # timed training steps
    photos: int  # generated JPEGs around 500x375 that the real data module reads
    tta_images: int
    rounds: int  # alternating rounds of the TTA contenders, after one untimed
    demo_per_class: dict[str, int] | None  # a slice of the demo data set; None: all of it
    demo: tuple[str, ...]  # overrides of the demo run
    timeout_s: int  # for the demo run


FULL = KitSize("resnext101_32x8d", 224, 64, 5, 30, 640, 128, 3, None, (), 360)


QUICK = KitSize(
    "resnet18", 32, 8, 1, 2, 24, 8, 1,
    {"train": 8, "val": 4, "test": 2}, ("trainer.max_epochs=1",), 150,
)  # fmt: skip


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Times ``steps`` training steps after ``warmup`` untimed ones, synchronising the
    device at those two points only."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.done = self.images = 0
        self.warmup_s = self.seconds = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.done += 1
        if self.done > self.warmup:
            self.images += len(batch[1])
        if self.done in (self.warmup, self.warmup + self.steps):
            _synchronize(pl_module.device)
            now = time.perf_counter()
            if self.done == self.warmup:
                self.warmup_s, self.start = now - self.start, now
            else:
                self.seconds = now - self.start


def peak_memory_mib(device: torch.device) -> float:
    """The device's peak allocated memory since the last reset; on the CPU the process's
    peak resident size, which only grows."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def timed_fit(
    model: Classifier,
    datamodule: L.LightningDataModule,
    size: KitSize,
    device: torch.device,
    precision: str,
) -> dict[str, float]:
    """Trainer.fit for ``size.warmup + size.steps`` steps, no validation, no logging:
    images/s over the timed steps, the peak memory, the seconds of the untimed ones."""
    timer = StepTimer(size.warmup, size.steps)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=size.warmup + size.steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    if device.type == "cuda":
        gc.collect()  # the models of earlier fits, held in reference cycles
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(model, datamodule=datamodule)
    return {
        "images_per_s": timer.images / timer.seconds,
        "peak_memory_mib": peak_memory_mib(device),
        "warmup_s": timer.warmup_s,
        "step_s": timer.seconds / size.steps,
    }


def synthetic_batches(size: KitSize, device: torch.device) -> LoaderDataModule:
    """Random uint8 images already in memory, normalised on the device as the fast
    pipeline's are: the training speed with no loader in the way."""
    g = torch.Generator().manual_seed(0)
    n = 4 * size.batch_size
    shape = (n, 3, size.image_size, size.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    labels = torch.randint(0, len(BENCH_CLASSES), (n,), generator=g)
    loader = DataLoader(
        TensorDataset(images, labels),
        batch_size=size.batch_size,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    return LoaderDataModule(eval_spec(size.image_size), loader)


@contextlib.contextmanager
def matmul_precision(precision: str):
    """float32 matrix products as hw1.train runs them ("high": TF32 on GPUs that have it)
    or as hw1.predict and hw1.eval do (PyTorch's default, "highest")."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
