"""Where the model looked: Grad-CAM (Selvaraju et al., 2017) of each image's top
prediction at the backbone's last convolutional stage (ResNet/ResNeXt ``layer4``), laid
over the image the model saw. captum's ``LayerGradCam`` computes it; captum is the
optional extra ``hw1[explain]``, as only ``hw1.explain`` needs it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hw1.models.classifier import Classifier
from hw1.reporting.figures import heat_overlay, labelled_grid
from hw1.transforms.decode import load_rgb
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.presets import EvalSpec, eval_preset
from hw1.utils.errors import UserRuntimeError

INSTALL = 'Grad-CAM needs captum: pip install "hw1[explain]"'
log = logging.getLogger(__name__)


def _captum():
    """captum's attribution module, or a one-line error naming the extra to install."""
    try:
        from captum import attr
    except ImportError:
        raise UserRuntimeError(INSTALL) from None
    return attr


def last_stage(model: Classifier) -> torch.nn.Module:
    """The backbone's last convolutional stage: torchvision ResNets' ``layer4``."""
    return model.backbone.net.layer4


def grad_cam(model: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(heat maps (B, H, W) in [0, 1] at the input's size, class probabilities (B, C)) of
    normalised images ``x`` (B, C, H, W), each map for the image's top-1 class: the
    gradient-weighted activations of the last stage, positive part, scaled per image."""
    attr = _captum()
    model.eval()
    with torch.no_grad():
        probs = model.predict_probs(x)
    cam = attr.LayerGradCam(model, last_stage(model))
    maps = cam.attribute(x, target=probs.argmax(dim=1), relu_attributions=True)
    if maps.shape[-2:].numel() == 1:
        log.warning(
            "Grad-CAM: at %d px the last stage's map is 1 x 1, so the heat map is flat; "
            "it needs images of about 64 px or more (the checkpoint's crop)",
            x.shape[-1],
        )
    maps = attr.LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), "bilinear")
    maps = maps.detach()[:, 0].clamp(min=0)
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return maps / peak, probs


def require_captum() -> None:
    """Fails at once, with the one-line message, when captum is not installed."""
    _captum()


def cam_overlays(model: Classifier, files: Sequence[Path]) -> dict[Path, np.ndarray]:
    """Each readable file's Grad-CAM overlay for its top class, on the image as the model
    saw it (uint8 (H, W, 3)); an unreadable file has none."""
    spec = EvalSpec.from_dict(model.hparams.preprocess)
    preset, finish = eval_preset(spec), FinishOnDevice(spec.mean, spec.std)
    out = {}
    for path in files:
        try:
            seen = preset(load_rgb(path))
        except (OSError, ValueError):
            continue
        heat, _ = grad_cam(model, finish(seen[None]))
        out[path] = heat_overlay(seen.permute(1, 2, 0).numpy(), heat[0].numpy())[0]
    return out


def explain_files(
    model: Classifier, files: Sequence[Path], tile: int = 224
) -> tuple[dict[Path, Image.Image], list[str]]:
    """({file: its overlay grid}, the files skipped, with why). The grid shows the image
    as the model saw it (the checkpoint's eval crop), the heat map, and the overlay with
    the top class and its probability."""
    spec = EvalSpec.from_dict(model.hparams.preprocess)
    preset, finish = eval_preset(spec), FinishOnDevice(spec.mean, spec.std)
    grids, skipped = {}, []
    for path in files:
        try:
            seen = preset(load_rgb(path))
        except (OSError, ValueError) as e:
            skipped.append(f"{path}: not an image ({type(e).__name__})")
            continue
        heat, probs = grad_cam(model, finish(seen[None]))
        image = seen.permute(1, 2, 0).numpy()
        overlay, coloured = heat_overlay(image, heat[0].numpy())
        p, k = probs[0].max(dim=0)
        tiles = torch.from_numpy(np.stack([image, coloured, overlay])).permute(0, 3, 1, 2)
        labels = ["input", "Grad-CAM", f"{model.class_names[int(k)]} {p.item():.0%}"]
        grids[path] = labelled_grid(tiles, ncol=3, labels=labels, tile=tile)
    return grids, skipped
