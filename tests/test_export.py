from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import AWKWARD_CLASSES, save_tiny_checkpoint
from torchvision.models import resnet18

from hw1.data.scan import input_files
from hw1.inference import export as export_module
from hw1.inference.api import load_classifier
from hw1.inference.export import export, parity_batch
from hw1.inference.exported import MODEL_JSON, read_model_json
from hw1.transforms.presets import EvalSpec
from hw1.utils.errors import UserError

SPEC = EvalSpec(crop=32, resize=37)


def batch_of(root):
    return parity_batch(input_files(root / "test"), SPEC, seed=0)


@pytest.mark.parametrize("runtime", ["onnx", "torchscript", "safetensors"])
def test_each_format_round_trips_logits_names_and_topk_order(exported, runtime):
    root, ckpt, folder = exported
    original, loaded = load_classifier(ckpt, device="cpu"), load_classifier(folder, runtime=runtime)
    assert loaded.class_names == AWKWARD_CLASSES == original.class_names
    x = batch_of(root)
    with torch.inference_mode():
        want, got = original.members[0].logits(x), loaded.members[0].logits(x)
    assert got.shape == (len(x), 3)
    assert (got - want).abs().max() <= 1e-4
    assert torch.equal(got.argmax(1), want.argmax(1))
    files = input_files(root / "test")
    for a, b in zip(loaded.predict(files, topk=3), original.predict(files, topk=3), strict=True):
        assert a.labels == b.labels  # every class, in the same order
        assert list(a.probs) == sorted(a.probs, reverse=True)
        assert a.probs == pytest.approx(b.probs, abs=1e-5)


def test_model_json_and_the_card_describe_the_model(exported):
    _, ckpt, folder = exported
    meta = read_model_json(folder)
    assert meta["class_names"] == AWKWARD_CLASSES
    assert EvalSpec.from_dict(meta["preprocess"]) == SPEC
    assert meta["input"]["shape"] == ["batch", 3, 32, 32]
    assert meta["tta"]["views"] == ["plain", "flip", "rotate", "crop"]
    assert meta["temperature"] == 1.0  # uncalibrated
    assert meta["architecture"]["members"][0]["head"]["name"] == "v3"
    assert set(meta["files"]) == {"onnx", "torchscript", "safetensors"}
    for figures in meta["parity"].values():
        assert figures["max_abs_logit_diff"] <= 1e-4 and figures["top1_agree"]
        assert figures["images"] == 6 and figures["inputs"] == 24  # 6 val images x 4 views
    card = (folder / "README.md").read_text()
    assert f"{meta['params']:,}" in card and "of the 100 M limit" in card
    assert "été" in card and "## Intended use and limits" in card
    # the folder holds what model.json names, and nothing half-written
    listed = {f["file"] for f in meta["files"].values()} | {MODEL_JSON, "README.md"}
    assert {p.name for p in folder.iterdir()} == listed


@pytest.mark.slow
def test_a_training_runs_export_carries_its_metrics_command_and_data(trained_run, tmp_path):
    root, _, run_dir = trained_run
    meta = export(
        str(run_dir / "checkpoints" / "best.ckpt"), ["safetensors"], tmp_path / "out"
    )  # parity images: the run's own val/ folder
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert meta["run"]["metrics"]["best_val_acc"] == metrics["best_val_acc"]
    assert meta["run"]["command"].startswith("python -m hw1.train data.root=")
    assert meta["run"]["class_counts"] == {str(i): 10 for i in range(12)}
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"best_val_acc: {metrics['best_val_acc']}" in card
    assert f"measured: {meta['run']['date']}" in card and "120 (10 to 10 per class" in card
    assert meta["parity"]["safetensors"]["images"] == 8


def test_an_ensemble_exports_as_one_network(exported, tmp_path, monkeypatch, capsys):
    root, ckpt, _ = exported
    other = save_tiny_checkpoint(tmp_path / "other.ckpt", seed=1)
    out = tmp_path / "ensemble"
    monkeypatch.setenv("HW1_PROGRESS", "count")  # each format counted, as in a log
    export([str(ckpt), str(other)], ["torchscript"], out, str(root / "val"))
    err = capsys.readouterr().err.splitlines()
    assert "exported 1/1 formats" in err and "checked the parity of 1/1 formats" in err
    files = input_files(root / "test")
    together = load_classifier(out, tta="none").probs(files)
    separately = load_classifier([ckpt, other], device="cpu", tta="none").probs(files)
    torch.testing.assert_close(together, separately, atol=1e-5, rtol=1e-4)
    assert read_model_json(out)["temperature"] is None  # inside the graph


def no_leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_a_failed_onnx_export_or_parity_check_leaves_nothing(exported, tmp_path, monkeypatch):
    root, ckpt, _ = exported

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(UserError, match="the ONNX export failed .*unsupported operator"):
        export(str(ckpt), ["onnx"], tmp_path / "a", str(root / "val"))
    monkeypatch.setattr(export_module, "PARITY_ATOL", -1.0)  # no export can match
    with pytest.raises(UserError, match=r"does not match the checkpoint.*torchscript: max abs"):
        export(str(ckpt), ["torchscript"], tmp_path / "b", str(root / "val"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert no_leftovers(tmp_path) == []


def test_corrupt_or_unrelated_checkpoints_and_taken_outputs_are_refused(exported, tmp_path):
    root, ckpt, folder = exported
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"truncated\.ckpt: not a readable checkpoint"):
        export(str(truncated), ["torchscript"], tmp_path / "a", str(root / "val"))
    plain = tmp_path / "plain.pt"
    torch.save(resnet18().state_dict(), plain)
    with pytest.raises(UserError, match=r"plain\.pt: not a checkpoint of hw1"):
        export(str(plain), ["torchscript"], tmp_path / "a", str(root / "val"))
    with pytest.raises(UserError, match="exists: remove it"):
        export(str(ckpt), ["torchscript"], folder, str(root / "val"))
    with pytest.raises(UserError, match="format=tflite: use one or more of onnx"):
        export(str(ckpt), "tflite", tmp_path / "a")


def test_a_missing_extra_names_it(exported, tmp_path, monkeypatch):
    _, ckpt, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(
        UserError, match=r'format=onnx needs onnxruntime.*pip install "hw1\[export\]"'
    ):
        export(str(ckpt), ["onnx"], tmp_path / "a")


def test_the_command_reports_a_bad_checkpoint_in_one_paragraph(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "hw1.export", f"ckpt_path={bad}", f"output={out}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "bad.ckpt: not a readable checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
