"""The fast pipeline's rotation and shift on the device (hw1.transforms.rotation) against
PIL's, which the reference's RandomRotation and RandomAffine apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from hw1.transforms.rotation import rotate_and_shift


def _pil_rotate_and_shift(image: Image.Image, degrees: float, shift: tuple[int, int]):
    turned = F.rotate(image, degrees, interpolation=InterpolationMode.BILINEAR)
    moved = F.affine(turned, angle=0.0, translate=list(shift), scale=1.0, shear=[0.0, 0.0])
    return F.pil_to_tensor(moved).float()


@pytest.mark.parametrize("size", [(48, 48), (40, 56)])
def test_a_batch_turned_and_shifted_each_its_own_way_is_pils_rotation_and_shift(size):
    """Random pixels (the hardest case for interpolation), five angles and shifts in one
    batch, square and not: PIL's output, corners and bands black, but for float rounding."""
    h, w = size
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(5)]
    degrees = [0.0, 9.7, -4.25, 10.0, -0.3]
    shifts = [(3, -4), (0, 0), (-5, 2), (4, 4), (0, -1)]
    x = torch.stack([F.pil_to_tensor(i) for i in images]).float()
    got = rotate_and_shift(x, torch.tensor(degrees), torch.tensor(shifts, dtype=torch.float32))
    expected = torch.stack(
        [_pil_rotate_and_shift(i, d, s) for i, d, s in zip(images, degrees, shifts, strict=True)]
    )
    diff = (got - expected).abs()
    assert diff.max() <= 1 and diff.mean() < 0.002, (diff.max(), diff.mean())
    assert (got[0, :, :, :3] == 0).all() and (got[3, :, :4] == 0).all()  # the shift's bands


def test_unmoved_images_come_back_as_they_are():
    x = torch.rand(3, 3, 8, 8) * 255
    none = rotate_and_shift(x, torch.zeros(3), torch.zeros(3, 2))
    assert none is x
    some = rotate_and_shift(x, torch.tensor([0.0, 5.0, 0.0]), torch.zeros(3, 2))
    assert torch.equal(some[0], x[0]) and torch.equal(some[2], x[2])
    assert not torch.equal(some[1], x[1])
