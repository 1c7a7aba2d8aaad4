"""Transform presets, after torchvision's classification reference (``presets.py``).

Every pipeline works on PIL images and augments before it normalises: rotating or shifting
a normalised tensor fills with 0, which is not black once the mean is subtracted (one of the
original code's defects). The eval sizes come from the chosen weights' own ``transforms()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.models import WeightsEnum
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's classic evaluation ratio (resize 256, crop 224), used when no torchvision
# weights say otherwise: random init, or a local state-dict file.
DEFAULT_RESIZE_RATIO = 256 / 224


@dataclass(frozen=True)
class EvalSizes:
    crop: int
    resize: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: InterpolationMode = InterpolationMode.BILINEAR


def eval_sizes(image_size: int, weights: WeightsEnum | None = None) -> EvalSizes:
    """Eval crop = ``image_size``; the resize keeps the weights' resize/crop ratio
    (232/224 for IMAGENET1K_V2, 256/224 for V1)."""
    if weights is None:
        return EvalSizes(crop=image_size, resize=round(image_size * DEFAULT_RESIZE_RATIO))
    t = weights.transforms()
    ratio = t.resize_size[0] / t.crop_size[0]
    return EvalSizes(
        crop=image_size,
        resize=round(image_size * ratio),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation,
    )


def _to_normalised_tensor(sizes: EvalSizes) -> list[T.Transform]:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(sizes.mean, sizes.std)]


def train_preset(
    sizes: EvalSizes,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1),
    rotation: float = 10,
    translate: tuple[float, float] = (0.1, 0.1),
) -> T.Compose:
    """The report's training augmentation (spec §3), each part switchable by its number."""
    steps: list[T.Transform] = [
        T.RandomResizedCrop(sizes.crop, scale=tuple(scale), interpolation=sizes.interpolation)
    ]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    if any(jitter):
        b, c, s, h = jitter
        steps.append(T.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
    if rotation:
        steps.append(T.RandomRotation(rotation, interpolation=sizes.interpolation))
    if any(translate):
        steps.append(T.RandomAffine(degrees=0, translate=tuple(translate)))
    return T.Compose(steps + _to_normalised_tensor(sizes))


def eval_preset(sizes: EvalSizes) -> T.Compose:
    return T.Compose(
        [
            T.Resize(sizes.resize, interpolation=sizes.interpolation),
            T.CenterCrop(sizes.crop),
            *_to_normalised_tensor(sizes),
        ]
    )
