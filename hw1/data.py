"""The data: folders in the HW1 layout, wrapped in a LightningDataModule.

<root>/train/<class>/<image>
<root>/val/<class>/<image>
<root>/test/<image>          (flat, unlabeled; optional)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset

from hw1 import demo
from hw1.io import write_atomically
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

log = logging.getLogger(__name__)

# The image check's results, kept in the data root so the next run does not decode again.
SCAN_CACHE = ".hw1-images.json"


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
    path: str | os.PathLike | io.BytesIO,
    draft: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
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
        super().__init__(root, transform=transform, loader=loader, is_valid_file=is_image_file)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        return self._classes, {c: i for i, c in enumerate(self._classes)}

    def make_dataset(self, directory, *args, **kwargs) -> list[tuple[str, int]]:
        if self._given is not None:
            return self._given
        return super().make_dataset(directory, *args, **kwargs)


def labelled_files(folder: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """(path, class index) of every image under ``folder/<class>/``; empty classes allowed
    (the data module names them in its own error)."""
    index = {c: i for i, c in enumerate(classes)}
    return make_dataset(folder, index, is_valid_file=is_image_file, allow_empty=True)


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


class ImageInfo(NamedTuple):
    """What decoding a file found: readable, its size (0 x 0 when not) and content hash."""

    readable: bool
    width: int
    height: int
    sha1: str


def _inspect(path: Path) -> ImageInfo:
    try:
        data = path.read_bytes()
    except OSError:
        return ImageInfo(False, 0, 0, "")
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        width, height = load_rgb(io.BytesIO(data)).size  # decoded as training will
        return ImageInfo(True, width, height, sha1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return ImageInfo(False, 0, 0, sha1)


def inspect_images(files: Sequence[Path], root: Path | None = None) -> dict[Path, ImageInfo]:
    """Decode every file once, in parallel (decoding releases the GIL, so threads suffice).

    With ``root``, results are cached in ``root/.hw1-images.json`` keyed by the path under
    ``root``, file size and mtime: the next run decodes only new or changed files. A
    read-only root is checked every time.
    """
    cache_file = root / SCAN_CACHE if root is not None else None
    cache: dict[str, list] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            log.debug("ignoring unreadable image-check cache %s", cache_file)
    keys = {f: f.relative_to(root).as_posix() if root is not None else str(f) for f in files}
    found: dict[Path, ImageInfo] = {}
    todo, fresh = [], {}
    for f in files:
        st = f.stat()
        fresh[keys[f]] = stamp = [st.st_size, st.st_mtime_ns]
        hit = cache.get(keys[f])
        if hit is not None and hit[:2] == stamp:
            found[f] = ImageInfo(*hit[2:])
        else:
            todo.append(f)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        found.update(zip(todo, pool.map(_inspect, todo), strict=True))
    if cache_file is not None and todo:
        cache.update({keys[f]: [*fresh[keys[f]], *found[f]] for f in todo})
        try:
            write_atomically(cache_file, json.dumps(cache))
        except OSError as e:
            log.debug("image-check cache not written (%s): the next run checks again", e)
    return {f: found[f] for f in files}


def readable_samples(samples: Sequence[tuple[str, int]], root: Path) -> list[tuple[str, int]]:
    """The (path, class index) samples whose image decodes; the others are listed in one
    warning and left out, so that no epoch or evaluation stops on one bad file."""
    info = inspect_images([Path(p) for p, _ in samples], root)
    bad = [p for p, _ in samples if not info[Path(p)].readable]
    if bad:
        log.warning(
            "%d unreadable images left out (empty, truncated or not an image):\n  %s",
            len(bad),
            "\n  ".join(bad),
        )
    return [(p, c) for p, c in samples if info[Path(p)].readable]


def unreadable_images(files: Sequence[Path], root: Path | None = None) -> list[Path]:
    """The files PIL cannot decode (empty, truncated, not an image)."""
    found = inspect_images(files, root)
    return [f for f in files if not found[f].readable]


def check_test_images(folder: Path) -> list[Path]:
    """Every test image needs a row in prediction.csv: one that cannot be read is an error
    before any work, naming the files."""
    files = image_files(folder)
    bad = unreadable_images(files, folder.parent)
    if bad:
        shown = "\n  ".join(str(p) for p in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ValueError(
            f"{len(bad)} of {len(files)} test images in {folder} cannot be read:\n  {shown}{more}\n"
            "Replace or remove them: every test image needs a row in prediction.csv."
        )
    return files


def stratified_split(
    samples: Sequence[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, val) drawn per class with ``seed``: each class with two images or more gives
    ``fraction`` of them (at least one) to val and keeps at least one. Hand-written because
    torch's random_split is not stratified and scikit-learn is not a dependency."""
    rng = random.Random(seed)
    to_val: set[int] = set()
    for indices in _by_class(samples):
        n = len(indices)
        k = min(n - 1, max(1, round(fraction * n)))
        to_val.update(rng.sample(indices, k))
    return _part(samples, to_val)


