"""Files hw1 writes: atomically, so that an interrupted run never leaves half of one."""

from __future__ import annotations

import csv
import io
import os
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hw1.utils.errors import UserValueError


def temporary_beside(path: Path) -> Path:
    """A hidden name in ``path``'s folder that no other process or call picks, to write
    ``path``'s next content under before renaming it into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write through a temporary file in the same folder, then rename it into place: an
    interrupted run leaves the old file or none, never half of one. The temporary name is
    unique, so that processes writing the same file at once (DDP ranks, a sweep's jobs
    sharing a data root) each rename a whole file of their own: the last one wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        with open(tmp, "xb") as f:  # x: never another writer's file
            f.write(data.encode() if isinstance(data, str) else data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def csv_text(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as CSV text with ``\\n`` line ends, whatever the platform."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def check_writable_file(path: Path, key: str) -> None:
    """Refuses, before any work, an output path that write_atomically could not write: a
    folder, a path through a file, or a place this process may not write (a read-only file
    system, no permission): a file is created there and removed at once; the missing
    folders are made on writing."""
    if path.is_dir():
        raise UserValueError(
            f"{key}={path} is a folder: give a file path in it, e.g. {key}={path / path.name}.out"
        )
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserValueError(f"{key}={path}: {existing} is a file, so no folder can be made there")
    try:  # what permissions alone do not tell: a read-only or special file system (/sys)
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".hw1-write-check."):
            pass
    except OSError as error:
        raise UserValueError(
            f"{key}={path}: cannot write in {existing} ({error.strerror}): choose another place"
        ) from None
