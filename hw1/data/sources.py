"""Where labelled images come from (``data.source``): the HW1 folders, a CSV of
``image,label`` rows beside an image folder, a Hugging Face ``datasets`` dataset, or LitData
shards (``python -m hw1.shard``). A source says which classes there are, in hw1's order,
and which items each split holds: a path or an image file's bytes, with a class index. The
data module builds the same datasets and transforms over any of them.

Every source answers the same small protocol (``Source``); the folder layout is the
reference, and the others keep its rules: classes in numeric order when every name is an
integer, val taken from train by ``val_split`` or ``folds``/``fold`` where the source has no
val split, unreadable files listed and left out by the image check. This module holds the
protocol, the shared settings and helpers, and the folder layout; the others live beside it
(``csv_source``, ``hf_source``, ``shards``), and ``source_choice`` picks one by name.
"""

from __future__ import annotations

import importlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from torch.utils.data import Dataset

from hw1.data.datasets import LAYOUT, UnlabeledImages
from hw1.data.image_check import check_test_images, readable_samples
from hw1.data.scan import class_names, display_path, image_files, is_utf8, labelled_files
from hw1.data.splits import fold_split, stratified_split
from hw1.transforms.decode import load_rgb
from hw1.utils.errors import UserFileNotFoundError, UserRuntimeError, UserValueError

Items = dict[str, list[tuple[Any, int]]]


class Source(Protocol):
    """What the data module asks of a source. An item's reference (``ref``) is a path, or a
    key that ``read`` turns into the image file's bytes (``read`` is None for paths)."""

    root: Path
    read: Any

    def check(self) -> None: ...
    def class_names(self) -> list[str]: ...
    def labelled(self, names: list[str]) -> Items: ...
    def test_images(self) -> list: ...
    def check_test_images(self, max_pixels: int | None) -> list: ...
    def test_set(self) -> Dataset | None: ...


def optional(module: str, extra: str):
    """``module``, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserRuntimeError(f'{module} is not installed: pip install "hw1[{extra}]"') from None


@dataclass(frozen=True)
class Splitting:
    """The data module's settings every source shares: how val is drawn from train where a
    source has none (``val_split``, or K folds of train and val pooled: ``folds``/``fold``,
    seeded by ``seed``) and the image check's size limit. Checked once, here."""

    seed: int = 0
    val_split: float | None = None
    folds: int | None = None
    fold: int = 0
    max_image_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.val_split is not None and not 0 < self.val_split < 1:
            raise UserValueError(
                f"data.val_split={self.val_split}: use null or a fraction in (0, 1)"
            )
        if self.folds is not None and not (self.folds >= 2 and 0 <= self.fold < self.folds):
            raise UserValueError(
                f"data.folds={self.folds} data.fold={self.fold}: use folds >= 2, 0 <= fold < folds"
            )

    @property
    def makes_val(self) -> bool:
        """Whether val comes from train, so a source needs no val split of its own."""
        return self.val_split is not None or self.folds is not None

    def held_out(self, kept: Items) -> Items:
        """train and val as training uses them: K folds of both pooled (``folds``), or a
        seeded, stratified part of train (``val_split``) where there is no val split."""
        if self.folds is not None:
            pooled = kept["train"] + kept.get("val", [])
            kept["train"], kept["val"] = fold_split(pooled, self.folds, self.fold, self.seed)
        elif "val" not in kept:
            kept["train"], kept["val"] = stratified_split(kept["train"], self.val_split, self.seed)
        return kept


def readable_items(found: Items, root: Path, max_pixels: int | None) -> Items:
    """Each split's items less the unreadable images, which the image check (a parallel
    decode, cached in ``root``) lists in one warning."""
    every = [x for rows in found.values() for x in rows]
    readable = set(readable_samples(every, root, max_pixels))
    return {s: [x for x in rows if x in readable] for s, rows in found.items()}


def no_val_error(where: str) -> UserFileNotFoundError:
    return UserFileNotFoundError(
        f"{where} has no val split: add one, or hold out a seeded, stratified part of "
        "train with data.val_split=0.1"
    )


