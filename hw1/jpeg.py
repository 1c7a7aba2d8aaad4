"""JPEG decoding for the fast train pipeline: libjpeg-turbo through simplejpeg, which
decodes at a reduced scale (its DCT scaling, ``min_width``/``min_height``) faster than
PIL's draft mode does (docs/performance.md has the rates). Everything simplejpeg does not
read as plainly (other formats, CMYK JPEGs, EXIF-turned ones) goes through PIL
(``hw1.scan.load_rgb``), which yields the same pixels within libjpeg-turbo's rounding.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import numpy as np
import simplejpeg
from PIL import ExifTags, Image

from hw1.scan import load_rgb

_ORIENTATION_TAG = b"Exif\x00\x00"


def _upright(data: bytes) -> bool:
    """No EXIF orientation that turns or mirrors the image. PIL is asked only when the
    file has an EXIF block at all (``_has_exif``): most photos' cost is a walk over the
    header's few segments."""
    if not _has_exif(data):
        return True
    with Image.open(io.BytesIO(data)) as im:
        return im.getexif().get(ExifTags.Base.Orientation, 1) == 1


def _has_exif(data: bytes) -> bool:
    """Whether a JPEG's header (the segments before its scan) holds an EXIF block, found
    by walking the segments' lengths; a header this walk does not follow is searched."""
    i = 2
    while i + 10 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: no more header segments
            return False
        if marker == 0xE1 and data[i + 4 : i + 10] == _ORIENTATION_TAG:
            return True
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return data.find(_ORIENTATION_TAG, 0, 65536) >= 0


def decode_scaled(
    path: str | os.PathLike, need: Callable[[tuple[int, int]], tuple[int, int]]
) -> np.ndarray:
    """``path`` as upright RGB pixels, uint8 (H, W, 3), decoded no smaller than ``need``
    asks, given the upright size (as ``load_rgb``'s ``draft``): a plain JPEG by simplejpeg
    at the smallest scale of 1/1, 1/2, 1/4, 1/8 at least that size, anything else by PIL
    (its pixels copied, so that torch may share them). ``need`` is called
    once, or twice for a JPEG that simplejpeg starts but fails to decode."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\xff\xd8" and _upright(data):
        try:
            height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:  # not one simplejpeg reads: PIL says what is wrong, if anything
            colourspace = None
        if colourspace in ("YCbCr", "Gray"):
            w, h = need((width, height))
            # The scales PIL's draft mode takes, 1/1 to 1/8: libjpeg-turbo's others (7/8,
            # 3/4, ...) decode slower.
            k = max(
                (k for k in (2, 4, 8) if -(-width // k) >= w and -(-height // k) >= h), default=1
            )
            try:
                return simplejpeg.decode_jpeg(
                    data, "RGB", min_width=-(-width // k), min_height=-(-height // k)
                )
            except ValueError:  # e.g. truncated: PIL's reading and messages decide
                pass
    return np.array(load_rgb(io.BytesIO(data), draft=need))
