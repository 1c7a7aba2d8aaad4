from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_hw1_folder
from PIL import Image

from hw1.data import ClassFolders, FolderDataModule, UnlabeledImages, class_names, load_rgb


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


@pytest.mark.parametrize(
    ("pipeline", "dtype"), [("fast", torch.uint8), ("reference", torch.float32)]
)
def test_datamodule_batches_have_the_crop_size_and_labels(int_classes_root, pipeline, dtype):
    """The fast pipeline's batches stay uint8 (the model normalises them on its device);
    the reference's come normalised."""
    root, _ = int_classes_root
    dm = datamodule(root, pipeline=pipeline)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == dtype
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


def _write_modes(folder):
    """One file per awkward kind of image that real folders hold."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 200).save(folder / "grey.png")
    Image.new("P", (8, 8), 3).save(folder / "palette.png")
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(folder / "transparent.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(folder / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.new("RGB", (40, 20), (0, 0, 255)).save(folder / "sideways.jpg", exif=exif)


def test_every_image_kind_loads_as_upright_8_bit_rgb(tmp_path):
    _write_modes(tmp_path)
    images = {p.stem: load_rgb(p) for p in tmp_path.iterdir()}
    assert {im.mode for im in images.values()} == {"RGB"}
    assert images["grey"].getpixel((0, 0)) == (200, 200, 200)
    assert images["transparent"].getpixel((0, 0)) == (255, 255, 255)  # laid on white
    assert images["sixteen"].getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped to 255
    red = images["cmyk"].getpixel((0, 0))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert images["sideways"].size == (20, 40)  # EXIF orientation applied


def test_hidden_and_non_image_files_are_not_samples(tmp_path):
    cls = tmp_path / "train" / "a"
    _write_modes(cls)
    Image.new("RGB", (8, 8)).save(cls / "UPPER.JPG")
    Image.new("RGB", (8, 8)).save(cls / "modern.webp")
    (cls / "._UPPER.JPG").write_bytes(b"\0\5\26\7 AppleDouble")
    (cls / ".DS_Store").write_bytes(b"\0")
    (cls / "Thumbs.db").write_bytes(b"\0")
    (cls / "notes.txt").write_text("x")
    names = sorted(Path(p).name for p, _ in ClassFolders(tmp_path / "train", ["a"]).samples)
    assert names == sorted(
        ["grey.png", "palette.png", "transparent.png", "cmyk.jpg", "sixteen.png",
         "sideways.jpg", "UPPER.JPG", "modern.webp"]
    )  # fmt: skip
    image, label = ClassFolders(tmp_path / "train", ["a"])[0]
    assert image.mode == "RGB" and label == 0
