from __future__ import annotations

import csv
import io
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_hw1_folder
from PIL import Image
from torchvision.transforms.v2 import functional as F

from hw1.benchmarks.common import batched, per_image_tta
from hw1.data.datasets import UnlabeledImages, view_loader
from hw1.inference.evaluation import evaluate
from hw1.inference.predictor import collect, predict, submission_rows
from hw1.models.classifier import Classifier
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.presets import EvalSpec, ViewStack, eval_preset
from hw1.utils.config import compose_config
from hw1.utils.errors import UserValueError
from hw1.utils.io import csv_text
from hw1.utils.signals import Stopped


def tiny_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(
        model={"_target_": "hw1.models.backbone.Backbone", "arch": "resnet18"},
        # v3 has BatchNorm: eval mode matters
        head={"_target_": "hw1.models.backbone.make_head", "name": "v3"},
        optim={},
        sched={},
        class_names=[str(i) for i in range(12)],
        preprocess=EvalSpec(crop=32, resize=37).to_dict(),
    ).eval()


def run_predict(root, out, *overrides):
    cfg = compose_config(
        [f"data.root={root}", f"output={out}", "data.num_workers=0", "trainer=cpu", *overrides],
        config_name="predict",
    )
    return predict(cfg)


def test_batched_tta_equals_the_per_image_computation(int_classes_root):
    root, _ = int_classes_root
    model, spec = tiny_model(), EvalSpec(crop=32, resize=37)
    dataset = UnlabeledImages(root / "test")
    with torch.inference_mode():
        loop = per_image_tta(model, dataset, ViewStack(spec, seed=3))
        together = batched(model, view_loader(dataset, spec, "report", 3, 5, 0), spec)
    assert together.shape == (24, 12)
    torch.testing.assert_close(together, loop, atol=1e-5, rtol=1e-4)


def test_seed_changes_only_the_random_views():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    spec = EvalSpec(crop=32, resize=37)
    a, b = ViewStack(spec, seed=1)(image, 5), ViewStack(spec, seed=2)(image, 5)
    assert a.shape == (4, 3, 32, 32)
    assert torch.equal(a[:2], b[:2])  # plain and flipped views are deterministic
    assert not torch.equal(a[2], b[2]) and not torch.equal(a[3], b[3])  # rotation, crop
    assert torch.equal(a, ViewStack(spec, seed=1)(image, 5))  # same seed, same views
    assert torch.equal(a[1], a[0].flip(-1))


