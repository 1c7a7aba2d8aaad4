"""The mistakes README's Troubleshooting lists, made on the command line: each entry point
prints the message alone (no traceback) and exits with status 2, before any training.
Each case is a subprocess that imports hw1 and composes the config: a few seconds."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_hw1_folder

from hw1.utils.errors import EXIT_STATUS

Case = tuple[list[str], str]  # (the command after `python -m`, what stderr says)


def hw1_command(tool: str, tmp_path: Path, *args: str) -> list[str]:
    """``python -m hw1.TOOL``; the Hydra tools write into tmp_path, train at the CPU size."""
    if tool in ("report", "demo"):
        return [f"hw1.{tool}", *args]
    tiny = TINY if tool in ("train", "check", "preview") else []
    return [f"hw1.{tool}", f"hydra.run.dir={tmp_path / 'run'}", *tiny, *args]


def missing_data_root(tmp: Path, root: Path) -> Case:
    return ["train", f"data.root={tmp / 'absent'}"], f"data.root={tmp / 'absent'}: no such folder"


def no_val_folder(tmp: Path, root: Path) -> Case:
    shutil.rmtree(root / "val")
    return ["train", f"data.root={root}"], f"data.root={root} has no val/ folder"


def class_folders_differ(tmp: Path, root: Path) -> Case:
    (root / "val" / "b").rename(root / "val" / "c")
    message = "have different class folders: missing in val: ['b']; missing in train: ['c']"
    return ["train", f"data.root={root}"], message


def an_empty_class(tmp: Path, root: Path) -> Case:
    for image in (root / "train" / "b").iterdir():
        image.write_bytes(b"not an image")
    return ["train", f"data.root={root}"], f"class folders without a readable image: {root}"


def unreadable_test_image_in_training(tmp: Path, root: Path) -> Case:
    (root / "test" / "broken.jpg").write_bytes(b"")
    return ["train", f"data.root={root}"], f"test images in {root / 'test'} cannot be read"


def unreadable_test_image_in_predict(tmp: Path, root: Path) -> Case:
    (root / "test" / "broken.jpg").write_bytes(b"")
    command = ["predict", f"data.root={root}", f"ckpt_path={tmp / 'any.ckpt'}"]
    return command, f"test images in {root / 'test'} cannot be read"


def two_test_images_of_one_name(tmp: Path, root: Path) -> Case:
    shutil.copy(next((root / "test").glob("*.jpg")), root / "test" / "same.jpg")
    shutil.copy(root / "test" / "same.jpg", root / "test" / "same.png")
    return ["train", f"data.root={root}"], "same.jpg and same.png"


def a_test_name_not_utf8(tmp: Path, root: Path) -> Case:
    image = next((root / "test").glob("*.jpg"))
    (root / "test").joinpath(os.fsdecode(b"caf\xe9.jpg")).write_bytes(image.read_bytes())
    command = ["predict", f"data.root={root}", f"ckpt_path={tmp / 'any.ckpt'}"]
    return command, "test image names in"


def an_empty_test_folder_to_predict(tmp: Path, root: Path) -> Case:
    for image in (root / "test").iterdir():
        image.unlink()
    command = ["predict", f"data.root={root}", f"ckpt_path={tmp / 'any.ckpt'}"]
    return command, f"{root / 'test'} has no images to predict"


def resume_without_last_ckpt(tmp: Path, root: Path) -> Case:
    return ["train", f"data.root={root}", "resume=true"], "resume=true: no "


def missing_ckpt_path_in_training(tmp: Path, root: Path) -> Case:
    ckpt = tmp / "nope.ckpt"
    return ["train", f"data.root={root}", f"ckpt_path={ckpt}"], f"ckpt_path={ckpt}: no such"


def missing_ckpt_path_in_predict(tmp: Path, root: Path) -> Case:
    ckpt = tmp / "nope.ckpt"
    return ["predict", f"data.root={root}", f"ckpt_path={ckpt}"], f"ckpt_path={ckpt}: no such"


def missing_ckpt_path_in_eval(tmp: Path, root: Path) -> Case:
    ckpt = tmp / "nope.ckpt"
    return ["eval", f"data.root={root}", f"ckpt_path={ckpt}"], f"ckpt_path={ckpt}: no such"


def no_split_folder_in_eval(tmp: Path, root: Path) -> Case:
    shutil.rmtree(root / "val")
    command = ["eval", f"data.root={root}", f"ckpt_path={tmp / 'any.ckpt'}"]
    return command, f"data.root={root}: no val/ folder to evaluate"


def weights_that_do_not_fit(tmp: Path, root: Path) -> Case:
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp / "other.pth")
    command = ["train", f"data.root={root}", f"model.weights={tmp / 'other.pth'}"]
    return command, f"model.weights={tmp / 'other.pth'} does not fit resnet18: other shapes (1)"


def resnet34_v2_weights(tmp: Path, root: Path) -> Case:
    command = ["train", f"data.root={root}", "model=resnet34", "model.weights=IMAGENET1K_V2"]
    return command, "model.weights=IMAGENET1K_V2: resnet34 has no such torchvision weights"


def resnet34_v2_weights_in_check(tmp: Path, root: Path) -> Case:
    command = ["check", f"data.root={root}", "model=resnet34", "model.weights=IMAGENET1K_V2"]
    return command, "model.weights=IMAGENET1K_V2: resnet34 has no such torchvision weights"


def a_pickle_of_more_than_tensors(tmp: Path, root: Path) -> Case:
    torch.save({"conv1.weight": argparse.Namespace()}, tmp / "code.pth")
    command = ["train", f"data.root={root}", f"model.weights={tmp / 'code.pth'}"]
    return command, "refused to load: it holds code, not only tensors and plain containers"


def a_family_without_multirun(tmp: Path, root: Path) -> Case:
    command = ["train", f"data.root={root}", "experiment=depth"]
    return command, "experiment=depth is a sweep of the report's family 'depth'"


def no_data_root_to_preview(tmp: Path, root: Path) -> Case:
    return ["preview", f"data.root={tmp / 'absent'}"], f"data.root={tmp / 'absent'}: no such"


def no_runs_to_report(tmp: Path, root: Path) -> Case:
    return ["report", str(tmp / "run")], f"no metrics.json under {tmp / 'run'}"


def a_demo_subset_over_a_data_set(tmp: Path, root: Path) -> Case:
    (root / "test_labels.csv").write_text("image_name,label\n")
    return ["demo", "subset", str(root)], f"{root} already holds a data set"


CASES: list[Callable[[Path, Path], Case]] = [
    missing_data_root,
    no_val_folder,
    class_folders_differ,
    an_empty_class,
    unreadable_test_image_in_training,
    unreadable_test_image_in_predict,
    two_test_images_of_one_name,
    a_test_name_not_utf8,
    an_empty_test_folder_to_predict,
    resume_without_last_ckpt,
    missing_ckpt_path_in_training,
    missing_ckpt_path_in_predict,
    missing_ckpt_path_in_eval,
    no_split_folder_in_eval,
    weights_that_do_not_fit,
    resnet34_v2_weights,
    resnet34_v2_weights_in_check,
    a_pickle_of_more_than_tensors,
    a_family_without_multirun,
    no_data_root_to_preview,
    no_runs_to_report,
    a_demo_subset_over_a_data_set,
]


def run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *command],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
    )


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=2, val=1, test=1, size=32)
    return root


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_a_user_error_is_its_message_alone(case, tmp_path, root):
    (tool, *args), message = case(tmp_path, root)
    proc = run(hw1_command(tool, tmp_path, *args))
    assert proc.returncode == EXIT_STATUS, proc.stderr[-3000:]
    assert message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_hydra_full_error_shows_the_traceback(tmp_path):
    command = hw1_command("train", tmp_path, f"data.root={tmp_path / 'absent'}")
    proc = run(command, HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "UserFileNotFoundError" in proc.stderr
    assert f"data.root={tmp_path / 'absent'}: no such folder" in proc.stderr


def test_a_sweep_names_the_job_whose_settings_are_wrong(tmp_path):
    """In a sweep, Hydra reports the failed job (its overrides) with the message alone."""
    command = ["hw1.train", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY]
    proc = run([*command, f"data.root={tmp_path / 'absent'}"])
    assert proc.returncode != 0
    assert f"data.root={tmp_path / 'absent'}: no such folder" in proc.stderr
    assert "Error executing job with overrides" in proc.stderr
    assert "Traceback" not in proc.stderr
