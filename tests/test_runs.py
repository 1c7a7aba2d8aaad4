"""A training run's record: what a failed end-of-training prediction keeps, and resuming
a run with its own overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_hw1_folder, run_train, train_command
from omegaconf import OmegaConf

from hw1.training.resume import with_run_overrides
from hw1.utils.config import compose_config

TESTS = Path(__file__).resolve().parent


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """A training command with tests/ importable (for the callbacks that make it fail)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_a_failed_prediction_keeps_metrics_checkpoints_and_logs(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(4)], train=8, val=2, test=2)
    run_dir = tmp_path / "run"
    fail = "+callbacks.oom._target_=failing_callbacks.OutOfMemoryInPredict"
    proc = run(train_command(root, run_dir, "trainer.max_epochs=1", fail))

    # the run did not deliver prediction.csv: it says so and exits non-zero
    assert proc.returncode != 0
    assert not (run_dir / "prediction.csv").exists()
    out = proc.stdout + proc.stderr
    assert "OutOfMemoryError: CUDA out of memory (raised by the test)" in out, out[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["prediction_error"] == (
        "OutOfMemoryError: CUDA out of memory (raised by the test)"
    )
    assert metrics["epochs"] == 1 and len(metrics["val_history"]) == 1
    assert metrics["best_val_acc"] is not None and "prediction_csv" not in metrics
    assert Path(metrics["best_ckpt"]).is_file() and Path(metrics["last_ckpt"]).is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    # how to get the submission from what the run kept
    assert f"python -m hw1.predict ckpt_path={metrics['best_ckpt']} data.root={root}" in out


@pytest.mark.slow
def test_a_failed_evaluation_keeps_the_prediction_and_says_it_was_the_evaluation(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(4)], train=8, val=2, test=2)
    run_dir = tmp_path / "run"
    fail = "+callbacks.oom._target_=failing_callbacks.OutOfMemoryInEvaluation"
    proc = run(train_command(root, run_dir, "trainer.max_epochs=1", fail))

    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the submission was written before the evaluation failed, and is not blamed
    assert (run_dir / "prediction.csv").is_file() and metrics["prediction_csv"]
    assert "prediction_error" not in metrics
    oom = "OutOfMemoryError: CUDA out of memory (raised by the test)"
    assert metrics["evaluation_error"] == oom
    assert "the end-of-training evaluation (calibration and the full metrics) failed" in out
    assert f"python -m hw1.eval ckpt_path={metrics['best_ckpt']} data.root={root}" in out


@pytest.mark.slow
def test_resume_takes_the_runs_own_overrides(tmp_path):
    root = tmp_path / "images"
    make_hw1_folder(root, [str(i) for i in range(4)], train=8, val=2, test=0)
    run_dir = tmp_path / "run"
    first = run_train(root, run_dir, "head=v1", "seed=7", "trainer.max_epochs=1", "sched.T_max=2")
    assert first.returncode == 0, first.stderr[-3000:]
    first_config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    saved = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")

    # nothing but the run directory and what changes
    cmd = [sys.executable, "-m", "hw1.train", "resume=true", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(
        [*cmd, "trainer.max_epochs=2"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Restored all states from the checkpoint" in out
    taken = [o for o in saved if o.split("=")[0] != "trainer.max_epochs"]
    overrides_yaml = run_dir / ".hydra" / "overrides.yaml"
    assert f"resume=true: took the run's overrides from {overrides_yaml}: {' '.join(taken)}" in out

    second_config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert second_config.trainer.max_epochs == 2 and second_config.resume is True
    for config in (first_config, second_config):
        del config.trainer["max_epochs"], config["resume"]
    assert second_config == first_config
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and [h["epoch"] for h in metrics["val_history"]] == [1, 2]


def test_resume_overrides_yield_to_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    saved = ["head=v0", "head=v1", "optim.lr=0.1", "ckpt_path=/elsewhere/last.ckpt"]
    saved += ["+callbacks.x._target_=a.B", "model=resnet18", "resume=true"]
    OmegaConf.save(OmegaConf.create(saved), run_dir / ".hydra" / "overrides.yaml")
    given = ["resume=true", f"hydra.run.dir={run_dir}", "optim.lr=1", "~callbacks.x"]

    argv, note = with_run_overrides(["train.py", "--config-name", "train", *given])
    # the run's own, in order, before the command line's; not the key given, not the
    # checkpoint it started from (a resume continues from last.ckpt)
    taken = ["head=v0", "head=v1", "+callbacks.x._target_=a.B", "model=resnet18"]
    # and .hydra/ is written once the settings are checked (save_run_config), not by Hydra
    defer = "hydra.output_subdir=null"
    assert argv == ["train.py", "--config-name", "train", *taken, *given, defer]
    assert note == (
        f"resume=true: took the run's overrides from {run_dir / '.hydra' / 'overrides.yaml'}: "
        + " ".join(taken)
    )
    cfg = compose_config([o for o in argv[3:] if not o.startswith("hydra.")])
    assert cfg.head.name == "v1" and cfg.optim.lr == 1 and cfg.ckpt_path is None
    assert "x" not in cfg.callbacks  # what the run added, the command line can take away
    assert with_run_overrides(["t", "resume=false", f"hydra.run.dir={run_dir}"])[1] is None
    assert with_run_overrides(["t", "resume=true"])[1] is None
    assert with_run_overrides(["t", "resume=true", f"hydra.run.dir={tmp_path}"])[1] is None
