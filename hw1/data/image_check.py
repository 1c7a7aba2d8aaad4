"""The image check: every file found is decoded once, in parallel, as training will decode
it. A file that is unreadable, missing or over the pixel limit is left out of train and val
with one warning, and stops the run when it is a test image, which needs its row in
prediction.csv (as do test names that would give two rows, or none in UTF-8); each is named
with why. The results are cached in the data root, so that a run decodes only new or changed
files. Finding the files is ``hw1.data.scan``'s concern."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from hw1.data.scan import display_path, image_files, is_utf8, listed, warn_unlisted_test_files
from hw1.transforms.decode import load_rgb, pillow_limit_lifted
from hw1.utils.errors import UserValueError
from hw1.utils.io import write_atomically
from hw1.utils.progress import progress

log = logging.getLogger(__name__)


# The image check's results, kept in the data root so the next run does not decode again.
SCAN_CACHE = ".hw1-images.json"


# The cache's layout: a cache of another version is checked again, not misread.
SCAN_CACHE_VERSION = 2


# Pillow's limit: Image.open refuses an image of more pixels as a decompression bomb.
DEFAULT_MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
# The image check compares each header's size with data.max_image_pixels before decoding;
# hw1's own opens lift Pillow's limit while they last (decode.pillow_limit_lifted).


# Images above this many pixels are decoded one at a time by the image check: eight
# threads decoding 100-megapixel images at once would take gigabytes.
LARGE_IMAGE_PIXELS = 4096 * 4096


_large_decodes = threading.Semaphore(1)


# Why the image check leaves a file out (ImageInfo.problem), and what to tell the user.
UNREADABLE, MISSING, TOO_LARGE = "unreadable", "missing", "too large"


_PROBLEM_TEXT = {
    UNREADABLE: "empty, truncated or not an image",
    MISSING: "missing: a dangling link, or removed after it was listed",
}


class ImageInfo(NamedTuple):
    """What checking a file found: readable, its size (the header's when too large, else
    0 x 0 when not readable), content hash, and why it is left out ("" when readable)."""

    readable: bool
    width: int
    height: int
    sha1: str
    problem: str = ""

    def describe(self, max_pixels: int | None = None) -> str:
        """Why the file is left out, in words."""
        if self.problem == TOO_LARGE:
            limit = max_pixels or DEFAULT_MAX_PIXELS
            return (
                f"too large: {self.width} x {self.height} = {self.width * self.height:,} pixels,"
                f" over data.max_image_pixels={limit} (raise it to use the image)"
            )
        return _PROBLEM_TEXT[self.problem]


def _inspect(path: Path, max_pixels: int) -> ImageInfo:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ImageInfo(False, 0, 0, "", MISSING)
    except OSError:
        return ImageInfo(False, 0, 0, "", UNREADABLE)
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        # the header only: no pixels decoded yet
        with pillow_limit_lifted(), Image.open(io.BytesIO(data)) as im:
            pixels = im.width * im.height
            if pixels > max_pixels:
                return ImageInfo(False, im.width, im.height, sha1, TOO_LARGE)
        if pixels > LARGE_IMAGE_PIXELS:
            with _large_decodes:
                width, height = load_rgb(io.BytesIO(data)).size
        else:
            width, height = load_rgb(io.BytesIO(data)).size  # decoded as training will
        return ImageInfo(True, width, height, sha1)
    except (OSError, SyntaxError, ValueError):
        return ImageInfo(False, 0, 0, sha1, UNREADABLE)


def _within(info: ImageInfo, max_pixels: int) -> ImageInfo | None:
    """A cached result under this run's pixel limit; None when the file must be decoded
    again (it was too large for an earlier, lower limit)."""
    if info.problem == TOO_LARGE and info.width * info.height <= max_pixels:
        return None
    if info.readable and info.width * info.height > max_pixels:
        return ImageInfo(False, info.width, info.height, info.sha1, TOO_LARGE)
    return info


def _read_cache(cache_file: Path | None) -> dict[str, list]:
    """The cached results by path; empty (everything checked again) when there is no
    cache, or one of another version or shape, which is then replaced."""
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = None
    if (
        isinstance(cache, dict)
        and cache.get("version") == SCAN_CACHE_VERSION
        and isinstance(cache.get("files"), dict)
    ):
        return {k: v for k, v in cache["files"].items() if isinstance(v, list) and len(v) == 7}
    log.warning(
        "%s is not an image-check cache of this hw1 (an older hw1's, or damaged): checking "
        "every image again",
        cache_file,
    )
    return {}


def inspect_images(
    files: Sequence[Path], root: Path | None = None, max_pixels: int | None = None
) -> dict[Path, ImageInfo]:
    """Decode every file once, in parallel (decoding releases the GIL, so threads suffice),
    images over ``LARGE_IMAGE_PIXELS`` one at a time. A file of more than ``max_pixels``
    (default: Pillow's limit) is not decoded: it is too large. A file that no longer
    exists (a dangling link, one removed since it was listed) is missing.

    With ``root``, results are cached in ``root/.hw1-images.json`` keyed by the path under
    ``root``, file size and mtime: the next run decodes only new or changed files. A
    read-only root is checked every time.
    """
    limit = max_pixels or DEFAULT_MAX_PIXELS
    cache_file = root / SCAN_CACHE if root is not None else None
    cache = _read_cache(cache_file)
    keys = {f: f.relative_to(root).as_posix() if root is not None else str(f) for f in files}
    found: dict[Path, ImageInfo] = {}
    todo, fresh = [], {}
    for f in files:
        try:
            st = f.stat()
        except OSError:
            found[f] = ImageInfo(False, 0, 0, "", MISSING)
            continue
        fresh[keys[f]] = stamp = [st.st_size, st.st_mtime_ns]
        hit = cache.get(keys[f])
        info = _within(ImageInfo(*hit[2:]), limit) if hit is not None and hit[:2] == stamp else None
        if info is not None:
            found[f] = info
        else:
            todo.append(f)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        results = pool.map(lambda f: _inspect(f, limit), todo)
        if todo:  # a bar or a count on a big folder's first check (hw1.utils.progress)
            results = progress(results, "checked", "images", total=len(todo))
        found.update(zip(todo, results, strict=True))
    checked = [f for f in todo if found[f].problem != MISSING]
    if cache_file is not None and checked:
        cache.update({keys[f]: [*fresh[keys[f]], *found[f]] for f in checked})
        try:
            write_atomically(
                cache_file, json.dumps({"version": SCAN_CACHE_VERSION, "files": cache})
            )
        except OSError as e:
            log.debug("image-check cache not written (%s): the next run checks again", e)
    return {f: found[f] for f in files}


def left_out_lines(
    files: Sequence[Path], info: dict[Path, ImageInfo], limit: int | None, under: Path | None = None
) -> list[str]:
    """One line per file the check leaves out: the path (relative to ``under``) and why."""
    return [
        f"{display_path(f.relative_to(under) if under else f)}: {info[f].describe(limit)}"
        for f in files
    ]


def readable_samples(
    samples: Sequence[tuple[str, int]], root: Path, max_pixels: int | None = None
) -> list[tuple[str, int]]:
    """The (path, class index) samples whose image decodes; the others (unreadable,
    missing, too large) are listed in one warning and left out, so that no epoch or
    evaluation stops on one bad file."""
    paths = [Path(p) for p, _ in samples]
    info = inspect_images(paths, root, max_pixels)
    bad = [p for p in paths if not info[p].readable]
    if bad:
        lines = left_out_lines(bad, info, max_pixels)
        log.warning("%d images left out:\n  %s", len(bad), "\n  ".join(lines))
    return [(p, c) for p, c in samples if info[Path(p)].readable]


def check_test_images(folder: Path, max_pixels: int | None = None) -> list[Path]:
    """The test images, checked as prediction.csv needs them (training, ``hw1.predict``
    and ``hw1.check`` call this before any work): an error naming the files when two share
    a name without extension (two rows of the same image_name), a name is not valid UTF-8
    (prediction.csv is UTF-8), or an image is left out by the image check (every test
    image needs a row). Links to nothing are skipped with a warning; an empty list when
    the folder has no images."""
    files = image_files(folder)
    warn_unlisted_test_files(folder)
    problems = []
    by_stem = defaultdict(list)
    for f in files:
        by_stem[f.stem].append(f)
    groups = [group for group in by_stem.values() if len(group) > 1]
    same = [" and ".join(display_path(f.name) for f in group) for group in groups]
    if same:
        problems.append(
            f"{len(same)} names in {display_path(folder)} are shared by several test images, which "
            f"would give rows of the same image_name:\n  {listed(same)}\n"
            "Rename or remove all but one of each."
        )
    not_utf8 = [display_path(f.name) for f in files if not is_utf8(f.name)]
    if not_utf8:
        problems.append(
            f"{len(not_utf8)} test image names in {display_path(folder)} are not valid UTF-8, "
            f"which prediction.csv cannot hold:\n  {listed(not_utf8)}\n"
            "Rename them (e.g. convmv -f latin1 -t utf8 --notest FILE)."
        )
    info = inspect_images(files, folder.parent, max_pixels)
    bad = [f for f in files if not info[f].readable]
    if bad:
        lines = left_out_lines(bad, info, max_pixels)
        problems.append(
            f"{len(bad)} of {len(files)} test images in {display_path(folder)} cannot be read:\n"
            f"  {listed(lines)}\n"
            "Replace or remove them: every test image needs a row in prediction.csv."
        )
    if problems:
        raise UserValueError("\n".join(problems))
    return files
