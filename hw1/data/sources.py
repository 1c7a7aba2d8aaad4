"""Where labelled images come from (``data.source``): the HW1 folders, a CSV of
``image,label`` rows beside an image folder, a Hugging Face ``datasets`` dataset, or LitData
shards (``python -m hw1.shard``). A source says which classes there are, in hw1's order,
and which items each split holds: a path or an image file's bytes, with a class index. The
data module builds the same datasets and transforms over any of them.

Every source answers the same small protocol (``Source``); the folder layout is the
reference, and the others keep its rules: classes in numeric order when every name is an
integer, val taken from train by ``val_split`` or ``folds``/``fold`` where the source has no
val split, unreadable files listed and left out by the image check.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from torch.utils.data import Dataset

from hw1.data.datasets import LAYOUT, UnlabeledImages
from hw1.data.scan import (
    check_test_images,
    class_names,
    display_path,
    image_files,
    is_utf8,
    labelled_files,
    ordered_class_names,
    readable_samples,
)
from hw1.data.splits import fold_split, stratified_split
from hw1.transforms.decode import load_rgb
from hw1.utils.errors import UserFileNotFoundError, UserRuntimeError, UserValueError

log = logging.getLogger(__name__)

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


class CsvSource:
    """Rows of ``image,label`` naming image files relative to ``data.root``: one CSV per
    split (``train_csv``, ``val_csv``, ``test_csv``) or one CSV (``csv``) with a split
    column (train, val, test). Test rows need no label; their file stem is their
    prediction.csv key. Missing and unreadable files are listed and left out, as the
    folder layout's are."""

    read = None  # items are paths

    def __init__(
        self,
        root: str | os.PathLike,
        splitting: Splitting | None = None,
        csv: str | None = None,
        train_csv: str | None = None,
        val_csv: str | None = None,
        test_csv: str | None = None,
        image_column: str = "image",
        label_column: str = "label",
        split_column: str = "split",
    ) -> None:
        self.root = Path(root).expanduser()
        self.splitting = splitting or Splitting()
        self.csv, self.csvs = csv, {"train": train_csv, "val": val_csv, "test": test_csv}
        self.image_column, self.label_column = image_column, label_column
        self.split_column = split_column
        self._rows: dict[str, list[tuple[str, str | None]]] | None = None

    def _path(self, name: str) -> Path:
        return self.root / Path(name).expanduser()

    def check(self) -> None:
        if not self.root.is_dir():
            raise UserFileNotFoundError(f"data.root={self.root}: no such folder")
        if self.csv is None and self.csvs["train"] is None:
            raise UserValueError(
                "data.source=csv needs data.train_csv (and data.val_csv, data.test_csv) or "
                "one data.csv with a split column"
            )
        rows = self.rows()
        if not rows.get("train"):
            raise UserValueError(f"{self._where('train')} has no train rows")
        if "val" not in rows and not self.splitting.makes_val:
            raise no_val_error(self._where("train"))

    def _where(self, split: str) -> str:
        return display_path(self._path(self.csv or self.csvs[split]))

    def rows(self) -> dict[str, list[tuple[str, str | None]]]:
        """(image path, label) per split present, read once."""
        if self._rows is None:
            if self.csv is not None:
                self._rows = self._read(self._path(self.csv), split_column=self.split_column)
            else:
                self._rows = {}
                for split, name in self.csvs.items():
                    if name is not None:
                        self._rows |= self._read(self._path(name), split=split)
        return self._rows

    def _read(
        self, file: Path, split: str | None = None, split_column: str | None = None
    ) -> dict[str, list[tuple[str, str | None]]]:
        if not file.is_file():
            raise UserFileNotFoundError(f"{display_path(file)}: no such CSV file")
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            needed = [self.image_column] + ([split_column] if split_column else [])
            if split != "test":
                needed.append(self.label_column)
            missing = [c for c in needed if c not in columns]
            if missing:
                raise UserValueError(
                    f"{display_path(file)} has no column {', '.join(missing)} (its columns: "
                    f"{', '.join(columns) or 'none'}): set data.image_column, "
                    f"data.label_column or data.split_column"
                )
            out: dict[str, list[tuple[str, str | None]]] = {}
            seen: dict[str, int] = {}
            for line, row in enumerate(reader, start=2):
                where = split or (row[split_column] or "").strip()
                if where not in ("train", "val", "test"):
                    raise UserValueError(
                        f"{display_path(file)} row {line}: split {where!r}: use train, val or test"
                    )
                image = (row[self.image_column] or "").strip()
                label = (row.get(self.label_column) or "").strip() or None
                if image in seen:
                    raise UserValueError(
                        f"{display_path(file)} row {line}: {image} is listed again (first on "
                        f"row {seen[image]}): keep one row per image"
                    )
                seen[image] = line
                if where != "test" and label is None:
                    raise UserValueError(f"{display_path(file)} row {line}: {image} has no label")
                out.setdefault(where, []).append((os.fspath(self._path(image)), label))
        return out

    def class_names(self) -> list[str]:
        """train's labels in hw1's order; a val label that train lacks is an error."""
        rows = self.rows()
        names = ordered_class_names({label for _, label in rows["train"]})
        known = set(names)
        for path, label in rows.get("val", []):
            if label not in known:
                raise UserValueError(
                    f"{self._where('val')}: {display_path(path)} is labelled {label!r}, a "
                    f"class that train does not have (train's: {', '.join(names[:20])}"
                    f"{' ...' if len(names) > 20 else ''})"
                )
        return names

    def labelled(self, names: list[str]) -> Items:
        index = {n: i for i, n in enumerate(names)}
        found = {
            split: [(p, index[label]) for p, label in rows]
            for split, rows in self.rows().items()
            if split != "test"
        }
        kept = readable_items(found, self.root, self.splitting.max_image_pixels)
        return self.splitting.held_out(kept)

    def test_images(self) -> list[Path]:
        return [Path(p) for p, _ in self.rows().get("test", [])]

    def check_test_images(self, max_pixels: int | None) -> list[Path] | None:
        """Test rows must all be readable: every one needs a row in prediction.csv."""
        files = self.test_images()
        if not files:
            return None
        readable = {
            Path(p)
            for p, _ in readable_samples([(os.fspath(f), 0) for f in files], self.root, max_pixels)
        }
        bad = [display_path(f) for f in files if f not in readable]
        if bad:
            raise UserValueError(
                f"{len(bad)} test images of {self._where('test')} cannot be read: "
                f"{', '.join(bad[:20])}. Fix or remove their rows."
            )
        return files

    def test_set(self) -> Dataset | None:
        files = self.test_images()
        return UnlabeledImages(files=files) if files else None


