"""How a training run stops: SIGTERM and Ctrl-C in every phase of fit, on one process and
on two (gloo DDP on the CPU), and a NaN loss on one of two processes. A callback from
``tests/signal_callbacks.py`` sends the signal (or makes the NaN) at a chosen batch, so
each phase is hit every time."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch
from conftest import make_hw1_folder, run_in_process_group, train_command

EPOCHS2 = ("trainer.max_epochs=2", "sched.T_max=2")
# Both processes of a DDP run must be gone within this; a hang fails the test.
DEADLINE_S = 240


@pytest.fixture
def small_root(tmp_path) -> Path:
    """6 classes, 48 training and 18 validation images: at batch size 4, 12 training and
    5 validation batches an epoch."""
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(6)], train=8, val=3, test=0)
    return root


def signal_at(
    sig: str, phase: str, batch: int = 1, rank: int = 0, times: int = 1, group: bool = False
) -> list[str]:
    prefix = "+callbacks.signal_at"
    return [
        f"{prefix}.times={times}",
        f"{prefix}.group={str(group).lower()}",
        f"{prefix}._target_=signal_callbacks.SignalAt",
        f"{prefix}.signal={sig}",
        f"{prefix}.phase={phase}",
        f"{prefix}.batch={batch}",
        f"{prefix}.rank={rank}",
    ]


def run(cmd: list[str], timeout: float = DEADLINE_S) -> tuple[int, str]:
    return run_in_process_group(cmd, timeout)


def load_last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


# (phase, batch the signal lands in, epoch and global step of the saved checkpoint): a
# training batch finishes first; the validation (after the epoch's 12 training batches)
# and the sanity check (2 batches) run to their end; training must not start after the
# sanity check.
PHASES = [("train", 1, 0, 2), ("validation", 1, 1, 12), ("sanity", 0, 0, 0)]


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "batch", "epoch", "step"), PHASES)
def test_sigterm_in_any_phase_of_fit_saves_last_ckpt_and_exits_143(
    small_root, tmp_path, phase, batch, epoch, step
):
    run_dir = tmp_path / "run"
    cmd = train_command(small_root, run_dir, *EPOCHS2, "data.batch_size=4")
    status, out = run([*cmd, *signal_at("SIGTERM", phase, batch)])
    assert status == 128 + signal.SIGTERM, out[-4000:]
    last = load_last(run_dir)
    assert (last["epoch"], last["global_step"]) == (epoch, step)
    assert f"SIGTERM: saved {run_dir / 'checkpoints' / 'last.ckpt'} at epoch {epoch + 1}" in out
    assert not (run_dir / "metrics.json").exists()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, list[dict]]:
    """(data root, val history) of a 2-epoch run that nothing stopped."""
    base = tmp_path_factory.mktemp("uninterrupted")
    root = base / "data"
    make_hw1_folder(root, [str(i) for i in range(6)], train=8, val=3, test=0)
    status, out = run(train_command(root, base / "run", *EPOCHS2, "data.batch_size=4"))
    assert status == 0, out[-4000:]
    return root, json.loads((base / "run" / "metrics.json").read_text())["val_history"]


@pytest.mark.slow
def test_a_run_stopped_in_validation_resumes_to_the_same_end(uninterrupted, tmp_path):
    root, expected = uninterrupted
    run_dir = tmp_path / "run"
    cmd = train_command(root, run_dir, *EPOCHS2, "data.batch_size=4")
    status, out = run([*cmd, *signal_at("SIGTERM", "validation", batch=0)])
    assert status == 128 + signal.SIGTERM, out[-4000:]

    # the run's own overrides come back with resume=true: this one takes the signal away
    status, out = run([*cmd, "resume=true", "~callbacks.signal_at"])
    assert status == 0, out[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # every epoch validated once, on the whole val set: the history of the run not stopped
    assert metrics["val_history"] == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    ("phase", "rank", "epoch", "step"), [("validation", 0, 1, 6), ("train", 1, 0, 2)]
)
def test_sigterm_under_ddp_stops_every_process_at_the_same_step(
    small_root, tmp_path, phase, rank, epoch, step
):
    """Two gloo processes (6 training batches each an epoch). Rank 0 is the process a
    scheduler signals; a signal that reaches rank 1 alone must stop rank 0 as well."""
    run_dir = tmp_path / "run"
    cmd = train_command(
        small_root, run_dir, *EPOCHS2, "data.batch_size=4", "trainer.strategy=ddp",
        "trainer.devices=2",
    )  # fmt: skip
    status, out = run([*cmd, *signal_at("SIGTERM", phase, rank=rank)])
    assert status == 128 + signal.SIGTERM, out[-4000:]
    last = load_last(run_dir)
    assert (last["epoch"], last["global_step"]) == (epoch, step)
    assert out.count("SIGTERM: saved") == 1, out[-4000:]
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if p.suffix != ".ckpt"]


@pytest.mark.slow
def test_ctrl_c_saves_last_ckpt_at_the_step_and_exits_130(small_root, tmp_path):
    run_dir = tmp_path / "run"
    cmd = train_command(small_root, run_dir, *EPOCHS2, "data.batch_size=4")
    status, out = run([*cmd, *signal_at("SIGINT", "train", batch=3)])
    assert status == 128 + signal.SIGINT, out[-4000:]
    last = load_last(run_dir)
    assert (last["epoch"], last["global_step"]) == (0, 4)  # the batch it landed in finished
    assert f"SIGINT: saved {run_dir / 'checkpoints' / 'last.ckpt'} at epoch 1" in out
    assert "resume=true" in out and not (run_dir / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("times", [1, 2])
def test_ctrl_c_in_the_terminal_of_a_ddp_run_with_workers(small_root, tmp_path, times):
    """A terminal's Ctrl-C reaches every process of the group: both ranks and their loader
    workers. Once: last.ckpt at one step, one warning. Twice: both ranks stop at once,
    nothing saved, no traceback. Either way every process is gone and the status is 130."""
    run_dir = tmp_path / "run"
    cmd = train_command(
        small_root, run_dir, *EPOCHS2, "data.batch_size=4", "trainer.strategy=ddp",
        "trainer.devices=2", "data.num_workers=1",
    )  # fmt: skip
    status, out = run([*cmd, *signal_at("SIGINT", "train", batch=2, times=times, group=True)])
    assert status == 128 + signal.SIGINT, out[-4000:]
    assert "Traceback" not in out and "exited unexpectedly" not in out, out[-4000:]
    if times == 1:
        assert out.count("SIGINT: stopping") <= 2, out[-4000:]  # a rank's own, no worker's
        assert out.count("SIGINT: saved") == 1, out[-4000:]
        assert load_last(run_dir)["global_step"] == 3
    else:
        assert "SIGINT again: stopped at once" in out, out[-4000:]
        assert not (run_dir / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_a_nan_loss_on_one_ddp_process_stops_both_with_the_error(small_root, tmp_path):
    """Rank 0 alone gets a NaN batch at global step 8 (epoch 2, batch 2, 6 batches an
    epoch): both processes stop together with the NaN error, neither on the other's closed
    connection or in a hang, and last.ckpt stays the end of epoch 1."""
    run_dir = tmp_path / "run"
    cmd = train_command(
        small_root, run_dir, *EPOCHS2, "data.batch_size=4", "trainer.strategy=ddp",
        "trainer.devices=2", "+callbacks.nan._target_=signal_callbacks.NaNLossAt",
        "+callbacks.nan.step=8", "+callbacks.nan.rank=0",
    )  # fmt: skip
    status, out = run(cmd)
    assert status != 0
    last_path = run_dir / "checkpoints" / "last.ckpt"
    assert re.search(
        r"training loss is nan at epoch 2, batch 2 \(global step 9\) on process 0: stopped; "
        rf"the last good checkpoint is {re.escape(str(last_path))}",
        out,
    ), out[-4000:]
    assert "RuntimeError" not in out, out[-4000:]  # gloo's errors on a closed connection
    last = load_last(run_dir)
    assert (last["epoch"], last["global_step"]) == (0, 6)
    assert all(
        torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point()
    )


@pytest.mark.slow
def test_sigterm_in_the_end_of_training_prediction_exits_143_and_says_to_resume(tmp_path):
    """R8: the end-of-training prediction noted the SIGTERM, predicted on and exited 0."""
    root = tmp_path / "data"
    make_hw1_folder(root, ["0", "1"], train=4, val=2, test=4, size=32)
    run_dir = tmp_path / "run"
    cmd = train_command(root, run_dir, "trainer.max_epochs=1", *signal_at("SIGTERM", "predict"))
    status, out = run([*cmd, "data.batch_size=2"])
    assert status == 143, out[-3000:]
    assert not (run_dir / "prediction.csv").exists()
    assert (
        f"SIGTERM: stopped the end-of-training prediction; nothing was written. Rerun: "
        f"python -m hw1.train resume=true hydra.run.dir={run_dir}" in out
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["prediction_error"] == "stopped by SIGTERM" and metrics["best_ckpt"]
