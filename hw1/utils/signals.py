"""Stopping on SIGTERM (``kill``, a scheduler's preemption or time limit) and Ctrl-C
(SIGINT) at points of the program's choosing: SignalLatch notes the signal, the owner reads
it between two steps. Training saves last.ckpt there (hw1.training.stopping); prediction,
evaluation and averaging stop there with nothing written (Stopped)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_requested = 0  # the first stop signal this process's latches saw, for requested()


class SignalLatch:
    """Notes the first SIGTERM or SIGINT this process receives, and nothing more: Python
    runs a handler between two bytecodes, where no collective or file write may start, so
    the owner reads ``received`` at points of its own choosing. The handlers that were in
    place (Python's, a job scheduler's) are chained. ``announce(signum)`` is called on the
    first signal.

    A second Ctrl-C stops at once: it logs ``at_once`` and raises Stopped (exit 130) where
    the program is, with further Ctrl-Cs ignored while it unwinds. Not KeyboardInterrupt:
    Lightning turns that into exit status 1 and a traceback, and a third Ctrl-C in the
    middle of the unwinding would cut a temporary file's clean-up short. Every file hw1
    writes is renamed into place whole, so stopping anywhere leaves none half-written."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: Callable[[int], None] | None = None) -> None:
        self.received: int = 0  # the signal this process got, 0 for none
        self.announce = announce
        self.what, self.again = "", ""  # for stop_if_signalled's message (latched)
        self.at_once: str | Callable[[], str] = ""  # the log line of a second Ctrl-C
        self._installed = False
        self._chained: dict[int, Any] = {}
        self._owner = os.getpid()

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
        self._owner = os.getpid()
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)
        return True

    def uninstall(self) -> None:
        """Put back the handlers that ``arm`` found; after a signal, Ctrl-C stays ignored
        (the process is stopping: another Ctrl-C would cut its clean-up short)."""
        if not self._installed:
            return
        self._installed = False
        for signum, handler in self._chained.items():
            if handler is not None:
                signal.signal(signum, handler)
        if self.received:
            ignore_ctrl_c()

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._owner:
            # A forked child (a DataLoader worker, LitData's) inherited the handler; a
            # terminal's Ctrl-C reaches the whole process group. The owner stops and shuts
            # its workers down: the child neither announces nor exits on its own, which
            # printed the warning once per worker and, at a second Ctrl-C, made the loader
            # report "worker exited unexpectedly" with a traceback.
            return
        if self.received and signum == signal.SIGINT:
            self.stop_at_once()
        global _requested
        _requested = _requested or signum
        if not self.received:
            self.received = signum
            if self.announce is not None:
                self.announce(signum)
        previous = self._chained.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)

    def stop_at_once(self) -> None:
        """A second Ctrl-C: the log line, and Stopped raised here, Ctrl-C ignored from now."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._installed = False  # nothing of ours to put back: the process is ending
        text = self.at_once() if callable(self.at_once) else self.at_once
        log.error(text or stop_text(signal.SIGINT, self.what, self.again, twice=True))
        raise Stopped(signal.SIGINT)


def requested() -> int:
    """The first SIGTERM or SIGINT a latch of this process saw (0: none): a stop was asked
    for, even where no latch is installed any more."""
    return _requested


class Stopped(SystemExit):
    """A command stopped by a signal before it wrote anything: exit status 128 + the signal
    (143 for SIGTERM, 130 for Ctrl-C), as a shell reports a process killed by it, so that
    a scheduler does not take the work as done."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        ignore_ctrl_c()  # while the process ends


def ignore_ctrl_c() -> None:
    """Ctrl-C ignored from now on (a process that is stopping), on the main thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_text(signum: int, what: str, again: str, *, twice: bool = False) -> str:
    """The log line of a command stopped by ``signum``: what stopped, and what to rerun."""
    name = signal.Signals(signum).name + (" again" if twice else "")
    what = f"{what} at once" if twice else what
    return f"{name}: stopped {what}; nothing was written. Rerun: {again}"


def rerun_text() -> str:
    """This command line, to run again."""
    module = Path(sys.argv[0]).stem
    command = f"python -m hw1.{module}" if module in COMMANDS else shlex.quote(sys.argv[0])
    return " ".join([command, *map(shlex.quote, sys.argv[1:])])


COMMANDS = (
    "predict", "eval", "average", "train", "distill", "tune", "export", "explain", "shard",
    "check", "demo", "preview", "report",
)  # fmt: skip


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


def _stopped_while_starting(signum: int, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("SIGINT: stopped while starting; nothing was written", file=sys.stderr)
    raise SystemExit(128 + signum)


def stop_cleanly_while_starting() -> None:
    """A Ctrl-C while an hw1 command starts (importing torch and Lightning takes seconds on a
    busy machine, composing the config) ends it with one line and exit status 130 rather
    than a wall of import traceback: nothing is written yet. Only for ``python -m hw1.X``
    (``-m`` is still ``sys.argv[0]`` while Python imports the package of the module it
    runs) and the ``hw1-X`` scripts, never for a program that imports hw1; ``reported()``
    puts Python's handler back when the command's work starts."""
    command = sys.argv[0] == "-m" or Path(sys.argv[0]).name.startswith("hw1-")
    if (
        command
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _stopped_while_starting)


def started() -> None:
    """The command's work starts: Ctrl-C is Python's KeyboardInterrupt again (or a
    SignalLatch's, once one is installed)."""
    if signal.getsignal(signal.SIGINT) is _stopped_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
