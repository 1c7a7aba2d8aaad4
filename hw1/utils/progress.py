"""Progress of long work outside training (the image check, averaging, export, ensembles,
predicting many inputs), on stderr, so that stdout keeps the commands' results.

On a terminal it is a tqdm bar. On anything else (CI logs, ``> log 2>&1``, a job's output
file) a bar would write a redrawn line every fraction of a second; there it is a plain
count instead: a line every ``COUNT_EVERY_S`` seconds and one at the end ("checked
12,000/12,000 images"). Work that ends within ``DELAY_S`` seconds shows nothing.
``HW1_PROGRESS`` overrides the choice: ``bar``, ``count`` (both shown from the start, however
short the work), ``off``, or ``auto`` (the default). Lightning's own bars (training, and the
predictions of hw1.predict and hw1.eval) are the trainer's: ``progress=`` for training.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

from hw1.utils.errors import UserValueError

T = TypeVar("T")

ENV = "HW1_PROGRESS"
MODES = ("auto", "bar", "count", "off")
DELAY_S = 2.0  # work shorter than this shows no bar and no count
COUNT_EVERY_S = 30.0  # a count line at most this often on a non-terminal


def mode() -> tuple[str, bool]:
    """(bar, count or off; whether it was asked for explicitly) from ``HW1_PROGRESS`` and
    whether stderr is a terminal."""
    asked = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if asked not in MODES:
        raise UserValueError(f"{ENV}={asked}: use one of {', '.join(MODES)}")
    if asked != "auto":
        return asked, True
    return ("bar" if sys.stderr.isatty() else "count"), False


def progress(
    items: Iterable[T],
    desc: str,
    unit: str = "items",
    total: int | None = None,
    each: bool = False,
) -> Iterator[T]:
    """``items``, passed through, showing how many are done on stderr: a tqdm bar on a
    terminal, count lines elsewhere (module docstring). ``desc`` and ``unit`` (plural) make
    the count line: "checked", "images" give "checked 120/12,000 images". ``each``: a count
    line for every item, for a few long steps (checkpoints of an ensemble, export formats)
    that may run under a bar of their own (Lightning's)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    shown, forced = mode()
    if shown == "off":
        yield from items
    elif shown == "bar" and not each:
        delay = 0.0 if forced else DELAY_S
        yield from tqdm(items, desc=desc, unit=unit, total=total, delay=delay, file=sys.stderr)
    else:
        yield from counted(
            items,
            desc,
            unit,
            total,
            every=0.0 if each else COUNT_EVERY_S,
            delay=0.0 if forced or each else DELAY_S,
        )


def count_line(desc: str, done: int, total: int | None, unit: str) -> str:
    """The count: ``checked 1,200/12,000 images`` (``checked 1,200 images`` without a total)."""
    of = f"/{total:,}" if total is not None else ""
    return f"{desc} {done:,}{of} {unit}"


def counted(
    items: Iterable[T], desc: str, unit: str, total: int | None, every: float, delay: float
) -> Iterator[T]:
    """``items``, with a count line on stderr every ``every`` seconds once ``delay``
    seconds have passed, and one at the end if any was printed or ``delay`` has passed.
    Hand-written: tqdm on a non-terminal still redraws its bar with carriage returns."""
    start = last = time.monotonic()
    done, printed = 0, False
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - start >= delay and now - last >= every and done != total:
            print(count_line(desc, done, total, unit), file=sys.stderr, flush=True)
            last, printed = now, True
    if printed or time.monotonic() - start >= delay:
        print(count_line(desc, done, total, unit), file=sys.stderr, flush=True)
