from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hw1.data.datamodule import FolderDataModule

# Twelve well-separated colours: a class per colour, learnable in a few CPU steps.
COLOURS = [
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (128, 0, 0), (0, 128, 0), (0, 0, 128), (255, 255, 255), (0, 0, 0), (128, 128, 128),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _offline_torch_home(tmp_path_factory, monkeypatch):
    """No test may reach the network for weights: an empty, private TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(autouse=True)
def _ctrl_c_restored():
    """A test that stops as a Ctrl-C would leaves Ctrl-C ignored (hw1.utils.signals: the
    process is ending); the next test gets Python's handler back."""
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


def colour_image(colour, size: int, rng: np.random.Generator) -> Image.Image:
    noise = rng.integers(-20, 21, (size, size, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def photo(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    """Smooth, moderately saturated colour regions, like a photograph."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3)).astype(float)
    coarse = coarse.mean(-1, keepdims=True) + 0.5 * (coarse - coarse.mean(-1, keepdims=True))
    return Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)


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


# A run small enough for the CPU: resnet18 from scratch on 32 px colour patches.
TINY = [
    "model=resnet18", "model.weights=null", "head=v0", "head.dropout=0", "trainer=cpu",
    "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
    "data.augment.jitter=[0,0,0,0]", "data.augment.scale=[0.5,1]",
    "optim.lr=3e-3", "callbacks.early_stopping.patience=20",
]  # fmt: skip


def train_command(
    root: Path, run_dir: Path, *overrides: str, module: str = "hw1.train"
) -> list[str]:
    cmd = [sys.executable, "-m", module, f"data.root={root}", f"hydra.run.dir={run_dir}"]
    return [*cmd, *TINY, *overrides]


def run_train(
    root: Path, run_dir: Path, *overrides: str, module: str = "hw1.train"
) -> subprocess.CompletedProcess:
    """``python -m hw1.train`` (or ``module``, e.g. hw1.distill) on a TINY run."""
    cmd = train_command(root, run_dir, *overrides, module=module)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """One end-to-end training run, shared: (data root, test answers, run directory)."""
    base = tmp_path_factory.mktemp("trained")
    root = base / "data"
    answers = make_hw1_folder(root, [str(i) for i in range(12)])
    run_dir = base / "run"
    os.environ["TORCH_HOME"] = str(base / "torch_home")
    proc = run_train(root, run_dir, "trainer.max_epochs=8", "sched.T_max=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (base / "train.stdout").write_text(proc.stdout)  # for the run-summary test
    return root, answers, run_dir


def datamodule(root, **kw) -> FolderDataModule:
    """A FolderDataModule sized for the CPU: 32 px crops, batches of 4, resnet18's spec."""
    kw = {"image_size": 32, "batch_size": 4, "num_workers": 0, "arch": "resnet18", **kw}
    return FolderDataModule(root=root, **kw)


TESTS = Path(__file__).resolve().parent


def run_in_process_group(cmd: list[str], timeout: float) -> tuple[int, str]:
    """(exit status, stdout and stderr) of a command with ``tests/`` importable (the probe and
    signal callbacks).
    It runs in its own process group, killed whole if it outlives ``timeout`` (a DDP
    process that hangs keeps the pipes open): the test then fails with its output."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": path},
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"still running after {timeout} s:\n{out.decode()[-4000:]}") from None
    return proc.returncode, out.decode(errors="replace")


# Class names a CSV must quote (a comma, a quote) and one beyond ASCII.
AWKWARD_CLASSES = ["a,b", 'say "hi"', "été"]


def save_tiny_checkpoint(path: Path, classes=AWKWARD_CLASSES, seed: int = 0, head: str = "v3"):
    """A resnet18 Classifier from scratch (32 px crops; v3 has BatchNorm, so eval mode
    matters) saved as hw1.train's checkpoint holds it: state dict and hyper-parameters."""
    import torch

    from hw1.models.classifier import Classifier
    from hw1.transforms.presets import EvalSpec

    torch.manual_seed(seed)
    model = Classifier(
        model={"_target_": "hw1.models.backbone.Backbone", "arch": "resnet18"},
        head={"_target_": "hw1.models.backbone.make_head", "name": head},
        optim={},
        sched={},
        class_names=classes,
        preprocess=EvalSpec(crop=32, resize=37).to_dict(),
    ).eval()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny checkpoint exported in every format, shared: (data root, checkpoint, folder)."""
    from hw1.inference.export import export

    base = tmp_path_factory.mktemp("exported")
    root = base / "data"
    make_hw1_folder(root, AWKWARD_CLASSES, train=2, val=2, test=2)
    ckpt = save_tiny_checkpoint(base / "tiny.ckpt")
    export(str(ckpt), ["onnx", "torchscript", "safetensors"], base / "export", str(root / "val"))
    return root, ckpt, base / "export"
