from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.models import ResNet50_Weights
from torchvision.transforms import v2 as T

from hw1.transforms.fast_pipeline import FastTrainPreset
from hw1.transforms.presets import IMAGENET_MEAN, POLICIES, eval_preset, eval_spec, train_preset


@pytest.mark.parametrize(
    ("weights", "size", "resize"),
    [
        (ResNet50_Weights.IMAGENET1K_V2, 224, 232),
        (ResNet50_Weights.IMAGENET1K_V1, 224, 256),
        (None, 224, 256),
        (ResNet50_Weights.IMAGENET1K_V2, 64, 66),
        (ResNet50_Weights.IMAGENET1K_V1, 32, 37),
    ],
)
def test_eval_resize_keeps_the_weights_ratio(weights, size, resize):
    spec = eval_spec(size, weights)
    assert (spec.crop, spec.resize) == (size, resize)
    assert spec.mean == IMAGENET_MEAN


def test_train_preset_is_the_reports_augmentation_then_normalize():
    steps = train_preset(eval_spec(224)).transforms
    kinds = [type(t) for t in steps]
    assert kinds == [
        T.RandomResizedCrop, T.RandomHorizontalFlip, T.ColorJitter, T.RandomRotation,
        T.RandomAffine, T.ToImage, T.ToDtype, T.Normalize,
    ]  # fmt: skip
    jitter = steps[2]
    assert (jitter.brightness, jitter.hue) == ((0.8, 1.2), (-0.1, 0.1))
    assert steps[3].degrees == [-10.0, 10.0] and steps[4].translate == (0.1, 0.1)


def test_zero_switches_an_augmentation_off():
    steps = train_preset(eval_spec(32), hflip=0, jitter=(0, 0, 0, 0), rotation=0, translate=(0, 0))
    assert [type(t) for t in steps.transforms][:2] == [T.RandomResizedCrop, T.ToImage]


def test_rotation_fills_black_before_normalising():
    """Rotating a normalised tensor fills with 0, which is not black: the black fill must
    come out of Normalize as the normalised value of black."""
    spec = eval_spec(32)
    preset = train_preset(
        spec, scale=(1.0, 1.0), hflip=0, jitter=(0, 0, 0, 0), rotation=(45, 45), translate=(0, 0)
    )
    out = preset(Image.new("RGB", (32, 32), (255, 255, 255)))
    black = (torch.zeros(3) - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert torch.allclose(out[:, 0, 0], black, atol=1e-5)  # a corner rotated out of the image


def test_eval_preset_resizes_then_centre_crops():
    out = eval_preset(eval_spec(32))(Image.new("RGB", (80, 40), (10, 20, 30)))
    assert out.shape == (3, 32, 32)


@pytest.mark.parametrize("policy", ["trivial", "randaugment"])
def test_an_augmentation_policy_and_erasing_join_both_train_pipelines(policy):
    spec = eval_spec(32)
    reference = train_preset(spec, policy=policy, erasing=0.25)
    kinds = [type(t) for t in reference.transforms]
    assert kinds.index(POLICIES[policy]) < kinds.index(T.Normalize) < kinds.index(T.RandomErasing)
    fast = FastTrainPreset(spec, policy=policy, erasing=0.25)
    assert [type(t) for t in fast.after.transforms] == [POLICIES[policy], T.RandomErasing]
    out = fast(Image.new("RGB", (48, 40), "red"))
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="data.augment.policy=autoaugment"):
        train_preset(spec, policy="autoaugment")


def test_with_the_options_off_the_pipelines_are_the_reports():
    spec = eval_spec(32)
    assert repr(train_preset(spec, policy=None, erasing=0.0)) == repr(train_preset(spec))
    kinds = [type(t) for t in train_preset(spec).transforms]
    assert not {T.TrivialAugmentWide, T.RandAugment, T.RandomErasing} & set(kinds)
    assert FastTrainPreset(spec).after is None
