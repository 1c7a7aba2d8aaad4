"""The fast pipeline's batched colour jitter (hw1.transforms.colour_jitter) against torchvision's
ColorJitter steps on PIL images, which the reference pipeline takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from hw1.transforms import colour_jitter

_PIL_STEPS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


def _one_step(pixels: np.ndarray, op: int, factor: float) -> torch.Tensor:
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    order = torch.tensor([[op, *(o for o in range(4) if o != op)]])
    factors = torch.tensor([colour_jitter.IDENTITY], dtype=torch.float32)
    factors[0, op] = factor
    return colour_jitter.jitter(x, order, factors)[0]


STEPS_OF_PIL_BLEND = [colour_jitter.BRIGHTNESS, colour_jitter.CONTRAST, colour_jitter.SATURATION]


@pytest.mark.parametrize("op", STEPS_OF_PIL_BLEND)
@pytest.mark.parametrize("factor", [0.8, 1.17])
def test_brightness_contrast_and_saturation_equal_pils_to_the_level(op, factor):
    """Random pixels, where every rounding shows: PIL's fixed-point grey, its truncating
    blend and clipping, to the level."""
    pixels = np.random.default_rng(op).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    factor = torch.tensor(factor).item()  # the float32 factor both are given
    expected = F.pil_to_tensor(_PIL_STEPS[op](Image.fromarray(pixels), factor)).float()
    assert torch.equal(_one_step(pixels, op, factor), expected)


def test_contrast_rounds_the_mean_grey_half_up_as_pil():
    """Greys 10 and 11 average 10.5: PIL blends towards 11 (int(mean + 0.5)), where
    rounding half to even would blend towards 10."""
    pixels = np.array([[[10] * 3, [11] * 3]], dtype=np.uint8)
    expected = F.pil_to_tensor(F.adjust_contrast(Image.fromarray(pixels), 0.5)).float()
    assert expected[0].tolist() == [[10.0, 11.0]]
    assert torch.equal(_one_step(pixels, colour_jitter.CONTRAST, 0.5), expected)
