"""The fast train pipeline (``data.pipeline=fast``): ``train_preset``'s augmentation,
drawn from the image's header size before decoding, so that a JPEG is decoded only as
large as its crop needs; the worker crops, resizes and flips, and the steps after those
(colour jitter, rotation, shift) are left to the device (``Deferred``), or, where the
device is the CPU, done in the worker as the reference does them
(``FastTrainPreset.finish_as_reference``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from hw1.transforms import colour_jitter, rotation
from hw1.transforms.decode import decode_scaled
from hw1.transforms.presets import EvalSpec, TrainAugment, policy_transforms


@dataclass(frozen=True)
class Draw:
    """One image's augmentation parameters, in the upright full-size image's pixels."""

    box: tuple[int, int, int, int]  # the RandomResizedCrop box: left, top, width, height
    flip: bool
    angle: float  # degrees, counter-clockwise, about the crop's centre
    shift: tuple[int, int]  # pixels of the output, after the rotation
    jitter_order: tuple[int, ...]  # 0 brightness, 1 contrast, 2 saturation, 3 hue
    jitter: tuple[float, float, float, float]  # the four factors (hue: a fraction of a turn)


class _Draws:
    """Numbers from torch's generator, drawn with the calls torchvision's transforms make,
    into one reused tensor (half the cost of a new one per number)."""

    def __init__(self) -> None:
        self.buffer = torch.empty(1)

    def uniform(self, low: float, high: float) -> float:
        return self.buffer.uniform_(low, high).item()

    def exp_uniform(self, low: float, high: float) -> float:
        """exp of a uniform number, in float32 as ``torch.exp`` of the tensor."""
        return self.buffer.uniform_(low, high).exp_().item()


# RandomResizedCrop's default ratio and its logarithm, as torchvision computes it (float32).
RATIO = (3 / 4, 4 / 3)


_LOG_RATIO = tuple(torch.log(torch.tensor(RATIO)).tolist())


def crop_box(
    width: int, height: int, scale: tuple[float, float], draws: _Draws
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box, drawn with the very calls torchvision's ``make_params``
    makes (ten tries, then the centre crop), but from the image's size alone, so that it
    can be drawn before decoding."""
    area = width * height
    for _ in range(10):
        target = area * draws.uniform(*scale)
        aspect = draws.exp_uniform(*_LOG_RATIO)
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,)).item()
            left = torch.randint(0, width - w + 1, size=(1,)).item()
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(RATIO):
        w, h = width, round(width / min(RATIO))
    elif in_ratio > max(RATIO):
        w, h = round(height * max(RATIO)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class Deferred(NamedTuple):
    """A fast-pipeline sample whose last steps are still to apply, or a batch of them (the
    DataLoader collates each field). The data module applies them, batched, on the device
    (``hw1.transforms.device.FinishOnDevice``), where they cost next to nothing; on the worker's
    CPU the colour jitter alone would cost more than the rest of the pipeline. ``finish``
    applies them at once, for the few callers that want the final image.

    ``image``: uint8 (..., S, S, 3), the crop resized and flipped, what the reference's
    RandomResizedCrop and RandomHorizontalFlip give; channels last, as decoded and resized,
    so that the DataLoader collates it without a transpose (that would cost a third as
    much as the resize).
    ``steps``: float32 (..., 11), what the reference does next (``deferred_steps``): the
    colour jitter's four step indices in the drawn order, its brightness, contrast,
    saturation and hue factors, then the rotation's angle (degrees) and the shift (x, y).
    """

    image: torch.Tensor
    steps: torch.Tensor

    def render(self) -> torch.Tensor:
        """The finished images as floats holding whole levels 0..255, (..., 3, S, S): the
        jitter, then the rotation and the shift, the reference's order."""
        *batch, h, w, c = self.image.shape
        # Contiguous (N, C, H, W), the reference's layout: a channels-last input takes
        # other convolution kernels on the CPU, whose rounding alone moves a run's accuracy.
        x = self.image.reshape(-1, h, w, c).permute(0, 3, 1, 2)
        x = x.to(torch.float32, memory_format=torch.contiguous_format)  # one copy, not two
        steps = self.steps.reshape(-1, STEPS).float()
        x = colour_jitter.jitter(x, steps[:, :4].long(), steps[:, 4:8])
        x = rotation.rotate_and_shift(x, steps[:, 8], steps[:, 9:])
        return x.reshape(*batch, c, h, w)


STEPS = 11  # the length of Deferred.steps


# ColorJitter's kernels on PIL images, by the index Draw.jitter_order uses: the ones the
# reference's ColorJitter calls.
PIL_JITTERS: tuple[Callable[[Image.Image, float], Image.Image], ...] = (
    F.adjust_brightness,
    F.adjust_contrast,
    F.adjust_saturation,
    F.adjust_hue,
)


DECODE_MARGIN = 2  # a reduced-scale decode keeps the crop at least this many times the output


def finish(sample: torch.Tensor | Deferred) -> torch.Tensor:
    """A fast-pipeline sample as its final uint8 (C, H, W) image."""
    if isinstance(sample, Deferred):
        return sample.render().to(torch.uint8)
    return sample


def deferred_steps(draw: Draw) -> torch.Tensor:
    """``draw``'s steps after the crop and the flip, as ``Deferred.steps``: jitter steps
    missing from its order come last, with the factors that change nothing."""
    order = [*draw.jitter_order, *(op for op in range(4) if op not in draw.jitter_order)]
    factors = [
        f if op in draw.jitter_order else colour_jitter.IDENTITY[op]
        for op, f in enumerate(draw.jitter)
    ]
    return torch.tensor([*order, *factors, draw.angle, *draw.shift], dtype=torch.float32)


class FastTrainPreset:
    """``train_preset``'s augmentation for ``data.pipeline=fast``: the same parameter
    distribution and the same steps in the same order, split where it is cheapest.

    The crop box is drawn from the image's size before decoding (``draw``), so a JPEG is
    decoded at the smallest scale whose crop is still at least twice the output size
    (``decode_size``). The DataLoader worker then crops, resizes (torch's uint8 resize,
    antialiased as PIL's, which the reference uses, within a level) and flips. What the
    reference does after that, the colour jitter, the rotation and the shift, travels as
    ``Deferred`` and runs batched on the device (``hw1.transforms.device.FinishOnDevice``), which
    skips the steps a sample does not take; where that device is the CPU, the worker does
    them itself, with the reference's own PIL kernels (``finish_as_reference``).

    Same-parameter outputs equal the reference's but for the resize's rounding, the
    reduced-scale decode and float rounding on the device (``python -m hw1.parity``).
    """

    def __init__(self, spec: EvalSpec, **augment: Any) -> None:
        """``augment``: ``TrainAugment``'s numbers."""
        a = TrainAugment(**augment)
        self.size, self.interpolation = spec.crop, spec.interpolation
        self.resample = Image.Resampling[spec.interpolation.name]
        self.scale, self.hflip = tuple(a.scale), a.hflip
        self.hflip32 = torch.tensor(a.hflip).item()
        self.jitter, self.rotation, self.translate = tuple(a.jitter), a.rotation, tuple(a.translate)
        # The options beyond the report run on the uint8 output; the erased box is filled
        # with the mean colour, what the reference's 0 after normalisation is.
        mean = [round(255 * m) for m in spec.mean]
        erase = [T.RandomErasing(a.erasing, value=mean)] if a.erasing else []
        after = policy_transforms(a.policy) + erase
        self.after = T.Compose(after) if after else None

    def draw(self, width: int, height: int) -> Draw:
        """Parameters for an upright image of this size, drawn from torch's generator with
        the calls, in the order, that the reference's transforms make (``train_preset``):
        under one seed the two pipelines draw the same parameters, so a seed pairs them
        (seed_everything and DataLoader workers seed the generator)."""
        draws = _Draws()
        box = crop_box(width, height, self.scale, draws)
        # torch.rand(1) < p compares in float32: p rounded to float32 gives the same answer.
        flip = self.hflip > 0 and torch.rand(1).item() < self.hflip32
        order, factors = (), colour_jitter.IDENTITY
        if any(self.jitter):
            order = tuple(torch.randperm(4).tolist())
            # ColorJitter's ranges; it draws nothing for a part that is 0.
            b, c, s, h = self.jitter
            factors = (
                draws.uniform(max(0.0, 1 - b), 1 + b) if b else 1.0,
                draws.uniform(max(0.0, 1 - c), 1 + c) if c else 1.0,
                draws.uniform(max(0.0, 1 - s), 1 + s) if s else 1.0,
                draws.uniform(-h, h) if h else 0.0,
            )
        angle = draws.uniform(-self.rotation, self.rotation) if self.rotation else 0.0
        shift = (0, 0)
        if any(self.translate):
            draws.uniform(0.0, 0.0)  # RandomAffine(degrees=0) draws its angle all the same
            tx, ty = (round(draws.uniform(-t * self.size, t * self.size)) for t in self.translate)
            shift = (tx, ty)
        return Draw(box, flip, angle, shift, order, factors)

    def decode_size(self, draw: Draw, width: int, height: int) -> tuple[int, int]:
        """The smallest decoded image size whose crop box still covers twice the output
        in both directions (PIL's ``draft`` picks the largest JPEG scale that is at least
        this): a reduced decode is followed by at least a 2x antialiased reduction, as the
        reference's resize is (``python -m hw1.parity``: 1.9 levels from the reference at
        1x, 1.15 at 2x and 1.5x)."""
        _, _, w, h = draw.box
        return (
            math.ceil(width * min(1.0, DECODE_MARGIN * self.size / w)),
            math.ceil(height * min(1.0, DECODE_MARGIN * self.size / h)),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """An already decoded RGB image (e.g. for ``hw1.preview``), augmented, uint8."""
        return finish(self.apply(np.array(image), self.draw(*image.size), image.size))

    def apply(
        self,
        pixels: np.ndarray,
        draw: Draw,
        full_size: tuple[int, int],
        finish_here: bool = False,
    ) -> torch.Tensor | Deferred:
        """Augment ``pixels``, uint8 (H, W, 3), a decode of an upright ``full_size``
        image, possibly at a reduced scale; ``draw`` is in ``full_size`` pixels: a
        ``Deferred`` sample, or, with ``finish_here`` or when a policy or erasing must see
        the final image, that image, uint8 (C, H, W)."""
        height, width = pixels.shape[:2]
        left, top, w, h = draw.box
        if (width, height) == full_size:
            # Copied (H, W, C): torch's uint8 antialiased resize has a fast path for that
            # layout (channels last) when contiguous, 1.5x the speed of a view of the crop.
            crop = np.ascontiguousarray(pixels[top : top + h, left : left + w])
            region = torch.from_numpy(crop).permute(2, 0, 1)
            out = F.resize(region[None], [self.size] * 2, self.interpolation, antialias=True)[0]
        else:
            # Decoded at a reduced scale, the box falls between pixels: PIL's resize takes
            # such a box (torch's takes whole pixels, half a pixel off would cost 3 levels).
            kx, ky = width / full_size[0], height / full_size[1]
            box = (left * kx, top * ky, (left + w) * kx, (top + h) * ky)
            image = Image.fromarray(pixels).resize((self.size,) * 2, self.resample, box)
            out = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        if draw.flip:
            out = out.flip(-1)  # keeps the (H, W, C) layout, so the next line copies nothing
        image = out.permute(1, 2, 0).contiguous()
        if finish_here:
            sample = self.finish_as_reference(image, draw)
        else:
            sample = Deferred(image, deferred_steps(draw))
        return self.after(finish(sample)) if self.after is not None else sample

    def finish_as_reference(self, image: torch.Tensor, draw: Draw) -> torch.Tensor:
        """What ``Deferred`` leaves to the device, done at once as the reference does it:
        ``image``, uint8 (S, S, 3), the resized and flipped crop, through the PIL kernels of
        the reference's ColorJitter (the parts it jitters, in the drawn order),
        RandomRotation and RandomAffine shift, with ``draw``'s parameters; contiguous uint8
        (3, S, S) out, the layout of a rendered ``Deferred``.

        For a run whose device is the CPU (``FolderDataModule``'s ``deferred``): there PIL's
        integer kernels cost less than the batched float steps, and the loader workers run
        them beside the training step instead of between steps. The output is the
        reference's for this crop, within a level of the device's at a few pixels
        (``tests/test_fast_pipeline.py``)."""
        x = Image.fromarray(image.numpy())
        for op in draw.jitter_order:
            if self.jitter[op]:  # ColorJitter skips the parts whose range is 0
                x = PIL_JITTERS[op](x, draw.jitter[op])
        if self.rotation:
            x = F.rotate(x, draw.angle, interpolation=self.interpolation)
        if any(self.translate):
            x = F.affine(x, angle=0.0, translate=list(draw.shift), scale=1.0, shear=[0.0, 0.0])
        return torch.from_numpy(np.array(x)).permute(2, 0, 1).contiguous()


class DraftDecoder:
    """The loader of the fast train pipeline (``ClassFolders(loader=...)``): draws the
    augmentation from the file's header size, decodes a JPEG only as large as its crop
    needs, then augments; ``finish_here``: to the final image
    (``FastTrainPreset.finish_as_reference``), else to a ``Deferred`` sample. A class, not
    a closure, so DataLoader workers can pickle it."""

    def __init__(self, preset: FastTrainPreset, finish_here: bool = False) -> None:
        self.preset, self.finish_here = preset, finish_here

    def __call__(self, path: str | os.PathLike) -> torch.Tensor | Deferred:
        return self.decode(path, self.preset.draw)

    def decode(
        self, path: str | os.PathLike, choose: Callable[[int, int], Draw]
    ) -> torch.Tensor | Deferred:
        """``path`` augmented with the parameters ``choose`` gives for its upright size:
        the preset's random draw, or given ones (``hw1.parity``)."""
        drawn = {}

        def need(size: tuple[int, int]) -> tuple[int, int]:
            drawn["size"], drawn["draw"] = size, choose(*size)
            return self.preset.decode_size(drawn["draw"], *size)

        pixels = decode_scaled(path, need)
        return self.preset.apply(pixels, drawn["draw"], drawn["size"], self.finish_here)
