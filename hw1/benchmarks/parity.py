"""The parity harness behind ``python -m hw1.parity``: both train pipelines are given the
same drawn parameters (crop box, flip, angle, shift, colour factors and order) on real
image files, and their outputs compared per image (mean absolute difference in grey
levels, PSNR), tabled by crop scale, enlarging vs reducing, image size, with and without
colour; and the image sets it measures on.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from hw1.data.scan import is_image_file
from hw1.transforms.decode import decode_scaled, load_rgb
from hw1.transforms.fast_pipeline import (
    Deferred,
    DraftDecoder,
    Draw,
    FastTrainPreset,
    deferred_steps,
    finish,
)
from hw1.transforms.presets import eval_spec

_BILINEAR = InterpolationMode.BILINEAR


# ColorJitter's steps on PIL images, by the index Draw.jitter_order uses.
_JITTERS: tuple[Callable[[Image.Image, float], Image.Image], ...] = (
    F.adjust_brightness,
    F.adjust_contrast,
    F.adjust_saturation,
    F.adjust_hue,
)


def reference_apply(image: Image.Image, draw: Draw, size: int) -> torch.Tensor:
    """``hw1.transforms.presets.train_preset``'s steps on ``image`` with the parameters ``draw``
    (torchvision's functional forms of its transforms), as a uint8 (3, size, size)."""
    left, top, w, h = draw.box
    x = F.resized_crop(image, top, left, h, w, [size, size], interpolation=_BILINEAR)
    if draw.flip:
        x = F.horizontal_flip(x)
    for op in draw.jitter_order:
        x = _JITTERS[op](x, draw.jitter[op])
    x = F.rotate(x, draw.angle, interpolation=_BILINEAR)
    x = F.affine(x, angle=0.0, translate=list(draw.shift), scale=1.0, shear=[0.0, 0.0])
    return F.pil_to_tensor(x)


def device_steps_on(crop: torch.Tensor, draw: Draw) -> torch.Tensor:
    """The fast pipeline's deferred steps (``Deferred``: the colour jitter, the rotation,
    the shift) of ``draw`` applied to a given uint8 (3, H, W) resized and flipped ``crop``,
    uint8 out: the device's part alone."""
    return finish(Deferred(crop.permute(1, 2, 0), deferred_steps(draw)))


def mad_psnr(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean absolute difference (grey levels) and PSNR (dB, 99 when identical)."""
    d = a.double() - b.double()
    mse = float(d.square().mean())
    return float(d.abs().mean()), 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


@dataclass(frozen=True)
class Row:
    """One image and draw: what it was and how far the two pipelines' outputs are."""

    set: str
    size: tuple[int, int]  # the file's upright size
    scale: float  # the crop's share of the image's area
    enlarged: bool  # the crop box is smaller than the output in some direction
    reduced: bool  # the fast pipeline decoded the file at a reduced scale
    rotated: bool
    geometry: tuple[float, float]  # (MAD, PSNR) without the colour jitter
    full: tuple[float, float]  # with it
    device: tuple[float, float]  # the device's steps on the reference's own crop


def compare(path: Path, preset: FastTrainPreset, draw: Draw, name: str = "") -> Row:
    """Both pipelines on the file ``path`` with the parameters ``draw`` (drawn for its
    upright size): the fast one through its own decoder (draft mode included)."""
    decoder = DraftDecoder(preset)
    image = load_rgb(path)
    size = preset.size
    plain = replace(draw, jitter_order=())

    def fast(d: Draw) -> torch.Tensor:
        return finish(decoder.decode(path, lambda w, h: d))

    reference = reference_apply(image, draw, size)
    crop = reference_apply(image, replace(plain, angle=0.0, shift=(0, 0)), size)
    _, _, w, h = draw.box
    decoded = decode_scaled(path, lambda upright: preset.decode_size(draw, *upright))
    return Row(
        set=name,
        size=image.size,
        scale=w * h / (image.width * image.height),
        enlarged=min(w, h) < size,
        reduced=decoded.shape[:2] != (image.height, image.width),
        rotated=draw.angle != 0,
        geometry=mad_psnr(fast(plain), reference_apply(image, plain, size)),
        full=mad_psnr(fast(draw), reference),
        device=mad_psnr(device_steps_on(crop, draw), reference),
    )


def measure(
    paths: Sequence[Path], size: int, draws: int, seed: int = 0, name: str = "", **augment
) -> list[Row]:
    """``draws`` parameter draws per file (the fast preset's, from torch's generator
    seeded with ``seed``), each compared by ``compare``."""
    preset = FastTrainPreset(eval_spec(size), **augment)
    torch.manual_seed(seed)
    rows = []
    for path in paths:
        width, height = load_rgb(path).size
        for _ in range(draws):
            rows.append(compare(path, preset, preset.draw(width, height), name))
    return rows


def _scale_bin(row: Row) -> str:
    return (
        "scale < 0.25" if row.scale < 0.25 else "scale < 0.5" if row.scale < 0.5 else "scale >= 0.5"
    )


def _size_bin(row: Row) -> str:
    side = min(row.size)
    return "side < 64" if side < 64 else "side < 256" if side < 256 else "side 256+"


GROUPS: dict[str, Callable[[Row], str]] = {
    "set": lambda r: r.set,
    "crop scale": _scale_bin,
    "zoom": lambda r: "enlarged" if r.enlarged else "reduced",
    "decode": lambda r: "reduced scale" if r.reduced else "full scale",
    "rotation": lambda r: "rotated" if r.rotated else "upright",
    "image size": _size_bin,
}


def table(rows: Iterable[Row]) -> list[str]:
    """Markdown rows: per group, the mean MAD and median PSNR without the colour jitter,
    with it, and the device's steps alone."""
    rows = list(rows)
    parts = ("geometry", "full", "device")
    lines = [
        "| group | n | " + " | ".join(f"MAD {p} | PSNR {p}" for p in parts) + " |",
        "|---" * (2 + 2 * len(parts)) + "|",
    ]
    for title, key in GROUPS.items():
        groups: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            groups[key(row)].append(row)
        for label in sorted(groups):
            g = groups[label]
            cells = [f"{title}: {label}", str(len(g))]
            for part in parts:
                values = [getattr(r, part) for r in g]
                cells.append(f"{statistics.fmean(v[0] for v in values):.2f}")
                cells.append(f"{statistics.median(v[1] for v in values):.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def make_jpegs(
    source: Path, target: Path, sides: tuple[int, int], seed: int = 0, quality: int = 90
) -> Path:
    """Every image under ``source`` as a JPEG at the same place under ``target``, resized
    (bicubic, antialiased) so that its longer side is drawn from ``sides``; other files
    (e.g. test_labels.csv, which names images without their extension) copied."""
    rng = np.random.default_rng(seed)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not is_image_file(str(path)):
            shutil.copyfile(path, out)
            continue
        image = load_rgb(path)
        k = int(rng.integers(sides[0], sides[1] + 1)) / max(image.size)
        resized = image.resize(
            (max(1, round(image.width * k)), max(1, round(image.height * k))), Image.BICUBIC
        )
        resized.save(out.with_suffix(".jpg"), quality=quality)
    return target


def demo_images(n: int) -> list[Path]:
    """``n`` of the demo's train PNGs, taken evenly over its garments."""
    from hw1.data import demo

    root = demo.extract(Path(tempfile.gettempdir()) / "hw1-parity-demo")
    files = sorted((root / "train").rglob("*.png"))
    return files[:: max(1, len(files) // n)][:n]


def photo_images(n: int) -> list[Path]:
    from hw1.benchmarks.common import cached_photos

    return sorted(cached_photos(n).rglob("*.jpg"))[:n]


def small_images(n: int) -> list[Path]:
    """``n`` photos as JPEGs of 24-56 px (longer side), made once."""
    folder = Path(tempfile.gettempdir()) / f"hw1-parity-small-{n}"
    if not (folder / "done").exists():
        make_jpegs(photo_images(n)[0].parent, folder / "images", (24, 56), seed=1)
        (folder / "done").touch()
    return sorted((folder / "images").glob("*.jpg"))


# conf/experiment/demo.yaml's augmentation
DEMO_AUGMENT = {"scale": (0.8, 1.0), "jitter": (0.2, 0.2, 0, 0), "rotation": 0, "translate": (0, 0)}


# name: (files, the train size, the augmentation: the report's unless given)
SETS: dict[str, tuple[Callable[[int], list[Path]], int, dict]] = {
    "demo": (demo_images, 32, DEMO_AUGMENT),
    "photos": (photo_images, 224, {}),
    "photos64": (photo_images, 64, {}),  # the decoder mostly works at 1/2 to 1/8 scale
    "small": (small_images, 64, {}),
}
