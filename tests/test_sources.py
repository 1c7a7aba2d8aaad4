"""The sources under the data module: a CSV of image,label rows and a Hugging Face
datasets dataset give the same classes, order, counts and batches as the folder layout."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import datamodule, make_hw1_folder

from hw1.data.csv_source import CsvSource
from hw1.data.source_choice import make_source
from hw1.data.sources import optional
from hw1.utils.errors import UserRuntimeError, UserValueError

CLASSES = ["0", "1", "10", "2"]  # numeric order: 0, 1, 2, 10


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def folder_rows(root: Path, split: str) -> list[dict]:
    """The folder layout's split as CSV rows, paths relative to root."""
    return [
        {"image": f"{split}/{c}/{f}", "label": c}
        for c in sorted(os.listdir(root / split))
        for f in sorted(os.listdir(root / split / c))
    ]


@pytest.fixture
def csv_root(tmp_path) -> Path:
    """The HW1 folders plus train.csv, val.csv and test.csv naming the same files."""
    root = tmp_path / "data"
    make_hw1_folder(root, CLASSES, train=4, val=2, test=1)
    write_csv(root / "train.csv", folder_rows(root, "train"))
    write_csv(root / "val.csv", folder_rows(root, "val"))
    tests = [{"image": f"test/{f}"} for f in sorted(os.listdir(root / "test"))]
    write_csv(root / "test.csv", tests)
    return root


CSV = dict(source="csv", train_csv="train.csv", val_csv="val.csv", test_csv="test.csv")


def labels_of(samples) -> Counter:
    return Counter(c for _, c in samples)


def test_a_csv_source_gives_the_folder_layouts_classes_samples_and_test_images(csv_root):
    folder, table = datamodule(csv_root), datamodule(csv_root, **CSV)
    folder.validate()
    table.validate()
    assert table.class_names == folder.class_names == ["0", "1", "2", "10"]
    for split in ("train", "val"):
        assert sorted(table.samples[split]) == sorted(folder.samples[split])
    assert table.layout.test_images() == folder.layout.test_images()
    table.setup()
    x, y = next(iter(table.train_dataloader()))
    # no GPU here: the workers finish the fast pipeline's images (data.deferred=auto)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    views, keys = next(iter(table.predict_dataloader()))
    assert views.dtype == torch.uint8 and sorted(keys) == sorted(
        p.stem for p in folder.layout.test_images()
    )


def test_one_csv_with_a_split_column_and_renamed_columns(csv_root):
    rows = [
        {"file": r["image"], "class": r["label"], "part": split}
        for split in ("train", "val")
        for r in folder_rows(csv_root, split)
    ]
    write_csv(csv_root / "all.csv", rows)
    options = dict(csv="all.csv", image_column="file", label_column="class", split_column="part")
    dm = datamodule(csv_root, source="csv", **options)
    dm.validate()
    assert len(dm.samples["train"]) == 16 and len(dm.samples["val"]) == 8


def test_csv_val_split_and_folds_behave_as_the_folders_do(csv_root):
    for kw in ({"val_split": 0.25}, {"folds": 3, "fold": 1}):
        (csv_root / "val").rename(csv_root / "val-away") if "val_split" in kw else None
        folder = datamodule(csv_root, **kw)
        table = datamodule(csv_root, source="csv", train_csv="train.csv", **kw)
        if "folds" in kw:  # the folder pools val/: pool the CSV's val too
            table = datamodule(csv_root, **CSV, **kw)
        folder.validate()
        table.validate()
        for split in ("train", "val"):
            assert sorted(table.samples[split]) == sorted(folder.samples[split]), kw
        (csv_root / "val-away").rename(csv_root / "val") if "val_split" in kw else None


def test_a_missing_file_in_a_csv_is_listed_and_left_out(csv_root, caplog):
    rows = folder_rows(csv_root, "train") + [{"image": "train/0/gone.jpg", "label": "0"}]
    write_csv(csv_root / "train.csv", rows)
    dm = datamodule(csv_root, **CSV)
    dm.validate()
    assert len(dm.samples["train"]) == 16
    assert "gone.jpg" in caplog.text and "missing" in caplog.text


@pytest.mark.parametrize(
    "change, message",
    [
        ("val_label", "val.csv: .*labelled '7', a class that train does not have"),
        ("duplicate", "train.csv row 18: train/0/0.jpg is listed again \\(first on row 2\\)"),
        ("columns", "train.csv has no column label \\(its columns: image, klass\\)"),
        ("split", "all.csv row 2: split 'holdout'"),
        ("no_label", "train.csv row 2: train/0/0.jpg has no label"),
    ],
)
def test_bad_csvs_are_named_with_the_file_and_row(csv_root, change, message):
    options = dict(CSV)
    train = folder_rows(csv_root, "train")
    if change == "val_label":
        write_csv(csv_root / "val.csv", [{"image": "val/0/0.jpg", "label": "7"}])
    elif change == "duplicate":
        write_csv(csv_root / "train.csv", train + [train[0]])
    elif change == "columns":
        write_csv(
            csv_root / "train.csv", [{"image": r["image"], "klass": r["label"]} for r in train]
        )
    elif change == "split":
        write_csv(csv_root / "all.csv", [{**train[0], "split": "holdout"}])
        options = dict(source="csv", csv="all.csv")
    elif change == "no_label":
        write_csv(csv_root / "train.csv", [{**train[0], "label": ""}, *train[1:]])
    dm = datamodule(csv_root, **options)
    with pytest.raises(UserValueError, match=message):
        dm.validate()


def test_an_unknown_source_names_the_choices(tmp_path):
    with pytest.raises(UserValueError, match="data.source=zip: use one of folder, csv, hf"):
        make_source("zip", tmp_path)


def test_a_missing_extra_names_its_install_command():
    with pytest.raises(UserRuntimeError, match=r'pip install "hw1\[stream\]"'):
        optional("no_such_module_hw1", "stream")


def test_csv_test_images_must_all_be_readable(csv_root):
    (csv_root / "test" / "broken.jpg").write_bytes(b"not a jpeg")
    write_csv(csv_root / "test.csv", [{"image": "test/broken.jpg"}])
    source = CsvSource(csv_root, test_csv="test.csv", train_csv="train.csv")
    with pytest.raises(UserValueError, match="broken.jpg"):
        source.check_test_images(None)


# --- Hugging Face datasets -------------------------------------------------------------


def hf_dataset(root: Path, out: Path, label_feature: bool = True):
    """The folder layout as a DatasetDict (train, validation, test) saved to disk, labels
    as a ClassLabel in text order (as imagefolder names them)."""
    datasets = pytest.importorskip("datasets")
    names = sorted(CLASSES)  # text order: 0, 1, 10, 2
    splits = {}
    for split, hf_name in (("train", "train"), ("val", "validation")):
        rows = folder_rows(root, split)
        data = {
            "image": [str(root / r["image"]) for r in rows],
            "label": [names.index(r["label"]) if label_feature else r["label"] for r in rows],
        }
        features = datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=names)
                if label_feature
                else datasets.Value("string"),
            }
        )
        splits[hf_name] = datasets.Dataset.from_dict(data, features=features)
    tests = sorted((root / "test").iterdir())
    splits["test"] = datasets.Dataset.from_dict(
        {"image": [str(p) for p in tests]}, features=datasets.Features({"image": datasets.Image()})
    )
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return out


@pytest.mark.parametrize("label_feature", [True, False])
def test_a_datasets_dataset_gives_the_folder_layouts_classes_and_counts(csv_root, label_feature):
    path = hf_dataset(csv_root, csv_root.parent / "hf", label_feature)
    folder, hf = datamodule(csv_root), datamodule(path, source="hf")
    folder.validate()
    hf.validate()
    assert hf.class_names == folder.class_names == ["0", "1", "2", "10"]
    for split in ("train", "val"):
        assert labels_of(hf.samples[split]) == labels_of(folder.samples[split])
    hf.setup()
    folder.setup()
    x, y = next(iter(hf.val_dataloader()))
    fx, fy = next(iter(folder.val_dataloader()))
    assert torch.equal(x, fx) and torch.equal(y, fy)  # the same bytes, the same pixels
    xt, yt = next(iter(hf.train_dataloader()))
    assert xt.shape == (4, 3, 32, 32) and xt.dtype == torch.uint8  # finished in the workers
    views, keys = next(iter(hf.predict_dataloader()))
    assert views.dtype == torch.uint8 and set(keys) <= {
        p.stem for p in (csv_root / "test").iterdir()
    }


def test_a_datasets_dataset_without_the_image_column_is_named(csv_root):
    path = hf_dataset(csv_root, csv_root.parent / "hf")
    dm = datamodule(path, source="hf", image_column="picture")
    with pytest.raises(UserValueError, match="no image column 'picture' \\(its columns: image"):
        dm.validate()


def test_a_hub_name_not_in_the_cache_is_not_downloaded(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    dm = datamodule("someone/no-such-dataset-hw1", source="hf")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        dm.validate()


def test_hw1_check_reports_a_csv_source_as_training_sees_it(csv_root):
    from hw1.check import report
    from hw1.utils.config import compose_config

    overrides = [f"data.root={csv_root}", *(f"data.{k}={v}" for k, v in CSV.items())]
    text, problems = report(compose_config(overrides, config_name="check"))
    assert problems == [] and text.endswith("training can start"), text
    lines = text.splitlines()
    assert "classes: 4 (0, 1, 2, 10)" in lines
    assert lines[3].split() == ["train", "16", "4", "/", "4", "/", "4", "1.0"]
    assert lines[5].split() == ["test", "4"]
    write_csv(csv_root / "val.csv", [{"image": "val/0/0.jpg", "label": "7"}])
    _, problems = report(compose_config(overrides, config_name="check"))
    assert len(problems) == 1 and "a class that train does not have" in problems[0]
