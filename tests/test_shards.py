"""LitData shards: python -m hw1.shard writes any source; data.source=litdata trains from
them with the folder's classes and counts, streams a disjoint part to each DDP process,
and a run stopped mid-epoch resumes the stream where it stopped."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import datamodule, make_hw1_folder, run_in_process_group, train_command

from hw1.data.shards import PARTIAL, SHARDS_META, jpeg_bytes, prepare_output
from hw1.utils.errors import UserFileExistsError, UserFileNotFoundError, UserValueError

pytest.importorskip("litdata")

DEADLINE_S = 400


def shard(root: Path, output: Path, *overrides: str) -> str:
    cmd = [sys.executable, "-m", "hw1.shard", f"data.root={root}", f"output={output}"]
    cmd += ["workers=1", f"hydra.run.dir={output.parent / 'hydra'}", *overrides]
    status, out = run_in_process_group(cmd, DEADLINE_S)
    assert status == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path]:
    """(folder, its shards): 12 classes named 0 to 11 (numeric order differs from text's),
    one train, val and test image each: a training batch's labels name its samples."""
    base = tmp_path_factory.mktemp("shards")
    root = base / "data"
    make_hw1_folder(root, [str(i) for i in range(12)], train=1, val=1, test=1)
    out = shard(root, base / "shards")
    assert "12 classes; images: train 12, val 12, test 12" in out
    return root, base / "shards"


@pytest.mark.slow
def test_the_train_split_is_written_mixed_not_class_by_class(tmp_path):
    """LitData shuffles the chunks' order and within a window of them, not the whole split:
    train rows written class by class streamed class by class, and the demo trained from
    such shards stayed near chance (0.15-0.20 val accuracy against the folder's 0.82)."""
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b", "c", "d"], train=16, val=1, test=0, size=32)
    shard(root, tmp_path / "shards", "chunk_bytes=8kb")  # several chunks, as a big set has
    dm = datamodule(tmp_path / "shards", source="litdata")
    dm.validate()
    written = [int(y) for _, y in dm.layout.stream("train", dm.eval_transform)]
    changes = sum(a != b for a, b in zip(written, written[1:], strict=False))
    assert sorted(written) == sorted(list(range(4)) * 16) and changes > 3 * 4, written


@pytest.mark.slow
def test_shards_give_the_folders_classes_counts_pixels_and_test_keys(shards):
    root, out = shards
    meta = json.loads((out / SHARDS_META).read_text())
    assert meta["class_names"] == [str(i) for i in range(12)] and not (out / PARTIAL).exists()
    folder, streamed = datamodule(root), datamodule(out, source="litdata")
    for dm in (folder, streamed):
        dm.validate()
        dm.setup()
    assert streamed.class_names == folder.class_names
    for split in ("train", "val"):
        counts = Counter(c for _, c in streamed.samples[split])
        assert counts == Counter(c for _, c in folder.samples[split])
    assert Counter(streamed.train_set.targets) == Counter(folder.train_set.targets)

    def val_items(dm) -> list[tuple[int, float]]:
        return sorted(
            (int(y), float(x[i].float().sum()))
            for x, ys in dm.val_dataloader()
            for i, y in enumerate(ys)
        )

    assert val_items(streamed) == val_items(folder)  # JPEG bytes kept: the same pixels
    x, y = next(iter(streamed.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64  # finished in the workers
    keys = [k for _, batch in streamed.predict_dataloader() for k in batch]
    assert sorted(keys) == sorted(p.stem for p in folder.layout.test_images())


def test_jpegs_are_kept_as_they_are_other_formats_re_encoded(tmp_path):
    make_hw1_folder(tmp_path / "d", ["a"], train=1, val=0, test=3)
    files = sorted((tmp_path / "d" / "test").iterdir())
    for f in files:
        data = f.read_bytes()
        out = jpeg_bytes(data)
        assert out[:2] == b"\xff\xd8" and (out == data) == (f.suffix.lower() != ".png")


def test_a_folder_not_written_by_hw1_shard_is_not_emptied(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserFileExistsError, match="not empty and holds no hw1 shards"):
        prepare_output(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_an_interrupted_output_restarts_clean_and_never_looks_complete(tmp_path):
    out = tmp_path / "shards"
    (out / "train").mkdir(parents=True)
    (out / "train" / "chunk-0-0.bin").write_bytes(b"half")
    (out / PARTIAL).touch()
    with pytest.raises(UserFileNotFoundError, match="interrupted python -m hw1.shard: run it"):
        datamodule(out, source="litdata").validate()
    prepare_output(out)
    assert not (out / "train").exists() and (out / PARTIAL).exists()
    assert not (out / SHARDS_META).exists()


@pytest.mark.slow
def test_shards_of_another_version_or_with_missing_chunks_are_named(shards, tmp_path):
    _, out = shards
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    chunk = next((copy / "val").glob("*.bin"))
    chunk.unlink()
    with pytest.raises(UserFileNotFoundError, match=f"shard files missing: .*{chunk.name}"):
        datamodule(copy, source="litdata").validate()
    meta = json.loads((copy / SHARDS_META).read_text())
    (copy / SHARDS_META).write_text(json.dumps({**meta, "version": 0}))
    with pytest.raises(UserValueError, match="version 0, this hw1 reads 'hw1-shards' version 1"):
        datamodule(copy, source="litdata").validate()
    with pytest.raises(UserFileNotFoundError, match="not written by python -m hw1.shard"):
        datamodule(tmp_path, source="litdata").validate()


# --- several processes, and a run stopped mid-epoch ---------------------------------------


def recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stream_run(shards: Path, run_dir: Path, *overrides: str) -> list[str]:
    record = "+callbacks.record"
    cmd = train_command(shards, run_dir, "data.source=litdata", "data.batch_size=2")
    return [
        *cmd,
        f"{record}._target_=stream_callbacks.RecordLabels",
        f"{record}.path={run_dir.parent / 'labels.jsonl'}",
        *overrides,
    ]


@pytest.mark.slow
def test_under_ddp_each_process_streams_a_disjoint_part_and_together_every_sample(shards, tmp_path):
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    cmd = stream_run(shards[1], tmp_path / "run", *ddp, "trainer.max_epochs=2")
    status, out = run_in_process_group([*cmd, "trainer.precision=32-true"], DEADLINE_S)
    assert status == 0, out[-4000:]
    lines = recorded(tmp_path / "labels.jsonl")
    for epoch in (0, 1):
        seen = {
            rank: [
                y for r in lines if (r["rank"], r["epoch"]) == (rank, epoch) for y in r["labels"]
            ]
            for rank in (0, 1)
        }
        assert len(seen[0]) == len(seen[1]) == 6, seen
        assert sorted(seen[0] + seen[1]) == list(range(12)), seen  # disjoint, complete


@pytest.mark.slow
def test_a_stream_stopped_mid_epoch_resumes_with_no_sample_repeated_or_skipped(shards, tmp_path):
    run_dir = tmp_path / "run"
    cmd = stream_run(shards[1], run_dir, "trainer.max_epochs=2")
    stop = "+callbacks.signal_at"
    signal_at = [f"{stop}._target_=signal_callbacks.SignalAt", f"{stop}.signal=SIGTERM"]
    signal_at += [f"{stop}.phase=train", f"{stop}.batch=2"]
    status, out = run_in_process_group([*cmd, *signal_at], DEADLINE_S)
    assert status == 128 + signal.SIGTERM, out[-4000:]
    before = recorded(tmp_path / "labels.jsonl")
    assert [r["batch"] for r in before] == [0, 1, 2]  # stopped after the third batch
    # the run's own overrides come back with resume=true: this one takes the signal away
    status, out = run_in_process_group([*cmd, "resume=true", "~callbacks.signal_at"], DEADLINE_S)
    assert status == 0, out[-4000:]
    lines = recorded(tmp_path / "labels.jsonl")
    for epoch in (0, 1):
        labels = [y for r in lines if r["epoch"] == epoch for y in r["labels"]]
        assert sorted(labels) == list(range(12)), (epoch, lines)


def test_any_source_gives_the_shards_rows_of_jpeg_bytes_labels_and_test_keys(tmp_path):
    """What hw1.shard writes from a datasets dataset (no optimize run: the rows and the
    samples its workers encode)."""
    from test_sources import hf_dataset

    from hw1.data.shards import encode, split_rows
    from hw1.data.source_choice import make_source

    root = tmp_path / "data"
    make_hw1_folder(root, ["0", "1", "10", "2"], train=2, val=1, test=1)
    source = make_source("hf", hf_dataset(root, tmp_path / "hf"))
    source.check()
    names = source.class_names()
    rows = split_rows(source, names)
    assert [len(rows[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    sample = encode(rows["train"], source.read, 0)
    assert sample["image"][:2] == b"\xff\xd8" and 0 <= sample["label"] < 4
    keys = sorted(encode(rows["test"], source.read, i)["key"] for i in range(4))
    assert keys == sorted(p.stem for p in (root / "test").iterdir())
    png = next(i for i, r in enumerate(rows["test"]) if r[2] == "img-1-0")  # a PNG file
    assert encode(rows["test"], source.read, png)["image"][:2] == b"\xff\xd8"


@pytest.mark.slow
def test_ctrl_c_in_the_terminal_stops_a_stream_with_workers_without_tracebacks(shards, tmp_path):
    """A terminal's Ctrl-C reaches LitData's loader workers too: they leave quietly, the
    run saves last.ckpt and exits 130 as it does on folders."""
    run_dir = tmp_path / "run"
    cmd = stream_run(shards[1], run_dir, "trainer.max_epochs=2", "data.num_workers=2")
    stop = "+callbacks.signal_at"
    signal_at = [f"{stop}._target_=signal_callbacks.SignalAt", f"{stop}.signal=SIGINT"]
    signal_at += [f"{stop}.phase=train", f"{stop}.batch=2", f"{stop}.group=true"]
    status, out = run_in_process_group([*cmd, *signal_at], DEADLINE_S)
    assert status == 128 + signal.SIGINT, out[-4000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-4000:]
    assert out.count("SIGINT: stopping") == 1, out[-4000:]  # not once more per worker
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
