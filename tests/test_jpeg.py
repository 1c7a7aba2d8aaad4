"""The fast pipeline's decoder (hw1.transforms.decode): simplejpeg for plain JPEGs, PIL for
the rest, the same pixels either way."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import photo
from PIL import ExifTags, Image

import hw1.transforms.decode
from hw1.transforms.decode import decode_scaled, load_rgb


@pytest.fixture
def simplejpeg_calls(monkeypatch):
    calls = []
    decode = hw1.transforms.decode.simplejpeg.decode_jpeg

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return decode(*args, **kwargs)

    monkeypatch.setattr(hw1.transforms.decode.simplejpeg, "decode_jpeg", counted)
    return calls


@pytest.mark.parametrize("need", [(10, 10), (70, 50), (100, 100), (400, 400)])
def test_a_jpeg_goes_through_simplejpeg_at_pils_draft_scale(tmp_path, simplejpeg_calls, need):
    path = tmp_path / "a.jpg"
    photo(160, 120).save(path, quality=90)
    got = decode_scaled(path, lambda size: need)
    assert len(simplejpeg_calls) == 1
    expected = load_rgb(path, draft=lambda size: need)
    assert got.shape == (expected.height, expected.width, 3) and got.dtype == np.uint8
    assert got.shape[1] >= min(need[0], 160) and got.shape[0] >= min(need[1], 120)
    assert np.abs(got.astype(int) - np.asarray(expected, int)).max() <= 1


@pytest.mark.parametrize("kind", ["png", "grey jpeg", "cmyk jpeg", "turned jpeg"])
def test_other_files_go_through_pil_or_match_it(tmp_path, simplejpeg_calls, kind):
    """PNG, CMYK and EXIF-turned JPEGs: PIL (upright, RGB); a greyscale JPEG: simplejpeg,
    as RGB. Every one gives load_rgb's pixels at the same size."""
    image = photo(64, 48)
    path = tmp_path / ("a.png" if kind == "png" else "a.jpg")
    if kind == "png":
        image.save(path)
    elif kind == "grey jpeg":
        image.convert("L").save(path, quality=90)
    elif kind == "cmyk jpeg":
        image.convert("CMYK").save(path, quality=90)
    else:
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = 6
        image.save(path, quality=90, exif=exif)
    seen = []
    got = decode_scaled(path, lambda size: seen.append(size) or (16, 16))
    expected = load_rgb(path, draft=lambda size: (16, 16))
    assert seen == [(48, 64) if kind == "turned jpeg" else (64, 48)]  # upright, full size
    assert len(simplejpeg_calls) == (kind == "grey jpeg")
    assert got.shape == (expected.height, expected.width, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - np.asarray(expected, int)).max() <= 1


def test_an_exif_block_after_fill_bytes_is_still_found(tmp_path):
    """JPEG allows 0xFF fill bytes before a marker: the header walk steps over them and
    still finds the EXIF orientation, so the image is turned upright."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    path = tmp_path / "a.jpg"
    photo(64, 48).save(path, quality=90, exif=exif)
    data = path.read_bytes()
    path.write_bytes(data[:2] + b"\xff\xff" + data[2:])  # fill bytes after SOI
    assert hw1.transforms.decode._has_exif(path.read_bytes())
    assert decode_scaled(path, lambda size: (64, 64)).shape[:2] == (64, 48)  # upright
