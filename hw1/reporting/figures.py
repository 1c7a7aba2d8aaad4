"""Pictures for people: charts drawn with matplotlib (training curves, the confusion
matrix, the reliability diagram, per-class F1, Grad-CAM heat maps), and labelled image
grids drawn with PIL, which is all a grid of tiles needs.

Figures are made with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, never
through pyplot: no display, no global state, safe in DataLoader workers and callbacks."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
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


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def hwc(image: Image.Image) -> np.ndarray:
    """A PIL image as the HWC uint8 array TensorBoard's add_image takes."""
    return np.asarray(image.convert("RGB"))


def figure_image(fig: Figure) -> Image.Image:
    """A matplotlib figure rendered by the Agg canvas, as an RGB PIL image."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def line_chart(title: str, series: dict[str, list[list[tuple[float, float]]]]) -> Image.Image:
    """Lines of (epoch, value) points, one colour and one legend entry per name (a name may
    have several lines: one per seed)."""
    fig = Figure(figsize=(8, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, loc="left")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if not any(line for lines in series.values() for line in lines):
        ax.text(0.5, 0.5, "no validation scalars", ha="center", va="center")
        return figure_image(fig)
    cycle = colormaps["tab10" if len(series) <= 10 else "tab20"].colors
    for k, (name, lines) in enumerate(series.items()):
        for m, line in enumerate(lines):
            x, y = zip(*line, strict=True) if line else ((), ())
            label = name if m == 0 else None  # one legend entry per name
            ax.plot(x, y, marker="o", markersize=3, color=cycle[k % len(cycle)], label=label)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return figure_image(fig)


# The labelled block of the confusion matrix: the classes most involved in mistakes.
CONFUSED_BLOCK = 15


def normalised(confusion: torch.Tensor) -> np.ndarray:
    """Rows divided by their sums (recall on the diagonal); a row without images stays 0."""
    counts = confusion.double()
    return (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()


def confused_classes(confusion: torch.Tensor, k: int = CONFUSED_BLOCK) -> list[int]:
    """The ``k`` classes with the most mistakes, as true or as predicted class, in their
    folder order."""
    off = normalised(confusion)
    np.fill_diagonal(off, 0)
    involvement = off.sum(axis=0) + off.sum(axis=1)
    top = np.argsort(-involvement, kind="stable")[:k]
    return sorted(top.tolist())


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _matrix(ax, rates: np.ndarray, names: Sequence[str] | None, title: str) -> object:
    """One normalised confusion panel; labelled and annotated when ``names`` are given."""
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if names is None:
        ax.set_xticks([])
        ax.set_yticks([])
        return image
    ticks = range(len(names))
    labels = [_short(n) for n in names]
    ax.set_xticks(ticks, labels, rotation=90, fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    for (i, j), rate in np.ndenumerate(rates):
        if rate >= 0.005:
            colour = "white" if rate > 0.5 else "black"
            ax.text(j, i, f"{rate * 100:.0f}", ha="center", va="center", fontsize=7, color=colour)
    return image


def confusion_image(confusion: torch.Tensor, names: Sequence[str]) -> Image.Image:
    """The row-normalised confusion matrix (rows true, columns predicted, in percent).
    Up to ``CONFUSED_BLOCK`` classes: one labelled panel. More: the whole matrix without
    tick labels, which shows the pattern, beside the labelled block of the classes most
    involved in mistakes, which names them."""
    rates = normalised(confusion)
    n = len(names)
    if n <= CONFUSED_BLOCK:
        fig = Figure(figsize=(6.5, 6), dpi=100, layout="constrained")
        image = _matrix(fig.add_subplot(), rates, names, "confusion (% of each true class)")
        fig.colorbar(image, shrink=0.7)
        return figure_image(fig)
    fig = Figure(figsize=(13, 6.5), dpi=100, layout="constrained")
    whole, block = fig.subplots(1, 2)
    image = _matrix(whole, rates, None, f"all {n} classes (% of each true class)")
    picked = confused_classes(confusion)
    sub = rates[np.ix_(picked, picked)]
    _matrix(block, sub, [names[i] for i in picked], f"the {len(picked)} most confused classes")
    fig.colorbar(image, ax=[whole, block], shrink=0.7)
    return figure_image(fig)


# TensorBoard's image cards (TIME SERIES, at the default card width, in a 1400 px window)
# show an image scaled into a box about 360 x 200 px. The card image is drawn at twice
# that, with 14 pt text (about 10 px once scaled), so it is readable at that size and sharp
# when the card is enlarged; a 100-class matrix with tick labels is not, at any size.
CARD_INCHES = (7.2, 4.0)  # at 100 dpi
CARD_PAIRS = 8


def confused_pairs(confusion: torch.Tensor, k: int = CARD_PAIRS) -> list[tuple[int, int, float]]:
    """The ``k`` largest off-diagonal rates (true, predicted, share of the true class's
    images), largest first; pairs never confused are left out."""
    off = normalised(confusion)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = [(int(i), int(j)) for i, j in zip(*np.unravel_index(order, off.shape), strict=True)]
    return [(i, j, float(off[i, j])) for i, j in pairs if off[i, j] > 0]


def confusion_card(confusion: torch.Tensor, names: Sequence[str]) -> Image.Image:
    """The confusion matrix as TensorBoard's image card shows it: the whole row-normalised
    matrix without tick labels (its pattern) beside the most confused pairs as text,
    ``true -> predicted  share``, large enough to read at the card's default size."""
    rates, n = normalised(confusion), len(names)
    fig = Figure(figsize=CARD_INCHES, dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.25]})
    left.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    left.set_xticks([])
    left.set_yticks([])
    left.set_title(f"{n} classes, % of true", fontsize=14, loc="left")
    left.set_xlabel("predicted", fontsize=13)
    left.set_ylabel("true", fontsize=13)
    right.axis("off")
    right.set_title("most confused", fontsize=14, loc="left")
    pairs = confused_pairs(confusion)
    lines = [f"{_short(names[i], 12)} \u2192 {_short(names[j], 12)}  {r:.0%}" for i, j, r in pairs]
    right.text(0, 1, "\n".join(lines) or "no mistakes", fontsize=14, va="top", linespacing=1.35)
    return figure_image(fig)


