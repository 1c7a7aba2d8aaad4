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

import atexit
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


def launched_beside_another() -> bool:
    """Whether a launcher (torchrun, SLURM's srun) started this process as a rank other than
    the first of one run: each rank composes the config itself, and claiming a folder of
    its own would split the run over TIME, TIME_2, ... (Lightning's own DDP launcher passes
    its processes the first one's hydra.run.dir instead)."""
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return any(os.environ.get(name, "0") != "0" for name in ranks)


_claimed: list[Path] = []


def _remove_empty_claims() -> None:
    for folder in _claimed:  # and the folders above it, up to the first one of its path
        for empty in (folder, *list(folder.parents)[: len(folder.parts) - 2]):
            try:
                empty.rmdir()  # only if empty: a run's directory holds its .hydra/ and log
            except OSError:
                break


def fresh_run_dir(path: str) -> str:
    """``path`` (a default run directory, ``outputs/DATE/TIME``), made here, or when it
    exists already ``path_2``, ``path_3``, ...: the first that did not exist. Two runs
    started in the same second, or one started in the second another one ended, would
    otherwise share one directory and mix their files (checkpoints, metrics.json, .hydra/);
    mkdir is atomic, so two processes never get the same one. Resolved once per run (the
    resolver is cached); an explicit ``hydra.run.dir=`` (a resume) never comes here.

    Hydra also resolves it while composing a config whose parent sets its own (eval's
    predict, check's train): such a directory stays empty and is removed at exit."""
    if launched_beside_another():
        return path  # a torchrun/srun rank of a run the first rank claims: as before
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        if not _claimed:
            atexit.register(_remove_empty_claims)
        _claimed.append(candidate)
        return str(candidate)
    raise UserRuntimeError(f"{base}_*: 10,000 run directories already; give hydra.run.dir=")
