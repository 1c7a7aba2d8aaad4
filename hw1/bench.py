"""Side-by-side benchmarks, reported as ratios (one process, alternating rounds, so machine
noise hits every contender alike).

    python -m hw1.bench tta [--images 96] [--size 64] [--arch resnet18] [--batch-size 32]
    python -m hw1.bench loader [--images 200] [--workers 0] [--size 224] [--rounds 5]  (and
        the fast pipeline's decoder's full-size decode-only rate, its ceiling)
    python -m hw1.bench step [--batches 20] [--batch-size 64] [--size 32] [--rounds 3]

and the GPU check kit, every figure the performance documentation needs from a GPU, in
about 8 minutes on one (``--device cpu --quick``: the same code at toy size on the CPU):

    python -m hw1.bench gpu [--out DIR] [--device cuda|cpu] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
import numpy as np
import simplejpeg
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2 as T

from hw1.callbacks import TensorBoardFigures
from hw1.config import compose_config
from hw1.data import (
    ClassFolders,
    UnlabeledImages,
    train_pipeline,
    view_loader,
)
from hw1.device_batches import LoaderDataModule, Normalise
from hw1.fast_pipeline import DraftDecoder
from hw1.model import Classifier
from hw1.presets import EvalSpec, ViewStack, eval_spec


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """JPEGs (quality 90) of varied sizes around 500x375 with photo-like content: smooth
    colour regions plus finer, weaker detail (JPEG decoding slows with detail)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(400, 600)), int(rng.integers(300, 450))
        image = np.zeros((h, w, 3))
        for cell, weight in ((32, 0.7), (8, 0.2), (2, 0.1)):
            coarse = rng.integers(0, 256, (h // cell + 2, w // cell + 2, 3), dtype=np.uint8)
            image += weight * np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))
        paths.append(folder / f"img{i:04d}.jpg")
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def cached_photos(n: int) -> Path:
    """``n`` photos in a one-class folder (the layout ClassFolders reads), made once and
    kept in the temporary directory for later runs."""
    folder = Path(tempfile.gettempdir()) / f"hw1-bench-photos-{n}"
    if not (folder / "done").exists():
        make_photos(folder / "train" / "0", n)
        (folder / "done").touch()
    return folder / "train"


def simplejpeg_full(path: str) -> np.ndarray:
    """A JPEG decoded at full size by the fast pipeline's decoder."""
    with open(path, "rb") as f:
        return simplejpeg.decode_jpeg(f.read(), "RGB")


def per_view_probs(
    model: Classifier,
    views_per_image: Iterable[torch.Tensor],
    spec: EvalSpec,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The report's way: every view of every image through the model on its own (a batch
    of one), the softmax averaged over each image's views. The uint8 views are normalised
    on the device, as hw1.predict's data module does."""
    normalise = Normalise(spec.mean, spec.std)
    out = []
    for views in views_per_image:
        views = normalise(views.to(device))
        probs = [model(v[None]).softmax(dim=1)[0].float() for v in views]
        out.append(torch.stack(probs).mean(dim=0))
    return torch.stack(out).cpu()


def per_image_tta(model: Classifier, dataset: UnlabeledImages, stack: ViewStack) -> torch.Tensor:
    views = (stack(dataset[i][0], i) for i in range(len(dataset)))
    return per_view_probs(model, views, stack.spec)