def fold_split(
    samples: Sequence[tuple[str, int]], folds: int, fold: int, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, val) of fold ``fold`` of ``folds``: each class's images, shuffled with
    ``seed``, are dealt round the folds, continuing where the previous class stopped, so
    folds are disjoint, stratified, cover every image once and differ in size by at most
    one image."""
    rng = random.Random(seed)
    to_val: set[int] = set()
    dealt = 0
    for indices in _by_class(samples):
        shuffled = rng.sample(indices, len(indices))
        to_val.update(i for j, i in enumerate(shuffled) if (dealt + j) % folds == fold)
        dealt += len(indices)
    return _part(samples, to_val)


def _by_class(samples: Sequence[tuple[str, int]]) -> list[list[int]]:
    """The sample indices of each class, classes in index order."""
    by_class: dict[int, list[int]] = {}
    for i, (_, c) in enumerate(samples):
        by_class.setdefault(c, []).append(i)
    return [by_class[c] for c in sorted(by_class)]


def _part(samples: Sequence[tuple[str, int]], to_val: set[int]) -> tuple[list, list]:
    train = [s for i, s in enumerate(samples) if i not in to_val]
    return train, [s for i, s in enumerate(samples) if i in to_val]


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
        val_split: float | None = None,
        pipeline: str = "fast",
        folds: int | None = None,
        fold: int = 0,
        eval_size: int | None = None,
    ) -> None:
        """``pipeline``: the train augmentation's implementation, ``fast`` or
        ``reference`` (``hw1.presets.train_pipeline``). ``folds=K``: cross-validation,
        train and val pooled and dealt into K stratified, seeded folds; ``fold`` is the one
        validated on. ``eval_size``: evaluate (val, TTA, predict) at another size than
        ``image_size`` trains at, e.g. train at 224 and test at 288."""
        super().__init__()
        if val_split is not None and not 0 < val_split < 1:
            raise ValueError(f"data.val_split={val_split}: use null or a fraction in (0, 1)")
        if folds is not None and not (folds >= 2 and 0 <= fold < folds):
            raise ValueError(
                f"data.folds={folds} data.fold={fold}: use folds >= 2, 0 <= fold < folds"
            )
        self.folds, self.fold = folds, fold
        self.tta = tta
        self.seed = seed
        self.val_split = val_split
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        resolved = resolve_weights(arch, weights)
        # A local state-dict file says nothing about its preprocessing: ImageNet defaults.
        known = resolved if not isinstance(resolved, Path) else None
        self.sizes: EvalSizes = eval_sizes(eval_size or image_size, known)
        train_sizes = eval_sizes(image_size, known) if eval_size else self.sizes
        self.train_transform = train_pipeline(pipeline, train_sizes, **(augment or {}))
        self.eval_transform = eval_preset(self.sizes)
        self._class_names: list[str] | None = None
        self._samples: dict[str, list[tuple[str, int]]] | None = None
        self._prepared = False
        self.train_set = self.val_set = self.test_set = None

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    @property
    def test_images(self) -> list[Path]:
        """The test folder's images; none without a test/ folder."""
        return image_files(self.test_dir) if self.test_dir.is_dir() else []

    @property
    def has_val_dir(self) -> bool:
        return (self.root / "val").is_dir()

    def check_layout(self) -> None:
        """The folders training needs: root, train/, and val/ unless data.val_split."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={self.root}: no such folder.\n{LAYOUT}")
        if not (self.root / "train").is_dir():
            raise FileNotFoundError(f"data.root={self.root} has no train/ folder.\n{LAYOUT}")
        if not self.has_val_dir and self.val_split is None and self.folds is None:
            raise FileNotFoundError(
                f"data.root={self.root} has no val/ folder: add one, or hold out a seeded, "
                f"stratified part of train with data.val_split=0.1.\n{LAYOUT}"
            )

    def prepare_data(self) -> None:
        if self._prepared:  # train.py calls it before building the model, Lightning again
            return
        self.check_layout()
        if self.test_dir.is_dir():
            check_test_images(self.test_dir)
        _ = self.samples  # finds unreadable images and empty classes before any training
        self._prepared = True

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._class_names = class_names(self.root / "train")
            if not self._class_names:
                raise FileNotFoundError(f"{self.root / 'train'} has no class folders.\n{LAYOUT}")
            val = (
                set(class_names(self.root / "val")) if self.has_val_dir else set(self._class_names)
            )
            if val != set(self._class_names):
                raise ValueError(
                    f"train/ and val/ under {self.root} have different class folders: "
                    f"missing in val: {sorted(set(self._class_names) - val)}; "
                    f"missing in train: {sorted(val - set(self._class_names))}"
                )
        return self._class_names

    @property
    def samples(self) -> dict[str, list[tuple[str, int]]]:
        """(path, class index) for train and val: unreadable images left out with one warning
        (found by a parallel decode, cached in the data root); val split off train when
        there is no val/ folder and data.val_split is set."""
        if self._samples is None:
            names = self.class_names
            splits = ("train", "val") if self.has_val_dir else ("train",)
            found = {split: labelled_files(self.root / split, names) for split in splits}
            readable = set(readable_samples([x for s in splits for x in found[s]], self.root))
            kept = {s: [x for x in found[s] if x in readable] for s in splits}
            empty = [
                str(self.root / split / names[c])
                for split in splits
                for c in sorted(set(range(len(names))) - {c for _, c in kept[split]})
            ]
            if empty:
                raise ValueError(
                    "class folders without a readable image: " + ", ".join(empty) + ". Add "
                    "images or remove the folder (from train/ and val/ alike)."
                )
            if self.folds is not None:
                pooled = kept["train"] + kept.get("val", [])
                kept["train"], kept["val"] = fold_split(pooled, self.folds, self.fold, self.seed)
            elif not self.has_val_dir:
                kept["train"], kept["val"] = stratified_split(
                    kept["train"], self.val_split, self.seed
                )
            self._samples = kept
        return self._samples

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and self.val_set is None:
            train, val = self.samples["train"], self.samples["val"]
            folder = self.root / "train"
            if isinstance(self.train_transform, FastTrainPreset):  # it decodes, too
                decoder = DraftDecoder(self.train_transform)
                self.train_set = ClassFolders(folder, self.class_names, None, train, decoder)
            else:
                self.train_set = ClassFolders(folder, self.class_names, self.train_transform, train)
            val_folder = self.root / "val" if self.has_val_dir else folder
            self.val_set = ClassFolders(val_folder, self.class_names, self.eval_transform, val)
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
