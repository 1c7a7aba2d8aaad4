from __future__ import annotations

import json

import pytest
import torch
from conftest import make_hw1_folder
from PIL import Image
from test_predict import saved_tiny_model, tiny_model

from hw1.inference.evaluation import confusion_report, evaluate
from hw1.utils.config import compose_config


def test_confusion_report_names_per_class_accuracy_and_the_worst_pairs():
    confusion = torch.tensor([[3, 0, 0], [1, 1, 1], [0, 3, 0]])
    report = confusion_report(confusion, ["a", "b", "c"], top=2)
    assert report["per_class_acc"] == pytest.approx({"a": 1.0, "b": 1 / 3, "c": 0.0})
    assert report["most_confused"][0] == {"true": "c", "pred": "b", "count": 3}
    assert len(report["most_confused"]) == 2 and report["most_confused"][1]["count"] == 1


@pytest.mark.slow
def test_eval_accuracy_is_what_training_logged_for_the_checkpoint(trained_run, tmp_path):
    root, _, run_dir = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    overrides = [f"ckpt_path={metrics['best_ckpt']}", f"data.root={root}", "trainer=cpu"]
    overrides += [f"output={tmp_path / 'eval.json'}", "data.num_workers=0"]
    cfg = compose_config(overrides, config_name="eval")
    results = evaluate(cfg)
    assert results["acc"] == pytest.approx(metrics["best_val_acc"], abs=1e-6)
    assert 0 <= results["acc_tta"] <= 1 and results["images"] == 36
    assert set(results["per_class_acc"]) == {str(i) for i in range(12)}
    assert json.loads((tmp_path / "eval.json").read_text())["acc"] == results["acc"]
    with Image.open(tmp_path / "confusion.png") as png:
        assert png.width == png.height >= 12 * 10


def test_eval_leaves_out_unreadable_images(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(12)], train=1, val=2, test=0)
    (root / "val" / "3" / "cut.jpg").write_bytes(b"\xff\xd8\xff")  # a JPEG header, no image
    ckpt = tmp_path / "tiny.ckpt"
    model = tiny_model()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    overrides = [f"ckpt_path={ckpt}", f"data.root={root}", "trainer=cpu", "tta=none"]
    overrides += [f"output={tmp_path / 'eval.json'}", "data.num_workers=0"]
    results = evaluate(compose_config(overrides, config_name="eval"))
    assert results["images"] == 24


def test_a_split_without_images_is_a_clear_error_in_eval(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(12)], train=1, val=1, test=0)
    for image in (root / "val").rglob("*.jpg"):
        image.unlink()
    ckpt = saved_tiny_model(tmp_path / "tiny.ckpt")
    overrides = [f"ckpt_path={ckpt}", f"data.root={root}", "trainer=cpu", "tta=none"]
    overrides += [f"output={tmp_path / 'eval.json'}", "data.num_workers=0"]
    with pytest.raises(FileNotFoundError, match=f"{root / 'val'} has no readable images"):
        evaluate(compose_config(overrides, config_name="eval"))
    assert not (tmp_path / "eval.json").exists()
