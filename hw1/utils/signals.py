"""Stopping on SIGTERM (``kill``, a scheduler's preemption or time limit) and Ctrl-C
(SIGINT) at points of the program's choosing: SignalLatch notes the signal, the owner reads
it between two steps. Training saves last.ckpt there (hw1.training.stopping); prediction,
evaluation and averaging stop there with nothing written (Stopped)."""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class SignalLatch:
    """Notes the first SIGTERM or SIGINT this process receives, and nothing more: Python
    runs a handler between two bytecodes, where no collective or file write may start, so
    the owner reads ``received`` at points of its own choosing. The handlers that were in
    place (Python's, a job scheduler's) are chained; a second Ctrl-C raises
    KeyboardInterrupt at once. ``announce(signum)`` is called on the first signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: Callable[[int], None] | None = None) -> None:
        self.received: int = 0  # the signal this process got, 0 for none
        self.announce = announce
        self.what, self.again = "", ""  # for stop_if_signalled's message (latched)
        self._installed = False
        self._chained: dict[int, Any] = {}

    def arm(self) -> None:
        """Forget any earlier signal and note the handlers in place now, to chain them."""
        self.received = 0
        self._installed = False
        self._chained = {s: signal.getsignal(s) for s in self.SIGNALS}

    def install(self) -> bool:
        """Install the handlers once (only the main thread may); True the first time."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return False
        self._installed = True
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)
        return True

    def uninstall(self) -> None:
        """Put back the handlers that ``arm`` found."""
        if not self._installed:
            return
        self._installed = False
        for signum, handler in self._chained.items():
            if handler is not None:
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C
        if not self.received:
            self.received = signum
            if self.announce is not None:
                self.announce(signum)
        previous = self._chained.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)


class Stopped(SystemExit):
    """A command stopped by a signal before it wrote anything: exit status 128 + the signal
    (143 for SIGTERM, 130 for Ctrl-C), as a shell reports a process killed by it, so that
    a scheduler does not take the work as done."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def stop_text(signum: int, what: str, again: str) -> str:
    """The log line of a command stopped by ``signum``: what stopped, and what to rerun."""
    return f"{signal.Signals(signum).name}: stopped {what}; nothing was written. Rerun: {again}"


def rerun_text() -> str:
    """This command line, to run again."""
    module = Path(sys.argv[0]).stem
    command = f"python -m hw1.{module}" if module in COMMANDS else shlex.quote(sys.argv[0])
    return " ".join([command, *map(shlex.quote, sys.argv[1:])])


COMMANDS = ("predict", "eval", "average", "train", "distill")


@contextlib.contextmanager
def latched(what: str, again: str | None = None) -> Iterator[SignalLatch]:
    """A SignalLatch installed while the block runs (on the main thread), announcing that
    ``what`` stops; the owner checks ``received`` between steps and raises Stopped."""
    again = again or rerun_text()

    def announce(signum: int) -> None:
        log.warning(
            "%s: stopping %s at the end of this batch; Ctrl-C again stops at once",
            signal.Signals(signum).name,
            what,
        )

    latch = SignalLatch(announce)
    latch.arm()
    latch.install()
    latch.what, latch.again = what, again
    try:
        yield latch
    finally:
        latch.uninstall()


def stop_if_signalled(latch: SignalLatch, signum: int | None = None) -> None:
    """Raises Stopped, with its log line, when ``signum`` (by default the latch's) is set."""
    signum = latch.received if signum is None else signum
    if signum:
        log.error(stop_text(signum, latch.what, latch.again))
        raise Stopped(signum)
