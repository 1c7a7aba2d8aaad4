from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import pytest
import torch
from conftest import make_hw1_folder
from PIL import Image
from test_predict import saved_tiny_model, tiny_model

from hw1.inference.evaluation import confusion_report, eval_markdown, evaluate
from hw1.inference.metrics import classification_metrics, per_class_table, reliability_bins
from hw1.models.classifier import Classifier
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
    assert results["metrics"]["none"]["top1"] == results["acc"]
    with Image.open(tmp_path / "confusion.png") as png:
        assert png.width >= 400 and png.height >= 400


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


def overconfident_checkpoint(path):
    """A tiny untrained model whose logits are scaled 100 times: near-certain and mostly
    wrong, the over-confidence temperature scaling is for."""
    model = tiny_model()
    with torch.no_grad():
        for p in model.head[-1].parameters():  # the last layer: the logits
            p.mul_(100)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


@pytest.mark.slow
def test_eval_calibrates_reports_and_draws_the_gallery(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(12)], train=1, val=2, test=0)
    ckpt = overconfident_checkpoint(tmp_path / "tiny.ckpt")
    out = tmp_path / "out"
    overrides = [f"ckpt_path={ckpt}", f"data.root={root}", "trainer=cpu", "tta=none"]
    overrides += [f"output={out / 'eval.json'}", "data.num_workers=0", "calibrate=true"]
    results = evaluate(compose_config([*overrides, "gallery=5"], config_name="eval"))

    before, after = results["metrics_uncalibrated"]["none"], results["metrics"]["none"]
    assert after["ece"] < before["ece"] / 2 and after["nll"] < before["nll"]
    assert after["top1"] == before["top1"]
    (t,) = results["temperature"]
    assert t > 1 and Classifier.from_checkpoint(ckpt).temperature == t
    for key in ("top5", "f1_macro", "f1_weighted", "precision_macro", "recall_weighted"):
        assert 0 <= after[key] <= 1
    assert lo_hi_around(after, "top1") and lo_hi_around(after, "top5")
    f1 = [row["f1"] for row in results["per_class"]]
    assert f1 == sorted(f1) and len(f1) == 12  # worst first

    report = (out / "eval.md").read_text()
    for text in ("F1 (macro)", "ECE before", "ECE after", f"{t:.3f}", "reliability.png"):
        assert text in report
    for name in ("confusion.png", "reliability.png", "per_class_f1.png"):
        with Image.open(out / name) as png:
            assert png.width > 300
    parser = Images()
    parser.feed((out / "gallery.html").read_text())
    mistakes = sum(1 for row in results["per_class"] for _ in range(row["support"]))
    mistakes -= round(after["top1"] * results["images"])
    assert len(parser.sources) == min(5, mistakes) > 0
    for source in parser.sources:  # every image inlined, and a picture
        kind, data = source.split(";base64,")
        assert kind in ("data:image/png", "data:image/jpeg")
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.width >= 80


def lo_hi_around(metrics, key):
    lo, hi = metrics[f"{key}_ci95"]
    return lo <= metrics[key] <= hi and lo < hi


def test_a_class_without_images_in_the_split_is_na_not_zero(tmp_path):
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.4, 0.0]])
    rows = {r["class"]: r for r in per_class_table(probs, torch.tensor([0, 1, 1]), "abc")}
    assert rows["c"] == {"class": "c", "precision": None, "recall": None, "f1": None, "support": 0}
    assert rows["b"]["recall"] == 0.5 and rows["a"]["precision"] == 0.5
    assert list(per_class_table(probs, torch.tensor([0, 1, 1]), "abc"))[-1]["class"] == "c"
    # The macro means leave it out, rather than count it as 0
    macro = classification_metrics(probs, torch.tensor([0, 1, 1]), "abc")["f1_macro"]
    assert macro == pytest.approx(2 / 3)
    assert "n/a" in eval_markdown(
        {
            "ckpt_path": ["x"],
            "split": "val",
            "images": 3,
            "metrics": {"none": classification_metrics(probs, torch.tensor([0, 1, 1]), "abc")},
            "temperature": [1.0],
            "per_class": list(rows.values()),
            "most_confused": [],
        }
    )


