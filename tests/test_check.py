from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import make_hw1_folder
from PIL import Image
from test_image_check import huge_png

from hw1.check import report
from hw1.utils.config import compose_config


def planted_folder(root):
    """Three classes, 5/5/10 train images; a train image copied into val/ and test/; an
    empty file in train/; one larger image."""
    make_hw1_folder(root, ["a", "b", "c"], train=5, val=2, test=1)
    for i in range(5, 10):
        shutil.copy(root / "train" / "c" / "0.jpg", root / "train" / "c" / f"{i}.jpg")
    shutil.copy(root / "train" / "a" / "1.jpg", root / "val" / "a" / "dup.jpg")
    shutil.copy(root / "train" / "a" / "1.jpg", root / "test" / "dup.jpg")
    (root / "train" / "b" / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (64, 48)).save(root / "val" / "b" / "big.png")


def test_the_report_counts_classes_duplicates_bad_files_and_sizes(tmp_path):
    root = tmp_path / "data"
    planted_folder(root)
    text, problems = report(compose_config([f"data.root={root}"], config_name="check"))
    assert problems == [] and text.endswith("training can start"), text
    lines = text.splitlines()
    assert "classes: 3 (a, b, c)" in lines
    assert lines[3].split() == ["train", "20", "5", "/", "5", "/", "10", "2.0"]
    assert lines[4].split() == ["val", "8", "2", "/", "3", "/", "3", "1.5"]
    assert lines[5].split() == ["test", "4"]
    assert "  val   40 / 40 / 64; 40 / 40 / 48" in lines
    assert "unreadable files: 1 (train/val ones are left out of training)" in lines
    assert "  train/b/empty.jpg: empty, truncated or not an image" in lines
    # copies within train/c are not across splits; train/a/1.jpg is
    assert "files duplicated across splits: 1" in lines
    assert "  train/a/1.jpg = val/a/dup.jpg = test/dup.jpg" in lines


def test_check_exits_non_zero_naming_what_would_stop_training(tmp_path):
    root = tmp_path / "data"
    planted_folder(root)
    (root / "test" / "page.jpg").write_text("<html></html>")
    for f in (root / "val" / "c").iterdir():
        f.unlink()
    cmd = [sys.executable, "-m", "hw1.check", f"data.root={root}", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "problems that stop training: 2" in out
    assert f"without a readable image: {root / 'val' / 'c'}" in out
    assert f"1 of 5 test images in {root / 'test'} cannot be read" in out and "page.jpg" in out


def test_check_reports_a_missing_root_and_takes_val_split(tmp_path):
    text, problems = report(
        compose_config([f"data.root={tmp_path / 'nowhere'}"], config_name="check")
    )
    assert len(problems) == 1 and "nowhere: no such folder" in problems[0]
    assert "problems that stop training: 1" in text and "experiment=demo" in text
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=4, val=0, test=0)
    shutil.rmtree(root / "val")
    _, problems = report(compose_config([f"data.root={root}"], config_name="check"))
    assert "data.val_split=0.1" in problems[0]
    cfg = compose_config([f"data.root={root}", "data.val_split=0.25"], config_name="check")
    text, problems = report(cfg)
    assert problems == [] and "val: no val/ folder; data.val_split=0.25 of train" in text
    # with cross-validation the val/ folder or its absence does not matter: folds are said
    cfg = compose_config([f"data.root={root}", "data.folds=2", "data.fold=1"], config_name="check")
    text, problems = report(cfg)
    assert problems == [] and "data.folds=2, fold 1 validated on" in text
    assert "val_split" not in text


def test_check_says_why_each_file_is_left_out_and_when_test_is_empty(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=3, val=1, test=0)
    (root / "train" / "a" / "gone.jpg").symlink_to(root / "nowhere.jpg")
    huge_png(root / "train" / "b" / "scan.png", 20000, 10000)
    latin1 = root / "train" / "b" / os.fsdecode(b"caf\xe9.jpg")
    latin1.write_bytes(b"")
    text, problems = report(compose_config([f"data.root={root}"], config_name="check"))
    assert problems == [], problems
    lines = text.splitlines()
    assert "unreadable files: 3 (train/val ones are left out of training)" in lines
    assert "  train/a/gone.jpg: missing: a dangling link, or removed after it was listed" in lines
    assert "  train/b/caf\\xe9.jpg: empty, truncated or not an image" in lines
    assert (
        "  train/b/scan.png: too large: 20000 x 10000 = 200,000,000 pixels, over "
        "data.max_image_pixels=178956970 (raise it to use the image)"
    ) in lines
    assert "test/ has no images: no prediction.csv will be written" in lines
