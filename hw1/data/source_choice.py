"""``data.source``: the source of that name (``hw1.data.sources``, ``hw1.data.shards``)."""

from __future__ import annotations

import os
from typing import Any

from hw1.data.csv_source import CsvSource
from hw1.data.hf_source import HFSource
from hw1.data.shards import ShardSource
from hw1.data.sources import FolderLayout, Source, Splitting
from hw1.utils.errors import UserValueError

SOURCES = ("folder", "csv", "hf", "litdata")


def make_source(
    source: str,
    root: str | os.PathLike,
    seed: int = 0,
    val_split: float | None = None,
    folds: int | None = None,
    fold: int = 0,
    max_image_pixels: int | None = None,
    **options: Any,
) -> Source:
    """``data.source``'s source; ``options`` are its own keys (the CSV files, the columns),
    the others' left out."""
    common = (root, Splitting(seed, val_split, folds, fold, max_image_pixels))
    if source == "folder":
        return FolderLayout(*common)
    if source == "csv":
        keys = ("csv", "train_csv", "val_csv", "test_csv", "image_column", "label_column",
                "split_column")  # fmt: skip
        return CsvSource(*common, **{k: options[k] for k in keys if k in options})
    if source == "hf":
        keys = ("image_column", "label_column", "key_column")
        return HFSource(*common, **{k: options[k] for k in keys if k in options})
    if source == "litdata":
        return ShardSource(*common)
    raise UserValueError(f"data.source={source}: use one of {', '.join(SOURCES)}")
