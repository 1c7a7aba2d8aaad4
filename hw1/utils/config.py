"""Where hw1's configs live, and composing them from Python as the commands do.

conf/ sits at the repository's top level and installs as the package ``hw1.conf``
(pyproject.toml maps it), so Hydra finds it as ``pkg://hw1.conf`` from an editable install,
a wheel, or any working directory. Users add their own config groups with Hydra's
``--config-dir`` or ``hydra.searchpath`` (docs/configuration.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

# For @hydra.main(config_path=CONF_PATH) in every command.
CONF_MODULE = "hw1.conf"
CONF_PATH = f"pkg://{CONF_MODULE}"
# The same folder on disk (a real folder in both install modes), for listing its groups.
CONF_DIR = Path(str(files(CONF_MODULE)))


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "train", return_hydra_config: bool = False
) -> DictConfig:
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return compose(config_name, list(overrides), return_hydra_config=return_hydra_config)
