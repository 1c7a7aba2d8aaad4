"""End-to-end: ``python -m hw1.train`` as a user runs it, in a subprocess."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_train


def read_prediction(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_train_writes_the_run_directory_and_predicts_folder_names(trained_run):
    root, answers, run_dir = trained_run

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 8 and len(metrics["val_history"]) == 8
    assert 0 <= metrics["best_val_acc"] <= 1 and 1 <= metrics["best_epoch"] <= 8
    assert metrics["best_val_acc"] == max(h["val_acc"] for h in metrics["val_history"])
    assert metrics["params"] == 11_176_512 + 512 * 12 + 12  # resnet18 features + v0 head
    assert metrics["id"] is None
    assert Path(metrics["best_ckpt"]) == run_dir / "checkpoints" / "best.ckpt"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    best = torch.load(metrics["best_ckpt"], map_location="cpu", weights_only=False)
    assert best["hyper_parameters"]["class_names"] == [str(i) for i in range(12)]

    rows = read_prediction(run_dir / "prediction.csv")
    assert rows[0] == ["image_name", "pred_label"]
    names = [r[0] for r in rows[1:]]
    assert names == sorted(answers)  # every test image, by name without extension, sorted
    assert {r[1] for r in rows[1:]} <= {str(i) for i in range(12)}
    # Folder names, not indices into a text-sorted list: 0,1,10,11,2,... would score ~0.
    correct = sum(answers[name] == label for name, label in rows[1:])
    assert correct / len(answers) >= 0.9, rows


@pytest.mark.slow
def test_fast_dev_run_still_writes_metrics(int_classes_root, tmp_path):
    root, _ = int_classes_root
    run_dir = tmp_path / "run"
    proc = run_train(root, run_dir, "trainer.fast_dev_run=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["best_ckpt"] is None
    assert set(metrics) >= {"best_val_acc", "best_epoch", "epochs", "params", "best_ckpt", "id"}
    # one predicted batch is not a submission: no partial prediction.csv
    assert not (run_dir / "prediction.csv").exists()
    assert "predicted 16 of 24 test images" in proc.stdout + proc.stderr


def test_missing_data_root_fails_with_the_layout_and_the_demo_command(tmp_path):
    proc = run_train(tmp_path / "absent", tmp_path / "run")
    assert proc.returncode != 0
    assert "absent: no such folder" in proc.stderr and "experiment=demo" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
