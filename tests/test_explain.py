from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hw1.explain import explain
from hw1.inference.explain import grad_cam
from hw1.models.classifier import Classifier
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.presets import EvalSpec
from hw1.utils.config import compose_config

pytest.importorskip("captum")

SIZE, PATCH = 64, 20
SPEC = EvalSpec(crop=SIZE, resize=SIZE)
# The four quadrants' top-left corners, where a class's coloured square may sit.
CORNERS = [(6, 6), (6, 38), (38, 6), (38, 38)]


def signal_image(label: int, corner: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Grey noise with one square of the class's colour (red or blue) at ``corner``: the
    class is only visible there."""
    image = rng.integers(90, 166, (SIZE, SIZE, 3)).astype(np.uint8)
    r, c = corner
    image[r : r + PATCH, c : c + PATCH] = (230, 30, 30) if label == 0 else (30, 30, 230)
    return image


def tiny_classifier(names=("red", "blue")) -> Classifier:
    torch.manual_seed(0)
    return Classifier(
        model={"_target_": "hw1.models.backbone.Backbone", "arch": "resnet18"},
        head={"_target_": "hw1.models.backbone.make_head", "name": "v0", "dropout": 0.0},
        optim={},
        sched={},
        class_names=list(names),
        preprocess=SPEC.to_dict(),
    ).eval()


def colour_detector() -> Classifier:
    """A Classifier whose decision is made where the square is, built rather than trained
    (training one that localises takes minutes on a CPU): the stem measures redness and
    blueness per 4 x 4 block, the stages pass them on, ``layer4`` keeps their positive part
    (the maps Grad-CAM reads), and the head turns their means into the two classes' logits."""
    model = tiny_classifier()
    net = model.backbone.net
    stem = torch.nn.Conv2d(3, 2, kernel_size=4, stride=4)
    with torch.no_grad():
        stem.weight.zero_()
        stem.bias.fill_(-1.5)  # grey noise is neither: about 0.4 at most
        stem.weight[0, 0], stem.weight[0, 2] = 1 / 16, -1 / 16  # red minus blue
        stem.weight[1, 2], stem.weight[1, 0] = 1 / 16, -1 / 16  # blue minus red
    net.conv1 = stem
    net.bn1 = net.maxpool = net.layer1 = net.layer2 = net.layer3 = torch.nn.Identity()
    net.layer4 = torch.nn.ReLU()
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2) * 20)
        head.bias.zero_()
    model.head = head
    return model.eval()


def test_grad_cam_is_high_where_the_class_signal_sits():
    model = colour_detector()
    finish = FinishOnDevice(SPEC.mean, SPEC.std)
    rng = np.random.default_rng(1)
    images = [signal_image(y, corner, rng) for y in (0, 1) for corner in CORNERS]
    x = finish(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
    heat, probs = grad_cam(model, x)
    assert heat.shape == (8, SIZE, SIZE) and heat.min() >= 0 and heat.max() <= 1
    assert (probs.argmax(dim=1) == torch.tensor([0] * 4 + [1] * 4)).all()
    for k, (r, c) in enumerate(CORNERS * 2):
        inside = heat[k, r : r + PATCH, c : c + PATCH].mean()
        mask = torch.ones(SIZE, SIZE, dtype=torch.bool)
        mask[r - 4 : r + PATCH + 4, c - 4 : c + PATCH + 4] = False  # beyond the blur
        assert inside > 0.5 > 5 * heat[k][mask].mean(), (k, inside, heat[k][mask].mean())


def test_explain_writes_a_grid_per_image_and_lists_what_it_skipped(tmp_path):
    model = tiny_classifier()
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    inputs = tmp_path / "inputs"
    (inputs / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(signal_image(0, CORNERS[0], rng)).save(inputs / "red.png")
    Image.fromarray(signal_image(1, CORNERS[3], rng)).save(inputs / "more" / "blue.jpg")
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "fake.jpg").write_bytes(b"\xff\xd8\xff")
    out = tmp_path / "out"
    cfg = compose_config(
        [f"ckpt_path={ckpt}", f"inputs={inputs}", f"output={out}", "tile=96"],
        config_name="explain",
    )
    summary = explain(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["blue_gradcam.png", "red_gradcam.png"]
    assert sorted(s.split(":")[0] for s in summary["skipped"]) == [
        str(inputs / "fake.jpg"),
        str(inputs / "notes.txt"),
    ]
    with Image.open(out / "red_gradcam.png") as grid:
        assert grid.width > 3 * 96 and grid.height > 96


def test_explain_without_captum_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "captum", None)  # import captum now fails
    model = tiny_classifier()
    with pytest.raises(RuntimeError, match=r'pip install "hw1\[explain\]"'):
        grad_cam(model, torch.zeros(1, 3, SIZE, SIZE))


def test_a_one_cell_last_stage_is_named_as_a_flat_map(caplog):
    model = tiny_classifier()
    grad_cam(model, torch.zeros(1, 3, 32, 32))  # resnet18's layer4 is 1 x 1 at 32 px
    assert "the heat map is flat" in caplog.text
    caplog.clear()
    grad_cam(model, torch.zeros(1, 3, SIZE, SIZE))  # 2 x 2 at 64 px
    assert "flat" not in caplog.text
