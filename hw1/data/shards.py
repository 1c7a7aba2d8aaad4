"""LitData shards: any source written once as chunks of JPEG file bytes and labels
(``python -m hw1.shard``), then streamed to every rank and node (``data.source=litdata``),
resumable mid-epoch through StreamingDataLoader's state in the checkpoint.

A shard folder holds ``train/``, ``val/`` and ``test/`` (each LitData's ``optimize``
output: ``index.json`` and its chunks) and ``hw1-shards.json`` (the class names, the
counts, the format's version), written last: a folder without it is incomplete. LitData is
an optional dependency (``hw1[stream]``), imported where it is used.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from hw1.data.scan import display_path
from hw1.data.sources import (
    Items,
    Source,
    Splitting,
    class_counts,
    load_encoded,
    optional,
    read_json,
)
from hw1.transforms.decode import load_rgb
from hw1.utils.errors import (
    UserFileExistsError,
    UserFileNotFoundError,
    UserValueError,
    to_log_files,
)
from hw1.utils.io import write_atomically
from hw1.utils.signals import rerun_text

log = logging.getLogger(__name__)

SHARDS_META = "hw1-shards.json"
PARTIAL = "hw1-shards.partial"  # there while hw1.shard writes: a folder that is not done
SHARDS_FORMAT = "hw1-shards"
SHARDS_VERSION = 1
SPLITS = ("train", "val", "test")


def is_remote(root: str) -> bool:
    return "://" in root


def jpeg_bytes(data: bytes) -> bytes:
    """The file's bytes when it is a JPEG (kept as they are: not re-encoded, EXIF and all),
    else the image re-encoded as a JPEG of quality 95, upright RGB."""
    if data[:2] == b"\xff\xd8":
        return data
    out = io.BytesIO()
    load_rgb(io.BytesIO(data)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def encode(rows: list[tuple[Any, int, str]], read, index: int) -> dict[str, Any]:
    """Row ``index`` as a shard sample: JPEG bytes, class index (-1: test), key. A module
    function, so that optimize's worker processes can pickle it."""
    ref, label, key = rows[index]
    if read is not None:
        data = read(ref)
    else:
        with open(ref, "rb") as f:
            data = f.read()
    return {"image": jpeg_bytes(data), "label": label, "key": key}


def split_rows(source: Source, names: list[str]) -> dict[str, list[tuple[Any, int, str]]]:
    """(ref, class index, key) per split, as training would read them (image check,
    val_split and folds applied); test rows with their prediction.csv keys."""
    items = source.labelled(names)
    rows = {s: [(ref, c, str(ref)) for ref, c in items[s]] for s in ("train", "val")}
    test = source.test_set()
    if test is not None:
        if hasattr(test, "files"):  # image files: the folder's or a CSV's
            rows["test"] = [(os.fspath(f), -1, f.stem) for f in test.files]
        else:
            rows["test"] = [(ref, -1, key) for ref, key in zip(test.refs, test.keys, strict=True)]
    return rows


def prepare_output(output: Path) -> None:
    """An empty folder, or one an earlier hw1.shard wrote (done or interrupted): emptied
    of its shards, so a rerun starts cleanly; anything else is refused, not deleted."""
    if output.exists():
        if not output.is_dir():
            raise UserFileExistsError(f"output={display_path(output)} is a file")
        ours = (output / PARTIAL).exists() or (output / SHARDS_META).exists()
        if any(output.iterdir()) and not ours:
            raise UserFileExistsError(
                f"output={display_path(output)} is not empty and holds no hw1 shards: "
                "choose a new or empty folder"
            )
    output.mkdir(parents=True, exist_ok=True)
    (output / PARTIAL).touch()
    (output / SHARDS_META).unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(output / split, ignore_errors=True)


@contextlib.contextmanager
def ctrl_c_exits_130(output: Path) -> Iterator[None]:
    """While the block runs, LitData's ``optimize`` ends the process on Ctrl-C with exit
    status 130 and a line saying what to rerun, as every hw1 command does. LitData's own
    handler (its DataProcessor's, installed by ``optimize`` with no option to leave it out)
    stops its workers and ends the process with status 0, which a script takes for
    success. This one stops the workers the same way, then ends the process at once as
    theirs does (waiting for the workers could hang). The folder keeps its PARTIAL mark,
    so that nothing trains from it until hw1.shard runs again."""
    from litdata.processing.data_processor import DataProcessor

    def stop(processor: Any, signum: int, frame: Any) -> None:
        for queue in processor.stop_queues:
            queue.put(None)
        for worker in processor.workers:
            worker.join(0)
        text = (
            f"SIGINT: stopped writing shards; {display_path(output)} is incomplete (marked "
            f"{PARTIAL}) and nothing trains from it. Rerun: {rerun_text()}"
        )
        to_log_files(logging.ERROR, text)
        print(text, file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGINT)

    theirs = DataProcessor._signal_handler
    DataProcessor._signal_handler = stop
    try:
        yield
    finally:
        DataProcessor._signal_handler = theirs


