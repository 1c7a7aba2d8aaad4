from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

import hw1  # noqa: F401  (registers the config resolvers)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# Twelve well-separated colours: a class per colour, learnable in a few CPU steps.
COLOURS = [
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (128, 0, 0), (0, 128, 0), (0, 0, 128), (255, 255, 255), (0, 0, 0), (128, 128, 128),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _offline_torch_home(tmp_path_factory, monkeypatch):
    """No test may reach the network for weights: an empty, private TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


def colour_image(colour, size: int, rng: np.random.Generator) -> Image.Image:
    noise = rng.integers(-20, 21, (size, size, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def make_hw1_folder(
    root: Path, classes: list[str], train: int = 10, val: int = 3, test: int = 2, size: int = 40
) -> dict[str, str]:
    """A dataset in the HW1 layout; returns the test answers {image name: class}.

    Test files alternate .jpg, .png and .JPEG so the scan's extension handling is exercised.
    """
    rng = np.random.default_rng(0)
    answers = {}
    (root / "test").mkdir(parents=True)
    for c, name in enumerate(classes):
        colour = COLOURS[c % len(COLOURS)]
        for split, n in (("train", train), ("val", val)):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                colour_image(colour, size, rng).save(root / split / name / f"{i}.jpg", quality=95)
        for i in range(test):
            stem = f"img-{name}-{i}"
            ext = (".jpg", ".png", ".JPEG")[(c + i) % 3]
            fmt = "PNG" if ext == ".png" else "JPEG"
            colour_image(colour, size, rng).save(root / "test" / f"{stem}{ext}", format=fmt)
            answers[stem] = name
    return answers


@pytest.fixture
def int_classes_root(tmp_path) -> tuple[Path, dict[str, str]]:
    """Twelve integer-named classes 0..11: text order (0, 1, 10, 11, 2, ...) differs."""
    root = tmp_path / "hw1data"
    return root, make_hw1_folder(root, [str(i) for i in range(12)])


def compose_cfg(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides or [])


def repo_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
