"""Transform presets, after torchvision's classification reference (``presets.py``): a
train and an eval preset built from numbers, and the test-time views.

Every preset works on PIL images and augments before it normalises: rotating or shifting a
normalised tensor fills with 0, which is not black once the mean is subtracted. The eval
spec (sizes, interpolation, normalisation) comes from the chosen weights' ``transforms()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torchvision.models import WeightsEnum
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from hw1.utils.errors import UserValueError

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


# torchvision's classic evaluation ratio (resize 256, crop 224), used when no torchvision
# weights say otherwise: random init, or a local state-dict file.
DEFAULT_RESIZE_RATIO = 256 / 224


@dataclass(frozen=True)
class EvalSpec:
    """How images become a model's inputs at evaluation: the resize and centre crop, the
    interpolation and the normalisation. A checkpoint keeps it as ``preprocess``."""

    crop: int
    resize: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: InterpolationMode = InterpolationMode.BILINEAR

    def to_dict(self) -> dict[str, Any]:
        """Plain values, to travel in a checkpoint's hyper-parameters."""
        return {**asdict(self), "interpolation": self.interpolation.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSpec:
        return cls(
            crop=d["crop"],
            resize=d["resize"],
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=InterpolationMode(d["interpolation"]),
        )


def eval_spec(image_size: int, weights: WeightsEnum | None = None) -> EvalSpec:
    """Eval crop = ``image_size``; the resize keeps the weights' resize/crop ratio
    (232/224 for IMAGENET1K_V2, 256/224 for V1)."""
    if weights is None:
        return EvalSpec(crop=image_size, resize=round(image_size * DEFAULT_RESIZE_RATIO))
    t = weights.transforms()
    ratio = t.resize_size[0] / t.crop_size[0]
    return EvalSpec(
        crop=image_size,
        resize=round(image_size * ratio),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation,
    )


def _to_normalised_tensor(spec: EvalSpec) -> list[T.Transform]:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(spec.mean, spec.std)]


@dataclass(frozen=True)
class TrainAugment:
    """The report's training augmentation as numbers (conf/data's ``augment``); a 0
    switches a part off. ``policy`` and ``erasing`` go beyond the report (off there)."""

    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop
    hflip: float = 0.5  # RandomHorizontalFlip
    jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1)  # ColorJitter b, c, s, h
    rotation: float = 10  # RandomRotation degrees
    translate: tuple[float, float] = (0.1, 0.1)  # RandomAffine translate
    policy: str | None = None  # trivial (TrivialAugmentWide) or randaugment
    erasing: float = 0.0  # RandomErasing probability


def train_preset(spec: EvalSpec, **augment: Any) -> T.Compose:
    """The report's training augmentation (``TrainAugment``): RandomResizedCrop, horizontal
    flip, ColorJitter, RandomRotation, a RandomAffine shift, then normalisation; optionally
    an automatic augmentation policy and RandomErasing."""
    a = TrainAugment(**augment)
    steps: list[T.Transform] = [
        T.RandomResizedCrop(spec.crop, scale=tuple(a.scale), interpolation=spec.interpolation)
    ]
    if a.hflip > 0:
        steps.append(T.RandomHorizontalFlip(a.hflip))
    if any(a.jitter):
        b, c, s, h = a.jitter
        steps.append(T.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
    if a.rotation:
        steps.append(T.RandomRotation(a.rotation, interpolation=spec.interpolation))
    if any(a.translate):
        steps.append(T.RandomAffine(degrees=0, translate=tuple(a.translate)))
    steps += policy_transforms(a.policy) + _to_normalised_tensor(spec)
    if a.erasing:
        # After normalisation, as torchvision's reference: the erased box is the mean colour.
        steps.append(T.RandomErasing(a.erasing, value=0))
    return T.Compose(steps)


POLICIES = {"trivial": T.TrivialAugmentWide, "randaugment": T.RandAugment}


def policy_transforms(policy: str | None) -> list[T.Transform]:
    """``augment.policy``: null, ``trivial`` (TrivialAugmentWide) or ``randaugment``."""
    if policy is None:
        return []
    if policy not in POLICIES:
        raise UserValueError(f"data.augment.policy={policy}: use null, {', '.join(POLICIES)}")
    return [POLICIES[policy]()]


def _resize_crop(spec: EvalSpec) -> list[T.Transform]:
    return [T.Resize(spec.resize, interpolation=spec.interpolation), T.CenterCrop(spec.crop)]


def eval_preset(spec: EvalSpec) -> T.Compose:
    """The eval view as a uint8 (C, H, W) tensor: a quarter of float32's bytes through the
    loader and to the device, where the data module normalises it
    (``hw1.transforms.device.FinishOnDevice``)."""
    return T.Compose([*_resize_crop(spec), T.PILToTensor()])


def eval_transform(spec: EvalSpec) -> T.Compose:
    """The eval view as the model takes it, a normalised float (C, H, W) tensor: the eval
    preset and the normalisation the data module does on the device, in one transform
    (``hw1.load_classifier``'s ``transform``, for programs that batch images themselves)."""
    return T.Compose([*_resize_crop(spec), *_to_normalised_tensor(spec)])


class ViewStack:
    """The test-time views of one image as one uint8 (views, C, H, W) tensor, so a batch of
    images and all their views goes through the model in a single call; the data module
    normalises them on the device (``hw1.transforms.device.FinishOnDevice``), as it does the
    eval view.

    ``tta="report"``: the report's four views: the plain eval view, its
    horizontal flip, a RandomRotation(10) of it, and a RandomResizedCrop(scale=(0.8, 1.0))
    of the image. ``tta="none"``: the plain eval view alone.

    The flip and the rotation reuse the plain view's resize and crop: one resize of the
    full image instead of three. The random views
    draw from a generator seeded by (seed, image index): the same seed gives the same views
    whatever the batch size, worker count or order.
    """

    REPORT_VIEWS = ("plain", "flip", "rotate", "crop")  # the order __call__ stacks them in

    def __init__(self, spec: EvalSpec, tta: str = "report", seed: int = 0) -> None:
        if tta not in ("report", "none"):
            raise UserValueError(f"tta={tta}: use report or none")
        self.tta, self.seed, self.spec = tta, seed, spec
        self.plain = T.Compose([*_resize_crop(spec), T.PILToTensor()])
        self.rotate = T.RandomRotation(10, interpolation=spec.interpolation)
        self.crop = T.Compose(
            [
                T.RandomResizedCrop(spec.crop, scale=(0.8, 1.0), interpolation=spec.interpolation),
                T.PILToTensor(),
            ]
        )

    def __call__(self, image, index: int) -> torch.Tensor:
        plain = self.plain(image)
        if self.tta == "none":
            views = plain[None]
        else:
            # torchvision's random transforms draw from torch's global generator; fork it
            # so the seeding stays local to this image.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + index)
                views = torch.stack([plain, plain.flip(-1), self.rotate(plain), self.crop(image)])
        return views
