"""The error gallery: one self-contained HTML page (images inlined as data URIs, no
scripts, no links out) that opens offline and shows a model's most confident mistakes and
its worst classes with their commonest confusions. ``hw1.eval ... gallery=N`` writes it."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

THUMBNAIL = 160  # px, the longer side of a gallery image


@dataclass
class Mistake:
    """One wrongly classified image: its file, true class and top predictions."""

    path: str
    true: str
    top: Sequence[tuple[str, float]]  # (class, probability), most probable first
    cam: str | None = None  # a data URI of its Grad-CAM overlay (gallery_cam=true)


@dataclass
class WeakClass:
    """A class with its scores and the classes its images were most often taken for."""

    name: str
    f1: float | None
    recall: float | None
    support: int
    confused_with: Sequence[tuple[str, int]]  # (predicted class, images)


def data_uri(path: str | Path, size: int = THUMBNAIL) -> str | None:
    """A thumbnail of the image at ``path`` as a data URI (``image_uri``); None when it
    cannot be read."""
    try:
        with Image.open(path) as image:
            return image_uri(ImageOps.exif_transpose(image).convert("RGB"), size)
    except OSError:
        return None


def image_uri(image: Image.Image, size: int = THUMBNAIL) -> str:
    """A thumbnail of an RGB ``image`` as a PNG data URI (JPEG for photographs, which PNG
    would make large)."""
    image = image.copy()
    image.thumbnail((size, size))
    if min(image.size) < size // 2:  # small images (the demo's 32 px) enlarged
        scale = size / max(image.size)
        new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(new, Image.NEAREST)
    out = io.BytesIO()
    photo = len(image.getcolors(4096) or ()) == 0  # more than 4096 colours
    image.save(out, format="JPEG" if photo else "PNG", quality=85)
    kind = "jpeg" if photo else "png"
    return f"data:image/{kind};base64,{base64.b64encode(out.getvalue()).decode()}"


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure.cam { width: 346px; }
figure { margin: 0; width: 180px; border: 1px solid #ddd; padding: 6px; border-radius: 4px; }
figure img { width: 160px; height: 160px; object-fit: contain; background: #f4f4f4; }
figcaption { font-size: 12px; }
.true { color: #1a7f37; font-weight: bold; }
.path { color: #666; word-break: break-all; font-size: 11px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #eee; }
"""


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _figure(mistake: Mistake) -> str:
    e = html.escape
    uri = data_uri(mistake.path)
    img = f'<img src="{uri}" alt="{e(mistake.path)}">' if uri else "<p>(unreadable)</p>"
    kind = ""
    if mistake.cam:  # beside the image: where the model looked for its top prediction
        looked = f"Grad-CAM for {mistake.top[0][0]}" if mistake.top else "Grad-CAM"
        img += f' <img class="gradcam" src="{mistake.cam}" alt="{e(looked)}" title="{e(looked)}">'
        kind = " class='cam'"
    top = "".join(f"<li>{e(name)}: {p * 100:.1f} %</li>" for name, p in mistake.top)
    return (
        f"<figure{kind}>{img}<figcaption><div class='true'>true: {e(mistake.true)}</div>"
        f"<ol>{top}</ol><div class='path'>{e(mistake.path)}</div></figcaption></figure>"
    )


def gallery_html(title: str, mistakes: Sequence[Mistake], weak: Sequence[WeakClass]) -> str:
    """The page: the mistakes as captioned images, most confident first, then a table of
    the weakest classes and what they were taken for."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(c.name)}</td><td>{_percent(c.f1)}</td><td>{_percent(c.recall)}</td>"
        f"<td>{c.support}</td><td>"
        + (", ".join(f"{e(name)} ({n})" for name, n in c.confused_with) or "-")
        + "</td></tr>"
        for c in weak
    )
    figures = "".join(_figure(m) for m in mistakes) or "<p>No mistakes.</p>"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{e(title)}</h1>"
        f"<h2>The {len(mistakes)} most confident mistakes</h2><div class='grid'>{figures}</div>"
        "<h2>The weakest classes</h2><table><tr><th>class</th><th>F1</th><th>recall</th>"
        f"<th>images</th><th>most often taken for</th></tr>{rows}</table>"
        "</body></html>\n"
    )
