"""Files hw1 writes: atomically, so that an interrupted run never leaves half of one."""

from __future__ import annotations

import csv
import io
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
