"""Predict images from checkpoints or an exported folder:
``python -m hw1.predict ckpt_path=PATH data.root=ROOT`` (the competition CSV of the test
folder) or ``python -m hw1.predict ckpt_path=PATH inputs=FOLDER`` (any images: top-k labels
and probabilities in predictions.csv or JSON lines).

The model, head, image size and class names come from the checkpoint (or model.json).
``ckpt_path=[A,B]`` averages the softmax of several checkpoints (each with its own
test-time views).
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hw1.inference.api import predict
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import reported
from hw1.utils.runlock import command_lock


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="predict")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir  # its .hydra/, its log, its default output
    with reported(), command_lock(run_dir, "hw1.predict"):
        predict(cfg)


if __name__ == "__main__":
    main()
