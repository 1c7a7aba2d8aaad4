"""Where the model looked: ``python -m hw1.explain ckpt_path=PATH inputs=FILES|DIR``.

Writes ``<name>_gradcam.png`` per image into the run directory (or ``output=DIR``): the
image as the model saw it, the Grad-CAM heat map of its top prediction at the backbone's
last stage, and the two overlaid. Files that are not images are skipped and listed.
Needs the extra: ``pip install "hw1[explain]"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig

from hw1.inference.explain import explain_files
from hw1.models.classifier import Classifier
from hw1.reporting.figures import png_bytes
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import UserFileNotFoundError, UserValueError, reported
from hw1.utils.io import write_atomically


def input_files(inputs) -> list[Path]:
    """The files of ``inputs``: files as given, folders' files (recursively, sorted)."""
    if inputs is None:
        raise UserValueError("inputs is required: inputs=IMAGE, inputs=[A,B] or inputs=DIR")
    paths = [Path(p) for p in (inputs if isinstance(inputs, (list, ListConfig)) else [inputs])]
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
        elif path.is_file():
            files.append(path)
        else:
            raise UserFileNotFoundError(f"inputs: {path}: no such file or folder")
    return files


def explain(cfg: DictConfig) -> dict[str, list[str]]:
    if cfg.ckpt_path is None:
        raise UserValueError("ckpt_path is required: ckpt_path=PATH")
    files = input_files(cfg.inputs)
    model = Classifier.from_checkpoint(cfg.ckpt_path)
    out_dir = Path(cfg.output or HydraConfig.get().runtime.output_dir)
    grids, skipped = explain_files(model, files, cfg.tile)
    written, taken = [], set()
    for path, grid in grids.items():
        name = f"{path.stem}_gradcam.png"
        k = 1
        while name in taken:  # the same name in two folders
            k += 1
            name = f"{path.stem}_{k}_gradcam.png"
        taken.add(name)
        write_atomically(out_dir / name, png_bytes(grid))
        written.append(str(out_dir / name))
    summary = {"written": written, "skipped": skipped}
    print(json.dumps(summary, indent=2))
    return summary


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="explain")
def main(cfg: DictConfig) -> None:
    with reported():
        explain(cfg)


if __name__ == "__main__":
    main()
