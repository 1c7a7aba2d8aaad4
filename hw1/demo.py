"""The embedded demo data set: a small, balanced subset of real Fashion-MNIST.

Fashion-MNIST (Zalando SE, MIT licence) comes from Debian's ``dataset-fashion-mnist``
package. The subset is stored in the package as one compressed NumPy archive and written
out in the HW1 layout the first time ``data=demo`` is used:

    <root>/train/<garment>/<name>.png
    <root>/val/<garment>/<name>.png
    <root>/test/<name>.png
    <root>/test_labels.csv            (the test answers, so the demo can report test accuracy)

``python -m hw1.demo build`` remakes the archive from the Debian package.
"""

from __future__ import annotations

import csv
import gzip
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ARCHIVE = Path(__file__).parent / "demo_data" / "fashion_mnist_demo.npz"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# Fashion-MNIST's label order; folder-safe spellings of its class names.
CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
PER_CLASS = {"train": 300, "val": 50, "test": 50}
TEST_LABELS = "test_labels.csv"
PAD = 2  # pixels of black around each 28x28 image


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def build_archive(source: Path = DEBIAN_DIR, out: Path = ARCHIVE, seed: int = 0) -> Path:
    """Draw a seeded, class-balanced subset: train and val from Fashion-MNIST's training
    set (disjoint), test from its t10k set."""
    rng = np.random.default_rng(seed)
    train_x = _read_idx(source / "train-images-idx3-ubyte.gz")
    train_y = _read_idx(source / "train-labels-idx1-ubyte.gz")
    t10k_x = _read_idx(source / "t10k-images-idx3-ubyte.gz")
    t10k_y = _read_idx(source / "t10k-labels-idx1-ubyte.gz")

    picked: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(len(CLASSES)):
        idx = rng.permutation(np.flatnonzero(train_y == c))
        picked["train"].append(idx[: PER_CLASS["train"]])
        picked["val"].append(idx[PER_CLASS["train"] : PER_CLASS["train"] + PER_CLASS["val"]])
        picked["test"].append(rng.permutation(np.flatnonzero(t10k_y == c))[: PER_CLASS["test"]])
    arrays = {}
    for split, parts in picked.items():
        idx = np.sort(np.concatenate(parts))
        x, y = (t10k_x, t10k_y) if split == "test" else (train_x, train_y)
        arrays[f"{split}_x"], arrays[f"{split}_y"], arrays[f"{split}_idx"] = x[idx], y[idx], idx
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, classes=np.array(CLASSES), **arrays)
    return out


def extract(root: str | Path, archive: Path = ARCHIVE) -> Path:
    """Write the demo folders under ``root`` unless they are already there.

    Written into a temporary sibling folder and renamed into place, so an interrupted
    extraction never leaves a half data set that a later run would take as complete.
    """
    root = Path(root)
    if (root / TEST_LABELS).exists():
        return root
    data = np.load(archive)
    # 28 px garments padded to 32 px with black, as usual for MNIST-style images on
    # ResNets: the eval centre crop then trims padding rather than the garment's edges.
    pad = ((0, 0), (PAD, PAD), (PAD, PAD))
    classes = [str(c) for c in data["classes"]]
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for split in ("train", "val"):
            arrays = (data[f"{split}_x"], data[f"{split}_y"], data[f"{split}_idx"])
            for x, y, i in zip(np.pad(arrays[0], pad), *arrays[1:], strict=True):
                folder = tmp / split / classes[y]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(x).save(folder / f"fmnist-train-{i:05d}.png")
        (tmp / "test").mkdir()
        rows = []
        test = (np.pad(data["test_x"], pad), data["test_y"], data["test_idx"])
        for x, y, i in zip(*test, strict=True):
            name = f"fmnist-t10k-{i:05d}"
            Image.fromarray(x).save(tmp / "test" / f"{name}.png")
            rows.append((name, classes[y]))
        with open(tmp / TEST_LABELS, "w", newline="") as f:
            csv.writer(f).writerows([("image_name", "label"), *rows])
        try:
            tmp.rename(root)
        except OSError:
            if not (root / TEST_LABELS).exists():  # not another process that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        print(build_archive())
    else:
        sys.exit(
            "usage: python -m hw1.demo build   (remakes the archive from dataset-fashion-mnist)"
        )
