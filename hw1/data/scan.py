"""Image files: which files are images, reading one as upright 8-bit RGB, and the image
check (every file decoded once, in parallel, the results cached in the data root)."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import threading
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from hw1.transforms.decode import load_rgb, pillow_limit_lifted
from hw1.utils.errors import UserFileNotFoundError, UserValueError
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


def display_path(path: str | os.PathLike) -> str:
    """A path for messages: bytes that are not UTF-8 (an old archive's ``caf\\xe9.png``)
    shown as ``\\xe9``, where printing the raw name would raise."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    """Whether a file name decoded from disk is valid UTF-8 (Python keeps bytes that are
    not as lone surrogates, which no UTF-8 file such as prediction.csv can hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def nfc(name: str) -> str:
    """A name in Unicode's composed form (NFC). One name can be spelt two ways, ``café``
    with one code point for é or with e and a combining accent (NFD, as macOS's file
    systems wrote names, and as a copy from them keeps them): hw1 compares and stores class
    names composed, so that a folder copied through macOS still matches a checkpoint
    trained on the composed spelling, and prediction.csv holds one spelling."""
    return unicodedata.normalize("NFC", name)


def nfc_names(names: Iterable[str]) -> list[str]:
    return [nfc(n) for n in names]


def class_folders(folder: str | os.PathLike) -> dict[str, str]:
    """{class name (composed, NFC): its folder's name on disk} of ``folder``'s class
    folders; an error naming both when two folders are spellings of one name, whose
    images would otherwise go to two classes of the same name, or one of them to none."""
    found: dict[str, str] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        name = nfc(entry.name)
        if name in found:
            a, b = (
                f"{display_path(Path(folder) / n)} ({'composed' if n == name else 'decomposed'})"
                for n in (found[name], entry.name)
            )
            raise UserValueError(
                f"{a} and {b} are one class name spelt two ways in Unicode (a copy through "
                "macOS can leave names decomposed): merge them into one folder"
            )
        found[name] = entry.name
    return found


def class_names(folder: str | os.PathLike) -> list[str]:
    """Class folder names (composed, NFC: ``nfc``), in numeric order when every name is an
    integer.

    ImageFolder sorts names as text (0, 1, 10, 100, 11, ...); a label written from that
    index instead of the folder name scores near chance on the HW1 data.
    """
    return ordered_class_names(class_folders(folder))


def ordered_class_names(names: Iterable[str]) -> list[str]:
    """Class names in hw1's order, whatever the source: numeric when every name is an
    integer, else as text (``class_names``)."""
    names = list(names)
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def is_image_file(path: str | os.PathLike) -> bool:
    """An image by its extension, case-insensitively; hidden files (``.DS_Store``, macOS's
    ``._name.jpg`` resource forks) are not images whatever their extension."""
    name = os.path.basename(path)
    return not name.startswith(".") and has_file_allowed_extension(name, IMG_EXTENSIONS)


def labelled_files(folder: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """(path, class index) of every image under ``folder/<class>/``, in torchvision's
    ``make_dataset`` order; empty classes allowed (the data module names them in its own
    error).

    Links to folders are followed, but none that would list an image twice or under
    another class: a link to a folder already listed (``ln -s . train/c/loop``), to one
    above the class folder (``ln -s .. train/c/up``: a loop, which would also list the
    other classes' images as this one's), or into another class's folder. Such links are
    named in one warning.
    """
    index = {c: i for i, c in enumerate(classes)}
    # each class's folder as it is spelt on disk (a checkpoint's composed name, a folder
    # copied through macOS decomposed: see nfc)
    on_disk = class_folders(folder) if os.path.isdir(folder) else {}
    paths = {name: os.path.join(folder, on_disk.get(nfc(name), name)) for name in index}
    tops = {name: os.path.realpath(path) for name, path in paths.items() if os.path.isdir(path)}
    seen = {_identity(paths[name]) for name in tops}
    skipped: list[str] = []
    samples = []
    for name in sorted(tops):  # as make_dataset: class names as text
        others = [real for other, real in tops.items() if other != name]
        walked = _walk_once(paths[name], seen, skipped, tops[name], others)
        for root, files in sorted(walked):
            samples += [
                (os.path.join(root, f), index[name]) for f in sorted(files) if is_image_file(f)
            ]
    _warn_skipped(skipped)
    return samples


def _walk_once(
    top: str,
    seen: set[tuple[int, int]],
    skipped: list[str],
    real_top: str | None = None,
    others: Sequence[str] = (),
) -> list[tuple[str, list[str]]]:
    """(folder, its file names) under ``top``, following links to folders but never into
    a folder ``seen`` already (which ends any loop), one above ``real_top`` or one inside
    ``others``; each link left out is added to ``skipped``, with why."""
    real_top = real_top or os.path.realpath(top)
    seen.add(_identity(top))
    walked = []
    for root, dirs, files in os.walk(top, followlinks=True):
        for d in sorted(dirs):
            path = os.path.join(root, d)
            try:
                key, real = _identity(path), os.path.realpath(path)
            except OSError:
                dirs.remove(d)
                continue
            if key in seen:
                why = "listed already"
            elif _inside(real_top, real):
                why = "a folder above it: a loop"
            elif any(_inside(real, other) for other in others):
                why = "inside another class's folder"
            else:
                why = ""
            if why:  # left out, and not marked seen: it may be listed under its own class
                dirs.remove(d)
                skipped.append(f"{display_path(path)} -> {display_path(real)} ({why})")
            else:
                seen.add(key)
        walked.append((root, files))
    return walked


def _inside(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or under it."""
    return os.path.commonpath([path, folder]) == folder


def _warn_skipped(
    skipped: list[str], why: str = "each image is used once, under its own class"
) -> None:
    if skipped:
        log.warning(
            "%d links to folders were not followed (%s):\n  %s",
            len(skipped),
            why,
            "\n  ".join(skipped),
        )


def _identity(folder: str) -> tuple[int, int]:
    st = os.stat(folder)
    return st.st_dev, st.st_ino


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The images of a flat folder, by extension (case-insensitive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))


GLOB_CHARS = "*?["


def input_files(inputs: str | os.PathLike) -> list[Path]:
    """The images ``inputs=`` names: a folder (every image under it, recursively, sorted),
    one image file, a glob (``photos/**/*.jpg``), or a text file of paths, one a line
    (relative to the text file's folder; blank lines and ``#`` comments skipped). Files
    that are not images by their extension are left out of folders and globs; a text
    file's paths are kept as listed, for the image check to name the missing ones."""
    text = str(inputs)
    path = Path(text).expanduser()
    if path.is_dir():
        skipped: list[str] = []  # links that would list a folder twice, or loop
        found = [
            Path(root, f)
            for root, files in _walk_once(str(path), set(), skipped)
            for f in files
            if is_image_file(f)
        ]
        _warn_skipped(skipped, "each image is predicted once")
    elif path.is_file() and is_image_file(path):
        found = [path]
    elif path.is_file():
        found = _listed_paths(path)
    elif any(c in text for c in GLOB_CHARS):
        matches = glob.glob(os.path.expanduser(text), recursive=True)
        found = [Path(m) for m in matches if os.path.isfile(m) and is_image_file(m)]
    else:
        raise UserFileNotFoundError(
            f"inputs={text}: no such file or folder. Give a folder of images, an image, a "
            "glob in quotes ('photos/**/*.jpg') or a text file of paths, one a line"
        )
    if not found:
        raise UserFileNotFoundError(
            f"inputs={text}: no images there (extensions {', '.join(IMG_EXTENSIONS)}). "
            "Give a folder of images, an image, a glob or a text file of paths"
        )
    return sorted(found) if not path.is_file() else found


def _listed_paths(listing: Path) -> list[Path]:
    """The paths of a text file, one a line, relative to its folder."""
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserValueError(
            f"inputs={listing}: neither an image nor a readable text file of paths ({e})"
        ) from None
    entries = [line.strip() for line in lines]
    return [listing.parent / Path(e).expanduser() for e in entries if e and not e.startswith("#")]


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


def _listed(lines: list[str], limit: int = 20) -> str:
    more = [f"... and {len(lines) - limit} more"] if len(lines) > limit else []
    return "\n  ".join(lines[:limit] + more)


def check_test_images(folder: Path, max_pixels: int | None = None) -> list[Path]:
    """The test images, checked as prediction.csv needs them (training, ``hw1.predict``
    and ``hw1.check`` call this before any work): an error naming the files when two share
    a name without extension (two rows of the same image_name), a name is not valid UTF-8
    (prediction.csv is UTF-8), or an image is left out by the image check (every test
    image needs a row). Links to nothing are skipped with a warning; an empty list when
    the folder has no images."""
    files = image_files(folder)
    not_images = [
        display_path(p.name)
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and not is_image_file(p)
    ]
    if not_images:  # a .gif, a .heic: no row in prediction.csv, which should not go unseen
        log.warning(
            "%d files in %s are not images by their extension (%s) and get no row in "
            "prediction.csv; convert them to one of those to predict them:\n  %s",
            len(not_images),
            display_path(folder),
            " ".join(IMG_EXTENSIONS),
            _listed(not_images),
        )
    dangling = [p for p in sorted(folder.iterdir()) if is_image_file(p) and not p.exists()]
    if dangling:
        log.warning(
            "%d links to nothing in %s skipped:\n  %s",
            len(dangling),
            display_path(folder),
            "\n  ".join(display_path(p) for p in dangling),
        )
    problems = []
    by_stem = defaultdict(list)
    for f in files:
        by_stem[f.stem].append(f)
    groups = [group for group in by_stem.values() if len(group) > 1]
    same = [" and ".join(display_path(f.name) for f in group) for group in groups]
    if same:
        problems.append(
            f"{len(same)} names in {display_path(folder)} are shared by several test images, which "
            f"would give rows of the same image_name:\n  {_listed(same)}\n"
            "Rename or remove all but one of each."
        )
    not_utf8 = [display_path(f.name) for f in files if not is_utf8(f.name)]
    if not_utf8:
        problems.append(
            f"{len(not_utf8)} test image names in {display_path(folder)} are not valid UTF-8, "
            f"which prediction.csv cannot hold:\n  {_listed(not_utf8)}\n"
            "Rename them (e.g. convmv -f latin1 -t utf8 --notest FILE)."
        )
    info = inspect_images(files, folder.parent, max_pixels)
    bad = [f for f in files if not info[f].readable]
    if bad:
        lines = left_out_lines(bad, info, max_pixels)
        problems.append(
            f"{len(bad)} of {len(files)} test images in {display_path(folder)} cannot be read:\n"
            f"  {_listed(lines)}\n"
            "Replace or remove them: every test image needs a row in prediction.csv."
        )
    if problems:
        raise UserValueError("\n".join(problems))
    return files
