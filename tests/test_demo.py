from __future__ import annotations

import csv

from hw1 import demo
from hw1.data import UnlabeledImages, class_names


def test_demo_is_written_in_the_hw1_layout_with_its_answers(tmp_path):
    root = demo.extract(tmp_path / "demo")
    assert class_names(root / "train") == sorted(demo.CLASSES)
    for split in ("train", "val"):
        for name in demo.CLASSES:
            assert len(list((root / split / name).glob("*.png"))) == demo.PER_CLASS[split]
    with open(root / demo.TEST_LABELS, newline="") as f:
        answers = {r["image_name"]: r["label"] for r in csv.DictReader(f)}
    stems = [p.stem for p in UnlabeledImages(root / "test").files]
    assert sorted(answers) == stems and len(stems) == 10 * demo.PER_CLASS["test"]
    assert set(answers.values()) == set(demo.CLASSES)
    # train and val are disjoint draws from Fashion-MNIST's training set
    train = {p.name for p in (root / "train").rglob("*.png")}
    val = {p.name for p in (root / "val").rglob("*.png")}
    assert not train & val


def test_extract_is_a_no_op_the_second_time(tmp_path):
    root = demo.extract(tmp_path / "demo")
    marker = root / "train" / "bag" / "kept.txt"
    marker.write_text("x")
    demo.extract(root)
    assert marker.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folder left
