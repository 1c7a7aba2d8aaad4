"""The data: folders in the HW1 layout, wrapped in a LightningDataModule.

<root>/train/<class>/<image>
<root>/val/<class>/<image>
<root>/test/<image>          (flat, unlabeled; optional)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from hw1 import demo
from hw1.model import resolve_weights
from hw1.presets import (
    EvalSizes,
    FastTrainPreset,
    ViewStack,
    eval_preset,
    eval_sizes,
    train_pipeline,
)

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


def is_image_file(path: str | os.PathLike) -> bool:
    """An image by its extension, case-insensitively; hidden files (``.DS_Store``, macOS's
    ``._name.jpg`` resource forks) are not images whatever their extension."""
    name = os.path.basename(path)
    return not name.startswith(".") and has_file_allowed_extension(name, IMG_EXTENSIONS)


def load_rgb(
    path: str | os.PathLike, draft: Callable[[tuple[int, int]], tuple[int, int]] | None = None
) -> Image.Image:
    """Any image file as 8-bit RGB, upright: EXIF orientation applied; grayscale, palette
    and CMYK converted; 16-bit scaled to 8 bits (PIL's convert clips it at 255);
    transparency laid on white.

    ``draft``: given the upright size, the smallest size the caller needs; a JPEG is then
    decoded at the largest 1/2, 1/4 or 1/8 scale that is at least that (PIL's draft mode).
    """
    with Image.open(path) as im:
        if draft is not None:
            request_draft(im, draft)
        ImageOps.exif_transpose(im, in_place=True)  # in place: no copy of an upright image
        if im.mode.startswith("I;16") or (im.mode == "I" and im.getextrema()[1] > 255):
            im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im)
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")  # convert would copy an RGB one


# EXIF orientations that turn the image a quarter: the stored width is the upright height.
_QUARTER_TURNS = (5, 6, 7, 8)


def request_draft(im: Image.Image, draft: Callable[[tuple[int, int]], tuple[int, int]]) -> None:
    turned = im.format == "JPEG" and im.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
    upright = im.size[::-1] if turned else im.size
    need = draft(upright)
    im.draft("RGB", need[::-1] if turned else need)


class DraftDecoder:
    """The loader of the fast train pipeline (``ClassFolders(loader=...)``): draws the
    augmentation from the file's header size, decodes a JPEG only as large as its crop
    needs, then augments. A class, not a closure, so DataLoader workers can pickle it."""

    def __init__(self, preset: FastTrainPreset) -> None:
        self.preset = preset

    def __call__(self, path: str | os.PathLike) -> torch.Tensor:
        drawn = {}

        def need(size: tuple[int, int]) -> tuple[int, int]:
            drawn["size"], drawn["draw"] = size, self.preset.draw(*size)
            return self.preset.decode_size(drawn["draw"], *size)

        image = load_rgb(path, draft=need)
        return self.preset.apply(image, drawn["draw"], drawn["size"])


class ClassFolders(ImageFolder):
    """ImageFolder over a given class list (so val shares train's class indices), reading
    images with ``load_rgb`` and skipping hidden files."""

    def __init__(
        self, root: str | os.PathLike, classes: Sequence[str], transform=None, loader=load_rgb
    ):
        self._classes = list(classes)
        super().__init__(root, transform=transform, loader=loader, is_valid_file=is_image_file)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        return self._classes, {c: i for i, c in enumerate(self._classes)}


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The images of a flat folder, by extension (case-insensitive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))


class UnlabeledImages(Dataset):
    """The flat, unlabeled test folder; yields (RGB PIL image, file name without extension).
    Views and tensors come later (``Views``), as prediction needs several per image."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.files = image_files(folder)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        return load_rgb(self.files[i]), self.files[i].stem


def _decodes(path: Path) -> bool:
    try:
        load_rgb(path)
        return True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def unreadable_images(files: Sequence[Path]) -> list[Path]:
    """The files PIL cannot decode (empty, truncated, not an image), checked in parallel:
    decoding releases the GIL, so threads suffice."""
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        ok = list(pool.map(_decodes, files))
    return [f for f, good in zip(files, ok, strict=True) if not good]


def check_test_images(folder: Path) -> list[Path]:
    """Every test image needs a row in prediction.csv: one that cannot be read is an error
    before any work, naming the files."""
    files = image_files(folder)
    bad = unreadable_images(files)
    if bad:
        shown = "\n  ".join(str(p) for p in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ValueError(
            f"{len(bad)} of {len(files)} test images in {folder} cannot be read:\n  {shown}{more}\n"
            "Replace or remove them: every test image needs a row in prediction.csv."
        )
    return files


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
    dataset: Dataset, sizes: EvalSizes, tta: str, seed: int, batch_size: int, num_workers: int
) -> DataLoader:
    """Batches of (B, views, C, H, W) for prediction with test-time augmentation."""
    return DataLoader(
        Views(dataset, ViewStack(sizes, tta, seed)),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )


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
        tta: str = "report",
        seed: int = 0,
        pipeline: str = "fast",
    ) -> None:
        """``pipeline``: the train augmentation's implementation, ``fast`` or
        ``reference`` (``hw1.presets.train_pipeline``)."""
        super().__init__()
        self.tta = tta
        self.seed = seed
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        resolved = resolve_weights(arch, weights)
        # A local state-dict file says nothing about its preprocessing: ImageNet defaults.
        self.sizes: EvalSizes = eval_sizes(
            image_size, resolved if not isinstance(resolved, Path) else None
        )
        self.train_transform = train_pipeline(pipeline, self.sizes, **(augment or {}))
        self.eval_transform = eval_preset(self.sizes)
        self._class_names: list[str] | None = None
        self._prepared = False
        self.train_set = self.val_set = self.test_set = None

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    def prepare_data(self) -> None:
        if self._prepared:  # train.py calls it before building the model, Lightning again
            return
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={self.root}: no such folder.\n{LAYOUT}")
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise FileNotFoundError(f"data.root={self.root} has no {split}/ folder.\n{LAYOUT}")
        if self.test_dir.is_dir():
            check_test_images(self.test_dir)
        self._prepared = True

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
            if isinstance(self.train_transform, FastTrainPreset):  # it decodes, too
                self.train_set = ClassFolders(
                    self.root / "train", self.class_names, loader=DraftDecoder(self.train_transform)
                )
            else:
                self.train_set = ClassFolders(
                    self.root / "train", self.class_names, self.train_transform
                )
            self.val_set = ClassFolders(self.root / "val", self.class_names, self.eval_transform)
        if stage in ("predict", None) and self.test_set is None and self.test_dir.is_dir():
            self.test_set = UnlabeledImages(self.test_dir)

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
        """The test folder, each image as its TTA views (``tta``: report or none)."""
        if self.test_set is None:
            raise FileNotFoundError(f"{self.test_dir}: no test folder to predict")
        return view_loader(
            self.test_set, self.sizes, self.tta, self.seed, self.batch_size, self.num_workers
        )


class DemoDataModule(FolderDataModule):
    """The embedded Fashion-MNIST subset, written out under ``root`` on first use."""

    def prepare_data(self) -> None:
        demo.extract(self.root)
        super().prepare_data()
