"""What the benchmarks share: synthetic photo sets, timing rounds that alternate the
contenders (so machine noise hits each alike), a benchmark's config and classifier, and
batched against per-image test-time augmentation.
"""

from __future__ import annotations

import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader

from hw1.data.datasets import UnlabeledImages
from hw1.models.classifier import Classifier
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.presets import EvalSpec, ViewStack, eval_spec
from hw1.utils.config import compose_config


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


def cached_shards(n: int) -> Path:
    """``cached_photos(n)`` as hw1 shards (train only, one class), written once beside them."""
    from hw1.data.shards import SHARDS_FORMAT, SHARDS_META, SHARDS_VERSION, encode
    from hw1.data.sources import optional

    photos = cached_photos(n)
    out = photos.parent / "shards"
    if not (out / SHARDS_META).exists():
        litdata = optional("litdata", "stream")
        rows = [(str(p), 0, p.stem) for p in sorted((photos / "0").iterdir())]
        litdata.optimize(
            fn=functools.partial(encode, rows, None),
            inputs=list(range(len(rows))),
            output_dir=str(out / "train"),
            chunk_bytes="64MB",
            num_workers=1,
            mode="overwrite",
        )
        meta = {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, "class_names": ["0"]}
        meta |= {"counts": {"train": {"0": len(rows)}}, "images": {"train": len(rows)}}
        (out / SHARDS_META).write_text(json.dumps(meta))
    return out


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
    finish = FinishOnDevice(spec.mean, spec.std)
    out = []
    for views in views_per_image:
        views = finish(views.to(device))
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
    finish = FinishOnDevice(spec.mean, spec.std)
    return torch.cat([model.predict_probs(finish(x.to(device))) for x, _ in loader]).cpu()


def time_rounds(
    contenders: dict[str, Callable[[], object]],
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
    warmup: bool = False,
) -> dict[str, list[float]]:
    """Seconds of each round per contender, running them in turn each round, the order
    reversed every other round (A B, B A, ...) so that a drift of the machine falls on each
    alike; ``clock``: wall time, or e.g. ``time.process_time``, this process's CPU time.
    ``warmup``: one untimed call of each first, so that a process's one-off costs (lazy
    imports, first allocations) are charged to neither."""
    if warmup:
        for run in contenders.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders.items())
    for r in range(rounds):
        for name, run in order if r % 2 == 0 else order[::-1]:
            start = clock()
            run()
            times[name].append(clock() - start)
    return times


def time_alternating(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per contender, running them in turn each round."""
    return {name: statistics.median(t) for name, t in time_rounds(contenders, rounds).items()}


def print_rates(rounds: dict[str, list[float]], per_round: float, width: int) -> None:
    """Each contender's rate ``per_round / seconds``, median (min-max) over the rounds."""
    for name, seconds in rounds.items():
        rates = sorted(per_round / s for s in seconds)
        print(f"{name:>{width}}: {statistics.median(rates):8.1f} ({rates[0]:.1f}-{rates[-1]:.1f})")


def round_ratios(rounds: dict[str, list[float]], a: str, b: str) -> list[float]:
    """``a``'s seconds over ``b``'s, round by round (the rounds ran side by side), sorted."""
    return sorted(x / y for x, y in zip(rounds[a], rounds[b], strict=True))


def print_ratio(label: str, ratios: list[float]) -> None:
    """The per-round spread, then the ``ratio:`` line hw1.bench's callers parse."""
    print(f"{label} per round: {ratios[0]:.2f}-{ratios[-1]:.2f}")
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