def test_tta_none_is_the_plain_eval_prediction(int_classes_root):
    """tta=none must be the plain eval view alone, tta=report something else."""
    root, _ = int_classes_root
    model, spec = tiny_model(), EvalSpec(crop=32, resize=37)
    dataset = UnlabeledImages(root / "test")
    with torch.inference_mode():
        none = batched(model, view_loader(dataset, spec, "none", 0, 8, 0), spec)
        finish = FinishOnDevice(spec.mean, spec.std)
        plain = torch.stack(
            [model(finish(eval_preset(spec)(img)[None])).softmax(1)[0] for img, _ in dataset]
        )
        report = batched(model, view_loader(dataset, spec, "report", 0, 8, 0), spec)
    torch.testing.assert_close(none, plain, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(none, report, atol=1e-4)


@pytest.mark.slow
def test_predict_from_a_checkpoint_writes_the_submission_format(trained_run, tmp_path):
    root, answers, run_dir = trained_run
    out = tmp_path / "sub" / "prediction.csv"
    run_predict(root, out, f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}")
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_name", "pred_label"]
    assert [r[0] for r in rows[1:]] == sorted(answers)  # .jpg, .png and .JPEG stems, sorted
    assert sum(answers[n] == label for n, label in rows[1:]) / len(answers) >= 0.9


@pytest.mark.slow
def test_same_seed_same_bytes_and_tta_flag_is_honoured(trained_run, tmp_path):
    root, _, run_dir = trained_run
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"
    a = run_predict(root, tmp_path / "a.csv", ckpt, "seed=7").read_bytes()
    b = run_predict(root, tmp_path / "b.csv", ckpt, "seed=7").read_bytes()
    assert a == b
    # Uncalibrated: a temperature that saturated every probability to 0 or 1 would leave
    # the views nothing to differ in (calibration keeps T at 1 on a val set classified
    # perfectly, as this run's may be; removed all the same).
    raw = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    raw.pop("temperature", None)
    torch.save(raw, tmp_path / "raw.ckpt")
    ckpt = f"ckpt_path={tmp_path / 'raw.ckpt'}"
    run_predict(root, tmp_path / "none.csv", ckpt, "tta=none", "save_probs=true")
    run_predict(root, tmp_path / "report.csv", ckpt, "tta=report", "save_probs=true")
    none = np.load(tmp_path / "none.probs.npz")["probs"]
    report = np.load(tmp_path / "report.probs.npz")["probs"]
    assert not np.allclose(none, report, atol=1e-4)


@pytest.mark.slow
def test_views_normalised_on_the_device_keep_the_predictions_bytes(trained_run, tmp_path):
    """The TTA views travel as uint8 and are normalised where the model runs: the
    probabilities are bit for bit those of views normalised in the loader as floats, so
    prediction.csv keeps its bytes."""
    root, _, run_dir = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    args = (f"ckpt_path={ckpt}", "save_probs=true", "seed=42", "data.batch_size=5")
    out = run_predict(root, tmp_path / "p.csv", *args)
    model = Classifier.from_checkpoint(ckpt)
    spec = EvalSpec.from_dict(model.hparams.preprocess)

    def as_floats(x: torch.Tensor) -> torch.Tensor:  # the presets' ToDtype(scale=True)
        return F.to_dtype(x, torch.float32, scale=True)

    with torch.inference_mode():
        batches = [
            (keys, model.predict_probs(F.normalize(as_floats(x), spec.mean, spec.std)))
            for x, keys in view_loader(UnlabeledImages(root / "test"), spec, "report", 42, 5, 0)
        ]
    names, probs = collect(batches)
    saved = np.load(tmp_path / "p.probs.npz")
    assert list(saved["keys"]) == names
    assert torch.equal(torch.from_numpy(saved["probs"]), probs)
    rows = submission_rows(names, probs, model.class_names)
    assert out.read_bytes() == csv_text([("image_name", "pred_label"), *rows]).encode()


@pytest.mark.slow
def test_ensemble_is_the_mean_of_its_members(trained_run, tmp_path, monkeypatch, capsys):
    root, _, run_dir = trained_run
    monkeypatch.setenv("HW1_PROGRESS", "count")  # a log's count of the ensemble's members
    best = run_dir / "checkpoints" / "best.ckpt"
    other = tmp_path / "other.ckpt"  # the same model, other weights
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    ckpt["state_dict"] = Classifier(**{**ckpt["hyper_parameters"]}).state_dict()
    torch.save(ckpt, other)
    probs = {}
    for name, paths in {"a": f"{best}", "b": f"{other}", "ab": f"[{best},{other}]"}.items():
        run_predict(root, tmp_path / f"{name}.csv", f"ckpt_path={paths}", "save_probs=true")
        probs[name] = np.load(tmp_path / f"{name}.probs.npz")
        counts = [line for line in capsys.readouterr().err.splitlines() if " checkpoints" in line]
        counted = [f"predicted (tta=report) with {i}/2 checkpoints" for i in (1, 2)]
        assert counts == (counted if name == "ab" else [])
    np.testing.assert_allclose(
        probs["ab"]["probs"], (probs["a"]["probs"] + probs["b"]["probs"]) / 2, atol=1e-6
    )
    assert list(probs["ab"]["keys"]) == list(probs["a"]["keys"])
    assert list(probs["ab"]["class_names"]) == [str(i) for i in range(12)]


def test_unreadable_test_image_stops_predict_before_writing(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=1, val=1, test=2)
    (root / "test" / "empty.jpg").write_bytes(b"")
    (root / "test" / "page.jpg").write_text("<html>not an image</html>")
    good = io.BytesIO()
    Image.new("RGB", (64, 64)).save(good, format="JPEG")
    (root / "test" / "cut.jpg").write_bytes(good.getvalue()[:200])
    out = tmp_path / "out" / "prediction.csv"
    with pytest.raises(
        ValueError, match=r"(?s)3 of 7 test images.*cut\.jpg.*empty\.jpg.*page\.jpg"
    ):
        run_predict(root, out, "ckpt_path=/never/loaded.ckpt")
    assert not out.parent.exists() or not any(out.parent.iterdir())


def saved_tiny_model(path) -> str:
    model = tiny_model()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return str(path)


def test_names_with_spaces_commas_quotes_and_non_ascii_give_their_csv_rows(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=1, val=1, test=0)
    stems = ["with space", "comma,name", 'say "cheese"', "it's", "花", "naïve; x"]
    for i, stem in enumerate(stems):
        Image.new("RGB", (40, 40), (40 * i, 0, 0)).save(root / "test" / f"{stem}.jpg")
    out = tmp_path / "prediction.csv"
    run_predict(root, out, f"ckpt_path={saved_tiny_model(tmp_path / 'tiny.ckpt')}", "tta=none")
    raw = out.read_bytes()
    text = raw.decode("utf-8")  # UTF-8, as graders read it
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_name", "pred_label"]
    assert [r[0] for r in rows[1:]] == sorted(stems)
    assert '"comma,name",' in text and '"say ""cheese""",' in text and "\n花," in text


def test_an_empty_test_folder_is_a_clear_error_in_predict(tmp_path):
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=1, val=1, test=0)
    (root / "test" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=f"{root / 'test'} has no images to predict"):
        run_predict(root, tmp_path / "out.csv", f"ckpt_path={tmp_path / 'never.ckpt'}")


