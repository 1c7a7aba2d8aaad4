"""The image check (hw1.data.image_check): bad files left out of train and val with one
warning, refused in test; the cache in the data root; the pixel limit; large images decoded
one at a time."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import datamodule, make_hw1_folder
from PIL import Image
from test_predict import run_predict

import hw1.data.image_check
from hw1.check import report
from hw1.data.image_check import SCAN_CACHE
from hw1.utils.config import compose_config


def _plant_bad_images(root: Path) -> list[Path]:
    """An empty file, a truncated JPEG and a web page saved as .jpg."""
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 99, 199)).save(good, format="JPEG")
    bad = [root / "train" / "0" / "empty.jpg", root / "train" / "1" / "cut.jpg"]
    bad.append(root / "val" / "2" / "page.jpg")
    bad[0].write_bytes(b"")
    bad[1].write_bytes(good.getvalue()[:200])
    bad[2].write_text("<!doctype html><html>404</html>")
    return bad


def test_unreadable_train_and_val_images_are_left_out_with_one_warning(tmp_path, caplog):
    make_hw1_folder(tmp_path, ["0", "1", "2"], train=4, val=2, test=0)
    bad = _plant_bad_images(tmp_path)
    dm = datamodule(tmp_path)
    with caplog.at_level("WARNING", logger="hw1.data.image_check"):
        dm.validate()
        dm.setup("fit")
    warnings = [r.getMessage() for r in caplog.records if r.name == "hw1.data.image_check"]
    assert len(warnings) == 1 and all(str(p) in warnings[0] for p in bad), warnings
    assert (len(dm.train_set), len(dm.val_set)) == (12, 6)
    kept = {Path(p) for p, _ in dm.train_set.samples + dm.val_set.samples}
    assert not kept & set(bad)
    # every remaining sample loads: no crash mid-epoch
    assert sum(1 for _ in dm.train_dataloader()) == 3 and sum(1 for _ in dm.val_dataloader()) == 2


def test_the_image_check_is_cached_next_to_the_data(tmp_path, monkeypatch):
    make_hw1_folder(tmp_path, ["a", "b"], train=3, val=2, test=2)
    _plant = tmp_path / "train" / "a" / "bad.jpg"
    _plant.write_bytes(b"")
    decoded = []
    real = hw1.data.image_check.load_rgb
    monkeypatch.setattr(hw1.data.image_check, "load_rgb", lambda f: decoded.append(f) or real(f))

    datamodule(tmp_path).validate()
    assert len(decoded) == 6 + 4 + 4  # train, val, test (bad.jpg has no image header)
    assert (tmp_path / SCAN_CACHE).is_file()

    decoded.clear()
    dm = datamodule(tmp_path)
    dm.validate()
    assert decoded == [] and len(dm.samples["train"]) == 6  # the cache says bad.jpg is bad

    _plant.write_bytes((tmp_path / "train" / "a" / "0.jpg").read_bytes())  # fixed: size changes
    dm = datamodule(tmp_path)
    dm.validate()
    assert len(decoded) == 1 and len(dm.samples["train"]) == 7


def test_a_read_only_data_root_is_checked_without_a_cache(tmp_path, monkeypatch):
    make_hw1_folder(tmp_path, ["a", "b"], train=2, val=1, test=0)

    def read_only(path, data):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(hw1.data.image_check, "write_atomically", read_only)
    dm = datamodule(tmp_path)
    dm.validate()
    assert len(dm.samples["train"]) == 4 and not (tmp_path / SCAN_CACHE).exists()


def huge_png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit PNG of ``width`` x ``height`` pixels, all black, written row block by
    row block: small on disk and in memory, whatever size its header claims."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    z = zlib.compressobj(9)
    rows = b"\0" * ((width + 7) // 8 + 1) * 100  # 100 rows: filter byte 0, then zeros
    idat = b"".join(z.compress(rows) for _ in range(height // 100)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_dangling_links_and_vanished_files_are_left_out_and_named(tmp_path, caplog, monkeypatch):
    make_hw1_folder(tmp_path, ["a", "b"], train=3, val=1, test=1)
    dangling = tmp_path / "train" / "a" / "gone.jpg"
    dangling.symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "test" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    vanishing = tmp_path / "train" / "b" / "1.jpg"
    real_stat = Path.stat

    def removed_after_listing(self, *args, **kwargs):  # listed by the walk, gone at the check
        if self == vanishing:
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", removed_after_listing)
    dm = datamodule(tmp_path)
    with caplog.at_level("WARNING"):  # the scan's warnings and the check's
        dm.validate()
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{tmp_path / 'test' / 'gone.png'}" in warnings  # a test link to nothing: skipped
    assert f"{dangling}: missing: a dangling link, or removed after it was listed" in warnings
    assert f"{vanishing}: missing: a dangling link" in warnings
    kept = [Path(p) for p, _ in dm.samples["train"]]
    assert len(kept) == 5 and dangling not in kept and vanishing not in kept


def test_huge_images_are_reported_too_large_with_their_size_without_decoding(tmp_path, caplog):
    make_hw1_folder(tmp_path, ["a", "b"], train=2, val=1, test=0)
    huge = tmp_path / "train" / "a" / "scan.png"
    huge_png(huge, 20000, 10000)  # 200 megapixels, over Pillow's limit
    assert huge.stat().st_size < 100_000
    dm = datamodule(tmp_path)
    with caplog.at_level("WARNING", logger="hw1.data.image_check"):
        dm.validate()
    assert (
        f"{huge}: too large: 20000 x 10000 = 200,000,000 pixels, over "
        "data.max_image_pixels=178956970 (raise it to use the image)"
    ) in caplog.text
    assert len(dm.samples["train"]) == 4
    (tmp_path / "test" / "scan.png").write_bytes(huge.read_bytes())
    with pytest.raises(ValueError, match=r"(?s)1 of 1 test images.*scan\.png: too large: 20000 x"):
        datamodule(tmp_path).validate()


def test_data_max_image_pixels_sets_the_limit_over_a_cached_check(tmp_path, caplog):
    make_hw1_folder(tmp_path, ["a", "b"], train=2, val=1, test=0, size=40)  # 1600 pixels
    dm = datamodule(tmp_path)
    dm.validate()
    assert len(dm.samples["train"]) == 4  # Pillow's limit; the results are cached
    big = tmp_path / "train" / "a" / "big.png"
    Image.new("RGB", (60, 40)).save(big)  # 2400 pixels
    small = datamodule(tmp_path, max_image_pixels=2000)
    with caplog.at_level("WARNING", logger="hw1.data.image_check"):
        small.validate()
    assert (
        f"{big}: too large: 60 x 40 = 2,400 pixels, over data.max_image_pixels=2000" in caplog.text
    )
    assert len(small.samples["train"]) == 4  # cached and new files alike
    raised = datamodule(tmp_path, max_image_pixels=2400)
    raised.validate()
    assert len(raised.samples["train"]) == 5


def test_the_check_decodes_large_images_one_at_a_time(tmp_path, monkeypatch):
    import threading
    import time

    for i in range(6):
        Image.new("RGB", (40, 40)).save(tmp_path / f"large{i}.png")
        Image.new("RGB", (20, 20)).save(tmp_path / f"small{i}.png")
    monkeypatch.setattr(hw1.data.image_check, "LARGE_IMAGE_PIXELS", 1000)
    active = {"large": 0, "small": 0}
    most = {"large": 0, "small": 0}
    lock = threading.Lock()
    real = hw1.data.image_check.load_rgb

    def counted(f):
        size = Image.open(f).width
        kind = "large" if size == 40 else "small"
        with lock:
            active[kind] += 1
            most[kind] = max(most[kind], active[kind])
        time.sleep(0.05)
        with lock:
            active[kind] -= 1
        return real(f)

    monkeypatch.setattr(hw1.data.image_check, "load_rgb", counted)
    monkeypatch.setattr(hw1.data.image_check.os, "cpu_count", lambda: 4)  # eight threads
    info = hw1.data.image_check.inspect_images(sorted(tmp_path.iterdir()))
    assert all(i.readable for i in info.values())
    assert most["large"] == 1 and most["small"] > 1, most


@pytest.mark.parametrize("cache", ["[1, 2, 3]", '{"0.jpg": "x"}', "old"])
def test_a_cache_of_another_shape_or_version_is_rebuilt_with_a_warning(tmp_path, caplog, cache):
    make_hw1_folder(tmp_path, ["a", "b"], train=2, val=1, test=0)
    bad = tmp_path / "train" / "a" / "empty.jpg"
    bad.write_bytes(b"")
    if cache == "old":  # an earlier layout, {path: [size, mtime_ns, readable, w, h, sha1]}
        st = bad.stat()
        cache = json.dumps({"train/a/empty.jpg": [st.st_size, st.st_mtime_ns, True, 8, 8, ""]})
    (tmp_path / SCAN_CACHE).write_text(cache)
    dm = datamodule(tmp_path)
    with caplog.at_level("WARNING", logger="hw1.data.image_check"):
        dm.validate()
    assert f"{tmp_path / SCAN_CACHE} is not an image-check cache of this hw1" in caplog.text
    assert len(dm.samples["train"]) == 4  # empty.jpg is checked, not taken from the cache
    rebuilt = json.loads((tmp_path / SCAN_CACHE).read_text())
    assert rebuilt["version"] == hw1.data.image_check.SCAN_CACHE_VERSION
    assert "train/a/empty.jpg" in rebuilt["files"]


def _same_stems(test: Path) -> str:
    shutil.copy(test / "img-a-0.jpg", test / "img-a-0.png")
    return "img-a-0.jpg and img-a-0.png"


def _not_utf8(test: Path) -> str:
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, from an old archive
    try:
        shutil.copy(test / "img-b-0.png", test / name)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only UTF-8 names")
    return "caf\\xe9.png"


@pytest.mark.parametrize("plant", [_same_stems, _not_utf8])
def test_test_names_that_make_no_csv_stop_training_predict_and_check(tmp_path, plant):
    """Two test images of one name without extension (two rows of one image_name) and a
    name that is not UTF-8 (no UTF-8 CSV holds it): training, hw1.predict and hw1.check
    refuse before any work, naming the files."""
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b"], train=2, val=1, test=1)
    named = plant(root / "test")
    with pytest.raises(ValueError, match=re.escape(named)):
        datamodule(root).validate()  # what training runs before building a model
    with pytest.raises(ValueError, match=re.escape(named)):
        run_predict(root, tmp_path / "out.csv", "ckpt_path=/never/loaded.ckpt")
    text, problems = report(compose_config([f"data.root={root}"], config_name="check"))
    assert len(problems) == 1 and named in problems[0], problems
    text.encode("utf-8")  # printable, whatever the file names
