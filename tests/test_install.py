"""hw1 as a user installs it: a wheel (not an editable install), its configs inside it,
run from a directory that is not the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out]
    proc = subprocess.run([*cmd, ROOT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("hw1-*.whl"))


def test_the_wheel_holds_the_configs_and_the_data_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "hw1/conf/train.yaml", "hw1/conf/experiment/demo.yaml", "hw1/conf/model/resnext101.yaml",
        "hw1/data/demo_data/fashion_mnist_demo.npz", "hw1/reporting/reference.csv",
    ):  # fmt: skip
        assert name in names, name
    scripts = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"hw1-train = hw1.train:main" in scripts


@pytest.mark.slow
def test_an_installed_wheel_trains_the_demo_from_another_directory(wheel, tmp_path):
    target, work = tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", target, wheel]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = [sys.executable, "-c", "import hw1.conf, hw1; print(hw1.__file__)"]
    found = subprocess.run(where, capture_output=True, text=True, env=env, cwd=work)
    assert found.stdout.startswith(str(target)), found.stdout + found.stderr  # not the checkout
    train = [sys.executable, "-m", "hw1.train", "experiment=demo", "trainer.fast_dev_run=true"]
    proc = subprocess.run(train, capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(work.glob("outputs/*/*/.hydra/config.yaml")), "the run's outputs/ under cwd"
    assert (work / "data" / "fashion-mnist-demo" / "train").is_dir()  # the demo, under cwd
