"""The fast train pipeline (``data.pipeline=fast``): ``train_preset``'s augmentation,
drawn from the image's header size before decoding, so that a JPEG is decoded only as
large as its crop needs and every geometric step is one warp; the colour jitter is left
to the device (``Jittered``).
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

from hw1 import colour_jitter
from hw1.jpeg import decode_scaled
from hw1.presets import EvalSpec, TrainAugment, policy_transforms


@dataclass(frozen=True)
class Draw:
    """One image's augmentation parameters, in the upright full-size image's pixels."""

    box: tuple[int, int, int, int]  # the RandomResizedCrop box: left, top, width, height
    flip: bool
    angle: float  # degrees, counter-clockwise, about the crop's centre
    shift: tuple[int, int]  # pixels of the output, after the rotation
    jitter_order: tuple[int, ...]  # 0 brightness, 1 contrast, 2 saturation, 3 hue
    jitter: tuple[float, float, float, float]  # the four factors (hue: a fraction of a turn)


class Uniforms:
    """Uniform [0, 1) numbers from torch's generator, drawn in one call per image: a
    torch call per parameter costs more than the rest of the drawing."""

    def __init__(self, n: int = 40) -> None:
        self.values = iter(torch.rand(n).tolist())

    def __call__(self, low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * next(self.values)

    def integer(self, n: int) -> int:
        """One of 0 .. n - 1, each as likely."""
        return min(int(self(0, n)), n - 1)


def crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio=(3 / 4, 4 / 3),
    uniform: Uniforms | None = None,
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box, drawn as torchvision draws it (ten tries, then the centre
    crop) but from the image's size alone, so it can be drawn before decoding."""
    uniform = uniform or Uniforms()
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * uniform(*scale)
        aspect = math.exp(uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = uniform.integer(height - h + 1)
            left = uniform.integer(width - w + 1)
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class Jittered(NamedTuple):
    """A fast-pipeline sample whose colour jitter is still to apply, or a batch of them
    (the DataLoader collates each field). The data module applies it, batched, on the
    device (``hw1.device_batches.Normalise``), where it costs next to nothing; on the
    worker's CPU it would cost a third of the pipeline. ``finish`` applies it at once, for
    the few callers that want the final image.

    ``image``: uint8 (..., 4, H, W), the warped RGB (black outside the crop) and how much
    of each pixel the crop covers, 0..255 (partial at its edges): the jitter keeps the
    fill black, and the crop's mean grey for contrast is taken over the crop alone, as
    the reference jitters before it rotates and shifts.
    ``colour``: float32 (..., 8), the jitter (``jitter_params``): the four steps' indices
    in the drawn order, then the brightness, contrast, saturation and hue factors.
    """

    image: torch.Tensor
    colour: torch.Tensor

    def rgb(self) -> torch.Tensor:
        """The jittered images as float RGB in 0..255, (..., 3, H, W)."""
        *batch, _, h, w = self.image.shape
        x = self.image.reshape(-1, 4, h, w).float()
        colour = self.colour.reshape(-1, 8)
        out = colour_jitter.jitter(
            x[:, :3], x[:, 3:] / 255, colour[:, :4].long(), colour[:, 4:].to(x.dtype)
        )
        return out.reshape(*batch, 3, h, w)


def finish(sample: torch.Tensor | Jittered) -> torch.Tensor:
    """A fast-pipeline sample as its final uint8 (C, H, W) image."""
    if isinstance(sample, Jittered):
        return sample.rgb().round_().to(torch.uint8)
    return sample


def jitter_params(draw: Draw) -> torch.Tensor:
    """``draw``'s colour jitter as ``Jittered.colour``: steps missing from its order come
    last, with the factors that change nothing."""
    order = [*draw.jitter_order, *(op for op in range(4) if op not in draw.jitter_order)]
    factors = [
        f if op in draw.jitter_order else colour_jitter.IDENTITY[op]
        for op, f in enumerate(draw.jitter)
    ]
    return torch.tensor([*order, *factors], dtype=torch.float32)


class FastTrainPreset:
    """``train_preset``'s augmentation for ``data.pipeline=fast``: the same
    parameter distribution, applied with one geometric resample in the DataLoader worker
    and the colour jitter, batched, on the device.

    The crop box is drawn from the image's size before decoding (``draw``), so a JPEG is
    decoded in draft mode at the smallest scale whose crop is still at least the output
    size (``decode_size``); the crop, resize, flip, rotation and shift are one affine warp
    of the cropped region. With a colour jitter the sample is ``Jittered``: the uint8 warp
    with a band saying where the crop covers it, and the jitter's parameters; the data module
    applies it and normalises, batched, on the device (``hw1.device_batches.Normalise``).
    Without one the sample is the uint8 (C, H, W) image, normalised there too.

    Filtering differs from the reference's antialiased resize: the draft decode (itself a
    box filter) leaves at most a 2x reduction to the warp, a region twice the output or
    more (a PNG, no draft) is first box-reduced by ``Image.reduce``, one smaller than the
    output enlarged bilinearly (torch's uint8 resize), and the warp samples nearest at
    twice the output size, then averages 2x2. Same-parameter outputs stay within a few
    grey levels of the reference's (tests/test_fast_pipeline.py).
    """

    def __init__(self, spec: EvalSpec, **augment: Any) -> None:
        """``augment``: ``TrainAugment``'s numbers."""
        a = TrainAugment(**augment)
        self.size = spec.crop
        self.scale, self.hflip = tuple(a.scale), a.hflip
        self.jitter, self.rotation, self.translate = tuple(a.jitter), a.rotation, tuple(a.translate)
        # The options beyond the report run on the uint8 output; the erased box is filled
        # with the mean colour, what the reference's 0 after normalisation is.
        mean = [round(255 * m) for m in spec.mean]
        erase = [T.RandomErasing(a.erasing, value=mean)] if a.erasing else []
        after = policy_transforms(a.policy) + erase
        self.after = T.Compose(after) if after else None

    def draw(self, width: int, height: int) -> Draw:
        """Parameters for an upright image of this size, drawn from torch's generator as
        torchvision draws them (seed_everything and DataLoader workers seed it)."""
        uniform = Uniforms()
        box = crop_box(width, height, self.scale, uniform=uniform)
        flip = self.hflip > 0 and uniform() < self.hflip
        angle = uniform(-self.rotation, self.rotation) if self.rotation else 0.0
        shift = tuple(
            round(uniform(-t * self.size, t * self.size)) if t else 0 for t in self.translate
        )
        b, c, s, h = self.jitter
        # The order of the four jitters: a uniformly random permutation, like randperm(4).
        keys = [uniform() for _ in range(4)]
        order = tuple(sorted(range(4), key=keys.__getitem__)) if any(self.jitter) else ()
        factors = (
            uniform(1 - b, 1 + b) if b else 1.0,
            uniform(1 - c, 1 + c) if c else 1.0,
            uniform(1 - s, 1 + s) if s else 1.0,
            uniform(-h, h) if h else 0.0,
        )
        return Draw(box, flip, angle, shift, order, factors)

    def decode_size(self, draw: Draw, width: int, height: int) -> tuple[int, int]:
        """The smallest decoded image size whose crop box still covers the output in both
        directions (PIL's ``draft`` picks the largest JPEG scale that is at least this)."""
        _, _, w, h = draw.box
        return (
            math.ceil(width * min(1.0, self.size / w)),
            math.ceil(height * min(1.0, self.size / h)),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """An already decoded RGB image (e.g. for ``hw1.preview``), augmented, uint8."""
        return finish(self.apply(image, self.draw(*image.size), image.size))

    def apply(
        self, image: Image.Image, draw: Draw, full_size: tuple[int, int]
    ) -> torch.Tensor | Jittered:
        """Augment ``image``, a decode of an upright ``full_size`` image, possibly
        reduced in draft mode; ``draw`` is in ``full_size`` pixels. With a colour jitter
        the result is ``Jittered``, the jitter left to the device; without one, or
        when a policy or erasing must see the final colours, a uint8 (C, H, W) image."""
        kx, ky = image.width / full_size[0], image.height / full_size[1]
        left, top, w, h = draw.box
        x0, y0 = left * kx, top * ky
        x1, y1 = min(image.width, (left + w) * kx), min(image.height, (top + h) * ky)
        # Only the crop box: outside it the rotation and the shift fill black, as the
        # reference's RandomRotation and RandomAffine do after the crop.
        bounds = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
        region = image.crop(bounds)
        # The warp below reduces by 1 to 2: a region of twice the output or more is first
        # box-reduced, one smaller than the output (a small crop) enlarged bilinearly.
        sx, sy = (x1 - x0) / self.size, (y1 - y0) / self.size
        factor = int(min(sx, sy))
        if factor >= 2:
            region = region.reduce(factor)
        elif min(sx, sy) < 1:
            region = _enlarge(region, max(1.0, 1 / sx), max(1.0, 1 / sy))
        if draw.jitter_order:
            # A fourth band of 255 that the warp fills with 0 like the RGB: after the 2x2
            # reduction it is how much of each pixel the crop covers (Jittered). RGBX, not
            # RGBA: PIL's reduce premultiplies RGBA, which costs 4x the reduction.
            region = region.convert("RGBX")
        rx, ry = region.width / (bounds[2] - bounds[0]), region.height / (bounds[3] - bounds[1])
        # Output pixel -> region pixel: undo the shift, the rotation, the flip, the resize.
        s = self.size
        c = s / 2
        turn = -math.radians(draw.angle)  # PIL's rotate, which the reference uses
        unshift = _affine(1, 0, -draw.shift[0], 0, 1, -draw.shift[1])
        unrotate = (
            _affine(1, 0, c, 0, 1, c)
            @ _affine(math.cos(turn), math.sin(turn), 0, -math.sin(turn), math.cos(turn), 0)
            @ _affine(1, 0, -c, 0, 1, -c)
        )
        unflip = _affine(-1, 0, s, 0, 1, 0) if draw.flip else np.eye(3)
        to_region = _affine(sx * rx, 0, (x0 - bounds[0]) * rx, 0, sy * ry, (y0 - bounds[1]) * ry)
        # Nearest-neighbour at twice the size, then 2x2 box averaging. PIL's bilinear affine
        # costs ~15x its nearest one; this costs ~4x and filters better than bilinear
        # sampling when reducing.
        inverse = to_region @ unflip @ unrotate @ unshift @ _affine(0.5, 0, 0, 0, 0.5, 0)
        out = region.transform(
            (2 * s, 2 * s), Image.AFFINE, tuple(inverse[:2].ravel()), Image.NEAREST
        ).reduce(2)
        out = _planar(out)
        # The reference shifts the rotated image inside its frame: what the rotation moved
        # out of the frame does not come back, the shift brings in black bands.
        for dim, t in ((2, draw.shift[0]), (1, draw.shift[1])):
            if t:
                out.narrow(dim, 0 if t > 0 else s + t, abs(t)).zero_()
        if draw.jitter_order:
            out = Jittered(out, jitter_params(draw))
            if self.after is not None:
                out = finish(out)
        return self.after(out) if self.after is not None else out


def _enlarge(region: Image.Image, kx: float, ky: float) -> Image.Image:
    """``region`` enlarged bilinearly by at least ``kx``, ``ky``: torch's uint8 resize, a
    sixth of the time of PIL's bilinear affine at the output size (PIL's own resize is no
    faster)."""
    size = [math.ceil(region.height * ky), math.ceil(region.width * kx)]
    return F.to_pil_image(F.resize(F.pil_to_tensor(region), size, antialias=False))


def _planar(image: Image.Image) -> torch.Tensor:
    """``image`` as a contiguous uint8 (C, H, W) tensor, packed band by band by PIL.
    ``pil_to_tensor`` gives a (C, H, W) view of an (H, W, C) array, which the DataLoader's
    collate then transposes: that costs three times this."""
    bands = image.getbands()
    data = bytearray().join(image.tobytes("raw", band) for band in bands)
    return torch.frombuffer(data, dtype=torch.uint8).view(len(bands), image.height, image.width)


def _affine(a: float, b: float, c: float, d: float, e: float, f: float) -> np.ndarray:
    return np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])


class DraftDecoder:
    """The loader of the fast train pipeline (``ClassFolders(loader=...)``): draws the
    augmentation from the file's header size, decodes a JPEG only as large as its crop
    needs, then augments. A class, not a closure, so DataLoader workers can pickle it."""

    def __init__(self, preset: FastTrainPreset) -> None:
        self.preset = preset

    def __call__(self, path: str | os.PathLike) -> torch.Tensor | Jittered:
        return self.decode(path, self.preset.draw)

    def decode(
        self, path: str | os.PathLike, choose: Callable[[int, int], Draw]
    ) -> torch.Tensor | Jittered:
        """``path`` augmented with the parameters ``choose`` gives for its upright size:
        the preset's random draw, or given ones (``hw1.parity``)."""
        drawn = {}

        def need(size: tuple[int, int]) -> tuple[int, int]:
            drawn["size"], drawn["draw"] = size, choose(*size)
            return self.preset.decode_size(drawn["draw"], *size)

        image = decode_scaled(path, need)
        return self.preset.apply(image, drawn["draw"], drawn["size"])