class FolderLayout:
    """Which images are labelled with which class, in the HW1 layout: ``ROOT/train/<class>/``,
    ``ROOT/val/<class>/`` (or a seeded, stratified part of train: ``val_split``; or K folds
    of train and val pooled: ``folds``/``fold``) and ``ROOT/test/``. Reads folders and the
    image check's results; builds no dataset and no transform (the data module does)."""

    read = None  # items are paths

    def __init__(
        self,
        root: str | os.PathLike,
        splitting: Splitting | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.splitting = splitting or Splitting()

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    def test_images(self) -> list[Path]:
        """The test folder's images; none without a test/ folder."""
        return image_files(self.test_dir) if self.test_dir.is_dir() else []

    def check_test_images(self, max_pixels: int | None) -> list[Path] | None:
        """The test images checked as prediction.csv needs them; None without test/."""
        return check_test_images(self.test_dir, max_pixels) if self.test_dir.is_dir() else None

    def test_set(self) -> Dataset | None:
        return UnlabeledImages(self.test_dir) if self.test_dir.is_dir() else None

    def has_val_dir(self) -> bool:
        return (self.root / "val").is_dir()

    def check(self) -> None:
        """The folders training needs: root, train/, and val/ unless data.val_split."""
        if not self.root.is_dir():
            raise UserFileNotFoundError(f"data.root={self.root}: no such folder.\n{LAYOUT}")
        if not (self.root / "train").is_dir():
            raise UserFileNotFoundError(f"data.root={self.root} has no train/ folder.\n{LAYOUT}")
        if not self.has_val_dir() and not self.splitting.makes_val:
            raise UserFileNotFoundError(
                f"data.root={self.root} has no val/ folder: add one, or hold out a seeded, "
                f"stratified part of train with data.val_split=0.1.\n{LAYOUT}"
            )

    def class_names(self) -> list[str]:
        """train/'s class folders, in hw1's order; val/ must hold the same ones."""
        names = class_names(self.root / "train")
        if not names:
            raise UserFileNotFoundError(f"{self.root / 'train'} has no class folders.\n{LAYOUT}")
        not_utf8 = [display_path(self.root / "train" / n) for n in names if not is_utf8(n)]
        if not_utf8:
            raise UserValueError(
                f"class folder names that are not valid UTF-8, which prediction.csv cannot "
                f"hold: {', '.join(not_utf8)}. Rename them (in val/ too)."
            )
        val = set(class_names(self.root / "val")) if self.has_val_dir() else set(names)
        if val != set(names):
            raise UserValueError(
                f"train/ and val/ under {self.root} have different class folders: "
                f"missing in val: {sorted(set(names) - val)}; "
                f"missing in train: {sorted(val - set(names))}"
            )
        return names

    def labelled(self, names: list[str]) -> Items:
        """(path, class index) for train and val: unreadable images left out with one warning
        (found by a parallel decode, cached in the data root); val split off train when
        there is no val/ folder and data.val_split is set."""
        splits = ("train", "val") if self.has_val_dir() else ("train",)
        found = {split: labelled_files(self.root / split, names) for split in splits}
        kept = readable_items(found, self.root, self.splitting.max_image_pixels)
        empty = [
            str(self.root / split / names[c])
            for split in splits
            for c in sorted(set(range(len(names))) - {c for _, c in kept[split]})
        ]
        if empty:
            raise UserValueError(
                "class folders without a readable image: " + ", ".join(empty) + ". Add "
                "images or remove the folder (from train/ and val/ alike)."
            )
        return self.splitting.held_out(kept)


def load_encoded(data: bytes) -> Image.Image:
    """An image file's bytes as upright 8-bit RGB (``load_rgb`` on them)."""
    return load_rgb(io.BytesIO(data))


class EncodedImages(Dataset):
    """Labelled items whose images are file bytes (``read(ref)``): (transformed image, class
    index), with ``samples`` and ``targets`` as ClassFolders has them. ``loader`` takes the
    bytes: ``load_encoded``, or the fast pipeline's DraftDecoder."""

    def __init__(self, read, samples, transform=None, loader=load_encoded) -> None:
        self.read, self.samples = read, list(samples)
        self.targets = [c for _, c in self.samples]
        self.transform, self.loader = transform, loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        ref, target = self.samples[i]
        image = self.loader(self.read(ref))
        return (self.transform(image) if self.transform is not None else image), target


class EncodedTest(Dataset):
    """Unlabelled items as file bytes: (RGB PIL image, prediction.csv key), as
    UnlabeledImages yields them."""

    def __init__(self, read, refs: list, keys: list[str]) -> None:
        self.read, self.refs, self.keys = read, refs, keys

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        return load_encoded(self.read(self.refs[i])), self.keys[i]


def class_counts(items: Items, names: list[str]) -> dict[str, dict[str, int]]:
    """Images per class per split, for reports and the shards' metadata."""
    return {
        split: {names[c]: n for c, n in sorted(Counter(c for _, c in rows).items())}
        for split, rows in items.items()
    }


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserFileNotFoundError(f"{display_path(path)}: no such file ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserValueError(f"{display_path(path)} is not valid JSON ({what}): {e}") from None