HF_SPLITS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}


class HFReader:
    """An item's image file bytes from a Hugging Face dataset's image column (kept
    undecoded: the train pipeline decodes JPEG bytes at the scale its crop needs)."""

    def __init__(self, splits: dict, image_column: str) -> None:
        self.splits, self.image_column = splits, image_column

    def __call__(self, ref: tuple[str, int]) -> bytes:
        split, row = ref
        value = self.splits[split][row][self.image_column]
        if value.get("bytes"):
            return value["bytes"]
        with open(value["path"], "rb") as f:
            return f.read()


def offline_datasets():
    """``datasets``, kept from the network: hub names resolve from the local cache only
    (its settings are read at import, hence the environment and the loaded modules)."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    datasets = optional("datasets", "hf")
    hub = importlib.import_module("huggingface_hub.constants")
    for module in (datasets.config, hub):
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(module, name):
                setattr(module, name, True)
    return datasets


class HFSource:
    """A Hugging Face ``datasets`` dataset: saved with ``save_to_disk`` (``data.root`` its
    folder), a local imagefolder or parquet folder, or a hub name already in the user's
    cache (nothing is downloaded). Splits train, validation (or val) and test; the image
    and label columns are configurable."""

    def __init__(
        self,
        root: str | os.PathLike,
        splitting: Splitting | None = None,
        image_column: str = "image",
        label_column: str = "label",
        key_column: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.name = os.fspath(root)
        self.splitting = splitting or Splitting()
        self.image_column, self.label_column, self.key_column = (
            image_column,
            label_column,
            key_column,
        )
        self._splits: dict | None = None
        self.read: HFReader | None = None

    def splits(self) -> dict:
        """{train, val, test: the dataset} for the splits present, images undecoded."""
        if self._splits is None:
            datasets = offline_datasets()
            try:
                if (self.root / "dataset_dict.json").is_file() or (
                    self.root / "state.json"
                ).is_file():
                    loaded = datasets.load_from_disk(os.fspath(self.root))
                else:
                    loaded = datasets.load_dataset(self.name)
            except (FileNotFoundError, ValueError, ConnectionError) as e:
                raise UserFileNotFoundError(
                    f"data.root={self.name}: not a datasets dataset on disk or in the local "
                    f"cache (nothing is downloaded): {e}"
                ) from None
            if isinstance(loaded, datasets.Dataset):
                loaded = {"train": loaded}
            out = {}
            for split, names in HF_SPLITS.items():
                for name in names:
                    if name in loaded:
                        out[split] = self._undecoded(loaded[name], name, datasets)
                        break
            self._splits = out
            self.read = HFReader(out, self.image_column)
        return self._splits

    def _undecoded(self, dataset, name: str, datasets):
        columns = list(dataset.column_names)
        if self.image_column not in columns:
            raise UserValueError(
                f"data.root={self.name} split {name} has no image column "
                f"{self.image_column!r} (its columns: {', '.join(columns)}): set "
                "data.image_column"
            )
        if name != "test" and self.label_column not in columns:
            raise UserValueError(
                f"data.root={self.name} split {name} has no label column "
                f"{self.label_column!r} (its columns: {', '.join(columns)}): set "
                "data.label_column"
            )
        return dataset.cast_column(self.image_column, datasets.Image(decode=False))

    def check(self) -> None:
        splits = self.splits()
        if "train" not in splits:
            raise UserValueError(f"data.root={self.name} has no train split")
        if "val" not in splits and not self.splitting.makes_val:
            raise no_val_error(f"data.root={self.name}")

    def _labels(self, split: str) -> list[str]:
        dataset = self.splits()[split]
        feature = dataset.features[self.label_column]
        values = dataset[self.label_column]
        if hasattr(feature, "int2str"):  # a ClassLabel: its names, not its indices
            return [feature.int2str(v) for v in values]
        return [str(v) for v in values]

    def class_names(self) -> list[str]:
        names = ordered_class_names(set(self._labels("train")))
        if "val" in self.splits():
            unknown = sorted(set(self._labels("val")) - set(names))
            if unknown:
                raise UserValueError(
                    f"data.root={self.name}: val labels that train does not have: "
                    f"{', '.join(unknown[:20])}"
                )
        return names

    def labelled(self, names: list[str]) -> Items:
        index = {n: i for i, n in enumerate(names)}
        kept = {
            split: [((split, row), index[label]) for row, label in enumerate(self._labels(split))]
            for split in ("train", "val")
            if split in self.splits()
        }
        return self.splitting.held_out(kept)

    def _keys(self) -> list[str]:
        test = self.splits().get("test")
        if test is None:
            return []
        if self.key_column is not None:
            return [str(k) for k in test[self.key_column]]
        paths = [v.get("path") for v in test[self.image_column]]
        if all(paths) and len({Path(p).stem for p in paths}) == len(paths):
            return [Path(p).stem for p in paths]
        return [str(i) for i in range(len(test))]

    def test_images(self) -> list[str]:
        return self._keys()

    def check_test_images(self, max_pixels: int | None) -> list[str] | None:
        return self._keys() or None

    def test_set(self) -> Dataset | None:
        keys = self._keys()
        return (
            EncodedTest(self.read, [("test", i) for i in range(len(keys))], keys) if keys else None
        )


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
