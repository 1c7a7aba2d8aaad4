"""A training run's record: what a failed end-of-training prediction keeps, and resuming
a run with its own overrides."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import make_hw1_folder, train_command

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
