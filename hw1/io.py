"""Files hw1 writes: atomically, so that an interrupted run never leaves half of one."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write through a temporary file in the same folder, then rename it into place: an
    interrupted run leaves the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def csv_text(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as CSV text with ``\\n`` line ends, whatever the platform."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()
