"""The network: a torchvision ResNet/ResNeXt backbone without its classifier (pretrained
weights by torchvision's weights API or a local state dict, frozen stages, channels-last,
compiling) and the report's heads v0..v4.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model

from hw1.utils.errors import UserRuntimeError, UserValueError
from hw1.utils.weights import check_fits, download_hint, resolve_weights, safe_load

STAGES = ("layer1", "layer2", "layer3", "layer4")


STEM = ("conv1", "bn1")


class Backbone(nn.Module):
    """A torchvision ResNet/ResNeXt without its classifier; outputs pooled features.

    ``trainable_stages=N`` trains only the last N of the four residual stages; the stem and
    the earlier stages are frozen and their BatchNorm layers stay in eval mode.
    """

    def __init__(
        self,
        arch: str,
        weights: str | os.PathLike | None = None,
        trainable_stages: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        """``channels_last``: NHWC weights and inputs, the layout tensor cores and oneDNN
        convolve fastest; ``compile``: ``torch.compile`` the network in place (its state
        dict keeps its keys, so checkpoints load either way) with ``compile_backend``
        (``inductor`` generates kernels, with a C++ compiler on the CPU and Triton on GPUs;
        ``aot_eager`` and ``eager`` trace the network but need no compiler)."""
        super().__init__()
        if trainable_stages is not None and not 0 <= trainable_stages <= len(STAGES):
            raise UserValueError(f"model.trainable_stages={trainable_stages}: use null or 0..4")
        resolved = resolve_weights(arch, weights)
        try:
            net = get_model(arch, weights=resolved if isinstance(resolved, WeightsEnum) else None)
        except (URLError, ConnectionError, TimeoutError) as e:
            raise UserRuntimeError(download_hint(resolved)) from e
        self.num_features: int = net.fc.in_features
        net.fc = nn.Identity()
        if isinstance(resolved, Path):
            state = safe_load(resolved)
            # A torchvision state dict carries the 1000-class ImageNet classifier: not ours.
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            check_fits(state, net.state_dict(), f"model.weights={resolved}", arch)
            net.load_state_dict(state)
        self.net = net
        self.trainable_stages = trainable_stages
        self.frozen: tuple[str, ...] = ()
        self.held = False
        self.freeze_stages(trainable_stages)
        self.channels_last = channels_last
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if compile:
            net.compile(backend=compile_backend)

    @staticmethod
    def frozen_by(trainable_stages: int | None) -> tuple[str, ...]:
        """The modules that training only the last N residual stages leaves frozen."""
        if trainable_stages is None:
            return ()
        return STEM + STAGES[: len(STAGES) - trainable_stages]

    def freeze_stages(self, trainable_stages: int | None) -> None:
        """Train only the last N residual stages (None: all): the stem and the earlier
        stages get no gradients and their BatchNorm stays in eval mode."""
        self.frozen = self.frozen_by(trainable_stages)
        for name in STEM + STAGES:
            getattr(self.net, name).requires_grad_(name not in self.frozen)
        self.train(self.training)

    def hold(self, held: bool) -> None:
        """While held (FreezeBackbone's first epochs) the BatchNorm layers of every stage stay
        in eval mode, as a frozen stage's do; the parameters keep ``requires_grad``, so that
        DDP registers them and compiled graphs keep their guards, and the callback drops
        their gradients before each optimizer step."""
        self.held = held
        self.train(self.training)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters ``trainable_stages`` trains, also while a callback holds the whole
        backbone frozen for a few epochs (so that they are in the optimizer from the start)."""
        frozen = self.frozen_by(self.trainable_stages)
        return [
            p for name, m in self.net.named_children() if name not in frozen for p in m.parameters()
        ]

    def train(self, mode: bool = True) -> Backbone:
        # Lightning calls model.train() at every epoch start; frozen BatchNorm must keep its
        # pretrained running statistics, which nn.Module offers no per-module switch for.
        super().train(mode)
        for name in STEM + STAGES if self.held else self.frozen:
            getattr(self.net, name).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


def make_head(
    name: str, in_features: int, num_classes: int, dropout: float | Sequence[float] = 0.5
) -> nn.Sequential:
    """The report's heads v0..v4: v0 dropout and one linear layer; v1 one hidden layer of
    500; v2 two (500, 250); v3 v2 with BatchNorm after the first; v4 three (1024, 512, 256)
    with BatchNorm. ``v4`` takes three dropouts (a single number is used for all three)."""
    F, C = in_features, num_classes
    if name == "v4":
        p1, p2, p3 = (dropout,) * 3 if isinstance(dropout, (int, float)) else dropout
        return nn.Sequential(
            nn.Linear(F, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Dropout(p1),
            nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(p2),
            nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(p3),
            nn.Linear(256, C),
        )  # fmt: skip
    if not isinstance(dropout, (int, float)):
        raise UserValueError(f"head.dropout={dropout}: head {name} takes one number")
    p = dropout
    heads = {
        "v0": lambda: [nn.Dropout(p), nn.Linear(F, C)],
        "v1": lambda: [nn.Linear(F, 500), nn.ReLU(), nn.Dropout(p), nn.Linear(500, C)],
        "v2": lambda: [
            nn.Linear(F, 500), nn.ReLU(), nn.Linear(500, 250), nn.ReLU(),
            nn.Dropout(p), nn.Linear(250, C),
        ],
        "v3": lambda: [
            nn.Linear(F, 500), nn.BatchNorm1d(500), nn.ReLU(), nn.Linear(500, 250), nn.ReLU(),
            nn.Dropout(p), nn.Linear(250, C),
        ],
    }  # fmt: skip
    if name not in heads:
        raise UserValueError(f"head.name={name}: use one of v0, v1, v2, v3, v4")
    return nn.Sequential(*heads[name]())
