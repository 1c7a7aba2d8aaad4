from __future__ import annotations

import pytest
from conftest import make_hw1_folder
from PIL import Image

from hw1.preview import preview, preview_tile
from hw1.utils.config import compose_config


@pytest.mark.parametrize("split", ["train", "test"])
def test_preview_writes_a_grid_of_source_augmented_and_tta_views(int_classes_root, tmp_path, split):
    root, _ = int_classes_root
    out = tmp_path / "preview.png"
    cfg = compose_config(
        [f"data.root={root}", "model=resnet18", "model.weights=null", "data.image_size=32",
         "n=3", "views=2", f"split={split}", f"output={out}"],
        config_name="preview",
    )  # fmt: skip
    assert preview(cfg) == out
    tile, columns, rows = preview_tile(32), 1 + 2 + 4, 3
    with Image.open(out) as png:
        assert png.size == (columns * (tile + 2) + 2, rows * (tile + 16 + 2) + 2)


def test_preview_takes_training_overrides():
    cfg = compose_config(["experiment=demo"], config_name="preview")
    assert cfg.data.image_size == 32 and cfg.n == 16 and cfg.split == "train"


def test_preview_leaves_out_unreadable_images(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=3, val=1, test=0)
    (root / "train" / "a" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "preview.png"
    cfg = compose_config(
        [f"data.root={root}", "model=resnet18", "model.weights=null", "data.image_size=32",
         "n=100", "views=1", f"output={out}"],
        config_name="preview",
    )  # fmt: skip
    preview(cfg)
    with Image.open(out) as png:
        assert png.height == 6 * (preview_tile(32) + 16 + 2) + 2  # one row per readable image
