"""``data.source=hf``: a Hugging Face ``datasets`` dataset on disk or in the local cache,
its images kept as undecoded file bytes. It keeps the folder layout's rules
(``hw1.data.sources``); ``datasets`` is the ``hw1[hf]`` extra."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from torch.utils.data import Dataset

from hw1.data.scan import ordered_class_names
from hw1.data.sources import EncodedTest, Items, Splitting, no_val_error, optional
from hw1.utils.errors import UserFileNotFoundError, UserValueError

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
