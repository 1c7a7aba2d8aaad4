"""Pictures for people: labelled image grids and the confusion matrix, drawn with PIL
(torchmetrics' plots need matplotlib, which hw1 does not depend on)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from hw1.presets import EvalSizes


def to_uint8(images: torch.Tensor, sizes: EvalSizes) -> torch.Tensor:
    """Normalised (N, C, H, W) float images back to displayable uint8; uint8 images (the
    fast train pipeline's, not yet normalised) pass unchanged."""
    if images.dtype == torch.uint8:
        return images.cpu()
    mean = torch.tensor(sizes.mean).view(1, -1, 1, 1)
    std = torch.tensor(sizes.std).view(1, -1, 1, 1)
    return (images.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)


def labelled_grid(
    images: torch.Tensor, ncol: int, labels: Sequence[str] | None = None, tile: int = 96
) -> Image.Image:
    """uint8 (N, C, H, W) images in rows of ``ncol`` tiles of ``tile`` px (small images are
    enlarged so that they can be seen), each with its label underneath when given."""
    font = ImageFont.load_default(size=12)
    label_h = 16 if labels is not None else 0
    nrow = -(-len(images) // ncol)
    pad = 2
    grid = Image.new(
        "RGB", (ncol * (tile + pad) + pad, nrow * (tile + label_h + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(grid)
    for k, image in enumerate(images):
        r, c = divmod(k, ncol)
        x, y = pad + c * (tile + pad), pad + r * (tile + label_h + pad)
        array = image.permute(1, 2, 0).numpy()
        tile_image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
        grid.paste(tile_image.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
        if labels is not None:
            draw.text((x + 2, y + tile + 1), str(labels[k])[:16], fill="black", font=font)
    return grid


def confusion_image(confusion: torch.Tensor, names: Sequence[str]) -> Image.Image:
    """The confusion matrix as a heat map, rows true and columns predicted, in folder order,
    row-normalised. Cells stay at least 10 px and every class is labelled, so 100 classes
    remain readable."""
    n = len(names)
    cell = max(10, 800 // n)
    font = ImageFont.load_default(size=max(9, min(14, cell - 1)))
    header = ("rows: true", "cols: predicted")
    label_w = int(max(font.getlength(text) for text in (*names, *header))) + 8
    size = label_w + n * cell + 1
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    rates = (confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)).tolist()
    for i in range(n):
        for j in range(n):
            shade = 255 - int(255 * rates[i][j])
            x, y = label_w + j * cell, label_w + i * cell
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            draw.rectangle([x, y, x + cell, y + cell], fill=colour, outline=(225, 225, 225))
    column_labels = Image.new("RGB", (label_w, n * cell), "white")
    column_draw = ImageDraw.Draw(column_labels)
    for i, name in enumerate(names):
        draw.text((4, label_w + i * cell + cell // 2), name, fill="black", font=font, anchor="lm")
        column_draw.text((4, i * cell + cell // 2), name, fill="black", font=font, anchor="lm")
    # Column labels: written like the row labels, then turned a quarter left to stand on
    # the grid's top edge.
    image.paste(column_labels.rotate(90, expand=True), (label_w, 0))
    for k, text in enumerate(header):
        draw.text((4, 4 + k * (font.size + 4)), text, fill="black", font=font)
    return image


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def hwc(image: Image.Image) -> np.ndarray:
    """A PIL image as the HWC uint8 array TensorBoard's add_image takes."""
    return np.asarray(image.convert("RGB"))
