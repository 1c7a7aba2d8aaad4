from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model import classifier
from torchvision.models import ResNet18_Weights, resnet18

from hw1.models.backbone import Backbone
from hw1.models.classifier import Classifier
from hw1.utils.errors import UserFileNotFoundError, UserValueError
from hw1.utils.weights import load_checkpoint, resolve_weights, safe_load, unsafe_global


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


class SystemCall:
    """Pickles as a call to os.system: what a malicious checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("true",))


def damaged_files(tmp_path: Path) -> dict[str, Path]:
    """A good checkpoint and the ways one gets damaged: empty, cut short, text, random."""
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": classifier(head="v0", classes=2).state_dict()}, good)
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "headless": data[:5000],  # torch's zip reader: OSError EINVAL, not RuntimeError
        "text": b"hello, this is not a checkpoint\n",
        "random": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    }
    for name, content in files.items():
        (tmp_path / f"{name}.ckpt").write_bytes(content)
    return {name: tmp_path / f"{name}.ckpt" for name in files}


@pytest.mark.parametrize("kind", ["empty", "truncated", "headless", "text", "random"])
def test_a_damaged_checkpoint_is_named_as_such_in_every_reader(tmp_path, kind):
    """R4: torch raises EOFError, RuntimeError, KeyError or UnpicklingError for these; every
    reader (predict/eval's from_checkpoint, average and init_from's load_checkpoint, the
    backbone's model.weights=, Lightning's resume through AtomicCheckpointIO) says the file
    is not a readable checkpoint, and never that it holds code."""
    from hw1.training.checkpoint_io import AtomicCheckpointIO

    path = damaged_files(tmp_path)[kind]
    readers = [
        lambda: safe_load(path),
        lambda: Classifier.from_checkpoint(path),
        lambda: load_checkpoint(path, "init_from"),
        lambda: Backbone("resnet18", str(path)),
        lambda: AtomicCheckpointIO().load_checkpoint(path, weights_only=True),
    ]
    for read in readers:
        with pytest.raises(UserValueError) as error:
            read()
        message = str(error.value)
        assert f"{path}: not a readable checkpoint" in message
        assert "empty (0 bytes)" in message if kind == "empty" else "bytes" in message
        assert "weights_only" not in message and "holds code" not in message


def test_a_checkpoint_that_calls_a_function_names_it_and_gives_no_unsafe_advice(tmp_path):
    """R5: torch 2.7+ words its refusal "Trying to load unsupported GLOBAL posix.system";
    the refusal names that global, and does not pass on torch's advice to load the file
    with weights_only=False."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": SystemCall()}, path)
    with pytest.raises(UserValueError) as error:
        safe_load(path)
    message = str(error.value)
    assert re.search(
        r"evil\.ckpt: refused to load: it holds code.*would call posix\.system", message
    )
    assert "weights_only" not in message and "not a readable" not in message


@pytest.mark.parametrize(
    "wording",
    [
        "Unsupported global: GLOBAL posix.system was not an allowed global",
        "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.",
    ],
)
def test_the_refused_global_is_found_in_each_of_torchs_wordings(wording):
    assert unsafe_global(f"Weights only load failed.\n\n{wording}\n") == "posix.system"
    assert unsafe_global("WeightsUnpickler error: Unsupported operand 80") is None