def write_shards(
    source: Source, output: str | os.PathLike, workers: int, chunk_bytes: str = "64MB"
) -> dict:
    """``source`` written as LitData chunks under ``output``, one folder per split, on
    ``workers`` processes with LitData's progress bar; returns the metadata written last."""
    litdata = optional("litdata", "stream")
    output = Path(output).expanduser()
    source.check()
    names = source.class_names()
    rows = split_rows(source, names)
    # LitData shuffles the order of the chunks and within a window of them, not across the
    # whole split: train rows written class by class would stream class by class, and the
    # model would learn one class at a time. Written in a seeded random order, they stream
    # mixed (val and test keep their order).
    random.Random(0).shuffle(rows["train"])
    prepare_output(output)
    for split, split_list in rows.items():
        if not split_list:
            continue
        log.info("%s: %d images", split, len(split_list))
        with ctrl_c_exits_130(output):
            litdata.optimize(
                fn=functools.partial(encode, split_list, source.read),
                inputs=list(range(len(split_list))),
                output_dir=os.fspath(output / split),
                chunk_bytes=chunk_bytes,
                num_workers=max(1, min(workers, len(split_list))),
                mode="overwrite",
                verbose=True,
            )
    labelled = {s: [(None, c) for _, c, _ in rows[s]] for s in ("train", "val")}
    meta = {
        "format": SHARDS_FORMAT,
        "version": SHARDS_VERSION,
        "class_names": names,
        "counts": class_counts(labelled, names),
        "images": {s: len(r) for s, r in rows.items()},
    }
    write_atomically(output / SHARDS_META, json.dumps(meta, indent=1))
    (output / PARTIAL).unlink()
    return meta


class ShardItem:
    """A shard sample as training takes it: (image through ``loader`` and ``transform``,
    class index); a test sample: (RGB image, key). Picklable, for loader workers."""

    def __init__(self, loader=None, transform=None, test: bool = False) -> None:
        self.loader, self.transform, self.test = loader or load_encoded, transform, test

    def __call__(self, sample: dict[str, Any]):
        image = self.loader(bytes(sample["image"]))  # LitData hands out a memoryview
        if self.transform is not None:
            image = self.transform(image)
        return image, (sample["key"] if self.test else sample["label"])


