"""End-to-end: ``python -m hw1.train`` as a user runs it, in a subprocess."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import make_hw1_folder, run_train, train_command

from hw1.inference.evaluation import evaluate
from hw1.inference.predictor import predict
from hw1.utils.config import compose_config


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
    best = torch.load(metrics["best_ckpt"], map_location="cpu", weights_only=True)
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
    scalars = set(tags["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr/all"} <= scalars
    # TensorBoard groups the scalars by their first part: these and nothing else (no
    # epoch, no hp_metric, no hparams/; no test/ either, as this data has no test answers).
    assert {t.split("/")[0] for t in scalars} == {"train", "val", "lr"}, scalars
    per_step = [e.step + 1 for e in events.Scalars("lr/all")]  # every log_every_n_steps
    assert per_step == list(range(10, 8 * 7 + 1, 10))  # 8 epochs of 7 batches
    assert {"train/augmented", "val/confusion"} <= set(tags["images"])
    # confusion every 10 epochs and at the last: one image for this 8-epoch run
    assert [e.step for e in events.Images("val/confusion")] == [8 * 7]  # after the last step
    hparams = events.PluginTagToContent("hparams")
    started = hparams["_hparams_/session_start_info"]
    # The short list: chosen groups and the main values, no _target_ path
    assert b"resnet18" in started and b"optim.lr" in started and b"_target_" not in started
    experiment = hparams["_hparams_/experiment"]
    assert b"val/best_acc" in experiment and b"val/top1" in experiment  # no test answers here
    assert events.Scalars("val/best_acc")[-1].value == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["best_val_acc"]
    )


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


def test_a_family_without_multirun_says_to_add_m(tmp_path):
    proc = run_train(tmp_path / "data", tmp_path / "run", "experiment=depth")
    assert proc.returncode != 0
    assert "experiment=depth is a sweep" in proc.stderr and "-m" in proc.stderr


@pytest.mark.slow
def test_ema_weights_are_the_ones_validated_and_checkpointed(int_classes_root, tmp_path):
    root, _ = int_classes_root
    run_dir = tmp_path / "run"
    overrides = ["callbacks=[default,ema]", "callbacks.ema.decay=0.9", "trainer.max_epochs=2"]
    proc = run_train(root, run_dir, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ckpt = torch.load(metrics["best_ckpt"], map_location="cpu", weights_only=False)
    raw, ema = ckpt["current_model_state"], ckpt["state_dict"]
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in ema if ema[k].is_floating_point())
    # The accuracy of the checkpoint's (EMA) weights is the val/acc that training logged.
    cfg = compose_config(
        [f"ckpt_path={metrics['best_ckpt']}", f"data.root={root}", "trainer=cpu",
         f"output={tmp_path / 'eval.json'}", "data.num_workers=0"],
        config_name="eval",
    )  # fmt: skip
    assert evaluate(cfg)["acc"] == pytest.approx(metrics["best_val_acc"], abs=1e-6)

    # The run's own test prediction is made with the same (EMA) weights as hw1.predict's.
    def predicted(ckpt_path, name):
        cfg = compose_config(
            [f"ckpt_path={ckpt_path}", f"data.root={root}", "trainer=cpu",
             f"output={tmp_path / name}", "data.num_workers=0"],
            config_name="predict",
        )  # fmt: skip
        return predict(cfg).read_text()

    run_prediction = (run_dir / "prediction.csv").read_text()
    assert predicted(metrics["best_ckpt"], "ema.csv") == run_prediction
    # ... and not with the raw weights, which predict otherwise on this data
    ckpt["state_dict"] = raw
    torch.save(ckpt, tmp_path / "raw.ckpt")
    assert predicted(tmp_path / "raw.ckpt", "raw.csv") != run_prediction


def signal_in_second_epoch(cmd: list[str], sig: signal.Signals) -> tuple[int, str]:
    """Start a training run, send ``sig`` as its progress bar starts the second epoch (the
    first epoch's checkpoints are written by then); (exit status, console output)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = b""
    while b"Epoch 1:" not in seen:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        seen += chunk
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=600)
    return proc.returncode, (seen + rest).decode(errors="replace")


EPOCHS3 = ("trainer.max_epochs=3", "sched.T_max=3")


@pytest.fixture
def no_test_root(tmp_path) -> Path:
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(6)], train=8, val=2, test=0)  # 3 batches an epoch
    return root


@pytest.mark.slow
def test_a_run_killed_in_its_second_epoch_resumes_to_the_same_end(no_test_root, tmp_path):
    run_dir = tmp_path / "run"
    status, out = signal_in_second_epoch(
        train_command(no_test_root, run_dir, *EPOCHS3), signal.SIGKILL
    )
    assert status == -signal.SIGKILL, out[-3000:]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and not (run_dir / "metrics.json").exists()

    proc = run_train(no_test_root, run_dir, *EPOCHS3, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Restored all states from the checkpoint" in proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    assert [h["epoch"] for h in metrics["val_history"]] == [1, 2, 3]  # epoch 1 from before the kill
    assert metrics["best_val_acc"] == max(h["val_acc"] for h in metrics["val_history"])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_before_exiting(no_test_root, tmp_path):
    run_dir = tmp_path / "run"
    status, out = signal_in_second_epoch(
        train_command(no_test_root, run_dir, *EPOCHS3), signal.SIGTERM
    )
    assert status == 128 + signal.SIGTERM, out[-3000:]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # saved in the second epoch (epoch index 1), after at least one of its 3 batches
    assert last["epoch"] == 1 and last["global_step"] > 3
    assert f"SIGTERM: saved {run_dir / 'checkpoints' / 'last.ckpt'} at epoch 2" in out
    assert "resume=true" in out and not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_a_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(
    no_test_root, tmp_path
):
    run_dir = tmp_path / "run"
    # the learning rate jumps to 3e9 in the second epoch: the loss blows up there
    explode = ["sched._target_=torch.optim.lr_scheduler.StepLR", "~sched.T_max", "~sched.eta_min"]
    explode += ["~sched.warmup_epochs"]
    explode += ["+sched.step_size=1", "+sched.gamma=1e12"]
    proc = run_train(no_test_root, run_dir, *EPOCHS3, *explode)
    assert proc.returncode != 0
    last_path = run_dir / "checkpoints" / "last.ckpt"
    assert re.search(
        rf"training loss is (nan|inf) at epoch 2, batch \d+ \(global step \d+\): stopped; "
        rf"the last good checkpoint is {re.escape(str(last_path))}",
        proc.stderr,
    ), proc.stderr[-3000:]
    last = torch.load(last_path, weights_only=True)
    assert last["epoch"] == 0
    assert all(
        torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point()
    )
    assert not (run_dir / "metrics.json").exists()


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
