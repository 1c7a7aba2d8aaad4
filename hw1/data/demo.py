"""The embedded demo data set: a small, balanced subset of real Fashion-MNIST.

Fashion-MNIST (Zalando SE, MIT licence) comes from Debian's ``dataset-fashion-mnist``
package. The subset is stored in the package as one compressed NumPy archive and written
out in the HW1 layout the first time ``data=demo`` is used:

    <root>/train/<garment>/<name>.png
    <root>/val/<garment>/<name>.png
    <root>/test/<name>.png
    <root>/test_labels.csv            (the test answers, so the demo can report test accuracy)

``python -m hw1.demo build`` remakes the archive from the Debian package; ``python -m hw1.demo
subset ROOT`` draws a second set from it without any of the demo's images.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

from hw1.utils.errors import UserFileExistsError, UserValueError
from hw1.utils.io import write_atomically

log = logging.getLogger(__name__)

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


# The second set: the demo's train and val sizes (the same training budget), four times
# its test images for a tighter test accuracy (±1.6 points at 0.85 rather than ±3.2).
SUBSET_PER_CLASS = {"train": 300, "val": 50, "test": 200}


TEST_LABELS = "test_labels.csv"


PAD = 2  # pixels of black around each 28x28 image


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def draw(
    source: Path, seed: int, per_class: dict[str, int], exclude: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """A seeded, class-balanced subset: train and val from Fashion-MNIST's training set
    (disjoint), test from its t10k set, leaving out the indices in ``exclude`` (keys
    ``train`` for the training set, ``t10k`` for the test set)."""
    rng = np.random.default_rng(seed)
    train_x = _read_idx(source / "train-images-idx3-ubyte.gz")
    train_y = _read_idx(source / "train-labels-idx1-ubyte.gz")
    t10k_x = _read_idx(source / "t10k-images-idx3-ubyte.gz")
    t10k_y = _read_idx(source / "t10k-labels-idx1-ubyte.gz")
    exclude = exclude or {}
    free_train = ~np.isin(np.arange(len(train_y)), exclude.get("train", []))
    free_t10k = ~np.isin(np.arange(len(t10k_y)), exclude.get("t10k", []))

    n_train, n_val = per_class["train"], per_class["val"]
    picked: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(len(CLASSES)):
        idx = rng.permutation(np.flatnonzero((train_y == c) & free_train))
        test_idx = rng.permutation(np.flatnonzero((t10k_y == c) & free_t10k))
        if len(idx) < n_train + n_val or len(test_idx) < per_class["test"]:
            raise UserValueError(
                f"{source} has too few free images of {CLASSES[c]} for {per_class}"
            )
        picked["train"].append(idx[:n_train])
        picked["val"].append(idx[n_train : n_train + n_val])
        picked["test"].append(test_idx[: per_class["test"]])
    arrays = {}
    for split, parts in picked.items():
        idx = np.sort(np.concatenate(parts))
        x, y = (t10k_x, t10k_y) if split == "test" else (train_x, train_y)
        arrays[f"{split}_x"], arrays[f"{split}_y"], arrays[f"{split}_idx"] = x[idx], y[idx], idx
    return arrays


def build_archive(source: Path = DEBIAN_DIR, out: Path = ARCHIVE, seed: int = 0) -> Path:
    """Remake the embedded demo subset from the Debian package."""
    arrays = draw(source, seed, PER_CLASS)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, classes=np.array(CLASSES), **arrays)
    write_atomically(out, buffer.getvalue())  # a Ctrl-C leaves the old archive whole
    return out


def extract(root: str | Path, archive: Path = ARCHIVE) -> Path:
    """Write the demo folders under ``root`` unless they are already there.

    Several processes may start on the demo at once (a sweep's jobs, two terminals): one
    extracts, holding a lock file beside ``root`` (``.<name>.lock``), while the others wait
    for it and then find the data there. The folders are written under a temporary name
    and renamed into place (write_layout), so nothing reads half of them; the temporary
    folders of an extraction that was killed are removed by the next one."""
    root = Path(root)
    if (root / TEST_LABELS).exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root.parent / f".{root.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process writing the demo data to %s", root)
        lock.acquire()
    try:
        if not (root / TEST_LABELS).exists():
            for stale in root.parent.glob(f".{root.name}-*"):  # a killed extraction's
                shutil.rmtree(stale, ignore_errors=True)
            log.info("writing the demo data to %s", root)
            data = np.load(archive)
            write_layout({k: data[k] for k in data.files if k != "classes"}, root)
    finally:
        lock.release()
    return root


def make_subset(
    root: str | Path,
    seed: int = 1,
    per_class: dict[str, int] = SUBSET_PER_CLASS,
    source: Path = DEBIAN_DIR,
    archive: Path = ARCHIVE,
) -> Path:
    """A second Fashion-MNIST set in the HW1 layout, drawn from the Debian package with
    none of the demo's images: a held-out check of settings chosen on the demo."""
    root = Path(root)
    if (root / TEST_LABELS).exists():
        raise UserFileExistsError(
            f"{root} already holds a data set; remove it or pick another root"
        )
    demo = np.load(archive)
    used = {"train": np.concatenate([demo["train_idx"], demo["val_idx"]]), "t10k": demo["test_idx"]}
    return write_layout(draw(source, seed, per_class, exclude=used), root)


def write_layout(arrays: dict[str, np.ndarray], root: Path) -> Path:
    """The HW1 layout under ``root`` from ``draw``'s arrays.

    Written into a temporary sibling folder and renamed into place, so an interrupted
    write never leaves a half data set that a later run would take as complete.
    """
    # 28 px garments padded to 32 px with black, as usual for MNIST-style images on
    # ResNets: the eval centre crop then trims padding rather than the garment's edges.
    pad = ((0, 0), (PAD, PAD), (PAD, PAD))
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for split in ("train", "val"):
            parts = (arrays[f"{split}_x"], arrays[f"{split}_y"], arrays[f"{split}_idx"])
            for x, y, i in zip(np.pad(parts[0], pad), *parts[1:], strict=True):
                folder = tmp / split / CLASSES[y]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(x).save(folder / f"fmnist-train-{i:05d}.png")
        (tmp / "test").mkdir()
        rows = []
        test = (np.pad(arrays["test_x"], pad), arrays["test_y"], arrays["test_idx"])
        for x, y, i in zip(*test, strict=True):
            name = f"fmnist-t10k-{i:05d}"
            Image.fromarray(x).save(tmp / "test" / f"{name}.png")
            rows.append((name, CLASSES[y]))
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
