"""Datasets over image files: labelled class folders (a file that stops being readable is
replaced by the next one and reported once), unlabelled test images, and each image's
test-time views as one stack.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

from hw1.data.scan import display_path, image_files, is_image_file, labelled_files
from hw1.transforms.decode import load_rgb
from hw1.transforms.presets import EvalSpec, ViewStack
from hw1.utils.errors import UserValueError

log = logging.getLogger(__name__)


LAYOUT = """expected layout:
    <root>/train/<class>/<image>   training images, one folder per class
    <root>/val/<class>/<image>     validation images, the same class folders
    <root>/test/<image>            unlabeled test images (optional)
Set data.root=PATH, or try the embedded demo: python -m hw1.train experiment=demo"""


class ClassFolders(ImageFolder):
    """ImageFolder over a given class list (so val shares train's class indices), reading
    images with ``load_rgb`` and skipping hidden files. ``samples`` (path, class index)
    replaces the folder scan: the data module's checked list, or a split of train."""

    def __init__(
        self,
        root: str | os.PathLike,
        classes: Sequence[str],
        transform=None,
        samples: Sequence[tuple[str, int]] | None = None,
        loader=load_rgb,
    ):
        self._classes = list(classes)
        self._given = None if samples is None else list(samples)
        self._gone: set[str] = set()  # files found unreadable during the run, warned once
        super().__init__(root, transform=transform, loader=loader, is_valid_file=is_image_file)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        return self._classes, {c: i for i, c in enumerate(self._classes)}

    def make_dataset(self, directory, *args, **kwargs) -> list[tuple[str, int]]:
        if self._given is not None:
            return self._given
        return labelled_files(Path(directory), self._classes)

    # Neighbours tried in place of a file that cannot be read any more.
    STAND_INS = 10

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """Sample ``index``; when its file was removed or changed since the image check
        (an epoch is long), the next readable sample stands in for it, with one warning
        per file and loading process, rather than the run stopping."""
        for k in range(min(self.STAND_INS, len(self.samples))):
            i = (index + k) % len(self.samples)
            try:
                return super().__getitem__(i)
            except OSError as e:
                path = self.samples[i][0]
                if path not in self._gone:
                    self._gone.add(path)
                    log.warning(
                        "%s cannot be read (%s): the next image stands in for it",
                        display_path(path),
                        e,
                    )
        raise OSError(
            f"{self.STAND_INS} images from {display_path(self.samples[index][0])} on cannot be "
            f"read: was {self.root} moved or unmounted? Check it with python -m hw1.check"
        )


class SeededSamples(Dataset):
    """Item ``(index, seed)`` (``hw1.data.samplers.SeededDraws``) is ``base[index]`` with
    its random transforms drawn from torch's generator seeded with ``seed``, in a fork of
    that generator: a sample's augmentation depends on the run's seed and its place in the
    epoch, not on the loader worker that reads it nor on what that worker read before, so a
    run resumed mid-epoch, or run with another worker count, draws what the uninterrupted
    one did. Both train pipelines draw from torch's generator alone (torchvision's
    transforms; the fast pipeline draws the same parameters the same way)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        # The CPU generator alone: torch.manual_seed would also queue the seeding of every
        # CUDA device, with a stack trace, 15 times the cost of the rest (23 us a sample).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.base[index]


class UnlabeledImages(Dataset):
    """The flat, unlabeled test folder; yields (RGB PIL image, file name without extension).
    Views and tensors come later (``Views``), as prediction needs several per image."""

    def __init__(
        self, folder: str | os.PathLike | None = None, files: Sequence[Path] | None = None
    ) -> None:
        """The images of ``folder``, or the given ``files`` (a CSV's test rows)."""
        self.files = image_files(folder) if files is None else [Path(f) for f in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        return load_rgb(self.files[i]), self.files[i].stem


class ImageInputs(Dataset):
    """Any images, as ``hw1.load_classifier``'s ``predict`` takes them: paths (read with
    ``load_rgb``, turned upright) or PIL images (converted to RGB); yields (RGB image, its
    position), the position seeding its test-time views."""

    def __init__(self, items: Sequence[str | os.PathLike | Image.Image]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        item = self.items[i]
        if isinstance(item, Image.Image):
            return item.convert("RGB"), i
        try:
            return load_rgb(item), i
        except (OSError, SyntaxError, ValueError) as e:
            raise UserValueError(
                f"{display_path(item)} cannot be read as an image ({e}): check the path, or "
                "leave the file out"
            ) from None


class Views(Dataset):
    """Item i of a dataset of PIL images becomes (its views, its key): key is the class
    index or the file stem."""

    def __init__(self, base: Dataset, stack: ViewStack) -> None:
        self.base = base
        self.stack = stack

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        image, key = self.base[i]
        return self.stack(image, i), key


def view_loader(
    dataset: Dataset, spec: EvalSpec, tta: str, seed: int, batch_size: int, num_workers: int
) -> DataLoader:
    """Batches of uint8 (B, views, C, H, W) for prediction with test-time augmentation,
    normalised on the device by the data module that serves them."""
    return DataLoader(
        Views(dataset, ViewStack(spec, tta, seed)),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
