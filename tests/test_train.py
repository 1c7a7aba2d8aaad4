"""End-to-end: ``python -m hw1.train`` as a user runs it, in a subprocess."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import make_hw1_folder, run_train


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


@pytest.mark.slow
def test_tensorboard_has_the_curves_images_and_hparams(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, run_dir = trained_run
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr-AdamW", "train/lr"} <= set(
        tags["scalars"]
    )
    assert len(events.Scalars("train/lr")) == 8  # per epoch
    per_step = [e.step + 1 for e in events.Scalars("lr-AdamW")]  # every log_every_n_steps
    assert per_step == list(range(10, 8 * 7 + 1, 10))  # 8 epochs of 7 batches
    assert {"train/augmented", "val/confusion"} <= set(tags["images"])
    # confusion every 10 epochs and at the last: one image for this 8-epoch run
    assert [e.step for e in events.Images("val/confusion")] == [8 * 7]  # after the last step
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    assert b"model.arch" in hparams["_hparams_/session_start_info"]
    assert b"hparams/best_val_acc" in hparams["_hparams_/experiment"]


@pytest.mark.slow
def test_summary_names_files_that_exist(trained_run):
    _, _, run_dir = trained_run
    summary = (run_dir.parent / "train.stdout").read_text().split("hw1 run", 1)[1]
    assert (
        "best val acc" in summary and "under the 100 M limit" in summary and "images/s" in summary
    )
    paths = [
        line.split()[-1]
        for line in summary.splitlines()
        if line.strip().startswith(("best ckpt", "prediction", "metrics"))
    ]
    assert len(paths) == 3 and all(Path(p).is_file() for p in paths)
    assert f"tensorboard --logdir {run_dir}" in summary


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_one_metrics_file_and_the_whole_csv(tmp_path):
    """Lightning's DDP (gloo) relaunches the Hydra command per process: one process
    writes, and the prediction gathers every process's share of the test folder."""
    root = tmp_path / "data"
    answers = make_hw1_folder(root, [str(i) for i in range(4)], train=8, val=2, test=3)
    run_dir = tmp_path / "run"
    proc = run_train(
        root,
        run_dir,
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "data.batch_size=4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.relative_to(run_dir) for p in run_dir.rglob("metrics.json")] == [Path("metrics.json")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["prediction_csv"]
    rows = read_prediction(run_dir / "prediction.csv")
    assert [r[0] for r in rows[1:]] == sorted(answers)  # 12 images, not one process's 6
    assert proc.stdout.count("hw1 run") == 1  # one summary