class ShardTest(Dataset):
    """The test split by index, as view_loader takes it: (RGB PIL image, key)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        return self.stream[i]


class ShardSource:
    """``data.source=litdata``: hw1.shard's output at ``data.root`` (a folder, or a URI
    LitData streams: s3://, gs://, ...). Its val split is the one it was written with:
    ``data.val_split`` applies when sharding; ``data.folds`` needs a source that is not
    streamed."""

    read = None
    streams = True

    def __init__(
        self,
        root: str | os.PathLike,
        splitting: Splitting | None = None,
    ) -> None:
        self.name = os.fspath(root)
        self.root = Path(self.name).expanduser() if not is_remote(self.name) else Path(".")
        self.splitting = splitting or Splitting()
        self._meta: dict | None = None

    def _url(self, *parts: str) -> str:
        if is_remote(self.name):
            return "/".join([self.name.rstrip("/"), *parts])
        return os.fspath(self.root.joinpath(*parts))

    def meta(self) -> dict:
        if self._meta is None:
            self._meta = self._read_meta()
        return self._meta

    def _read_meta(self) -> dict:
        if is_remote(self.name):
            return self._remote_meta()
        if not self.root.is_dir():
            raise UserFileNotFoundError(f"data.root={self.name}: no such folder")
        if not (self.root / SHARDS_META).is_file():
            why = (
                "an interrupted python -m hw1.shard: run it again"
                if (self.root / PARTIAL).exists()
                else "not written by python -m hw1.shard"
            )
            raise UserFileNotFoundError(f"data.root={self.name} has no {SHARDS_META}: {why}")
        meta = read_json(self.root / SHARDS_META, "hw1 shards' metadata")
        self._check_version(meta)
        self._check_chunks(meta)
        return meta

    def _remote_meta(self) -> dict:
        """The metadata of shards on object storage, through LitData's own downloader."""
        downloader = optional("litdata.streaming.downloader", "stream")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / SHARDS_META
            try:
                downloader.get_downloader(self.name, tmp, []).download_file(
                    self._url(SHARDS_META), os.fspath(local)
                )
            except Exception as e:  # each store raises its own: the message says which
                raise UserFileNotFoundError(
                    f"data.root={self.name}: cannot read {SHARDS_META} ({e})"
                ) from None
            meta = read_json(local, "hw1 shards' metadata")
        self._check_version(meta)
        return meta

    def _check_version(self, meta: dict) -> None:
        if meta.get("format") != SHARDS_FORMAT or meta.get("version") != SHARDS_VERSION:
            raise UserValueError(
                f"data.root={self.name}: shards of format {meta.get('format')!r} version "
                f"{meta.get('version')!r}, this hw1 reads {SHARDS_FORMAT!r} version "
                f"{SHARDS_VERSION}: write them again with python -m hw1.shard"
            )

    def _check_chunks(self, meta: dict) -> None:
        """Every chunk each split's index names is there."""
        missing = []
        for split, n in meta["images"].items():
            if not n:
                continue
            index = self.root / split / "index.json"
            chunks = read_json(index, "LitData's index")["chunks"] if index.is_file() else None
            if chunks is None:
                missing.append(display_path(index))
                continue
            missing += [
                display_path(self.root / split / c["filename"])
                for c in chunks
                if not (self.root / split / c["filename"]).is_file()
            ]
        if missing:
            raise UserFileNotFoundError(
                f"data.root={self.name}: shard files missing: {', '.join(missing[:20])}. "
                "Copy them again, or write the shards again with python -m hw1.shard"
            )

    def check(self) -> None:
        meta = self.meta()
        if self.splitting.folds is not None:
            raise UserValueError(
                "data.folds needs data.source=folder, csv or hf: shards hold one val split"
            )
        if not meta["images"].get("val"):
            raise UserValueError(
                f"data.root={self.name} has no val shards: write them with a val split "
                "(python -m hw1.shard data.val_split=0.1 ...)"
            )

    def class_names(self) -> list[str]:
        return list(self.meta()["class_names"])

    def labelled(self, names: list[str]) -> Items:
        """Placeholders (None, class index) per image, from the counts: the images stay in
        the shards; the lists give the sizes and the class frequencies."""
        index = {n: i for i, n in enumerate(names)}
        return {
            split: [(None, index[n]) for n, k in counts.items() for _ in range(k)]
            for split, counts in self.meta()["counts"].items()
        }

    def test_images(self) -> list[int]:
        return list(range(self.meta()["images"].get("test", 0)))

    def check_test_images(self, max_pixels: int | None) -> list[int] | None:
        return self.test_images() or None  # checked when they were sharded

    def _dataset(self, split: str, **kw):
        litdata = optional("litdata", "stream")
        return litdata.StreamingDataset(self._url(split), seed=self.splitting.seed, **kw)

    def stream(self, split: str, transform=None, loader=None, shuffle: bool = False):
        """The split as a StreamingDataset of (image, class index): each rank and loader
        worker reads its own part of it."""
        dataset = self._dataset(split, shuffle=shuffle, transform=ShardItem(loader, transform))
        dataset.targets = [c for _, c in self.labelled(self.class_names())[split]]
        return dataset

    def test_set(self) -> Dataset | None:
        if not self.test_images():
            return None
        return ShardTest(self._dataset("test", transform=ShardItem(test=True)))

    def loader(self, dataset, batch_size: int, num_workers: int):
        """LitData's loader: it counts the samples each worker yielded, and its state goes
        into the checkpoint (Lightning saves a stateful loader's state_dict), so a resumed
        run continues the epoch where it stopped."""
        loader = resumable_loader()
        return loader(dataset, batch_size=batch_size, num_workers=num_workers)


@functools.cache
def resumable_loader() -> type:
    """StreamingDataLoader that replays a loaded state for one epoch only.

    LitData clears its ``restore`` flag only when an epoch's iterator runs to its end;
    Lightning stops at the epoch's known length instead, so after a resume every later
    epoch replayed the loaded position (the tail of the stopped epoch, or nothing).
    Checked by tests/test_shards.py's resume test; a class made on first use because
    LitData is optional."""
    litdata = optional("litdata", "stream")

    class ResumableStreamingDataLoader(litdata.StreamingDataLoader):
        _replay = False

        def load_state_dict(self, obj: dict[str, Any]) -> None:
            super().load_state_dict(obj)
            self._replay = True

        def __iter__(self):
            if not self._replay:
                self.restore = False
            self._replay = False
            return super().__iter__()

    return ResumableStreamingDataLoader
