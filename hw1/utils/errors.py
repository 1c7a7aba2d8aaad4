"""Errors the user can fix (a path, the folder layout, a setting, a file's content), and how
every entry point reports them: the message alone on stderr and exit status 2, as a
command-line tool reports a wrong argument. ``HYDRA_FULL_ERROR=1`` shows the traceback.

Each is also the built-in exception it used to be (``UserValueError`` is a ``ValueError``),
so code and tests that catch those keep working.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

# argparse's status for a wrong command line; other errors exit with 1.
EXIT_STATUS = 2


class UserError(Exception):
    """A problem the user can fix, which the message says how to: shown without a traceback."""


class UserValueError(UserError, ValueError):
    pass


class UserFileNotFoundError(UserError, FileNotFoundError):
    pass


class UserFileExistsError(UserError, FileExistsError):
    pass


class UserRuntimeError(UserError, RuntimeError):
    pass


def require_positive(**settings: int | None) -> None:
    """A clear error for a size or count that must be at least 1 (``data.batch_size=0``
    would otherwise fail deep in a DataLoader, with a traceback). None is left alone: the
    setting's own default applies."""
    for key, value in settings.items():
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise UserValueError(
                f"{key.replace('__', '.')}={value}: use a whole number of 1 or more"
            )


def user_error(error: BaseException | None) -> UserError | None:
    """The UserError that ``error`` is or was raised from (``raise ... from``: Hydra's
    instantiate wraps what a constructor raises), if any."""
    while error is not None:
        if isinstance(error, UserError):
            return error
        error = error.__cause__
    return None


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Runs an entry point's work, turning a UserError into its message on stderr and exit
    status 2, and Ctrl-C into a line saying what to rerun and exit status 130. Any other
    error, or any with ``HYDRA_FULL_ERROR=1``, propagates with its traceback. Either way
    the message or traceback also goes to the run's log file (``train.log``), if any."""
    from hw1.utils.signals import started

    started()
    try:
        yield
        leave_process_group()
    except SystemExit as stop:
        if stop.code in (130, 143):  # stopped by a signal (a training's last.ckpt saved)
            from hw1.utils.signals import ignore_ctrl_c

            ignore_ctrl_c()  # Lightning put Python's handler back; the process is ending
        raise
    except KeyboardInterrupt:
        interrupted()
    except Exception as error:
        stopped = stopped_by_signal(error)
        if stopped is not None:
            raise stopped from None
        full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
        gone = peer_gone(error)
        if gone and not full_error:
            left_with_the_peers(error, gone)
        found = user_error(error)
        if found is None or full_error:
            to_log_files(logging.ERROR, f"{type(error).__name__}: {error}", error)
            raise
        to_log_files(logging.ERROR, str(found))
        if in_hydra_sweep():
            from hydra.errors import CompactHydraException

            # Hydra names the failed job and prints this message alone, once the sweep's
            # other jobs have run; exiting here would end the sweep.
            raise CompactHydraException(str(found)) from found
        sys.stdout.flush()
        print(found, file=sys.stderr)
        raise SystemExit(EXIT_STATUS) from None


def stopped_by_signal(error: BaseException) -> SystemExit | None:
    """The Stopped (a second Ctrl-C's) that ``error`` was raised while unwinding, if any:
    torch.save cut short in the middle of a checkpoint raises its own RuntimeError as it
    closes the file (whose temporary name never replaces the last whole one), which would
    otherwise turn exit status 130 into 1 with torch's message."""
    from hw1.utils.signals import Stopped

    seen = error.__context__
    while seen is not None:
        if isinstance(seen, Stopped):
            return seen
        seen = seen.__context__
    return None


# What a collective raises when another process of the group has gone: gloo's, NCCL's.
PEER_GONE = (
    "Connection closed by peer",
    "Connection reset by peer",
    "remote process exited or there was a network error",
)


def peer_gone(error: BaseException) -> str:
    """The words of PEER_GONE in ``error`` when it is a DDP collective failing because
    another process of the group has gone, "" otherwise."""
    if not isinstance(error, RuntimeError):
        return ""
    return next((words for words in PEER_GONE if words in str(error)), "")


def left_with_the_peers(error: BaseException, gone: str) -> None:
    """Under DDP a process that stops (a second Ctrl-C) or dies takes the others' next
    collective with it: rather than a long traceback each, burying the cause, one line
    pointing to the process that went, and the exit status of the stop this process was
    asked for (130, 143), or 1."""
    from hw1.utils.signals import requested

    to_log_files(logging.ERROR, f"{type(error).__name__}: {error}", error)
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "?"))
    print(
        f"process {rank} stops: another process of this run has gone ({gone}); "
        "its own lines above say why",
        file=sys.stderr,
    )
    raise SystemExit(128 + requested() if requested() else 1) from None


def leave_process_group() -> None:
    """Under DDP, ends this process's part in the process group once every process has
    finished its work (rank zero writes the outputs after the others are done), while the
    interpreter is whole. Lightning destroys an NCCL group at exit but leaves a gloo one
    (DDP on CPUs) to the interpreter's finalisation, where gloo's worker threads can abort
    a process whose work is done ("terminate called without an active exception", exit
    status -6; pytorch/pytorch#179291)."""
    distributed = sys.modules.get("torch.distributed")  # never imports torch for this
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return
    distributed.barrier()
    distributed.destroy_process_group()


def interrupted() -> None:
    """Ctrl-C in a command that does not stop at points of its own (SignalLatch): a line
    saying what to rerun, exit status 130 as a shell reports Ctrl-C. What the command
    wrote is whole (write_atomically, a folder renamed into place); what it was writing is
    not there. Further Ctrl-Cs are ignored while this reports."""
    from hw1.utils.signals import Stopped, rerun_text

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    text = f"SIGINT: stopped; nothing was left half-written. Rerun: {rerun_text()}"
    to_log_files(logging.ERROR, text)
    sys.stdout.flush()
    print(text, file=sys.stderr)
    raise Stopped(signal.SIGINT) from None


def to_log_files(level: int, text: str, error: BaseException | None = None) -> None:
    """``text`` (and ``error``'s traceback) into the log files that logging writes (Hydra's
    ``<run dir>/<job name>.log``), not to the console: the console gets the message from
    the caller, or the traceback from Python."""
    record = logging.LogRecord(
        "hw1",
        level,
        __file__,
        0,
        text,
        None,
        (type(error), error, error.__traceback__) if error is not None else None,
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def in_hydra_sweep() -> bool:
    """Whether this runs as a job of a Hydra multirun (hw1.report and hw1.demo, which do
    not use Hydra, never import it)."""
    if "hydra" not in sys.modules:
        return False
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def import_extra(module: str, extra: str, purpose: str):
    """``module``, imported; when it is not installed, an error naming the extra of hw1
    that installs it (``pip install "hw1[extra]"``) and what it is for."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserRuntimeError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: "
            f'pip install "hw1[{extra}]"'
        ) from None