def batched(
    model: Classifier, loader: DataLoader, spec: EvalSpec, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """hw1.predict's way: a batch of images and all their views in one forward pass, the
    uint8 views normalised on the device."""
    normalise = Normalise(spec.mean, spec.std)
    return torch.cat([model.predict_probs(normalise(x.to(device))) for x, _ in loader]).cpu()


def time_rounds(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each round per contender, running them in turn each round."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def time_alternating(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per contender, running them in turn each round."""
    return {name: statistics.median(t) for name, t in time_rounds(contenders, rounds).items()}


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
    spec = eval_spec(args.size)
    root = cached_photos(args.images)
    datasets = {
        "reference": ClassFolders(root, ["0"], train_pipeline("reference", spec)),
        "fast": ClassFolders(root, ["0"], loader=DraftDecoder(train_pipeline("fast", spec))),
        "decode only": ClassFolders(root, ["0"], T.PILToTensor()),
        # The fast pipeline's own decoder (hw1.jpeg), full size: its ceiling.
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
    # The fast pipeline leaves its colour jitter and normalisation to the device (the data
    # module's Normalise); where that device is this CPU, they cost this much more.
    normalise = Normalise(spec.mean, spec.std)
    contenders["fast + device"] = lambda: sum(len(normalise(x)) for x, _ in loaders["fast"])
    rounds = time_rounds(contenders, args.rounds)
    workers = max(1, args.workers)
    print(
        f"{args.images} JPEGs around 500x375 -> {args.size} px, {args.workers} workers, "
        f"{args.rounds} alternating rounds; images/s per worker, median (min-max); "
        "fast + device: with the jitter and normalisation done on the device, here the CPU"
    )
    for name, seconds in rounds.items():
        rates = sorted(args.images / workers / s for s in seconds)
        print(f"{name:>13}: {statistics.median(rates):8.1f} ({rates[0]:.1f}-{rates[-1]:.1f})")
    on_cpu = sorted(
        r / f for r, f in zip(rounds["reference"], rounds["fast + device"], strict=True)
    )
    print(f"fast + device on this CPU vs reference: {statistics.median(on_cpu):.2f}")
    ceiling = sorted(d / f for d, f in zip(rounds["simplejpeg"], rounds["fast"], strict=True))
    print(
        f"fast vs its decoder's full-size decode-only rate: {statistics.median(ceiling):.0%} "
        f"({ceiling[0]:.0%}-{ceiling[-1]:.0%})"
    )
    ratios = sorted(r / f for r, f in zip(rounds["reference"], rounds["fast"], strict=True))
    print(f"fast vs reference per round: {ratios[0]:.2f}-{ratios[-1]:.2f}")
    print(f"ratio: {statistics.median(ratios):.2f}")


BENCH_CLASSES = [str(i) for i in range(100)]  # the report's 100 classes


def bench_config(arch: str, size: int, *overrides: str) -> DictConfig:
    """conf/train.yaml's run config for ``arch`` at ``size`` px, from scratch (nothing to
    download), with ``overrides``."""
    return compose_config(
        [f"model.arch={arch}", "model.weights=null", f"data.image_size={size}", *overrides]
    )


def bench_classifier(arch: str, size: int, *overrides: str) -> Classifier:
    """A fresh ``arch`` from scratch with the default recipe's head, optimiser and schedule,
    the same initial weights every call; ``overrides`` of the run config."""
    cfg = bench_config(arch, size, *overrides)
    torch.manual_seed(0)
    return Classifier.from_config(cfg, BENCH_CLASSES, eval_spec(size).to_dict())


def lightning_fit(loader: DataLoader, args: argparse.Namespace, log_dir: str) -> None:
    """Trainer.fit as a user's run does it: TensorBoard logging, the metrics, the progress
    bar and the learning-rate and image callbacks of conf/callbacks/default.yaml (no
    checkpoint file: the plain loop writes none either)."""
    model = bench_classifier(args.arch, args.size)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=TensorBoardLogger(log_dir, name="tb", default_hp_metric=False),
        callbacks=[
            TQDMProgressBar(refresh_rate=10),
            LearningRateMonitor(logging_interval="step"),
            TensorBoardFigures(),
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
    normalise = Normalise(spec.mean, spec.std)
    for x, y in loader:
        loss = model.criterion(model(normalise(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def bench_step(args: argparse.Namespace) -> None:
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
        )
    print(
        f"{args.batches} optimizer steps, {args.arch}, {args.size} px, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, {args.rounds} alternating rounds"
    )
    for name, seconds in rounds.items():
        per_batch = sorted(s / args.batches for s in seconds)
        print(
            f"{name:>12}: {statistics.median(per_batch):.3f} s per step "
            f"({per_batch[0]:.3f}-{per_batch[-1]:.3f})"
        )
    ratios = sorted(f / p for f, p in zip(rounds["Trainer.fit"], rounds["plain loop"], strict=True))
    print(f"Trainer.fit vs plain loop per round: {ratios[0]:.2f}-{ratios[-1]:.2f}")
    print(f"ratio: {statistics.median(ratios):.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hw1.bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    tta = sub.add_parser("tta", help="batched TTA vs a per-image loop vs single-view inference")
    tta.add_argument("--images", type=int, default=96)
    tta.add_argument("--size", type=int, default=64, help="crop size in pixels")
    tta.add_argument("--arch", default="resnet18")
    tta.add_argument("--batch-size", type=int, default=32)
    tta.add_argument("--rounds", type=int, default=3)
    loader = sub.add_parser("loader", help="the fast vs the reference train pipeline")
    loader.add_argument("--images", type=int, default=200)
    loader.add_argument("--workers", type=int, default=0, help="0: in the main process")
    loader.add_argument("--size", type=int, default=224, help="crop size in pixels")
    loader.add_argument("--rounds", type=int, default=5)
    step = sub.add_parser("step", help="Trainer.fit vs a plain PyTorch loop, same steps")
    step.add_argument("--batches", type=int, default=20, help="optimizer steps per run")
    step.add_argument("--batch-size", type=int, default=64)
    step.add_argument("--size", type=int, default=32, help="image size in pixels")
    step.add_argument("--arch", default="resnet18")
    step.add_argument("--rounds", type=int, default=3)
    # Imported here: the kit builds on this module's helpers, so a top-level import would
    # be circular.
    from hw1.gpu_check import PARTS, bench_gpu

    gpu = sub.add_parser("gpu", help="the GPU check kit: every GPU figure, gpu-check.json")
    gpu.add_argument("--out", default="gpu-check", help="folder for gpu-check.json and runs")
    gpu.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    gpu.add_argument("--quick", action="store_true", help="toy sizes: resnet18, 32 px")
    gpu.add_argument(
        "--compile-backend", help="torch.compile's backend (inductor on cuda, else aot_eager)"
    )
    gpu.add_argument("--parts", nargs="+", choices=PARTS, help="only these parts, in this order")
    args = parser.parse_args(argv)
    benches = {"tta": bench_tta, "loader": bench_loader, "step": bench_step, "gpu": bench_gpu}
    benches[args.bench](args)


if __name__ == "__main__":
    main()
