"""The data: folders in the HW1 layout, wrapped in a LightningDataModule.

<root>/train/<class>/<image>
<root>/val/<class>/<image>
<root>/test/<image>          (flat, unlabeled; optional)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from hw1 import demo
from hw1.model import resolve_weights
from hw1.presets import EvalSizes, eval_preset, eval_sizes, train_preset

LAYOUT = """expected layout:
    <root>/train/<class>/<image>   training images, one folder per class
    <root>/val/<class>/<image>     validation images, the same class folders
    <root>/test/<image>            unlabeled test images (optional)
Set data.root=PATH, or try the embedded demo: python -m hw1.train experiment=demo"""


def class_names(folder: str | os.PathLike) -> list[str]:
    """Class folder names, in numeric order when every name is an integer.

    ImageFolder sorts names as text (0, 1, 10, 100, 11, ...); a label written from that
    index instead of the folder name scores near chance on the HW1 data.
    """
    names = [e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


class ClassFolders(ImageFolder):
    """ImageFolder over a given class list (so val shares train's class indices)."""

    def __init__(self, root: str | os.PathLike, classes: Sequence[str], transform=None):
        self._classes = list(classes)
        super().__init__(root, transform=transform)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        return self._classes, {c: i for i, c in enumerate(self._classes)}


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The images of a flat folder, by extension (case-insensitive), sorted by name."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and has_file_allowed_extension(p.name, IMG_EXTENSIONS)
    )


class UnlabeledImages(Dataset):
    """The flat, unlabeled test folder; yields (image, file name without extension)."""

    def __init__(self, folder: str | os.PathLike, transform=None) -> None:
        self.files = image_files(folder)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        with Image.open(self.files[i]) as im:
            image = im.convert("RGB")
        return (self.transform(image) if self.transform else image), self.files[i].stem


class FolderDataModule(L.LightningDataModule):
    """Train/val/test folders in the HW1 layout with the report's augmentation.

    ``arch`` and ``weights`` are the model's (conf/data interpolates them): the eval resize
    and normalisation come from the weights' own transforms.
    """

    def __init__(
        self,
        root: str | os.PathLike = "data",
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        arch: str = "resnet50",
        weights: str | None = None,
        augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        resolved = resolve_weights(arch, weights)
        # A local state-dict file says nothing about its preprocessing: ImageNet defaults.
        self.sizes: EvalSizes = eval_sizes(
            image_size, resolved if not isinstance(resolved, Path) else None
        )
        self.train_transform = train_preset(self.sizes, **(augment or {}))
        self.eval_transform = eval_preset(self.sizes)
        self._class_names: list[str] | None = None
        self.train_set = self.val_set = self.test_set = None

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    def prepare_data(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={self.root}: no such folder.\n{LAYOUT}")
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise FileNotFoundError(f"data.root={self.root} has no {split}/ folder.\n{LAYOUT}")

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._class_names = class_names(self.root / "train")
            if not self._class_names:
                raise FileNotFoundError(f"{self.root / 'train'} has no class folders.\n{LAYOUT}")
            val = set(class_names(self.root / "val"))
            if val != set(self._class_names):
                raise ValueError(
                    f"train/ and val/ under {self.root} have different class folders: "
                    f"missing in val: {sorted(set(self._class_names) - val)}; "
                    f"missing in train: {sorted(val - set(self._class_names))}"
                )
        return self._class_names

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and self.val_set is None:
            self.train_set = ClassFolders(
                self.root / "train", self.class_names, self.train_transform
            )
            self.val_set = ClassFolders(self.root / "val", self.class_names, self.eval_transform)
        if stage in ("predict", None) and self.test_set is None and self.test_dir.is_dir():
            self.test_set = UnlabeledImages(self.test_dir, self.eval_transform)

    def _loader(self, dataset: Dataset, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            # BatchNorm heads (v3, v4) cannot train on a last batch of one image.
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def predict_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise FileNotFoundError(f"{self.test_dir}: no test folder to predict")
        return self._loader(self.test_set)


class DemoDataModule(FolderDataModule):
    """The embedded Fashion-MNIST subset, written out under ``root`` on first use."""

    def prepare_data(self) -> None:
        demo.extract(self.root)
        super().prepare_data()
