"""Checkpoint files: a writer that never leaves a half-written file (a temporary file, then
a rename), and where ``last.ckpt`` lives.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import fsspec
import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from hw1.utils.io import temporary_beside
from hw1.utils.weights import current_targets, safe_load

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, then renames it into
    place: a reader sees the old file or the new one, whole, whatever happens meanwhile.

    Lightning's own save writes to $TMPDIR and moves the file, which is a rename only on
    the same file system; from another (a small tmpfs /tmp, a cluster's node-local
    scratch) the move truncates the target and copies into it, and a full disk there
    leaves no loadable last.ckpt. It also holds the whole checkpoint in memory first.
    Remote paths (s3://, ...) keep Lightning's write.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or fsspec.utils.get_protocol(str(path)) != "file":
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_beside(target)
        try:
            with open(temporary, "xb") as f:  # created with the umask's permissions
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
            os.replace(temporary, target)
        except BaseException as error:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            cause = _os_error(error)  # torch reports a failed write as its own RuntimeError
            if cause is None:
                raise
            raise OSError(
                cause.errno,
                f"writing checkpoint {target} failed: {cause.strerror}; the previous "
                f"{target.name}, if any, is unchanged. Free space there and resume=true",
            ) from error
        with contextlib.suppress(OSError):  # the rename itself, where directories allow it
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None):
        """Lightning's own reads (``trainer.fit(ckpt_path=...)``, resume) go through
        ``safe_load``, every command's reader: a damaged file or one that holds code gets
        its message, not torch's traceback, and old ``_target_`` paths are rewritten.
        Remote paths, and a caller that asks for ``weights_only=False``, keep Lightning's."""
        local = Path(str(path).removeprefix("file://"))
        remote = fsspec.utils.get_protocol(str(path)) != "file"
        if weights_only is False or remote or not local.is_file():
            where = {} if map_location is None else {"map_location": map_location}
            return super().load_checkpoint(path, weights_only=weights_only, **where)
        ckpt = safe_load(local)
        if "hyper_parameters" in ckpt:
            ckpt["hyper_parameters"] = current_targets(ckpt["hyper_parameters"])
        return ckpt


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError (disk full, no permission, ...) at the root of ``error``, if any."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def model_checkpoint(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The run's first ModelCheckpoint (best.ckpt); Lightning's ``checkpoint_callback`` is
    the first Checkpoint of any kind, which may be LastEveryEpoch."""
    return next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)


def last_checkpoint(trainer: L.Trainer) -> Path:
    """Where the run's ``last.ckpt`` lives (the resume point)."""
    ckpt = model_checkpoint(trainer)
    folder = (
        Path(ckpt.dirpath) if ckpt is not None else Path(trainer.default_root_dir) / "checkpoints"
    )
    return folder / "last.ckpt"


class LastEveryEpoch(Checkpoint):
    """``last.ckpt`` at every epoch's end, the resume point after a SIGKILL or a crash.

    Lightning's ModelCheckpoint (2.6) rewrites ``last.ckpt`` only in an epoch that saved a
    top-k checkpoint: after epochs without a better ``val/acc`` a killed run went back to
    the best epoch and trained the rest again. ModelCheckpoint keeps that decision private,
    so this one compares its public ``best_k_models`` (the same on every DDP process) at
    the epoch's start and end: unchanged, nothing was saved, and the trainer saves
    ``last.ckpt`` here (every process calls it, as Lightning's save needs). A Checkpoint,
    so that Lightning runs it after the ModelCheckpoint listed before it (conf/callbacks/
    default.yaml lists it after), whichever hook that one saves in, and ``last.ckpt``
    holds its state after this epoch."""

    def __init__(self) -> None:
        self._before: dict[str, float] | None = None

    @staticmethod
    def _saved(trainer: L.Trainer) -> dict[str, float] | None:
        ckpt = model_checkpoint(trainer)
        if ckpt is None or not ckpt.save_last or trainer.fast_dev_run:
            return None
        return {path: float(score) for path, score in ckpt.best_k_models.items()}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._before = self._saved(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        before, self._before = self._before, None
        if before is not None and self._saved(trainer) == before:  # nothing saved this epoch
            trainer.save_checkpoint(last_checkpoint(trainer), weights_only=False)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Removes the temporary files (temporary_beside's ``.NAME.PID.HEX.tmp``) that a save
    killed mid-write (SIGKILL, a lost node) left in ``folder``: as large as a checkpoint,
    and nothing else removes them. Called by the run that holds the folder's lock
    (hw1.utils.runlock), so no save of another process is under way there."""
    removed = []
    for path in folder.glob(".*.*.*.tmp") if folder.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    if removed:
        log.info(
            "removed %d temporary file(s) left by a save cut short: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed
