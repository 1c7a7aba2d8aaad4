from __future__ import annotations

import pytest
import torch
from conftest import make_hw1_folder

from hw1.data import ClassFolders, FolderDataModule, UnlabeledImages, class_names


def datamodule(root, **kw) -> FolderDataModule:
    kw = {"image_size": 32, "batch_size": 4, "num_workers": 0, "arch": "resnet18", **kw}
    return FolderDataModule(root=root, **kw)


def test_integer_class_folders_are_ordered_numerically(int_classes_root):
    root, _ = int_classes_root
    assert class_names(root / "train") == [str(i) for i in range(12)]


def test_named_class_folders_are_ordered_as_text(tmp_path):
    for name in ["tulip", "Aster", "10", "rose", ".hidden"]:
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("not a class")
    assert class_names(tmp_path) == ["10", "Aster", "rose", "tulip"]


def test_val_shares_train_class_indices(int_classes_root):
    root, _ = int_classes_root
    names = class_names(root / "train")
    val = ClassFolders(root / "val", names)
    for path, index in val.samples:
        assert path.split("/")[-2] == names[index]
    assert sorted(set(val.targets)) == list(range(12))


def test_test_images_are_every_image_sorted_with_stems(int_classes_root):
    root, answers = int_classes_root
    (root / "test" / ".DS_Store").write_bytes(b"\0")
    (root / "test" / "readme.txt").write_text("x")
    images = UnlabeledImages(root / "test")
    assert [p.stem for p in images.files] == sorted(answers)
    assert {p.suffix for p in images.files} == {".jpg", ".png", ".JPEG"}
    image, stem = images[0]
    assert image.mode == "RGB" and stem == sorted(answers)[0]


def test_datamodule_batches_have_the_crop_size_and_labels(int_classes_root):
    root, _ = int_classes_root
    dm = datamodule(root)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.min() >= 0 and y.max() < 12
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32)
    dm.setup("predict")
    xp, names = next(iter(dm.predict_dataloader()))
    assert xp.shape == (4, 4, 3, 32, 32)  # the four report TTA views of each image
    assert all(isinstance(n, str) for n in names)


def test_eval_sizes_follow_the_weights():
    assert (
        datamodule("x", image_size=224, arch="resnet50", weights="IMAGENET1K_V2").sizes.resize
        == 232
    )
    assert (
        datamodule("x", image_size=224, arch="resnet50", weights="IMAGENET1K_V1").sizes.resize
        == 256
    )
    assert datamodule("x", image_size=224, weights=None).sizes.resize == 256


def test_missing_root_says_where_it_looked_and_how_to_run_the_demo(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)data.root=.*nowhere.*experiment=demo"):
        datamodule(tmp_path / "nowhere").prepare_data()


def test_missing_val_folder_is_named(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no val/ folder"):
        datamodule(tmp_path).prepare_data()


def test_train_and_val_class_mismatch_names_both_sides(tmp_path):
    make_hw1_folder(tmp_path, ["a", "b", "c"], train=1, val=1, test=0)
    (tmp_path / "val" / "c").rename(tmp_path / "val" / "d")
    with pytest.raises(ValueError, match=r"missing in val: \['c'\]; missing in train: \['d'\]"):
        _ = datamodule(tmp_path).class_names
