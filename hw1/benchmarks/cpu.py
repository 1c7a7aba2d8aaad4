"""The CPU benchmarks of ``python -m hw1.bench``, each a ratio from one process: batched TTA
against the report's per-image loop (``tta``), the train pipelines' images/s and the
decoder's ceiling (``loader``), Lightning's overhead against a plain loop (``step``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2 as T

from hw1.benchmarks.common import (
    batched,
    bench_classifier,
    cached_photos,
    cached_shards,
    make_photos,
    per_image_tta,
    print_rates,
    print_ratio,
    round_ratios,
    simplejpeg_full,
    time_alternating,
    time_rounds,
)
from hw1.data.datamodule import train_pipeline
from hw1.data.datasets import ClassFolders, UnlabeledImages, view_loader
from hw1.data.device_batches import LoaderDataModule
from hw1.training.callbacks import Figures
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.fast_pipeline import DraftDecoder
from hw1.transforms.presets import ViewStack, eval_spec


def bench_tta(args: argparse.Namespace) -> None:
    spec = eval_spec(args.size)
    model = bench_classifier(args.arch, args.size).eval()
    with tempfile.TemporaryDirectory() as tmp:
        make_photos(Path(tmp), args.images)
        dataset = UnlabeledImages(tmp)
        stack = ViewStack(spec, "report", seed=0)
        tta_loader = view_loader(dataset, spec, "report", 0, args.batch_size, 0)
        plain_loader = view_loader(dataset, spec, "none", 0, args.batch_size, 0)
        with torch.inference_mode():
            same = torch.allclose(
                per_image_tta(model, dataset, stack), batched(model, tta_loader, spec), atol=1e-5
            )
            seconds = time_alternating(
                {
                    "per-image TTA loop": lambda: per_image_tta(model, dataset, stack),
                    "batched TTA": lambda: batched(model, tta_loader, spec),
                    "batched single view": lambda: batched(model, plain_loader, spec),
                },
                rounds=args.rounds,
            )
    print(f"{args.images} images, {args.arch}, {args.size} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads; same probabilities: {same}")  # fmt: skip
    for name, s in seconds.items():
        print(f"{name:>22}: {args.images / s:8.1f} images/s")
    speedup = seconds["per-image TTA loop"] / seconds["batched TTA"]
    cost = seconds["batched TTA"] / seconds["batched single view"]
    print(f"batched TTA vs per-image loop: {speedup:.2f}x faster")
    print(f"batched 4-view TTA vs single view: {cost:.2f}x the time")
    print(f"ratio: {speedup:.2f}")


def bench_loader(args: argparse.Namespace) -> None:
    # A DataLoader worker runs torch single-threaded; so does the main process here.
    torch.set_num_threads(1)
    if getattr(args, "source", "folder") == "litdata":
        return bench_source_loader(args)
    spec = eval_spec(args.size)
    root = cached_photos(args.images)
    fast = train_pipeline("fast", spec)
    datasets = {
        "reference": ClassFolders(root, ["0"], train_pipeline("reference", spec)),
        "fast": ClassFolders(root, ["0"], loader=DraftDecoder(fast)),
        # The CPU-only run's path: the deferred steps done in the worker, the reference's way.
        "fast, CPU run": ClassFolders(root, ["0"], loader=DraftDecoder(fast, finish_here=True)),
        "decode only": ClassFolders(root, ["0"], T.PILToTensor()),
        # The fast pipeline's own decoder (hw1.transforms.decode), full size: its ceiling.
        "simplejpeg": ClassFolders(root, ["0"], loader=simplejpeg_full),
    }
    loaders = {
        # Decoded images differ in size: "decode only" batches are counted, not stacked.
        name: DataLoader(
            d,
            batch_size=32,
            num_workers=args.workers,
            collate_fn=len if name in ("decode only", "simplejpeg") else None,
        )
        for name, d in datasets.items()
    }
    contenders = {n: lambda d=d: sum(1 for _ in d) for n, d in loaders.items()}
    # What the data module's FinishOnDevice adds on the device, here this CPU: the deferred
    # steps and the normalisation of "fast"'s batches (a GPU run's path, were the device
    # this CPU), the normalisation alone of "fast, CPU run"'s (the reference normalises
    # in the worker).
    finish = FinishOnDevice(spec.mean, spec.std)
    for name in ("fast", "fast, CPU run"):
        loader = loaders[name]
        contenders[f"{name} + device"] = lambda d=loader: sum(len(finish(x)) for x, _ in d)
    del contenders["fast, CPU run"]
    rounds = time_rounds(contenders, args.rounds)
    workers = max(1, args.workers)
    print(
        f"{args.images} JPEGs around 500x375 -> {args.size} px, {args.workers} workers, "
        f"{args.rounds} alternating rounds; images/s per worker, median (min-max); "
        "+ device: with what the data module does on the device, here this CPU"
    )
    print_rates(rounds, args.images / workers, 22)
    ceiling = round_ratios(rounds, "simplejpeg", "fast")
    print(
        f"fast vs its decoder's full-size decode-only rate: {statistics.median(ceiling):.0%} "
        f"({ceiling[0]:.0%}-{ceiling[-1]:.0%})"
    )
    for name in ("fast", "fast + device"):
        ratios = round_ratios(rounds, "reference", name)
        print(
            f"{name} vs reference: {statistics.median(ratios):.2f} "
            f"({ratios[0]:.2f}-{ratios[-1]:.2f})"
        )
    # The headline: a CPU-only run's loader against the reference's.
    print_ratio(
        "fast, CPU run + device vs reference",
        round_ratios(rounds, "reference", "fast, CPU run + device"),
    )


def lightning_fit(loader: DataLoader, args: argparse.Namespace, log_dir: str) -> None:
    """Trainer.fit as a user's run does it: TensorBoard logging, the metrics, the progress
    bar of conf/progress/tqdm.yaml and the learning-rate and image callbacks of
    conf/callbacks/default.yaml (no checkpoint file: the plain loop writes none either)."""
    model = bench_classifier(args.arch, args.size)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=TensorBoardLogger(log_dir, name="tb", default_hp_metric=False),
        callbacks=[
            TQDMProgressBar(refresh_rate=10),
            LearningRateMonitor(logging_interval="step"),
            Figures(),
        ],
        log_every_n_steps=10,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=LoaderDataModule(eval_spec(args.size), loader))


def plain_loop(loader: DataLoader, args: argparse.Namespace) -> None:
    """The same optimiser steps in plain PyTorch: no logging, no metrics, no callbacks."""
    model = bench_classifier(args.arch, args.size).train()
    optimizer = model.configure_optimizers()["optimizer"]
    spec = eval_spec(args.size)
    finish = FinishOnDevice(spec.mean, spec.std)
    for x, y in loader:
        loss = model.criterion(model(finish(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def bench_step(args: argparse.Namespace) -> None:
    clock = time.perf_counter
    if getattr(args, "clock", "wall") == "cpu":
        torch.set_num_threads(1)
        clock = time.process_time
    torch.manual_seed(0)
    n = args.batches * args.batch_size
    images = torch.randint(0, 256, (n, 3, args.size, args.size), dtype=torch.uint8)
    labels = torch.randint(0, 100, (n,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, shuffle=True)
    with tempfile.TemporaryDirectory() as tmp:
        rounds = time_rounds(
            {
                "Trainer.fit": lambda: lightning_fit(loader, args, tmp),
                "plain loop": lambda: plain_loop(loader, args),
            },
            args.rounds,
            clock,
            warmup=True,  # Lightning's lazy imports and set-up once per process: not per step
        )
    print(
        f"{args.batches} optimizer steps, {args.arch}, {args.size} px, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, {args.rounds} alternating rounds after a warm-up, "
        f"{getattr(args, 'clock', 'wall')} time"
    )
    for name, seconds in rounds.items():
        per_batch = sorted(s / args.batches for s in seconds)
        print(
            f"{name:>12}: {statistics.median(per_batch):.3f} s per step "
            f"({per_batch[0]:.3f}-{per_batch[-1]:.3f})"
        )
    print_ratio("Trainer.fit vs plain loop", round_ratios(rounds, "Trainer.fit", "plain loop"))


def bench_source_loader(args: argparse.Namespace) -> None:
    """The fast train pipeline on the same photos read from their folder and streamed from
    hw1 shards of their JPEG bytes (``--source litdata``), in alternating rounds."""
    from hw1.data.shards import ShardSource

    spec = eval_spec(args.size)
    root = cached_photos(args.images)
    shards = ShardSource(cached_shards(args.images))
    decoder = DraftDecoder(train_pipeline("fast", spec))
    folder = DataLoader(
        ClassFolders(root, ["0"], loader=decoder), batch_size=32, num_workers=args.workers
    )
    stream = shards.loader(shards.stream("train", None, decoder), 32, args.workers)
    rounds = time_rounds(
        {"folder": lambda: sum(1 for _ in folder), "litdata": lambda: sum(1 for _ in stream)},
        args.rounds,
    )
    workers = max(1, args.workers)
    print(
        f"{args.images} JPEGs around 500x375 -> {args.size} px, fast pipeline, "
        f"{args.workers} workers, {args.rounds} alternating rounds; images/s per worker, "
        "median (min-max)"
    )
    print_rates(rounds, args.images / workers, 8)
    print_ratio("litdata vs folder", round_ratios(rounds, "folder", "litdata"))
