"""Checkpoint writes on a full disk: the previous checkpoint must survive a write that
fails halfway, wherever $TMPDIR is. The file systems are emulated: $TMPDIR on another one
than the run directory (a rename between them fails with EXDEV, as the kernel's does), and
the run directory's full after a given number of bytes."""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from hw1.utils.config import compose_config


class FillingFile(io.RawIOBase):
    """A file opened for writing on a file system with ``room`` bytes left (shared by every
    file there): writes beyond it fail with ENOSPC, after writing what fits."""

    def __init__(self, raw, disk: dict) -> None:
        self.raw, self.disk = raw, disk

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        fits = min(len(data), self.disk["room"])
        self.raw.write(data[:fits])
        self.disk["room"] -= fits
        if fits < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return fits

    def fileno(self) -> int:
        return self.raw.fileno()

    def flush(self) -> None:
        if not self.closed:
            self.raw.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.raw.close()


@pytest.fixture
def disks(tmp_path, monkeypatch) -> tuple[Path, dict]:
    """(run directory, its disk): the run directory and $TMPDIR on two file systems, the
    binary files written in the run directory filling its disk."""
    run_dir, tmpdir = tmp_path / "run", tmp_path / "tmp"
    run_dir.mkdir()
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    disk = {"room": 1 << 40}

    def on_tmp(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(tmpdir)

    def on_run_dir(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(run_dir)

    for name in ("rename", "replace"):
        real = getattr(os, name)

        def move(src, dst, *args, _real=real, **kwargs):
            if on_tmp(src) != on_tmp(dst):
                raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
            return _real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, move)

    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        writes = "b" in mode and any(m in mode for m in "wax+")
        if writes and isinstance(file, (str, os.PathLike)) and on_run_dir(file):
            return io.BufferedWriter(FillingFile(f, disk))
        return f

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copies write through open()'s files
    return run_dir, disk


def checkpoint_io(root: Path):
    """The CheckpointIO of a Trainer built from conf/ as hw1.train builds it."""
    cfg = compose_config(["trainer=cpu", f"trainer.default_root_dir={root}"])
    return instantiate(cfg.trainer, logger=False, callbacks=[]).strategy.checkpoint_io


def a_checkpoint(value: float) -> dict:
    return {"state_dict": {"w": torch.full((256, 256), value)}, "epoch": int(value)}


def test_a_write_that_fills_the_disk_keeps_the_previous_checkpoint(disks, tmp_path):
    run_dir, disk = disks
    plugin = checkpoint_io(tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    plugin.save_checkpoint(a_checkpoint(1.0), last)
    assert torch.load(last, weights_only=True)["epoch"] == 1

    disk["room"] = last.stat().st_size // 2  # the next write fails halfway
    with pytest.raises(OSError) as failed:
        plugin.save_checkpoint(a_checkpoint(2.0), last)
    previous = torch.load(last, weights_only=True)
    assert previous["epoch"] == 1 and torch.equal(previous["state_dict"]["w"], torch.ones(256, 256))
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temporary left
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.is_file()]
    assert re.search(r"writing checkpoint .*last\.ckpt failed: No space left", str(failed.value))

    disk["room"] = 1 << 40
    plugin.save_checkpoint(a_checkpoint(3.0), last)
    assert torch.load(last, weights_only=True)["epoch"] == 3
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_a_temporary_left_by_a_killed_save_is_removed_at_the_next_start(tmp_path):
    """Smaller finding: a SIGKILL mid-save left a hidden checkpoint-sized .tmp for ever."""
    from hw1.training.checkpoint_io import remove_stale_temporaries

    left = tmp_path / ".best.ckpt.4242.0a1b2c3d.tmp"
    left.write_bytes(b"x" * 100)
    kept = [tmp_path / "best.ckpt", tmp_path / "last.ckpt", tmp_path / "notes.tmp"]
    for path in kept:
        path.write_bytes(b"ckpt")
    assert remove_stale_temporaries(tmp_path) == [left]
    assert not left.exists() and all(p.exists() for p in kept)


@pytest.mark.parametrize(("mode", "saves"), [("min", 2 + 1 + 1), ("max", 3 * 2)])
def test_last_ckpt_is_written_at_every_epochs_end_and_once(tmp_path, monkeypatch, mode, saves):
    """Lightning's ModelCheckpoint rewrites last.ckpt only with a new top-k checkpoint.
    mode=min on the epoch: only epoch 0 is ever best, and last.ckpt must still be the last
    epoch's (best + last, then last alone twice); mode=max: every epoch is best, and
    ModelCheckpoint's own best + last are the only writes."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from hw1.training.checkpoint_io import LastEveryEpoch

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", self.layer(batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    written = []
    save = L.Trainer.save_checkpoint
    monkeypatch.setattr(
        L.Trainer,
        "save_checkpoint",
        lambda self, path, *a, **k: written.append(Path(path).name) or save(self, path, *a, **k),
    )
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    best = ModelCheckpoint(tmp_path, "best", monitor="epoch", mode=mode, save_last=True)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[best, LastEveryEpoch()],  # as conf/callbacks/default.yaml lists them
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), data, data)
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == (
        0 if mode == "min" else 2
    )
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert len(written) == saves, written
