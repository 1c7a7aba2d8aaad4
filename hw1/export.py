"""Export a trained model as one folder another program can run:
``python -m hw1.export ckpt_path=PATH [format=[onnx,torchscript,safetensors]] [output=DIR]``.

The folder holds the network in each format, ``model.json`` (class names, preprocessing,
test-time views, temperature, the run's metrics) and a model card, ``README.md``; every
file is checked against the checkpoint before the folder appears (docs/deploy.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hw1.inference.export import export
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import reported


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="export")
def main(cfg: DictConfig) -> None:
    with reported():
        output = Path(cfg.output or Path(HydraConfig.get().runtime.output_dir) / "model")
        formats = OmegaConf.to_object(cfg.format) if OmegaConf.is_list(cfg.format) else cfg.format
        meta = export(cfg.ckpt_path, formats, output, cfg.inputs, cfg.seed)
        print(json.dumps({"export": str(output), "parity": meta["parity"]}, indent=2))


if __name__ == "__main__":
    main()
