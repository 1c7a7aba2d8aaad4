"""The training order and its resumption (hw1/data/samplers.py): a run stopped in the middle
of an epoch (SIGTERM, Ctrl-C) and resumed trains on the batches, augmented alike, that the
uninterrupted run does, and ends with the same weights and metrics."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from conftest import make_hw1_folder, run_in_process_group, train_command
from torch.utils.data import Dataset

from hw1.data.datasets import SeededSamples
from hw1.data.samplers import (
    BalancedSampler,
    ResumableLoader,
    SeededDraws,
    ShuffledOrder,
    draw_seed,
)


class Draws(Dataset):
    """Item i: (i, a draw from torch's generator), as an augmentation draws."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> tuple[int, float]:
        return i, torch.rand(()).item()


def loader(num_workers: int = 0, balanced: bool = False, seed: int = 5) -> ResumableLoader:
    data = Draws()
    targets = [i % 3 for i in range(20)]
    order = BalancedSampler(targets, seed) if balanced else ShuffledOrder(data, seed)
    return ResumableLoader(
        SeededSamples(data),
        batch_size=4,
        sampler=SeededDraws(order, seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator(),
    )


def epoch(dl: ResumableLoader, number: int, stop_after: int | None = None) -> list:
    dl.sampler.set_epoch(number)
    out = []
    for batch in dl:
        out.append([t.tolist() for t in batch])
        if stop_after is not None and len(out) == stop_after:
            break
    return out


@pytest.mark.parametrize(("num_workers", "balanced"), [(0, False), (2, False), (0, True)])
def test_a_loader_resumed_mid_epoch_serves_the_rest_of_that_epoch_and_then_the_next(
    num_workers, balanced
):
    whole = loader(num_workers, balanced)
    expected = [epoch(whole, 0), epoch(whole, 1), epoch(whole, 2)]
    torch.manual_seed(123)  # the global generator plays no part
    stopped = loader(num_workers, balanced)
    epoch(stopped, 0)
    assert epoch(stopped, 1, stop_after=2) == expected[1][:2]
    state = stopped.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    resumed = loader(num_workers, balanced)
    resumed.load_state_dict(state)
    assert epoch(resumed, 1) == expected[1][2:]
    assert resumed.state_dict() == {"epoch": 1, "batches": len(expected[1])}
    assert epoch(resumed, 2) == expected[2]  # the skip is for the saved epoch alone
    assert expected[1] != expected[2] and len(expected[1]) == 5


def test_a_saved_state_of_another_epoch_skips_nothing():
    whole = epoch(loader(), 3)
    resumed = loader()
    resumed.load_state_dict({"epoch": 2, "batches": 5})  # saved at the end of epoch 3
    assert epoch(resumed, 3) == whole


def test_the_draws_depend_on_the_seed_and_the_place_not_on_the_workers():
    assert epoch(loader(0), 0) == epoch(loader(2), 0)
    assert epoch(loader(seed=5), 0) != epoch(loader(seed=6), 0)
    assert len({draw_seed(0, e, p) for e in range(3) for p in range(100)}) == 300


# --- end to end: python -m hw1.train stopped by SIGTERM after batch 2 of epoch 2 ------

EPOCHS2 = ("trainer.max_epochs=2", "sched.T_max=2", "callbacks.early_stopping=null")
# The draws of every kind: the crop, flip, colour jitter, rotation and shift in the loader
# (the workers finish them on the CPU), dropout and MixUp/CutMix in the training process.
DRAWS = (
    "data.augment.jitter=[0.2,0.2,0.2,0.1]", "head.dropout=0.2",
    "mix.mixup_alpha=0.2", "mix.cutmix_alpha=1.0", "mix.prob=0.5",
)  # fmt: skip


def record(path: Path) -> list[str]:
    prefix = "+callbacks.record"
    return [f"{prefix}._target_=run_probes.TrainingRecord", f"{prefix}.path={path}"]


def stop_at(epoch: int, batch: int) -> list[str]:
    prefix = "+callbacks.signal_at"
    return [
        f"{prefix}._target_=signal_callbacks.SignalAt",
        f"{prefix}.signal=SIGTERM",
        f"{prefix}.phase=train",
        f"{prefix}.batch={batch}",
        f"{prefix}.epoch={epoch}",
    ]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(cmd: list[str]) -> tuple[int, str]:
    return run_in_process_group(cmd, timeout=300)


def lines_in_order(path: Path) -> list[dict]:
    """The record's lines by process, epoch and batch (DDP processes append as they go)."""
    order = {"epoch end": 1, "train end": 2}
    return sorted(
        lines(path),
        key=lambda x: (x["rank"], x["epoch"], order.get(x.get("when"), 0), x.get("batch", 0)),
    )


# (workers, where the fast pipeline's colour jitter, rotation and shift run, batch size,
# processes): 48 training images, 6 batches an epoch on each process.
CASES = [(2, "auto", 8, 1), (0, "device", 4, 2)]


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "deferred", "batch_size", "processes"), CASES)
def test_a_run_stopped_mid_epoch_and_resumed_equals_the_uninterrupted_one(
    tmp_path, workers, deferred, batch_size, processes
):
    """SIGTERM lands in batch 2 of epoch 2 (0-based: 1) on process 0, which finishes it,
    and the resumed run trains batches 3 to 5 of it. One process with two loader workers
    (which finish the fast pipeline's images on the CPU), and two DDP (gloo) processes
    without workers, the device step finishing their images."""
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(6)], train=8, val=2, test=0)
    settings = (
        *EPOCHS2, *DRAWS, f"data.num_workers={workers}", f"data.deferred={deferred}",
        f"data.batch_size={batch_size}",
        *(("trainer.strategy=ddp", f"trainer.devices={processes}") if processes > 1 else ()),
    )  # fmt: skip
    runs = {}
    for name in ("whole", "stopped"):
        cmd = train_command(root, tmp_path / name, *settings, *record(tmp_path / f"{name}.jsonl"))
        if name == "stopped":
            status, out = run([*cmd, *stop_at(epoch=1, batch=2)])
            assert status == 128 + signal.SIGTERM, out[-4000:]
            status, out = run([*cmd, "resume=true", "~callbacks.signal_at"])
            assert "will differ" not in out and "Restored all states" in out, out[-4000:]
        else:
            status, out = run(cmd)
        assert status == 0, out[-4000:]
        runs[name] = tmp_path / name

    whole = lines_in_order(tmp_path / "whole.jsonl")
    stopped = lines_in_order(tmp_path / "stopped.jsonl")
    for rank in range(processes):
        mine = [line for line in stopped if line["rank"] == rank]
        assert [line["batch"] for line in mine if "batch" in line] == [*range(6), *range(6)]
        assert [line["when"] for line in mine if "when" in line] == [
            "epoch end", "epoch end", "train end"
        ]  # fmt: skip
    # the same samples, augmented alike, in the same order, the same weights after each
    # step; the same metrics each epoch (training loss and accuracy over the whole epoch,
    # validation, learning rate), the last epoch's at the end of training
    assert stopped == whole
    history = {
        name: json.loads((run_dir / "metrics.json").read_text())["val_history"]
        for name, run_dir in runs.items()
    }
    assert history["stopped"] == history["whole"]
    weights = {name: torch.load(f"{tmp_path / name}.jsonl.weights.pt") for name in runs}
    assert weights["whole"].keys() == weights["stopped"].keys()
    for key, tensor in weights["whole"].items():
        assert torch.equal(tensor, weights["stopped"][key]), key
