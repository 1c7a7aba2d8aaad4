# hw1's Hydra configs. Installed as the package hw1.conf (pyproject.toml maps it), so that
# Hydra finds them as pkg://hw1.conf wherever hw1 is installed; nothing to import here.
