"""One writer per run directory: a lock file that a command holds while it writes there.

Two ``hw1.train ... hydra.run.dir=RUN`` at once used to both run, and mixed their files:
each other's checkpoints (best-v1.ckpt), one's metrics.json and the other's overrides.yaml.
The lock is ``RUN/.hw1.lock``, held with ``flock`` (the kernel releases it when the process
ends, however it ends: nothing goes stale on this host) and holding the holder's pid, host
and command, for the refusal to name. A lock written by another host (a shared file
system, where flock may not reach) is honoured until its holder is gone; the message says
to delete it then. Lightning, Hydra and filelock offer no lock naming its holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hw1.utils.errors import UserRuntimeError

LOCK_NAME = ".hw1.lock"


class RunDirectoryLocked(UserRuntimeError):
    """Another process writes to this run directory."""


def holder_text(folder: Path, holder: dict[str, Any]) -> str:
    return (
        f"{folder} is in use by another hw1 command ({holder.get('command', '?')}, pid "
        f"{holder.get('pid', '?')} on {holder.get('host', '?')}): two commands writing one run "
        "directory would mix their files. Wait for it to end, or use another hydra.run.dir"
    )


def read_holder(path: Path) -> dict[str, Any]:
    """The lock file's record, {} when it is empty or unreadable (a holder mid-write)."""
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def held_elsewhere(holder: dict[str, Any]) -> bool:
    """Whether a record left in a lock file we could flock names a live holder: only one
    on another host can be (here, flock would have failed)."""
    host = holder.get("host")
    return bool(host) and host != socket.gethostname() and holder.get("pid") != os.getpid()


def _open_locked(path: Path) -> int:
    """A descriptor of the lock file at ``path``, flock-ed; the file is the one at ``path``
    (a holder that ends unlinks it: a lock on the unlinked file would guard nothing)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirectoryLocked(holder_text(path.parent, read_holder(path))) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, command: str | None = None) -> Iterator[None]:
    """Holds ``folder``'s lock while the block runs; RunDirectoryLocked (its message names
    the holder) when another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = _open_locked(path)
    try:
        holder = read_holder(path)
        if held_elsewhere(holder):
            raise RunDirectoryLocked(
                holder_text(folder, holder) + f"; if that process is gone, delete {path}"
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command or " ".join(sys.argv[:1] + sys.argv[1:3]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def check_unlocked(folder: str | os.PathLike) -> None:
    """Refuses at once when another live process holds ``folder``'s lock: for a command to
    call before Hydra writes the run's .hydra/ there (run_lock comes later)."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return
    with run_lock(folder):  # takes and gives back the lock: refused if it is held
        pass


def first_process() -> bool:
    """Whether this is the process that takes the lock: not one of the DDP processes that
    Lightning starts beside it (LOCAL_RANK, NODE_RANK > 0), which write into the same run
    directory as part of the same run."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def command_lock(folder: str | os.PathLike, command: str) -> contextlib.AbstractContextManager:
    """``run_lock(folder, command)`` in the first process of a run, nothing in the others."""
    return run_lock(folder, command) if first_process() else contextlib.nullcontext()
