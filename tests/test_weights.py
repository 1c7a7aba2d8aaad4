from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_model import classifier
from torchvision.models import ResNet18_Weights, resnet18

from hw1.models.backbone import Backbone
from hw1.models.classifier import Classifier
from hw1.utils.errors import UserFileNotFoundError, UserValueError
from hw1.utils.weights import load_checkpoint, resolve_weights


def _planted_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return resnet18().state_dict()


def _assert_loaded(backbone: Backbone, state: dict[str, torch.Tensor]) -> None:
    loaded = backbone.net.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_torchvision_weights_load_from_the_torch_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _planted_state(1)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url))
    _assert_loaded(Backbone("resnet18", "IMAGENET1K_V1"), state)
    _assert_loaded(Backbone("resnet18", "DEFAULT"), state)


def test_weights_load_from_a_state_dict_path(tmp_path):
    state = _planted_state(2)
    path = tmp_path / "my weights.pth"
    torch.save(state, path)
    _assert_loaded(Backbone("resnet18", str(path)), state)


def test_weights_the_backbone_lacks_are_a_clear_error():
    with pytest.raises(ValueError, match=r"resnet34 has no such.*: DEFAULT, IMAGENET1K_V1;"):
        resolve_weights("resnet34", "IMAGENET1K_V2")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.weights="):
        resolve_weights("resnet18", str(tmp_path / "nope.pth"))


def test_offline_download_names_the_cache_file(monkeypatch, tmp_path):
    from urllib.error import URLError

    def offline(*a, **k):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(
        RuntimeError, match=r"hub/checkpoints/resnet18-f37072fd\.pth.*model\.weights=PATH"
    ):
        Backbone("resnet18", "IMAGENET1K_V1")


def test_a_state_dict_of_other_shapes_names_the_first_mismatching_keys(tmp_path):
    state = _planted_state(3)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a grayscale stem
    state["layer4.1.bn2.weight"] = torch.zeros(256)
    path = tmp_path / "grey.pth"
    torch.save(state, path)
    with pytest.raises(
        ValueError,
        match=r"grey\.pth does not fit resnet18: other shapes \(2\): conv1\.weight \(64, 1, 7, 7\)"
        r" \(the model has \(64, 3, 7, 7\)\), layer4\.1\.bn2\.weight \(256,\)",
    ):
        Backbone("resnet18", str(path))


def test_a_state_dict_of_another_network_names_missing_keys(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(
        ValueError, match=r"missing \(\d+\): conv1\.weight, bn1\.weight.*unexpected"
    ):
        Backbone("resnet18", str(path))


class Planted:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    model = classifier(head="v0", classes=2)
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
         "extra": Planted(marker)},
        path,
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=r"evil\.ckpt: refused to load.*would call getattr.*runs the code"
    ):
        Classifier.from_checkpoint(path)
    with pytest.raises(ValueError, match="refused to load"):
        Backbone("resnet18", str(path))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what the refusal prevented
    assert marker.exists()


def test_a_plain_checkpoint_loads_with_weights_only(tmp_path):
    model = classifier(head="v0", classes=2)
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    loaded = Classifier.from_checkpoint(path)
    assert loaded.class_names == ["0", "1"] and not loaded.training


@pytest.mark.parametrize(
    "read",
    [
        lambda p: Classifier.from_checkpoint(p),
        lambda p: load_checkpoint(p, "ckpt_path", ("state_dict", "hyper_parameters")),
    ],
)
def test_reading_a_checkpoint_names_the_setting_and_what_is_wrong(tmp_path, read):
    """hw1.predict/eval (from_checkpoint), hw1.average and init_from read checkpoints
    through one helper: a missing file, and a file of tensors that is no hw1 checkpoint,
    are errors that name the setting, not a KeyError."""
    with pytest.raises(UserFileNotFoundError, match=r"ckpt_path=.*nope\.ckpt: no such checkpoint"):
        read(tmp_path / "nope.ckpt")
    plain = tmp_path / "plain.pt"
    torch.save(resnet18().state_dict(), plain)
    with pytest.raises(UserValueError, match=r"ckpt_path=.*plain\.pt: not a checkpoint of hw1"):
        read(plain)
    saved = tmp_path / "model.ckpt"
    torch.save({"state_dict": classifier().state_dict(), "hyper_parameters": {}}, saved)
    assert set(load_checkpoint(saved, "ckpt_path")) == {"state_dict", "hyper_parameters"}
