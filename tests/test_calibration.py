from __future__ import annotations

import pytest
import torch
from test_predict import tiny_model

from hw1.inference.calibration import fit_temperature, logits_of, store_temperature
from hw1.inference.metrics import classification_metrics
from hw1.models.classifier import Classifier


def overconfident(n: int = 2000, classes: int = 10, factor: float = 4.0, seed: int = 0):
    """(logits ``factor`` times too sharp, labels drawn from the calibrated softmax)."""
    g = torch.Generator().manual_seed(seed)
    calibrated = torch.randn(n, classes, generator=g) * 1.5
    labels = torch.multinomial(calibrated.softmax(dim=1), 1, generator=g).flatten()
    return calibrated * factor, labels


def test_temperature_scaling_recovers_the_sharpening_and_lowers_ece_and_nll():
    logits, labels = overconfident()
    names = [str(i) for i in range(10)]
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(4.0, rel=0.15)
    before = classification_metrics(logits.softmax(dim=1), labels, names)
    after = classification_metrics((logits / t).softmax(dim=1), labels, names)
    assert after["ece"] < before["ece"] / 3 and after["nll"] < before["nll"]
    assert after["top1"] == before["top1"]  # one scalar: the order of the classes stays


def test_softmax_outputs_fit_the_same_temperature_as_the_logits():
    logits, labels = overconfident(factor=3.0, seed=1)
    from_probs = fit_temperature(logits_of(logits.softmax(dim=1)), labels)
    assert from_probs == pytest.approx(fit_temperature(logits, labels), rel=1e-4)


def test_the_temperature_travels_with_the_checkpoint_and_predict_applies_it(tmp_path):
    model = tiny_model()
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    assert Classifier.from_checkpoint(ckpt).temperature == 1.0  # none stored: uncalibrated
    store_temperature(ckpt, 2.5)
    loaded = Classifier.from_checkpoint(ckpt)
    assert loaded.temperature == 2.5
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left beside
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain, cooled = model.predict_probs(x), loaded.predict_probs(x)
        torch.testing.assert_close(cooled, (model(x) / 2.5).softmax(dim=1))
    assert torch.equal(plain.argmax(dim=1), cooled.argmax(dim=1))
    # Lightning's own save and load (resume, load_from_checkpoint) carry it too.
    saved: dict = {}
    loaded.on_save_checkpoint(saved)
    fresh = tiny_model()
    fresh.on_load_checkpoint(saved)
    assert saved["temperature"] == fresh.temperature == 2.5


def test_a_validation_split_without_mistakes_keeps_the_temperature_at_1(caplog):
    logits, labels = overconfident(n=200)
    right = logits.argmax(dim=1)  # every image classified correctly: no finite minimiser
    assert fit_temperature(logits, right) == 1.0
    assert "all classified correctly" in caplog.text
    # One mistake is enough for a finite temperature, below 1 for these well-separated logits.
    one_wrong = right.clone()
    one_wrong[0] = (right[0] + 1) % 10
    assert 1e-2 < fit_temperature(logits, one_wrong) < 1.0
