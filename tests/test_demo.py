from __future__ import annotations

import csv
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hw1.data import demo
from hw1.data.datasets import UnlabeledImages
from hw1.data.scan import class_names


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
    # no temporary folder left; the lock file beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo.lock", "demo"]


def tiny_archive(path):
    """A demo archive of 2 train, 2 val and 2 test images (classes 0 and 1)."""
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_x"] = np.full((2, 28, 28), 128, np.uint8)
        arrays[f"{split}_y"] = np.array([0, 1])
        arrays[f"{split}_idx"] = np.array([0, 1]) + 10 * len(arrays)
    np.savez_compressed(path, classes=np.array(demo.CLASSES), **arrays)
    return path


WRITING = "INFO:hw1.data.demo:writing the demo data to "  # logging.basicConfig's format


def test_two_processes_extracting_at_once_write_it_once(tmp_path):
    """Two processes on a new demo root at the same moment: one extracts, the other waits
    for it and finds the data; neither sees half of it."""
    archive = tiny_archive(tmp_path / "tiny.npz")
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO)\n"
        "from pathlib import Path\n"
        "from hw1.data import demo\n"
        "root = demo.extract(sys.argv[1], Path(sys.argv[2]))\n"
        "assert len(list(root.rglob('*.png'))) == 6, 'half a data set'\n"
    )
    cmd = [sys.executable, "-c", code, str(tmp_path / "demo"), str(archive)]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # the waiting process's line ("waiting for another process writing the demo data to")
    # holds the words too: count the lines that start with them
    writes = [line for out in outs for line in out.splitlines() if line.startswith(WRITING)]
    assert len(writes) == 1, outs
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo.lock", "demo", "tiny.npz"]


def test_a_killed_extractions_temporary_folder_is_removed_by_the_next(tmp_path):
    stale = tmp_path / ".demo-k1ll3d"  # write_layout's temporary folder, its process killed
    (stale / "train" / "bag").mkdir(parents=True)
    (stale / "train" / "bag" / "x.png").write_bytes(b"half")
    demo.extract(tmp_path / "demo", tiny_archive(tmp_path / "tiny.npz"))
    assert not stale.exists()
    assert (tmp_path / "demo" / demo.TEST_LABELS).is_file()


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(folder, n_train=60, n_t10k=40):
    """Fashion-MNIST's four IDX files, each image filled with its own index (mod 256)."""
    folder.mkdir()
    for name, n in (("train", n_train), ("t10k", n_t10k)):
        images = np.broadcast_to((np.arange(n) % 256)[:, None, None], (n, 28, 28))
        _write_idx(folder / f"{name}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{name}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def test_subset_leaves_out_every_demo_image_and_is_written_in_the_hw1_layout(tmp_path):
    source = _fake_fashion_mnist(tmp_path / "fmnist")
    small = {"train": 2, "val": 1, "test": 1}
    demo_arrays = demo.draw(source, 0, small)
    np.savez(tmp_path / "small.npz", classes=np.array(demo.CLASSES), **demo_arrays)
    root = demo.make_subset(tmp_path / "second", 1, small, source, tmp_path / "small.npz")

    names = {p.name for p in (root / "train").rglob("*.png")} | {
        p.name for p in (root / "val").rglob("*.png")
    }
    demo_names = {
        f"fmnist-train-{i:05d}.png" for i in (*demo_arrays["train_idx"], *demo_arrays["val_idx"])
    }
    assert len(names) == 10 * 3 and not names & demo_names
    test_names = {p.stem for p in (root / "test").glob("*.png")}
    assert len(test_names) == 10 and not test_names & {
        f"fmnist-t10k-{i:05d}" for i in demo_arrays["test_idx"]
    }
    # each image keeps its label: the fake images hold their index, labels are index mod 10
    for path in (root / "train").rglob("*.png"):
        index = int(path.stem.rsplit("-", 1)[1])
        assert path.parent.name == demo.CLASSES[index % 10]
        assert np.asarray(Image.open(path))[16, 16] == index % 256
    with pytest.raises(FileExistsError, match="already holds"):
        demo.make_subset(root, 1, small, source, tmp_path / "small.npz")
    # 6 images per class in the fake training set, 3 taken by the demo
    with pytest.raises(ValueError, match="too few free images"):
        demo.make_subset(tmp_path / "big", 1, {**small, "train": 3}, source, tmp_path / "small.npz")


def test_an_interrupted_build_leaves_the_old_archive_whole(tmp_path, monkeypatch):
    out = tmp_path / "demo.npz"
    out.write_bytes(b"the old archive")
    monkeypatch.setattr(demo, "draw", lambda source, seed, per_class: {"x": np.zeros(3)})

    def interrupted(file, **arrays):
        if hasattr(file, "write"):
            file.write(b"PK half")
        else:
            Path(file).write_bytes(b"PK half")
        raise KeyboardInterrupt  # Ctrl-C while numpy writes

    monkeypatch.setattr(np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.build_archive(tmp_path, out)
    assert out.read_bytes() == b"the old archive"
    assert [p.name for p in tmp_path.iterdir()] == ["demo.npz"]