def test_eval_on_classes_the_checkpoint_does_not_know_lists_them(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(12)], train=1, val=1, test=0)
    for name in ("zebra", "yak"):
        (root / "val" / name).mkdir()
        Image.new("RGB", (40, 40)).save(root / "val" / name / "0.jpg")
    ckpt = saved_tiny_model(tmp_path / "tiny.ckpt")
    overrides = [f"ckpt_path={ckpt}", f"data.root={root}", "trainer=cpu", "tta=none"]
    overrides += [f"output={tmp_path / 'eval.json'}", "data.num_workers=0"]
    with pytest.raises(ValueError, match=r"not trained on: \['yak', 'zebra'\]"):
        evaluate(compose_config(overrides, config_name="eval"))


def test_reliability_bins_hold_every_image_once():
    probs = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.3, 0.7], [0.02, 0.98]])
    bins = reliability_bins(probs, torch.tensor([0, 1, 1, 0]))
    assert sum(b["images"] for b in bins) == 4
    top = bins[-1]
    assert top["images"] == 2 and top["accuracy"] == 0.5 and top["lo"] < 0.95 <= top["hi"]


@pytest.mark.slow
def test_training_ends_calibrated_with_the_full_metrics_logged(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, run_dir = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics["best_val_acc"] == 1.0:  # no mistake on val: no temperature minimises its NLL
        assert metrics["temperature"] == 1.0
        assert "all classified correctly" in (run_dir / "train.log").read_text()
    else:
        assert 0 < metrics["temperature"] != 1.0
    assert Classifier.from_checkpoint(metrics["best_ckpt"]).temperature == metrics["temperature"]
    assert metrics["val_top1"] == pytest.approx(metrics["best_val_acc"], abs=1e-6)
    for key in ("val_top5", "val_f1_macro", "val_nll", "val_ece", "val_ece_uncalibrated"):
        assert metrics[key] >= 0
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/top1", "val/f1_macro", "val/ece", "val/temperature"} <= tags


class Figures(HTMLParser):
    """Each gallery figure's images, as (class attribute, src) pairs."""

    def __init__(self):
        super().__init__()
        self.figures = []

    def handle_starttag(self, tag, attrs):
        if tag == "figure":
            self.figures.append([])
        elif tag == "img" and self.figures:
            self.figures[-1].append((dict(attrs).get("class"), dict(attrs)["src"]))


@pytest.mark.slow
def test_the_gallery_shows_each_mistakes_grad_cam_beside_it(tmp_path):
    pytest.importorskip("captum")
    root = tmp_path / "data"
    make_hw1_folder(root, [str(i) for i in range(12)], train=1, val=1, test=0)
    ckpt = overconfident_checkpoint(tmp_path / "tiny.ckpt")
    out = tmp_path / "out"
    overrides = [f"ckpt_path={ckpt}", f"data.root={root}", "trainer=cpu", "tta=none"]
    overrides += [f"output={out / 'eval.json'}", "data.num_workers=0", "gallery=3"]
    evaluate(compose_config([*overrides, "gallery_cam=true"], config_name="eval"))
    parser = Figures()
    parser.feed((out / "gallery.html").read_text())
    assert len(parser.figures) == 3
    for images in parser.figures:  # the image, then its overlay, both inlined pictures
        assert [kind for kind, _ in images] == [None, "gradcam"]
        data = base64.b64decode(images[1][1].split(";base64,")[1])
        with Image.open(io.BytesIO(data)) as overlay:
            assert overlay.width >= 80 and overlay.mode == "RGB"
            assert len(overlay.getcolors(1 << 16) or ()) > 16  # a heat map, not a flat tile


def test_gallery_cam_without_captum_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "captum", None)  # import captum now fails
    (tmp_path / "val").mkdir()
    cfg = compose_config(
        [f"ckpt_path={tmp_path / 'absent.ckpt'}", f"data.root={tmp_path}", "gallery=3",
         f"output={tmp_path / 'eval.json'}",
         "gallery_cam=true"],
        config_name="eval",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r'pip install "hw1\[explain\]"'):
        evaluate(cfg)
