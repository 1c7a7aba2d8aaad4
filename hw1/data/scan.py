"""Finding image files: which files are images (by extension, hidden ones never), the class
folders and their names (composed Unicode, UTF-8, hw1's order), the labelled images under
them with a walk that follows links but never loops, and the files ``inputs=`` names. What
the files hold is the image check's concern (``hw1.data.image_check``)."""

from __future__ import annotations

import glob
import logging
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from hw1.utils.errors import UserFileNotFoundError, UserValueError

log = logging.getLogger(__name__)


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


def warn_unlisted_test_files(folder: Path) -> None:
    """Warn about the files of the test folder that ``image_files`` leaves out and that
    would otherwise go unseen, since they get no row in prediction.csv: files that are not
    images by their extension (a .gif, a .heic) and links to nothing."""
    not_images = [
        display_path(p.name)
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and not is_image_file(p)
    ]
    if not_images:
        log.warning(
            "%d files in %s are not images by their extension (%s) and get no row in "
            "prediction.csv; convert them to one of those to predict them:\n  %s",
            len(not_images),
            display_path(folder),
            " ".join(IMG_EXTENSIONS),
            listed(not_images),
        )
    dangling = [p for p in sorted(folder.iterdir()) if is_image_file(p) and not p.exists()]
    if dangling:
        log.warning(
            "%d links to nothing in %s skipped:\n  %s",
            len(dangling),
            display_path(folder),
            "\n  ".join(display_path(p) for p in dangling),
        )


def listed(lines: list[str], limit: int = 20) -> str:
    """``lines`` for a message, one an indented line: the first ``limit``, then a count."""
    more = [f"... and {len(lines) - limit} more"] if len(lines) > limit else []
    return "\n  ".join(lines[:limit] + more)


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