@pytest.mark.parametrize("name, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_predict_and_eval_at_a_batch_with_nothing_written(
    tmp_path, caplog, name, status
):
    """R8: Lightning noted a SIGTERM and predicted on, then wrote the CSV and exited 0."""
    root = tmp_path / "data"
    make_hw1_folder(root, ["0", "1"], train=1, val=3, test=3, size=32)
    ckpt = saved_tiny_model(tmp_path / "tiny.ckpt")
    sender = (
        f"+trainer.callbacks=[{{_target_:signal_callbacks.SignalAt,signal:{name},phase:predict}}]"
    )
    for command, out in ((predict, tmp_path / "p.csv"), (evaluate, tmp_path / "eval.json")):
        cfg = compose_config(
            [f"data.root={root}", f"output={out}", "data.num_workers=0", "trainer=cpu",
             "data.batch_size=1", "tta=none", f"ckpt_path={ckpt}", sender],
            config_name="predict" if command is predict else "eval",
        )  # fmt: skip
        with pytest.raises(Stopped) as stopped:
            command(cfg)
        assert stopped.value.code == status
        assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
        what = "predicting" if command is predict else "evaluating"
        assert f"{name}: stopped {what}; nothing was written. Rerun: " in caplog.text
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back


def test_a_bad_output_is_refused_before_any_work(tmp_path):
    """R7: these failed after the whole prediction, with a traceback."""
    (tmp_path / "afile.txt").write_text("x")
    never = f"ckpt_path={tmp_path / 'never.ckpt'}"  # refused before it is looked for
    for output, message in (
        (tmp_path, "is a folder: give a file path in it"),
        (tmp_path / "afile.txt" / "p.csv", "afile.txt is a file, so no folder can be made"),
        (Path("/sys/hw1/p.csv"), "cannot write in /sys ("),
    ):
        with pytest.raises(UserValueError, match=re.escape(f"output={output}")) as error:
            run_predict(tmp_path, output, never)
        assert message in str(error.value)
    with pytest.raises(UserValueError, match=r"data\.batch_size=0: use a whole number"):
        run_predict(tmp_path, tmp_path / "p.csv", never, "data.batch_size=0")
