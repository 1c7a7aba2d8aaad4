"""hw1.predict and hw1.eval on two processes (gloo DDP on the CPU) give what one gives:
each process predicts its share of the images, rank zero gathers them and writes."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import run_in_process_group

from hw1.inference.evaluation import evaluate
from hw1.inference.predictor import predict
from hw1.utils.config import compose_config

DDP = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy=ddp",
    "trainer.precision=32-true",
]
DEADLINE_S = 240


def run_module(module: str, *overrides: str) -> str:
    status, out = run_in_process_group([sys.executable, "-m", module, *overrides], DEADLINE_S)
    assert status == 0, out[-4000:]
    return out


def common(trained_run, tmp_path, name: str) -> list[str]:
    root, _, run_dir = trained_run
    return [
        f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
        f"data.root={root}",
        f"output={tmp_path / name}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "data.num_workers=0",
        "data.batch_size=5",  # shares of 12 and 12 images, last batches of 2
        "tta=report",
        "seed=3",
    ]


@pytest.mark.slow
def test_predict_on_two_processes_writes_the_bytes_of_one(trained_run, tmp_path):
    predict(compose_config([*common(trained_run, tmp_path, "one.csv"), "trainer=cpu"], "predict"))
    out = run_module("hw1.predict", *common(trained_run, tmp_path, "two.csv"), *DDP)
    one, two = (tmp_path / "one.csv").read_bytes(), (tmp_path / "two.csv").read_bytes()
    assert two.count(b"\n") == one.count(b"\n") == 25  # header + 24 test images
    assert two == one
    assert out.count('"prediction_csv"') == 1  # rank zero alone reports


@pytest.mark.slow
def test_eval_on_two_processes_reports_the_accuracy_of_one(trained_run, tmp_path):
    one = evaluate(
        compose_config([*common(trained_run, tmp_path, "one.json"), "trainer=cpu"], "eval")
    )
    run_module("hw1.eval", *common(trained_run, tmp_path, "two.json"), *DDP)
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["images"] == one["images"] == 36
    assert (two["acc"], two["acc_tta"]) == (one["acc"], one["acc_tta"])
    assert two["per_class_acc"] == one["per_class_acc"]
    assert two["most_confused"] == one["most_confused"]


def test_a_command_leaves_its_process_group_before_the_interpreter_ends():
    """Lightning leaves a gloo group to the interpreter's finalisation, where gloo's threads
    aborted rank zero of a finished hw1.predict (exit -6, on CI): every command now destroys
    it at its end, after a barrier."""
    import socket

    import torch.distributed as dist

    from hw1.utils.errors import reported

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        with reported():
            assert dist.is_initialized()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
