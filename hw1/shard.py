"""Any data source as LitData shards: ``python -m hw1.shard data.root=ROOT output=DIR``
(takes any data override: ``data.source=csv data.train_csv=...``, ``data.val_split=0.1``).

The images go in as their JPEG file bytes (others re-encoded as JPEG), with their labels;
the class names and counts go in ``hw1-shards.json``, written last. Train from the shards
with ``data.source=litdata data.root=DIR`` (a folder, or a URI LitData streams from).
"""

from __future__ import annotations

import os

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from hw1.data.shards import write_shards
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import UserValueError, reported


def every_core() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="shard")
def main(cfg: DictConfig) -> None:
    with reported():
        if cfg.data.get("source") == "litdata":
            raise UserValueError("data.source=litdata: these are shards already")
        datamodule = instantiate(cfg.data)
        workers = cfg.workers or every_core()
        meta = write_shards(datamodule.layout, cfg.output, workers, cfg.chunk_bytes)
    images = ", ".join(f"{split} {n}" for split, n in meta["images"].items())
    print(f"{cfg.output}: {len(meta['class_names'])} classes; images: {images}")
    print(f"train from them with: data.source=litdata data.root={cfg.output}")


if __name__ == "__main__":
    main()
