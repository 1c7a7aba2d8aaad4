"""``data.source=csv``: rows of ``image,label`` naming image files under ``data.root``,
one CSV per split or one CSV with a split column. It keeps the folder layout's rules
(``hw1.data.sources``)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from torch.utils.data import Dataset

from hw1.data.datasets import UnlabeledImages
from hw1.data.image_check import readable_samples
from hw1.data.scan import display_path, ordered_class_names
from hw1.data.sources import Items, Splitting, no_val_error, readable_items
from hw1.utils.errors import UserFileNotFoundError, UserValueError


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
