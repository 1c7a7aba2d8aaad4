"""torch.compile for real, on the CPU, with a backend that needs no C++ compiler: a whole
training run (fit, validation with a smaller last batch, a frozen then unfrozen backbone,
the end-of-training prediction with four test-time views), how often it compiles, and a
checkpoint of that run predicting where nothing can be compiled."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import make_hw1_folder, run_in_process_group, train_command
from torch import nn

from hw1.inference.predictor import predict
from hw1.models.classifier import Classifier
from hw1.utils.config import compose_config

# Graphs compiled over the run below (measured: 6): the evaluation graph at batch size 16
# and again when the smaller last batch makes the batch size dynamic (validation after the
# unfreezing reuses both: the frozen backbone keeps requires_grad); the training graph with
# the backbone's BatchNorm frozen and unfrozen; the prediction graph under inference mode;
# the end-of-training pass over val (calibration and metrics), under inference mode at the
# val batch sizes, once. More means recompiling per step or per epoch, which a GPU run
# pays in minutes a graph.
MAX_GRAPHS = 6


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """4 classes: 40 training images (2 batches of 16, the rest dropped), 20 validation
    images (batches of 16 and 4), 8 test images; backbone frozen for epoch 1 of 2."""
    base = tmp_path_factory.mktemp("compiled")
    root, run_dir, counts = base / "data", base / "run", base / "dynamo.json"
    make_hw1_folder(root, [str(i) for i in range(4)], train=10, val=5, test=2)
    cmd = train_command(
        root, run_dir,
        "model.compile=true", "model.compile_backend=aot_eager",
        "callbacks=[default,freeze_backbone]", "callbacks.freeze_backbone.epochs=1",
        "trainer.max_epochs=2", "sched.T_max=2", "tta=report",
        "+callbacks.dynamo._target_=run_probes.DynamoCounts", f"+callbacks.dynamo.path={counts}",
    )  # fmt: skip
    status, out = run_in_process_group(cmd, timeout=600)
    assert status == 0, out[-4000:]
    return root, run_dir, json.loads(counts.read_text())


@pytest.mark.slow
def test_a_compiled_run_trains_validates_unfreezes_and_predicts_without_recompiling(compiled_run):
    root, run_dir, counts = compiled_run
    assert counts["frames"]["ok"] == counts["frames"]["total"], counts  # nothing fell back
    reasons = "\n".join(counts["recompile_reasons"])
    assert 0 < counts["graphs"] <= MAX_GRAPHS, (
        f"{counts['graphs']} graphs; recompiled for\n{reasons}"
    )
    with open(run_dir / "prediction.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 1 + 8


@pytest.mark.slow
def test_a_compiled_runs_checkpoint_predicts_where_nothing_compiles(
    compiled_run, tmp_path, monkeypatch
):
    root, run_dir, _ = compiled_run
    best = run_dir / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["compile"] is True
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]

    def cannot_compile(*args, **kwargs):
        raise RuntimeError("no compiler on this machine")

    monkeypatch.setattr(torch, "compile", cannot_compile)
    monkeypatch.setattr(nn.Module, "compile", cannot_compile)
    model = Classifier.from_checkpoint(best)
    assert model.backbone.net._compiled_call_impl is None
    out = tmp_path / "prediction.csv"
    cfg = compose_config(
        [f"data.root={root}", f"output={out}", f"ckpt_path={best}", "data.num_workers=0",
         "trainer=cpu"],
        config_name="predict",
    )  # fmt: skip
    predict(cfg)
    assert out.read_text() == (run_dir / "prediction.csv").read_text()
