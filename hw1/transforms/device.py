"""The last steps of every uint8 batch, on the batch's device: the fast pipeline's deferred
colour jitter, rotation and shift, then uint8 to normalised floats in the model's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hw1.transforms.fast_pipeline import Deferred


class FinishOnDevice:
    """The last steps of every uint8 batch, on the batch's device: the deferred colour
    jitter, rotation and shift of ``Deferred`` batches (the fast train pipeline), then
    uint8 to normalised floats (also the eval view and the TTA views). Float batches come
    normalised from their preset (the reference train pipeline) and are only cast to
    ``dtype``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(
        self, x: torch.Tensor | Deferred, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        if isinstance(x, Deferred):
            x = x.render()
        elif x.dtype == torch.uint8:
            x = x.float()
        else:
            return x.to(dtype)
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        # The reference's ToDtype(scale=True) and Normalize, operation for operation, so that
        # the same pixels give the same floats to the bit.
        return x.mul_(1 / 255).sub_(self.mean).div_(self.std).to(dtype)