def reliability_diagram(
    panels: dict[str, tuple[list[dict[str, float]], float]],
) -> Image.Image:
    """Accuracy against confidence per bin (``metrics.reliability_bins``), one panel per
    entry of ``panels``: {title: (bins, ECE)}, e.g. before and after calibration. Bars
    under the diagonal are over-confident."""
    fig = Figure(figsize=(4.2 * len(panels), 4.2), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    for ax, (title, (bins, ece)) in zip(axes, panels.items(), strict=True):
        lo = [b["lo"] for b in bins]
        width = [b["hi"] - b["lo"] for b in bins]
        accuracy = [b["accuracy"] for b in bins]
        gap = [b["confidence"] - b["accuracy"] for b in bins]
        common = {"width": width, "align": "edge", "edgecolor": "white"}
        ax.bar(lo, accuracy, color="tab:blue", label="accuracy", **common)
        ax.bar(lo, gap, bottom=accuracy, color="tab:red", alpha=0.3, label="gap", **common)
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy")
        ax.set_title(f"{title}: ECE {ece:.3f}", fontsize=10, loc="left")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    return figure_image(fig)


def per_class_f1_chart(rows: Sequence[dict], title: str = "F1 per class") -> Image.Image:
    """Horizontal bars of each class's F1 (``metrics.per_class_table`` rows), worst at the
    top; a class without images in the split is marked n/a rather than drawn as 0."""
    fig = Figure(figsize=(6, max(2.5, 0.6 + 0.16 * len(rows))), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    values = [r["f1"] if r["f1"] is not None else 0.0 for r in rows]
    ax.barh(y, values, color=["tab:blue" if r["f1"] is not None else "lightgrey" for r in rows])
    for k, r in enumerate(rows):
        text = "n/a" if r["f1"] is None else f"{r['f1']:.2f}"
        ax.text(values[k] + 0.01, k, text, va="center", fontsize=7)
    ax.set_yticks(y, [_short(r["class"]) for r in rows], fontsize=7 if len(rows) > 30 else 9)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.08), xlabel="F1")
    ax.set_title(title, loc="left", fontsize=10)
    return figure_image(fig)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A uint8 (H, W, 3) image with a (H, W) heat map in [0, 1] laid over it in the
    'jet' colours (red: high), and the heat map alone, both uint8 (H, W, 3)."""
    coloured = (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * coloured
    return blend.round().astype(np.uint8), coloured.round().astype(np.uint8)


def stack(images: Sequence[Image.Image]) -> Image.Image:
    """Images one under the other on white."""
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height
    return out
