"""Pictures for people: labelled image grids and the confusion matrix, drawn with PIL
(torchmetrics' plots need matplotlib, which hw1 does not depend on)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from hw1.transforms.presets import EvalSpec


def to_uint8(images: torch.Tensor, spec: EvalSpec) -> torch.Tensor:
    """Normalised (N, C, H, W) float images back to displayable uint8; uint8 images (the
    fast train pipeline's, not yet normalised) pass unchanged."""
    if images.dtype == torch.uint8:
        return images.cpu()
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
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


PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (0, 0, 128), (128, 64, 0), (0, 100, 0), (128, 0, 0), (75, 0, 130), (0, 128, 128),
]  # fmt: skip


def line_chart(title: str, series: dict[str, list[list[tuple[float, float]]]]) -> Image.Image:
    """Lines of (epoch, value) points, one colour and one legend entry per name (a name may
    have several lines: one per seed); the y axis spans the data rounded out to tenths."""
    font = ImageFont.load_default(size=13)
    width, height, left, top, bottom = 640, 360, 56, 30, 40
    legend_w = 32 + int(max([font.getlength(name) for name in series] or [0]))
    full_h = max(top + height + bottom, top + 18 * len(series) + 8)
    image = Image.new("RGB", (left + width + legend_w + 8, full_h), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black", font=font)
    points = [p for lines in series.values() for line in lines for p in line]
    if not points:
        draw.text((left + 8, top + 8), "no validation scalars", fill="black", font=font)
        return image
    x_max = max(max(x for x, _ in points), 1)
    y_lo = float(np.floor(min(y for _, y in points) * 10) / 10)
    y_hi = max(float(np.ceil(max(y for _, y in points) * 10) / 10), y_lo + 0.1)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + width * x / x_max, top + height * (1 - (y - y_lo) / (y_hi - y_lo))

    for tick in np.arange(y_lo, y_hi + 1e-9, 0.1 if y_hi - y_lo <= 0.5 else 0.2):
        _, y = at(0, tick)
        draw.line([left, y, left + width, y], fill=(230, 230, 230))
        draw.text((left - 6, y), f"{tick:.1f}", fill="black", font=font, anchor="rm")
    step = max(1, int(np.ceil(x_max / 10)))
    for tick in range(0, int(x_max) + 1, step):
        x, _ = at(tick, y_lo)
        draw.text((x, top + height + 6), str(tick), fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, left + width, top + height], outline="black")
    draw.text((left + width / 2, top + height + 22), "epoch", fill="black", font=font, anchor="mt")
    for k, (name, lines) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        for line in lines:
            xy = [at(x, y) for x, y in line]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        ly = top + 4 + k * 18
        draw.line([left + width + 10, ly + 7, left + width + 24, ly + 7], fill=colour, width=3)
        draw.text((left + width + 28, ly), name, fill="black", font=font)
    return image


def stack(images: Sequence[Image.Image]) -> Image.Image:
    """Images one under the other on white."""
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height
    return out
