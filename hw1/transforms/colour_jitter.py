"""ColorJitter on a batch, each image with its own order and factors: the fast train
pipeline's jitter, applied on the device (``hw1.transforms.fast_pipeline.Deferred``) to the
resized crop, before the rotation and the shift, where the reference applies it.

The steps follow torchvision's on PIL images (``ImageEnhance`` and PIL's HSV), which the
reference pipeline uses: every step clipped to 0..255 and truncated to an integer as
PIL's blend does, contrast blending towards the mean grey rounded half up, saturation
towards each pixel's grey (PIL's fixed-point luma), hue shifting H in HSV.
"""

from __future__ import annotations

import torch

from hw1.utils.compat import hsv_to_rgb, rgb_to_hsv

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


IDENTITY = (1.0, 1.0, 1.0, 0.0)  # the factors that change nothing


# ITU-R 601 luma in PIL's fixed point (convert("L"): weights over 65536, rounded half up).
_LUMA = (19595, 38470, 7471)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of (B, 3, H, W) whole levels, as PIL's convert("L") computes it.
    Exact in float32: the weighted sum stays under 2**24."""
    r, g, b = x.unbind(dim=1)
    total = _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b + 32768
    return total.div_(65536).floor_()[:, None]


def _step(op: int, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """One jitter on (B, 3, H, W) colours in 0..255, ``f`` the (B,) factors."""
    f = f.view(-1, 1, 1, 1)
    if op == BRIGHTNESS:
        y = x * f
    elif op == CONTRAST:
        # PIL's int(mean + 0.5): half up, where round() would take half to even.
        mean = _grey(x).mean(dim=(2, 3), keepdim=True).add_(0.5).floor_()
        y = mean + f * (x - mean)
    elif op == SATURATION:
        grey = _grey(x)
        y = grey + f * (x - grey)
    else:
        # PIL's HSV holds H and S in 256 levels (truncated); the shift is whole levels of
        # H, truncated towards 0, wrapping round.
        h, s, v = rgb_to_hsv(x / 255).unbind(dim=1)
        h = ((h * 255).floor_() + (f.view(-1, 1, 1) * 255).trunc()).remainder_(256) / 255
        s = (s * 255).floor_() / 255
        return (hsv_to_rgb(torch.stack([h, s, v], dim=1)) * 255).round_()
    # PIL's blend truncates towards 0, then clips.
    return y.trunc_().clamp_(0, 255)


def jitter(rgb: torch.Tensor, order: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``rgb`` (B, 3, H, W) floats in 0..255, jittered: ``order`` (B, 4) the steps'
    indices in the order each image takes them, ``factors`` (B, 4) its brightness,
    contrast, saturation and hue factors. Steps whose factor changes nothing are skipped,
    and an image no step changes comes back as it was."""
    identity = torch.tensor(IDENTITY, device=factors.device, dtype=factors.dtype)
    active = factors != identity
    x = rgb.clone()
    for stage in range(order.shape[1]):
        for op in range(4):
            chosen = (order[:, stage] == op) & active[:, op]
            if chosen.all():
                x = _step(op, x, factors[:, op])
            elif chosen.any():
                x[chosen] = _step(op, x[chosen], factors[chosen, op])
    return x
