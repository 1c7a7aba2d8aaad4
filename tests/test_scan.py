from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_hw1_folder
from PIL import Image

from hw1.data.datasets import ClassFolders
from hw1.data.scan import class_names, labelled_files
from hw1.transforms.decode import load_rgb


def test_integer_class_folders_are_ordered_numerically(int_classes_root):
    root, _ = int_classes_root
    assert class_names(root / "train") == [str(i) for i in range(12)]


def test_named_class_folders_are_ordered_as_text(tmp_path):
    for name in ["tulip", "Aster", "10", "rose", ".hidden"]:
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("not a class")
    assert class_names(tmp_path) == ["10", "Aster", "rose", "tulip"]


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


def test_links_to_folders_already_listed_are_not_followed_again(tmp_path, caplog):
    make_hw1_folder(tmp_path, ["a", "b"], train=3, val=1, test=0)
    (tmp_path / "train" / "a" / "loop").symlink_to(".")  # ln -s . train/a/loop
    pool = tmp_path / "pool"
    pool.mkdir()
    Image.new("RGB", (8, 8)).save(pool / "extra.jpg")
    (tmp_path / "train" / "b" / "more").symlink_to(pool)  # a link elsewhere: followed once
    (tmp_path / "train" / "b" / "again").symlink_to(pool)
    with caplog.at_level("WARNING", logger="hw1.data.scan"):
        found = labelled_files(tmp_path / "train", ["a", "b"])
    names = [str(Path(p).relative_to(tmp_path / "train")) for p, _ in found]
    assert names == [
        "a/0.jpg",
        "a/1.jpg",
        "a/2.jpg",
        "b/0.jpg",
        "b/1.jpg",
        "b/2.jpg",
        "b/again/extra.jpg",
    ]
    warning = caplog.records[-1].getMessage()
    assert "2 links to folders were not followed (each image is used once" in warning
    assert f"{tmp_path / 'train' / 'a' / 'loop'} -> {tmp_path / 'train' / 'a'}" in warning
    assert f"{tmp_path / 'train' / 'b' / 'more'} -> {pool} (listed already)" in warning


def test_links_up_or_into_another_class_are_not_followed(tmp_path, caplog):
    """A link to a folder above the class folder (a loop) used to be followed once, and
    listed the other classes' images, val's and test's, under this class too."""
    make_hw1_folder(tmp_path, ["a", "b", "c"], train=2, val=1, test=1, size=32)
    train = tmp_path / "train"
    (train / "a" / "up").symlink_to("..")  # train/
    (train / "a" / "root").symlink_to("../..")  # the data root
    (train / "b" / "sub").mkdir()
    (train / "a" / "b_sub").symlink_to(train / "b" / "sub")  # into another class's folder
    with caplog.at_level("WARNING", logger="hw1.data.scan"):
        found = labelled_files(train, ["a", "b", "c"])
    assert sorted((str(Path(p).relative_to(train)), c) for p, c in found) == [
        (f"{name}/{i}.jpg", c) for c, name in enumerate("abc") for i in range(2)
    ]
    warning = caplog.records[-1].getMessage()
    assert "3 links to folders were not followed" in warning
    assert f"{train / 'a' / 'up'} -> {train} (a folder above it: a loop)" in warning
    assert f"{train / 'a' / 'root'} -> {tmp_path} (a folder above it: a loop)" in warning
    assert f"{train / 'a' / 'b_sub'} -> {train / 'b' / 'sub'} (inside another class's" in warning


def test_a_link_loop_in_predicted_inputs_lists_each_image_once(tmp_path, caplog):
    from hw1.data.scan import input_files

    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "sub" / "x.jpg")
    (tmp_path / "in" / "sub" / "loop").symlink_to("..")
    with caplog.at_level("WARNING", logger="hw1.data.scan"):
        assert input_files(tmp_path / "in") == [tmp_path / "in" / "sub" / "x.jpg"]
    warning = caplog.records[-1].getMessage()
    assert "1 links to folders were not followed (each image is predicted once)" in warning
    assert f"{tmp_path / 'in' / 'sub' / 'loop'} -> {tmp_path / 'in'} (listed already)" in warning


CAFE_NFC, CAFE_NFD = "caf\u00e9", "cafe\u0301"  # é composed; e and a combining accent


def test_two_class_folders_spelt_two_ways_are_refused_naming_both(tmp_path):
    for name in (CAFE_NFC, CAFE_NFD, "tea"):
        (tmp_path / "train" / name).mkdir(parents=True)
    with pytest.raises(ValueError) as error:
        class_names(tmp_path / "train")
    message = str(error.value)
    assert f"{tmp_path / 'train' / CAFE_NFD} (decomposed) and " in message
    assert f" and {tmp_path / 'train' / CAFE_NFC} (composed) are one class name spelt" in message


def test_a_folder_copied_through_macos_matches_a_checkpoint_s_composed_names(tmp_path):
    """A checkpoint trained on ``café`` (composed) and a val/ copied through macOS, whose
    folder is ``café`` decomposed: its images are that class's, not left out."""
    make_hw1_folder(tmp_path, [CAFE_NFD, "tea"], train=2, val=2, test=0, size=32)
    assert class_names(tmp_path / "val") == [CAFE_NFC, "tea"]
    found = labelled_files(tmp_path / "val", [CAFE_NFC, "tea"])
    assert sorted((Path(p).parent.name, c) for p, c in found) == [
        (CAFE_NFD, 0), (CAFE_NFD, 0), ("tea", 1), ("tea", 1)
    ]  # fmt: skip


def test_checkpoints_class_names_are_compared_composed(tmp_path):
    """init_from= (and ckpt_path=, averaging) with a checkpoint trained on the decomposed
    spelling, on data whose folders are composed: the same classes."""
    from conftest import save_tiny_checkpoint

    from hw1.inference.averaging import must_share
    from hw1.models.classifier import Classifier
    from hw1.training.init_from import load_weights

    ckpt = save_tiny_checkpoint(tmp_path / "nfd.ckpt", classes=[CAFE_NFD, "tea"])
    model = Classifier.from_checkpoint(ckpt)
    assert model.class_names == [CAFE_NFC, "tea"]
    load_weights(model, ckpt)  # no "its class_names are not this data's"
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert must_share(hparams)["class_names"] == [CAFE_NFC, "tea"]


def test_test_files_skipped_by_extension_are_counted_and_named(tmp_path, caplog):
    from hw1.data.image_check import check_test_images

    make_hw1_folder(tmp_path, ["a", "b"], train=1, val=1, test=2, size=32)
    for name in ("anim.gif", "photo.heic", "notes.txt"):
        (tmp_path / "test" / name).write_bytes(b"x")
    (tmp_path / "test" / ".DS_Store").write_bytes(b"x")  # hidden: not the user's
    with caplog.at_level("WARNING", logger="hw1.data.scan"):
        assert len(check_test_images(tmp_path / "test")) == 4
    [warning] = [r.getMessage() for r in caplog.records if "extension" in r.getMessage()]
    assert warning.startswith(f"3 files in {tmp_path / 'test'} are not images by their extension")
    assert warning.endswith("anim.gif\n  notes.txt\n  photo.heic")
