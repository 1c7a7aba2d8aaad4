from __future__ import annotations

import csv
import io
import json
import threading

import pytest

from hw1.utils.io import csv_text, write_atomically


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "metrics.json"
    write_atomically(path, "old")
    assert path.read_text() == "old"

    def interrupted(self, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(path), "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, b"new")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == [
        "metrics.json"
    ]


def test_csv_text_quotes_what_needs_it_and_ends_lines_with_newlines():
    text = csv_text([("image_name", "pred_label"), ("a,b", 'say "x"')])
    assert text == 'image_name,pred_label\n"a,b","say ""x"""\n'
    assert list(csv.reader(io.StringIO(text))) == [["image_name", "pred_label"], ["a,b", 'say "x"']]


def test_writers_of_one_file_at_once_never_leave_a_broken_one(tmp_path):
    """DDP ranks or a sweep's jobs writing the image-check cache together: every read
    finds one writer's whole file, and no writer fails."""
    path = tmp_path / "cache.json"
    errors, reads = [], []
    done = threading.Event()

    def writer(k: int) -> None:
        payload = json.dumps({"writer": k, "data": [k] * 50_000})
        try:
            for _ in range(20):
                write_atomically(path, payload)
        except Exception as e:  # noqa: BLE001 - any failure of a writer is the finding
            errors.append(e)

    def reader() -> None:
        while not done.is_set():
            if path.exists():
                try:
                    reads.append(json.loads(path.read_text())["writer"])
                except (ValueError, FileNotFoundError) as e:
                    errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    watch = threading.Thread(target=reader)
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watch.join()
    assert errors == [] and reads
    assert json.loads(path.read_text())["data"][0] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temporary left
