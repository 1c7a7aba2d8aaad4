"""The report's augmentation figure for any dataset:
``python -m hw1.preview data.root=ROOT [n=16] [split=train] [views=6]``.

Each row: one source image, ``views`` augmented versions of it from the train pipeline,
then its test-time views. Takes every training override (``experiment=demo``,
``data.image_size=…``, ``data.augment.rotation=…``) so it shows what a run would train on.
"""

from __future__ import annotations

import random
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import ImageOps
from torchvision.transforms import v2 as T

from hw1.data.datamodule import FolderDataModule
from hw1.data.datasets import ClassFolders, UnlabeledImages
from hw1.inference.predictor import output_path
from hw1.reporting.figures import labelled_grid, png_bytes, to_uint8
from hw1.transforms.presets import ViewStack
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import UserFileNotFoundError, reported
from hw1.utils.io import write_atomically


def preview(cfg: DictConfig) -> Path:
    output = output_path(cfg, "preview.png")
    datamodule: FolderDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.validate()
    folder = datamodule.root / cfg.split
    if cfg.split == "test":
        dataset = UnlabeledImages(folder)
    else:
        # the checked samples: unreadable images left out, val split off train if asked
        dataset = ClassFolders(
            folder, datamodule.class_names, samples=datamodule.samples[cfg.split]
        )
    if not len(dataset):
        raise UserFileNotFoundError(f"{folder}: no images to preview")
    spec = datamodule.eval_spec
    picked = sorted(random.Random(cfg.seed).sample(range(len(dataset)), min(cfg.n, len(dataset))))
    torch.manual_seed(cfg.seed)
    stack = ViewStack(spec, "report", cfg.seed)
    to_tensor = T.PILToTensor()
    tiles, labels = [], []
    for i in picked:
        image, key = dataset[i]
        name = key if cfg.split == "test" else datamodule.class_names[key]
        tiles.append(to_tensor(ImageOps.pad(image, (spec.crop, spec.crop))))
        augmented = torch.stack([datamodule.train_transform(image) for _ in range(cfg.views)])
        tiles += [*to_uint8(augmented, spec), *to_uint8(stack(image, i), spec)]
        labels += [
            str(name),
            *[f"train aug {k + 1}" for k in range(cfg.views)],
            *[f"tta: {v}" for v in ViewStack.REPORT_VIEWS],
        ]
    grid = labelled_grid(
        torch.stack(tiles),
        ncol=1 + cfg.views + len(ViewStack.REPORT_VIEWS),
        labels=labels,
        tile=preview_tile(spec.crop),
    )
    write_atomically(output, png_bytes(grid))
    print(output)
    return output


def preview_tile(crop: int) -> int:
    """Tiles of at least 96 px (tiny crops enlarged) and at most 160 px (a page stays a page)."""
    return max(96, min(crop, 160))


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="preview")
def main(cfg: DictConfig) -> None:
    with reported():
        preview(cfg)


if __name__ == "__main__":
    main()
