"""The fast train pipeline's rotation and shift, on a batch on the device, each image with
its own angle and shift: the reference's RandomRotation (PIL's bilinear ``Image.rotate``)
then its RandomAffine shift, in one ``grid_sample``.

Hand-written because torchvision's ``rotate`` and ``affine`` take one angle per call, and
because PIL's rotation, which the reference applies, differs from torch's in two ways this
keeps: a point that falls outside the image is black, but one inside takes its clamped
neighbours (``grid_sample``'s border padding, masked), and the result is truncated, not
rounded, to an integer. On the same image the output equals PIL's but for float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

# Truncation after float arithmetic: a value a hair under a whole level is that level.
_EPS = 1e-3


def rotate_and_shift(x: torch.Tensor, degrees: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W), whole levels as floats, each image turned ``degrees`` (B,)
    counter-clockwise about its centre (bilinear), then moved by ``shift`` (B, 2) whole
    pixels (x right, y down): what the rotation turned out of the frame stays out, the
    shift brings in black. Whole levels out. Images neither turned nor moved are returned
    as they are, as is the whole batch when none is."""
    moved = (degrees != 0) | (shift != 0).any(dim=1)
    if not moved.any():
        return x
    b, _, h, w = x.shape
    grid, inside = _grid(degrees.to(torch.float64), shift.to(torch.float64), h, w)
    out = nnf.grid_sample(
        x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    out = (out * inside[:, None]).add_(_EPS).floor_()
    return torch.where(moved.view(b, 1, 1, 1), out, x)


def _grid(
    degrees: torch.Tensor, shift: torch.Tensor, h: int, w: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each output pixel's source in ``grid_sample``'s coordinates (pixel centres,
    ``align_corners=False``), and whether it is a pixel of the image: inside the frame
    before the shift and inside the image before the rotation. In float64, so that the
    unturned images' sources fall on pixel centres."""
    device = degrees.device
    u = (torch.arange(w, dtype=torch.float64, device=device) + 0.5) * (2 / w) - 1
    v = (torch.arange(h, dtype=torch.float64, device=device) + 0.5) * (2 / h) - 1
    # Undo the shift: the pixel of the turned image each output pixel shows.
    qu = u.view(1, 1, w) - (2 / w) * shift[:, 0].view(-1, 1, 1)
    qv = v.view(1, h, 1) - (2 / h) * shift[:, 1].view(-1, 1, 1)
    # Undo the turn, as PIL's rotate maps output to input: by -angle, about the centre.
    t = torch.deg2rad(-degrees)
    cos, sin = t.cos().view(-1, 1, 1), t.sin().view(-1, 1, 1)
    ru = cos * qu + sin * (h / w) * qv
    rv = -sin * (w / h) * qu + cos * qv
    inside = _within(qu) & _within(qv) & _within(ru) & _within(rv)
    return torch.stack(torch.broadcast_tensors(ru, rv), dim=-1), inside


def _within(c: torch.Tensor) -> torch.Tensor:
    """A coordinate inside the image: [-1, 1), as PIL's 0 <= x < width."""
    return (c >= -1) & (c < 1)
