"""Decoding image files to upright 8-bit RGB: any format through PIL (``load_rgb``), and
JPEGs for the fast train pipeline through libjpeg-turbo by simplejpeg, which decodes at a
reduced scale (its DCT scaling, ``min_width``/``min_height``) faster than PIL's draft mode
does (docs/performance.md has the rates). Everything simplejpeg does not read as plainly
(other formats, CMYK JPEGs, EXIF-turned ones) goes through ``load_rgb``, which yields the
same pixels within libjpeg-turbo's rounding.

Pillow refuses images above ``Image.MAX_IMAGE_PIXELS`` as decompression bombs. hw1 checks
each header's size against ``data.max_image_pixels`` itself (the image check), so its own
opens lift Pillow's limit for their duration only (``pillow_limit_lifted``): the rest of
the user's process keeps Pillow's guard.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable, Iterator

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin

_ORIENTATION_TAG = b"Exif\x00\x00"
# Pillow's limit as the user's process has it; restored when hw1's last open ends.
_limit_lock = threading.Lock()
_limit_users = 0
_saved_limit: int | None = None


@contextlib.contextmanager
def pillow_limit_lifted() -> Iterator[None]:
    """Pillow's decompression-bomb limit off while hw1 opens an image, and back as it was
    after. hw1 compares each image's size with ``data.max_image_pixels`` before decoding;
    Pillow's own process-wide limit would hide a too-large image's size behind "not an
    image". Pillow reads the limit as a module global (no per-call argument), so threads
    that open at once share one lifting, counted, and the last one out restores it."""
    global _limit_users, _saved_limit
    with _limit_lock:
        if _limit_users == 0:
            _saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _saved_limit


def _upright(data: bytes) -> bool:
    """No EXIF orientation that turns or mirrors the image. PIL is asked only when the
    file has an EXIF block at all (``_has_exif``): most photos' cost is a walk over the
    header's few segments."""
    if not _has_exif(data):
        return True
    with pillow_limit_lifted(), Image.open(io.BytesIO(data)) as im:
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
    path: str | os.PathLike | bytes, need: Callable[[tuple[int, int]], tuple[int, int]]
) -> np.ndarray:
    """``path`` (or an image file's bytes, as a shard or a dataset holds them) as upright
    RGB pixels, uint8 (H, W, 3), decoded no smaller than ``need`` asks, given the upright
    size (as ``load_rgb``'s ``draft``): a plain JPEG by simplejpeg at the smallest scale of
    1/1, 1/2, 1/4, 1/8 at least that size, anything else by PIL (its pixels copied, so that
    torch may share them). ``need`` is called once, or twice for a JPEG that simplejpeg
    starts but fails to decode."""
    if isinstance(path, bytes):
        data = path
    else:
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


def load_rgb(
    path: str | os.PathLike | io.BytesIO,
    draft: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
) -> Image.Image:
    """Any image file as 8-bit RGB, upright: EXIF orientation applied; grayscale, palette
    and CMYK converted; 16-bit scaled to 8 bits (PIL's convert clips it at 255);
    transparency laid on white.

    ``draft``: given the upright size, the smallest size the caller needs; a JPEG is then
    decoded at the largest 1/2, 1/4 or 1/8 scale that is at least that (PIL's draft mode).
    It is called once for every format, with the size the returned image has before any
    reduction, so that a caller drawing from that size sees the upright geometry.
    """
    with pillow_limit_lifted(), Image.open(path) as im:
        drafted = draft is not None and request_draft(im, draft)
        ImageOps.exif_transpose(im, in_place=True)  # in place: no copy of an upright image
        if draft is not None and not drafted:
            draft(im.size)  # no draft mode: decoded at full size, now upright whatever the format
        if im.mode.startswith("I;16") or (im.mode == "I" and im.getextrema()[1] > 255):
            im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im)
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")  # convert would copy an RGB one


# EXIF orientations that turn the image a quarter: the stored width is the upright height.
_QUARTER_TURNS = (5, 6, 7, 8)


def request_draft(im: Image.Image, draft: Callable[[tuple[int, int]], tuple[int, int]]) -> bool:
    """Set PIL's draft mode on an opened JPEG to the size ``draft`` asks for, given and
    taken upright (a quarter-turned JPEG stores its width as its upright height). Other
    formats have no draft mode, and Pillow reports some (TIFF) already turned: False, and
    ``draft`` is left uncalled."""
    if not isinstance(im, JpegImagePlugin.JpegImageFile):
        return False
    turned = im.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
    upright = im.size[::-1] if turned else im.size
    need = draft(upright)
    im.draft("RGB", need[::-1] if turned else need)
    return True
